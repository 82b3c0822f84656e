"""``make bench`` prints every ratio beside its target (issue 17): bench/targets.py on a report
made up here, no pgbench run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import targets  # noqa: E402


def pgbench_rows(script: str, mode: str, tps: dict) -> list[dict]:
    return [{"script": script, "mode": mode, "config": name, "tps_median": value} for name, value in tps.items()]


REPORT = {
    "pgbench": pgbench_rows("select", "prepared", {
        "pgbouncer session mode": 1000, "pgveil masking tier": 950, "pgveil all-clear tier": 990,
        "pgveil relay, audit strict": 800, "pgveil relay, audit off": 1000})
    + pgbench_rows("tpcb", "simple", {"pgbouncer session mode": 100, "pgveil masking tier": 50}),
    "streaming": [{"test": "select", "config": "direct", "ratio_to_direct": 1.0},
                  {"test": "copy", "config": "pgveil all-clear tier", "ratio_to_direct": 1.06}],
    "decision": {"tier": "customer_service", "warm_median_us": 1.2, "cold_median_us": 1200.0},
    "memory": {"sessions": 2000, "held": 2000, "errors": 0, "per_session_kb": 12.3},
    "stall": {"stalls": [{"statement": "IN list", "tier": "masking", "worst_ms": 60.5, "target_ms": 50}],
              "memory": [{"statements": 3000, "tier": "masking", "growth_mb": 63.7, "target_mb": 150}]},
}


def test_every_measured_target_is_listed_met_or_missed():
    rows = {(r["target"], r["case"]): r for r in targets.evaluate(REPORT)}
    assert rows["masking tier >= 0.9 x PgBouncer", "-S prepared"]["met"]
    assert not rows["all-clear tier >= 1.0 x PgBouncer", "-S prepared"]["met"]
    assert not rows["masking tier >= 0.9 x PgBouncer", "TPC-B simple"]["met"]
    assert not rows["audit strict >= 0.85 x audit off (relay)", "-S prepared"]["met"]
    assert rows["streaming >= 0.9 x direct", "COPY TO STDOUT"]["met"]
    assert rows["decision warm median < 20 us", "customer_service"]["met"]
    assert not rows["decision cold median < 1 ms", "customer_service"]["met"]
    assert rows["< 50 KB per idle session", "2,000 of 2,000 held"]["met"]
    assert not rows["stall: other session's worst SELECT 1 <= 50 ms", "IN list, masking"]["met"]
    assert rows["memory after the flood <= 150 MB", "3,000 statements, masking"]["met"]
    assert ("all-clear tier >= 1.0 x PgBouncer", "TPC-B simple") not in rows, "not measured: not listed"


def test_the_printed_and_markdown_tables_say_by_how_much_a_target_is_missed(capsys):
    targets.print_targets(REPORT)
    printed = capsys.readouterr().out
    assert "MISSED by 0.40" in printed  # masking TPC-B simple: 0.50 against 0.9
    assert "MISSED by 10.5 ms" in printed
    assert "6 of 11 met" in printed
    text = "\n".join(targets.markdown(REPORT))
    assert "| masking tier >= 0.9 x PgBouncer | -S prepared | 0.95 | met |" in text
    assert "missed by 0.05" in text  # audit strict 0.80 against 0.85
