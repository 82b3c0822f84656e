"""Who *did* see what: the usage report for the administration office's periodic review.

Entitlements say who could see a column; this says who did, from the audit records themselves:
per user, class of sensitive data and action (clear, mask, block), how many executions and rows,
under which purposes and grants; and the things a reviewer looks at first:

- executions that reached sensitive data outside office hours;
- refusals;
- results stopped by ``max_rows``;
- users seen from more than one client address (the policies forbid sharing an account).

Pure: records in (dicts, from the journal or the PostgreSQL sink, in any order of streams),
a :class:`Report` out.  Reading and printing live in :mod:`proxy.audit.cli`.

>>> u = Usage(since="2026-11-01T00:00:00Z", until="2026-12-01T00:00:00Z", hours=OfficeHours.parse("09:00-18:00"))
>>> u.add({"type": "statement", "id": "s1", "ts": "2026-11-02T10:00:00.000000Z", "user": "li", "tier": "sales",
...        "client_addr": "10.0.0.5", "decision": "rewrite", "purpose": None, "grant": None,
...        "columns": [{"relation": "public.customers", "column": "id_number", "class": "id_number", "action": "mask"}]})
>>> u.add({"type": "outcome", "statement": "s1", "ts": "2026-11-02T10:00:00.100000Z", "status": "ok", "rows": 3})
>>> [(r.user, r.cls, r.action, r.executions, r.rows) for r in u.report().rows]
[('li', 'id_number', 'mask', 1, 3)]
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time as dtime, timezone, tzinfo
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class OfficeHours:
    """When sensitive data is normally read: ``09:00-18:00`` on ``mon-fri``, in a time zone."""

    start: dtime
    end: dtime
    days: frozenset = frozenset(range(5))
    zone: tzinfo = timezone.utc

    @classmethod
    def parse(cls, hours: str, days: str = "mon-fri", zone: str = "UTC") -> "OfficeHours":
        """``OfficeHours.parse("08:30-19:00", "mon-sat", "Asia/Shanghai")``; ValueError says what is wrong."""
        try:
            first, last = hours.split("-")
            start, end = dtime.fromisoformat(first.strip()), dtime.fromisoformat(last.strip())
        except ValueError:
            raise ValueError(f"office hours {hours!r}: expected HH:MM-HH:MM") from None
        return cls(start, end, _parse_days(days), timezone.utc if zone.upper() == "UTC" else ZoneInfo(zone))

    def contains(self, ts: str) -> bool:
        """Whether a record's time (``2026-11-02T10:00:00.123456Z``) falls in office hours."""
        return _contains(self, ts[:16])  # hours are given to the minute: one answer per minute

    def _contains_minute(self, minute: str) -> bool:
        moment = datetime.fromisoformat(minute + "+00:00").astimezone(self.zone)
        if moment.weekday() not in self.days:
            return False
        now = moment.time()
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end  # a night shift across midnight


@functools.lru_cache(maxsize=65536)
def _contains(hours: OfficeHours, minute: str) -> bool:
    return hours._contains_minute(minute)


def _parse_days(text: str) -> frozenset:
    days: set[int] = set()
    for part in text.lower().split(","):
        part = part.strip()
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"office days {text!r}: expected e.g. mon-fri or mon,wed,fri")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


@dataclass
class UsageRow:
    user: str
    cls: str
    action: str
    executions: int = 0
    rows: int = 0
    purposes: set = field(default_factory=set)
    grants: set = field(default_factory=set)
    tiers: set = field(default_factory=set)


@dataclass
class Report:
    since: str | None
    until: str | None
    rows: list[UsageRow]
    off_hours: list[dict]        # executions reaching sensitive data outside office hours
    refusals: list[dict]
    limited: list[dict]          # results stopped by max_rows
    shared: dict[str, list[str]]  # user -> the client addresses seen, where more than one
    records: int = 0


