"""Decision time of the policy engine, in-process: cold (first sight of a statement, the
per-relation masking templates already built) and warm (the decision cache hit).

    python bench/decision.py [--rounds 200]

Prints median and p99 per statement and writes bench/results/decision.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from policy_fixture import fixture_catalog, fixture_rules  # noqa: E402
from proxy.policy import Context, DecisionCache  # noqa: E402

TYPICAL = [
    "SELECT id, name, phone FROM customers WHERE id = $1",
    "SELECT * FROM customers WHERE phone = $1 ORDER BY created_at DESC LIMIT 20",
    "SELECT c.name, o.quantity, o.delivery_date FROM orders o JOIN customers c ON c.id = o.customer_id "
    "WHERE o.delivery_date >= $1 ORDER BY o.delivery_date",
    "SELECT count(*) FROM customers WHERE grade = 'ordinary'",
    "UPDATE customers SET phone = $1 WHERE id = $2",
    "INSERT INTO orders (id, customer_id, product_id, quantity, delivery_date) VALUES ($1, $2, $3, $4, $5)",
    "SELECT p.name, sum(o.quantity) FROM orders o JOIN products p ON p.id = o.product_id GROUP BY p.name",
    "BEGIN",
]


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(rounds: int = 200, tier: str = "customer_service") -> dict:
    """Cold and warm decision time per typical statement, in microseconds."""
    rules, catalog = fixture_rules(), fixture_catalog()
    ctx = Context(rules.tier(tier), rules, catalog)
    warmup = DecisionCache()
    for sql in TYPICAL:  # build the masking templates and warm the interpreter
        warmup.decide(sql, ctx)
    results = []
    for sql in TYPICAL:
        cold, warm = [], []
        for i in range(rounds):
            cache = DecisionCache()
            cache.templates = warmup.templates
            text = sql + " " * (i % 3)  # a new text each time defeats nothing but the cache
            t0 = time.perf_counter()
            decision = cache.decide(text, ctx)
            t1 = time.perf_counter()
            cache.decide(text, ctx)
            t2 = time.perf_counter()
            cold.append((t1 - t0) * 1e6)
            warm.append((t2 - t1) * 1e6)
        results.append({"sql": sql, "verdict": decision.verdict,
                        "cold_median_us": round(statistics.median(cold), 1), "cold_p99_us": round(percentile(cold, .99), 1),
                        "warm_median_us": round(statistics.median(warm), 2), "warm_p99_us": round(percentile(warm, .99), 2)})
    return {"tier": tier, "rounds": rounds, "results": results,
            "cold_median_us": statistics.median([r["cold_median_us"] for r in results]),
            "warm_median_us": statistics.median([r["warm_median_us"] for r in results])}


def print_table(measured: dict) -> None:
    print(f"{'statement':70s} {'verdict':8s} {'cold med':>9s} {'cold p99':>9s} {'warm med':>9s} {'warm p99':>9s}  (us)")
    for r in measured["results"]:
        print(f"{r['sql'][:70]:70s} {r['verdict']:8s} {r['cold_median_us']:9.0f} {r['cold_p99_us']:9.0f} "
              f"{r['warm_median_us']:9.2f} {r['warm_p99_us']:9.2f}")
    print(f"median over the typical set: cold {measured['cold_median_us']:.0f} us, "
          f"warm {measured['warm_median_us']:.2f} us")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--tier", default="customer_service")
    args = parser.parse_args()
    measured = measure(args.rounds, args.tier)
    print_table(measured)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "decision.json").write_text(json.dumps(measured, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
