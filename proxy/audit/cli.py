"""``pgveil audit verify|search|tail|keygen|investigate``: the journal for investigators."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .executions import RECORDED_AGAIN, Expander, expand
from .journal import data_end, read_records, stream_files, verify


def add_parsers(sub) -> None:
    audit = sub.add_parser("audit", help="verify, search and follow the audit journal")
    verbs = audit.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("verify", help="check the hash chain across files; exit 1 if broken")
    p.add_argument("dir")
    p.set_defaults(func=cmd_verify)
    p = verbs.add_parser("search", help="who saw which sensitive columns, when, how many rows")
    p.add_argument("dir")
    p.add_argument("--user")
    p.add_argument("--tier")
    p.add_argument("--column", help="schema.table.column, e.g. public.customers.id_number")
    p.add_argument("--action", choices=["clear", "mask", "block"])
    p.add_argument("--decision", choices=["allow", "rewrite", "refuse"])
    p.add_argument("--type", default="statement",
                   help="record type: statement (default), connection, outcome, session_end, journal, all")
    p.add_argument("--since", help="ISO time, e.g. 2026-11-22T08:00:00Z")
    p.add_argument("--until")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=cmd_search)
    p = verbs.add_parser("tail", help="follow new records")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seconds", type=float, help="stop after this long (default: until interrupted)")
    p.set_defaults(func=cmd_tail)
    p = verbs.add_parser("keygen", help="write the investigators' key pair: OUT (private, keep it offline) and OUT.pub")
    p.add_argument("out", help="private key file to write (mode 0600); the public key goes to OUT.pub")
    p.set_defaults(func=cmd_keygen)
    p = verbs.add_parser("investigate", help="which executions used a value (opens the sealed values)")
    p.add_argument("dir")
    p.add_argument("--key", required=True, help="the investigators' private key (pgveil audit keygen)")
    p.add_argument("--value", required=True, help="the value looked for, e.g. a customer id or an ID number")
    p.add_argument("--param-of", metavar="SCHEMA.TABLE.COLUMN",
                   help="only where the value is used against this column (compared, assigned, inserted)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=cmd_investigate)


def cmd_verify(args) -> int:
    if not Path(args.dir).is_dir():
        print(f"{args.dir}: no such directory", file=sys.stderr)
        return 1
    result = verify(args.dir)
    if result.ok:
        streams = ", ".join(f"stream {s} up to seq {seq}" for s, seq in result.streams.items())
        print(f"OK: {result.records} records in {result.files} files ({streams or 'empty'})")
        return 0
    print(f"BROKEN after {result.records} good records: {result.problem}")
    return 1


def _parse_time(text: str | None) -> str | None:
    if not text:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def matches(record: dict, args, since: str | None, until: str | None) -> bool:
    if args.type != "all" and record.get("type") != args.type:
        return False
    if args.user and record.get("user") != args.user:
        return False
    if args.tier and record.get("tier") != args.tier:
        return False
    if args.decision and record.get("decision") != args.decision:
        return False
    if since and record.get("ts", "") < since:
        return False
    if until and record.get("ts", "") > until:
        return False
    if args.column or args.action:
        found = False
        for use in record.get("columns", []):
            name = f"{use['relation']}.{use['column']}"
            if (not args.column or name == args.column) and (not args.action or use["action"] == args.action):
                found = True
        if not found:
            return False
    return True


def cmd_search(args) -> int:
    since, until = _parse_time(args.since), _parse_time(args.until)
    outcomes: dict[str, dict] = {}
    hits = []
    for record in readable_records(args.dir):
        if record.get("type") == "outcome":
            outcomes[record.get("statement")] = record
        if matches(record, args, since, until):
            hits.append(record)
    if args.json:
        for record in hits:
            if record.get("type") == "statement":
                record = dict(record, outcome=outcomes.get(record["id"]))
            print(json.dumps(record, ensure_ascii=False))
        return 0
    print(f"{'time (UTC)':27s} {'user':12s} {'tier':16s} {'decision':8s} {'rows':>6s}  columns / sql")
    for r in hits:
        out = outcomes.get(r.get("id"), {})
        cols = ", ".join(f"{c['relation'].split('.')[-1]}.{c['column']}:{c['action']}" for c in r.get("columns", []))
        rows = out.get("rows")
        text = r.get("sql") or r.get("reason") or r.get("result") or r.get("event") or ""
        if out.get("note"):  # an execution whose outcome never arrived
            text = f"{text} [{out['note']}]"
        print(f"{r.get('ts', '')[:26]:27s} {str(r.get('user'))[:12]:12s} {str(r.get('tier'))[:16]:16s} "
              f"{str(r.get('decision', r.get('type')))[:8]:8s} {'' if rows is None else rows:>6}  "
              f"{cols + ' | ' if cols else ''}{text[:100]}")
    print(f"{len(hits)} records")
    return 0


def cmd_tail(args) -> int:
    positions: dict[Path, int] = {}
    for files in stream_files(Path(args.dir)).values():
        for path in files:
            with open(path, "rb") as f:
                positions[path] = data_end(f)  # start at the end, like tail -f (zeros follow it)
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while deadline is None or time.monotonic() < deadline:
            for files in stream_files(Path(args.dir)).values():
                for path in files:
                    pos = positions.get(path, 0)
                    size = path.stat().st_size
                    if size <= pos:
                        continue
                    with open(path, "rb") as f:
                        f.seek(pos)
                        data = f.read(size - pos)
                    data = data[:data.find(b"\0")] if b"\0" in data else data  # (the zeros ahead)
                    complete = data[:data.rfind(b"\n") + 1]
                    positions[path] = pos + len(complete)
                    for line in complete.splitlines():
                        record = json.loads(line)
                        if args.json:
                            print(json.dumps(record, ensure_ascii=False), flush=True)
                        else:
                            text = record.get("sql") or record.get("result") or record.get("status") or \
                                record.get("event") or ""
                            print(f"{record.get('ts', '')[:26]} {record.get('type', ''):11s} "
                                  f"{str(record.get('user')):12s} {str(record.get('tier')):16s} {text[:100]}",
                                  flush=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    return 0


# -- pgveil report usage ---------------------------------------------------------------------
def add_usage_parser(kinds) -> None:
    p = kinds.add_parser("usage", help="who did see what: per user x class x action, with flags for review")
    p.add_argument("dir", nargs="?", help="the audit journal directory (or --sink-dsn)")
    p.add_argument("--sink-dsn", help="read the PostgreSQL sink's pgveil_audit table instead of a journal")
    p.add_argument("--since", help="ISO time, e.g. 2026-11-01 or 2026-11-01T00:00:00+08:00")
    p.add_argument("--until", help="ISO time (exclusive)")
    p.add_argument("--format", choices=["table", "csv", "json"],
                   help="default: a table on a terminal, CSV into a pipe")
    p.add_argument("--office-hours", default="09:00-18:00", help="HH:MM-HH:MM (default 09:00-18:00)")
    p.add_argument("--office-days", default="mon-fri", help="e.g. mon-fri (default) or mon,tue,thu")
    p.add_argument("--timezone", default="UTC", help="the office's time zone, e.g. Asia/Shanghai (default UTC)")
    p.set_defaults(func=cmd_usage)


def readable_records(directory: str):
    """Every record of the journal that reads as JSON (a cut last line is left to `pgveil audit verify`),
    executions of the compact form read as the outcome records they stand for (executions.py)."""
    return expand(record for _, _, record, _ in read_records(directory) if record is not None)


def _feed_from_sink(usage, dsn: str, since: str | None) -> None:
    """Every record of the sink's table from ``since`` on, in each stream's order, read through a
    cursor (a month of records is not held in memory at once)."""
    import asyncio

    import asyncpg
    import orjson

    async def feed() -> None:
        expander = Expander()
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            # a short statement record's decision is written in full at most a minute before it
            # (proxy/session/recorder.py RECORDED_AGAIN): read from then; Usage keeps `since`
            start = datetime.fromisoformat(since.replace("Z", "+00:00")) - timedelta(seconds=RECORDED_AGAIN) \
                if since else None
            async with conn.transaction(readonly=True):
                # outcomes follow their statements, so reading from `since` loses none of them
                async for row in conn.cursor("SELECT record::text FROM pgveil_audit WHERE $1::timestamptz IS NULL "
                                             "OR ts >= $1 ORDER BY stream, seq", start, prefetch=2000):
                    for record in expander.add(orjson.loads(row[0])):
                        usage.add(record)
                for record in expander.finish():
                    usage.add(record)
        finally:
            await conn.close()

    asyncio.run(feed())


def cmd_usage(args) -> int:
    import orjson

    from .usage import OfficeHours, Usage, as_dict, render_csv, render_table

    if bool(args.dir) == bool(args.sink_dsn):
        print("pgveil report usage: give either an audit directory or --sink-dsn", file=sys.stderr)
        return 2
    if args.dir and not Path(args.dir).is_dir():
        print(f"{args.dir}: no such directory", file=sys.stderr)
        return 1
    try:
        hours = OfficeHours.parse(args.office_hours, args.office_days, args.timezone)
        since, until = _parse_time(args.since), _parse_time(args.until)
    except (ValueError, KeyError) as exc:
        print(f"pgveil report usage: {exc}", file=sys.stderr)
        return 2
    usage = Usage(since, until, hours)
    if args.dir:
        for record in readable_records(args.dir):
            usage.add(record)
    else:
        _feed_from_sink(usage, args.sink_dsn, since)
    report = usage.report()
    fmt = args.format or ("table" if sys.stdout.isatty() else "csv")
    if fmt == "json":
        sys.stdout.write(orjson.dumps(as_dict(report), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_table(report) if fmt == "table" else render_csv(report))
    return 0


# -- sealed values: keygen and investigate ----------------------------------------------------
def cmd_keygen(args) -> int:
    from .seal import write_key_pair

    try:
        private, public = write_key_pair(args.out)
    except FileExistsError:
        print(f"{args.out}: already exists; pgveil never overwrites a key", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"private key: {private} (mode 0600: keep it offline, with the investigators)")
    print(f"public key:  {public} (give it to pgveil: --audit-seal-key {public})")
    return 0


def _record_investigation(directory: str, opener, args, found: int) -> None:
    """The investigation's own record, in a stream of its own, chained like any other.  What was
    looked for is sealed to the same key pair: the journal never holds the value in clear."""
    import getpass
    import socket

    from .journal import Journal
    from .records import base
    from .seal import seal_once

    journal = Journal(directory, "investigate")
    notes = journal.open()
    record = dict(base("investigation", {}), os_user=getpass.getuser(), host=socket.gethostname(),
                  recipient=opener.recipient, keys_opened=opener.keys_opened, found=found,
                  sealed_query=seal_once(opener.public, {"value": args.value, "param_of": args.param_of}))
    try:
        journal.append(notes + [record])
    finally:
        journal.close()


def cmd_investigate(args) -> int:
    from .investigate import Investigation, Wanted
    from .seal import PRIVATE_TAG, Opener, SealKeyError, read_key

    if not Path(args.dir).is_dir():
        print(f"{args.dir}: no such directory", file=sys.stderr)
        return 1
    if args.param_of and args.param_of.count(".") != 2:
        print("--param-of: expected schema.table.column, e.g. public.customers.id", file=sys.stderr)
        return 2
    try:
        opener = Opener(read_key(args.key, PRIVATE_TAG))
    except SealKeyError as exc:
        print(f"pgveil audit investigate: {exc}", file=sys.stderr)
        return 2
    search = Investigation(opener, Wanted(args.value), args.param_of)
    for record in readable_records(args.dir):
        search.add(record)
    _record_investigation(args.dir, opener, args, len(search.hits))
    if opener.keys_seen and not opener.keys_opened:
        print(f"this key opens none of the journal's {opener.keys_seen} data keys: the values were sealed to "
              f"another key pair; nothing found", file=sys.stderr)
        return 1
    if not opener.keys_seen:
        print("the journal holds no sealed values (was pgveil run with --audit-seal-key?)", file=sys.stderr)
        return 1
    hits = sorted(search.hits, key=lambda h: h.ts)
    if args.json:
        for hit in hits:
            print(json.dumps(hit.as_dict(), ensure_ascii=False))
    else:
        print(f"{'time (UTC)':27s} {'user':12s} {'tier':16s} {'purpose':14s} {'how':14s} {'status':8s} {'rows':>6s}"
              f"  statement")
        for hit in hits:
            h = hit.as_dict()
            grant = f" [grant: {h['grant']}]" if h["grant"] else ""
            print(f"{h['ts'][:26]:27s} {str(h['user'])[:12]:12s} {str(h['tier'])[:16]:16s} "
                  f"{str(h['purpose'] or '')[:14]:14s} {h['how'][:14]:14s} {str(h['status'] or '')[:8]:8s} "
                  f"{'' if h['rows'] is None else h['rows']:>6}  {h['fingerprint']} {h['sql'][:90]}{grant}")
    unopened = f"; {search.unopened} sealed records could not be opened (altered?)" if search.unopened else ""
    print(f"{len(hits)} executions used the value; {search.sealed_records} sealed records read with "
          f"{opener.keys_opened} of {opener.keys_seen} data keys{unopened}", file=sys.stderr)
    return 0
