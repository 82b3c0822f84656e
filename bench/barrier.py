"""What the row-filter barrier costs: the SQL pgveil sends for the sales tier (rules/crm.yaml,
row filter ``grade = 'ordinary'``), run directly against PostgreSQL, before and after the fence.

- ``plain``: the client's statement on the table itself (no pgveil), for reference;
- ``flattened``: the masking subquery as pgveil wrote it before the barrier (6d4a080): the
  planner pulls it up, and may run the client's conditions before the row filter;
- ``fenced``: the masking subquery behind ``OFFSET 0``, with pgveil's leakproof copy of
  ``id = $1`` inside it (proxy/barrier.py).

Each statement is prepared once and executed with random ids; rounds alternate the forms and the
median microseconds per execution is reported, with the top of each plan (EXPLAIN must show
an index scan for the point lookup).

    python bench/barrier.py [--customers 50000] [--executions 2000] [--rounds 5]

Prints a table and writes bench/results/barrier.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from proxy import sampledata  # noqa: E402
from proxy.catalog import load_catalog  # noqa: E402
from proxy.pgcluster import Cluster, embedded_bin_dir  # noqa: E402
from proxy.policy import Context, decide  # noqa: E402
from proxy.rules import load_rules  # noqa: E402

STATEMENTS = {
    "point lookup on customers.id": "SELECT name, phone FROM customers WHERE id = $1",
    "join orders -> customers": "SELECT o.quantity, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
                                "WHERE o.id = $1",
    "range on customers.id": "SELECT count(*) FROM customers WHERE id BETWEEN $1 AND $1 + 100",
}


def flattened(sql: str) -> str:
    """The pre-barrier form of a fenced statement: no copies, no fence."""
    return re.sub(r"(WHERE \(grade = 'ordinary'\))( AND .*?)? OFFSET 0\)", r"\1)", sql)


def forms(dsn: str, tier: str = "sales") -> dict:
    import asyncio
    rules = load_rules((ROOT / "rules" / "crm.yaml").read_text(), "crm.yaml")
    async def read():
        import asyncpg
        conn = await asyncpg.connect(dsn)
        try:
            return await load_catalog(conn)
        finally:
            await conn.close()
    catalog = asyncio.run(read())
    out = {}
    for name, sql in STATEMENTS.items():
        fenced = decide(sql, Context(rules.tier(tier), rules, catalog)).sql
        assert "OFFSET 0" in fenced, fenced
        out[name] = {"plain": sql, "flattened": flattened(fenced), "fenced": fenced}
    return out


def plan_top(conn, sql: str, value: int) -> str:
    rows = conn.execute("EXPLAIN " + sql.replace("$1", str(value))).fetchall()
    nodes = [r[0].strip().lstrip("-> ").split("  ")[0] for r in rows if "Scan" in r[0] or "Join" in r[0]
             or "Loop" in r[0]]
    return "; ".join(nodes)


def run(conn, sql: str, ids: list[int]) -> float:
    """Microseconds per execution of the prepared statement."""
    text = sql.replace("$1", "%(v)s")
    conn.execute(text, {"v": ids[0]}, prepare=True).fetchall()
    start = time.perf_counter()
    for value in ids:
        conn.execute(text, {"v": value}, prepare=True).fetchall()
    return (time.perf_counter() - start) / len(ids) * 1e6


def measure(dsn: str, customers: int, executions: int, rounds: int) -> list[dict]:
    statements = forms(dsn)
    rng = random.Random(7)
    results = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, variants in statements.items():
            times = {form: [] for form in variants}
            for r in range(rounds):
                ids = [rng.randint(1, customers) for _ in range(executions)]
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for form in order:
                    times[form].append(run(conn, variants[form], ids))
            for form, sql in variants.items():
                results.append({"statement": name, "form": form, "us_median": round(statistics.median(times[form]), 1),
                                "plan": plan_top(conn, sql, 7)})
    return results


def print_table(results: list[dict]) -> None:
    print(f"{'statement':32s}{'form':11s}{'us/exec':>9s}{'x flat':>8s}  plan")
    flat = {r["statement"]: r["us_median"] for r in results if r["form"] == "flattened"}
    for r in results:
        print(f"{r['statement']:32s}{r['form']:11s}{r['us_median']:9.1f}{r['us_median'] / flat[r['statement']]:8.2f}"
              f"  {r['plan']}")


def load(cluster: Cluster, customers: int) -> str:
    cluster.psql("CREATE DATABASE barrier")
    cluster.psql(sampledata.crm_sql(customers, customers * 3) + "\nANALYZE;", "barrier")
    return cluster.dsn(database="barrier")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cluster = Cluster(embedded_bin_dir())
    cluster.start()
    try:
        dsn = load(cluster, args.customers)
        results = measure(dsn, args.customers, args.executions, args.rounds)
    finally:
        cluster.destroy()
    print_table(results)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "barrier.json").write_text(json.dumps({"customers": args.customers, "executions": args.executions,
                                                  "rounds": args.rounds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
