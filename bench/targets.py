"""Every target of the performance issues (7, 13, 17) beside what one run of bench/run.py measured,
met or missed.  Shared by bench/run.py (printed at the end of ``make bench``) and bench/report.py
(README's "Against the targets" table).

A target whose figures the run did not measure (a section or configuration left out) is not
listed, rather than called met.
"""

from __future__ import annotations

SCRIPTS = {"select": "-S", "tpcb": "TPC-B"}
MASKING = "pgveil masking tier"
ALL_CLEAR = "pgveil all-clear tier"
BOUNCER = "pgbouncer session mode"
MODES = {"simple": 0, "extended": 1, "prepared": 2}


def _pgbench(report: dict) -> list[dict]:
    rows = []
    tps = {(r["script"], r["mode"], r["config"]): r["tps_median"] for r in report.get("pgbench") or ()}
    runs = sorted({(script, mode) for script, mode, _ in tps},
                  key=lambda k: (k[0] != "select", k[0], MODES.get(k[1], len(MODES)), k[1]))
    for config, goal, label in ((MASKING, 0.9, "masking tier"), (ALL_CLEAR, 1.0, "all-clear tier")):
        for script, mode in runs:
            mine, theirs = tps.get((script, mode, config)), tps.get((script, mode, BOUNCER))
            if mine and theirs:
                rows.append(_row(f"{label} >= {goal} x PgBouncer", f"{SCRIPTS.get(script, script)} {mode}",
                                 mine / theirs, goal))
    for script, mode in runs:
        strict, off = tps.get((script, mode, "pgveil relay, audit strict")), tps.get((script, mode, "pgveil relay, audit off"))
        if strict and off:
            rows.append(_row("audit strict >= 0.85 x audit off (relay)", f"{SCRIPTS.get(script, script)} {mode}",
                             strict / off, 0.85))
    return rows


def _row(target: str, case: str, measured: float, goal: float, higher_is_better: bool = True,
         unit: str = "x", shown: str | None = None) -> dict:
    met = measured >= goal if higher_is_better else measured <= goal
    return {"target": target, "case": case, "measured": round(measured, 3), "goal": goal, "unit": unit,
            "met": met, "shown": shown or f"{measured:.2f}"}


def evaluate(report: dict) -> list[dict]:
    """The targets this run measured: {target, case, measured, goal, met, shown}."""
    rows = _pgbench(report)
    for r in report.get("streaming") or ():
        if r["config"] != "direct":
            rows.append(_row("streaming >= 0.9 x direct", "SELECT" if r["test"] == "select" else "COPY TO STDOUT",
                             r["ratio_to_direct"], 0.9))
    d = report.get("decision")
    if d:
        rows.append(_row("decision warm median < 20 us", d.get("tier", ""), d["warm_median_us"], 20, False, "us",
                         f"{d['warm_median_us']:.2f} us"))
        rows.append(_row("decision cold median < 1 ms", d.get("tier", ""), d["cold_median_us"], 1000, False, "us",
                         f"{d['cold_median_us']:.0f} us"))
    m = report.get("memory")
    if m:
        rows.append(_row("< 50 KB per idle session", f"{m['held']:,} of {m['sessions']:,} held", m["per_session_kb"],
                         50, False, "KB", f"{m['per_session_kb']:.1f} KB"))
        rows.append(_row("every idle session held", f"{m['sessions']:,} sessions", m["held"] / m["sessions"], 1.0,
                         shown=f"{m['held']:,} held, {m['errors']} errors"))
    stall = report.get("stall") or {}
    for r in stall.get("stalls", ()):
        rows.append(_row(f"stall: other session's worst SELECT 1 <= {r['target_ms']:.0f} ms",
                         f"{r['statement']}, {r['tier']}", r["worst_ms"], r["target_ms"], False, "ms",
                         f"{r['worst_ms']:.1f} ms"))
    for r in stall.get("memory", ()):
        rows.append(_row(f"memory after the flood <= {r['target_mb']:.0f} MB", f"{r['statements']:,} statements, "
                         f"{r['tier']}", r["growth_mb"], r["target_mb"], False, "MB", f"+{r['growth_mb']:.0f} MB"))
    return rows


def _by(row: dict) -> str:
    """By how much a missed target is missed."""
    if row["unit"] == "x":
        return f"by {row['goal'] - row['measured']:.2f}"
    return f"by {row['measured'] - row['goal']:.1f} {row['unit']}"


def print_targets(report: dict) -> None:
    rows = evaluate(report)
    if not rows:
        return
    print("\ntargets (this run)")
    print(f"{'target':48s}{'case':40s}{'measured':>22s}  {'':6s}")
    for r in rows:
        verdict = "met" if r["met"] else f"MISSED {_by(r)}"
        print(f"{r['target'][:48]:48s}{r['case'][:40]:40s}{r['shown']:>22s}  {verdict}")
    missed = sum(not r["met"] for r in rows)
    print(f"{len(rows) - missed} of {len(rows)} met")


def markdown(report: dict) -> list[str]:
    rows = evaluate(report)
    if not rows:
        return []
    lines = ["Against the targets (same run):", "", "| target | case | measured | |", "| --- | --- | ---: | --- |"]
    for r in rows:
        verdict = "met" if r["met"] else f"missed {_by(r)}"
        lines.append(f"| {r['target']} | {r['case']} | {r['shown']} | {verdict} |")
    missed = sum(not r["met"] for r in rows)
    return lines + ["", f"{len(rows) - missed} of {len(rows)} met.", ""]
