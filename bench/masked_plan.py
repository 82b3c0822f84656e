"""What the masking subquery costs PostgreSQL: pgbench ``-S``'s statement as the masking tier of
``make bench`` sends it (pgbench_accounts.filler protected), run directly against PostgreSQL
beside the plain statement.

- ``plain``: ``SELECT abalance FROM pgbench_accounts WHERE aid = :aid``, no pgveil;
- ``masked``: the text pgveil sends for it (proxy/policy.py ``decide``, masking tier).

Each form runs as a pgbench ``-f`` script (``-M simple`` parses and plans every execution,
``-M prepared`` once), alternating over rounds; the result is the median TPS per form and its
ratio to plain, with the plan of each form.  The machines are shared and noisy: compare the
ratios of one run.

    python bench/masked_plan.py [--seconds 3] [--rounds 3] [--clients 4] [--extra 'name=SQL with :aid']
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.catalog import load_catalog  # noqa: E402
from proxy.pgcluster import Cluster, embedded_bin_dir  # noqa: E402
from proxy.policy import Context, decide  # noqa: E402
from proxy.rules import load_rules  # noqa: E402

RULES = """
version: 1
classes: {secret: {mask: {fn: partial, keep_first: 2, keep_last: 2}}}
columns: {public.pgbench_accounts.filler: secret}
tiers:
  masking: {see: {secret: mask}, statements: [read, write, session]}
identities: [{user: bench, tier: masking}]
"""
PLAIN = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"


def masked_text(dsn: str, sql: str = PLAIN) -> str:
    """The statement as the masking tier sends it (``$1`` where pgbench puts ``:aid``)."""
    async def read():
        import asyncpg
        conn = await asyncpg.connect(dsn)
        try:
            return await load_catalog(conn)
        finally:
            await conn.close()
    rules = load_rules(RULES, "bench.yaml")
    decision = decide(sql, Context(rules.tier("masking"), rules, asyncio.run(read())))
    assert decision.sql != sql, decision
    return decision.sql


def pgbench_tps(cluster: Cluster, script: Path, mode: str, seconds: int, clients: int) -> float:
    cmd = [str(cluster.bin_dir / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-n", "-f", str(script),
           "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "bench"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PGSSLMODE="disable", PGPASSWORD=cluster.password))
    if out.returncode != 0:
        raise RuntimeError(out.stderr + out.stdout)
    return float(re.search(r"tps = ([\d.]+) \(without initial", out.stdout).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--modes", default="simple,prepared")
    parser.add_argument("--extra", action="append", default=[], help="name=SQL: another form to compare")
    args = parser.parse_args()
    cluster = Cluster(embedded_bin_dir())
    cluster.start()
    work = Path(tempfile.mkdtemp(prefix="pgveil-masked-plan-"))
    try:
        cluster.psql("CREATE DATABASE bench")
        subprocess.run([str(cluster.bin_dir / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-i", "-q",
                        "-s", str(args.scale), "bench"], check=True, capture_output=True,
                       env=dict(os.environ, PGPASSWORD=cluster.password))
        forms = {"plain": PLAIN, "masked": masked_text(cluster.dsn(database="bench"))}
        for extra in args.extra:
            name, _, sql = extra.partition("=")
            forms[name] = sql
        scripts = {}
        for name, sql in forms.items():
            scripts[name] = work / f"{name}.sql"
            scripts[name].write_text(f"\\set aid random(1, {100000 * args.scale})\n{sql.replace('$1', ':aid')};\n")
            print(f"{name}: {sql}\n  plan: " + " | ".join(
                line.strip() for line in cluster.psql(f"EXPLAIN (COSTS OFF) {sql.replace('$1', '7')}",
                                                      "bench").splitlines()), flush=True)
        results: dict[tuple, list[float]] = {}
        for r in range(args.rounds):
            for mode in args.modes.split(","):
                order = list(forms) if r % 2 == 0 else list(reversed(forms))
                for name in order:
                    results.setdefault((mode, name), []).append(
                        pgbench_tps(cluster, scripts[name], mode, args.seconds, args.clients))
        print(f"\n{'mode':10s}{'form':12s}{'median TPS':>12s}{'x plain':>9s}   runs")
        for (mode, name), runs in results.items():
            plain = statistics.median(results[(mode, "plain")])
            print(f"{mode:10s}{name:12s}{statistics.median(runs):12.0f}{statistics.median(runs) / plain:9.2f}   "
                  f"{[round(x) for x in runs]}")
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
