"""bench/results/bench.json as the Markdown tables of README's performance section.

    python bench/report.py [bench/results/bench.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


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
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "bench.json"
    print(markdown(json.loads(path.read_text())))