class Usage:
    """Accumulates records; :meth:`report` gives the answer.  Statements are joined with their
    outcomes by id: each outcome is one execution (a statement prepared once and executed five
    times counts five); a statement whose outcome never arrived counts once, rows unknown."""

    def __init__(self, since: str | None = None, until: str | None = None, hours: OfficeHours | None = None) -> None:
        self.since, self.until, self.hours = since, until, hours
        self._statements: dict[str, dict] = {}
        self._outcomes: dict[str, list[dict]] = defaultdict(list)
        self._addresses: dict[str, set] = defaultdict(set)
        self._refusals: list[dict] = []
        self.records = 0

    def _in_range(self, ts: str) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def add(self, record: dict) -> None:
        kind = record.get("type")
        if kind == "outcome":
            self._outcomes[record.get("statement")].append(record)
            return
        if not self._in_range(record.get("ts", "")):
            return
        self.records += 1
        user = record.get("user")
        if user is not None and record.get("client_addr") and (kind != "connection" or record.get("result") == "accepted"):
            self._addresses[user].add(record["client_addr"])
        if kind != "statement":
            return
        if record.get("decision") == "refuse":
            self._refusals.append(_brief(record))
        elif record.get("columns"):
            self._statements[record["id"]] = record

    def report(self) -> Report:
        table: dict[tuple, UsageRow] = {}
        off_hours, limited = [], []
        for statement_id, record in self._statements.items():
            outcomes = self._outcomes.get(statement_id) or [None]
            classes = {(c["class"], c["action"]) for c in record["columns"]}
            for outcome in outcomes:
                ts = outcome["ts"] if outcome else record["ts"]
                rows = (outcome or {}).get("rows") or 0
                for cls, action in classes:
                    row = table.setdefault((record["user"], cls, action), UsageRow(record["user"], cls, action))
                    row.executions += 1
                    row.rows += rows
                    row.tiers.add(record.get("tier"))
                    if record.get("purpose"):
                        row.purposes.add(record["purpose"])
                    if record.get("grant"):
                        row.grants.add(record["grant"])
                if self.hours is not None and not self.hours.contains(ts):
                    off_hours.append(dict(_brief(record), ts=ts, rows=rows))
                if outcome and outcome.get("status") == "limited":
                    limited.append(dict(_brief(record), ts=ts, rows=rows))
        shared = {user: sorted(addrs) for user, addrs in sorted(self._addresses.items()) if len(addrs) > 1}
        rows = sorted(table.values(), key=lambda r: (r.user, r.cls, r.action))
        by_time = lambda r: r["ts"]  # noqa: E731
        return Report(self.since, self.until, rows, sorted(off_hours, key=by_time),
                      sorted(self._refusals, key=by_time), sorted(limited, key=by_time), shared, self.records)


def _brief(record: dict) -> dict:
    return {"ts": record.get("ts"), "user": record.get("user"), "tier": record.get("tier"),
            "client_addr": record.get("client_addr"), "fingerprint": record.get("fingerprint"),
            "classes": sorted({c["class"] for c in record.get("columns", ())}),
            "reason": record.get("reason") or "", "purpose": record.get("purpose"), "grant": record.get("grant")}


def as_dict(report: Report) -> dict:
    """The report as plain JSON-able data."""
    return {"since": report.since, "until": report.until, "records": report.records,
            "usage": [{"user": r.user, "class": r.cls, "action": r.action, "executions": r.executions,
                       "rows": r.rows, "tiers": sorted(t for t in r.tiers if t), "purposes": sorted(r.purposes),
                       "grants": sorted(r.grants)} for r in report.rows],
            "flags": {"off_hours": report.off_hours, "refusals": report.refusals, "max_rows_stops": report.limited,
                      "shared_accounts": report.shared}}


def render_table(report: Report) -> str:
    """For a terminal: the usage table, then each flag with its first entries."""
    lines = [f"Usage {report.since or 'start'} .. {report.until or 'now'} ({report.records} records)", ""]
    header = ("user", "class", "action", "executions", "rows", "purposes", "grants")
    body = [(r.user, r.cls, r.action, str(r.executions), str(r.rows), ", ".join(sorted(r.purposes)),
             ", ".join(sorted(r.grants))) for r in report.rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) if i in (3, 4) else v.ljust(w) for i, (v, w) in enumerate(zip(b, widths))).rstrip()
              for b in body]
    for title, entries in (("outside office hours", report.off_hours), ("refusals", report.refusals),
                           ("max_rows stops", report.limited)):
        lines += ["", f"{title}: {len(entries)}"]
        lines += [f"  {e['ts'][:19]}  {e['user']}  {e['tier']}  {','.join(e['classes']) or '-'}  {e['reason'][:80]}"
                  for e in entries[:50]]
        if len(entries) > 50:
            lines.append(f"  ... {len(entries) - 50} more (use --format json)")
    lines += ["", f"users seen from more than one address: {len(report.shared)}"]
    lines += [f"  {user}: {', '.join(addrs)}" for user, addrs in report.shared.items()]
    return "\n".join(lines) + "\n"


def render_csv(report: Report) -> str:
    """One row per user x class x action, then one per flag (``kind`` says which)."""
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["kind", "user", "class", "action", "executions", "rows", "purposes", "grants", "ts", "tier",
                "client_addr", "detail"])
    for r in report.rows:
        w.writerow(["usage", r.user, r.cls, r.action, r.executions, r.rows, ";".join(sorted(r.purposes)),
                    ";".join(sorted(r.grants)), "", ";".join(sorted(t for t in r.tiers if t)), "", ""])
    for kind, entries in (("off_hours", report.off_hours), ("refusal", report.refusals),
                          ("max_rows_stop", report.limited)):
        for e in entries:
            w.writerow([kind, e["user"], ";".join(e["classes"]), "", "", e.get("rows", ""), e["purpose"] or "",
                        e["grant"] or "", e["ts"], e["tier"], e["client_addr"], e["reason"]])
    for user, addrs in report.shared.items():
        w.writerow(["shared_account", user, "", "", "", "", "", "", "", "", ";".join(addrs), ""])
    return out.getvalue()
