"""bench/results/bench.json as the Markdown tables of README's performance section.

    python bench/report.py [bench/results/bench.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def markdown(report: dict) -> str:
    lines = [f"Run of {report['date'][:10]} on `{report['machine']}` ({report['cores']} cores, shared), "
             f"`python bench/run.py --seconds {report['seconds']} --rounds {report['rounds']}`; pgveil with "
             f"{report['workers']} workers, strict auditing unless the row says otherwise.", ""]
    if report.get("pgbench"):
        lines += [f"pgbench, `-c {report['clients']} -j 2`, scale {report['scale']}, medians:", "",
                  "| script | mode | configuration | TPS | x direct | x PgBouncer |",
                  "| --- | --- | --- | ---: | ---: | ---: |"]
        for r in report["pgbench"]:
            bouncer = f"{r['ratio_to_pgbouncer']:.2f}" if r["ratio_to_pgbouncer"] is not None else ""
            script = "-S" if r["script"] == "select" else "TPC-B"
            lines.append(f"| {script} | {r['mode']} | {r['config']} | {r['tps_median']:,} | "
                         f"{r['ratio_to_direct']:.2f} | {bouncer} |")
        lines += ["", "Audit cost (pgveil relay, same run):", "", "| script | mode | strict / off | batched / off |",
                  "| --- | --- | ---: | ---: |"]
        for r in report["audit"]:
            script = "-S" if r["script"] == "select" else "TPC-B"
            lines.append(f"| {script} | {r['mode']} | {r['strict_over_off']:.2f} | {r['batched_over_off']:.2f} |")
        lines.append("")
    if report.get("streaming"):
        lines += [f"Streaming {report['streaming'][0]['rows']:,} rows (psql reading as fast as it can; medians of "
                  f"{report.get('stream_rounds', report['rounds'])} rounds):", "",
                  "| test | configuration | MB/s | rows/s | x direct |", "| --- | --- | ---: | ---: | ---: |"]
        for r in report["streaming"]:
            test = "SELECT" if r["test"] == "select" else "COPY TO STDOUT"
            lines.append(f"| {test} | {r['config']} | {r['mb_per_s']} | {r['rows_per_s']:,} | "
                         f"{r['ratio_to_direct']:.2f} |")
        lines.append("")
    if report.get("decision"):
        d = report["decision"]
        lines += [f"Decision time, in-process, tier {d['tier']}, typical CRM statements: cold median "
                  f"{d['cold_median_us']:.0f} us, warm median {d['warm_median_us']:.2f} us "
                  f"(worst p99 warm {max(r['warm_p99_us'] for r in d['results']):.2f} us).", ""]
    if report.get("memory"):
        m = report["memory"]
        lines += [f"Memory: {m['held']:,} of {m['sessions']:,} idle sessions held, {m['errors']} errors; pgveil's "
                  f"RSS {m['rss_before_kb'] / 1024:.0f} MB -> {m['rss_during_kb'] / 1024:.0f} MB, "
                  f"{m['per_session_kb']:.1f} KB per session.", ""]
    if report.get("stall"):
        lines += stall_markdown(report["stall"])
    from targets import markdown as targets_markdown
    lines += targets_markdown(report)
    return "\n".join(lines)


def stall_markdown(section: dict) -> list[str]:
    """The stall table: the other session's worst SELECT 1 latency beside its 50 ms target, and
    memory after the flood of distinct statements beside its 150 MB target."""
    lines = ["Stall (one worker; another session runs `SELECT 1` in a loop while one session sends the "
             "statement; its worst latency meanwhile):", "",
             "| statement | tier | outcome | took s | worst SELECT 1 ms | target ms | idle worst ms "
             "| worker's longest event ms (its CPU) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in section["stalls"]:
        event = (f"{r['worker_event_wall_ms']:.0f} ({r['worker_event_cpu_ms']:.0f})"
                 if r.get("worker_event_wall_ms") else "< 5")
        lines.append(f"| {r['statement']} | {r['tier']} | {r['outcome']} | {r['seconds']:.2f} | "
                     f"{r['worst_ms']:.1f} | {r['target_ms']:.0f} | {r.get('baseline_worst_ms', float('nan')):.1f} | "
                     f"{event} |")
    lines.append("")
    for m in section["memory"]:
        lines += [f"Memory after {m['statements']:,} distinct 64 KB statements ({m['tier']} tier): the worker's RSS "
                  f"{m['rss_before_mb']:.0f} MB -> {m['rss_after_mb']:.0f} MB, +{m['growth_mb']:.0f} MB (target "
                  f"{m['target_mb']:.0f} MB); its decision cache holds {m['decision_cache_mb']:.0f} MB in "
                  f"{m['decision_cache_entries']:,} entries; the analysing child {m['children_rss_after_mb']:.0f} MB.",
                  ""]
    return lines


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "bench.json"
    print(markdown(json.loads(path.read_text())))
