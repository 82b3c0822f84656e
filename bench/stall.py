"""The stall table (issue 13): how long one session's costly statement holds the other sessions
of its worker, and the memory a flood of distinct large statements leaves behind.

For each pathological statement (tests/stall_cases.py) and each tier of rules/crm.yaml
(all-clear, masking, blocking), one session sends the statement while another session of the
same worker (pgveil runs one worker here) sends ``SELECT 1`` in a loop, from its own process;
the figure is that session's worst ``SELECT 1`` latency while the statement was in flight
(target: 50 ms).  Then 3,000 distinct 64 KB statements go through a fresh pgveil, and its
worker's resident memory is compared with where it started (target: within 150 MB), with
the decision cache's own byte count from /metrics.

    python bench/stall.py [--flood 3000] [--tiers all-clear,masking,blocking] [--cases literal,statements]

Prints the table and writes bench/results/stall.json (bench/run.py puts it in bench.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import RULES, TIER_PASSWORD, TIER_USERS, free_port, setup_database, start_proxy  # noqa: E402
from stall_cases import TIERS, distinct_statement, pathological  # noqa: E402

STALL_TARGET_MS = 50.0
MEMORY_TARGET_MB = 150.0
PING_USER = "dba_sun"


# ----------------------------------------------------------------------------- the other session
async def _ping(port: int) -> None:
    """Run in a process of its own: SELECT 1 in a loop until stdin closes; one line per answer,
    'sent answered' on the monotonic clock (shared by every process of the machine)."""
    import asyncpg
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=PING_USER, password=TIER_PASSWORD,
                                 database="crm", ssl=False)
    loop = asyncio.get_running_loop()
    closed = loop.run_in_executor(None, sys.stdin.read)
    print("ready", flush=True)
    while not closed.done():
        sent = time.monotonic()
        await conn.fetchval("SELECT 1")
        print(f"{sent:.6f} {time.monotonic():.6f}", flush=True)
        await asyncio.sleep(0.002)
    await conn.close()


class Pinger:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--ping", str(port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> list[tuple[float, float]]:
        out, _ = self.proc.communicate("", timeout=120)
        return [tuple(map(float, line.split())) for line in out.splitlines() if line.strip()]


def worst_during(pings: list, start: float, end: float) -> tuple[float, int]:
    """Worst latency (ms) of the pings in flight at any moment in [start, end], and their number."""
    during = [(a, b) for a, b in pings if b > start and a < end]
    return (max((b - a) * 1000 for a, b in during) if during else float("nan")), len(during)


# ----------------------------------------------------------------------------- the costly session
async def _costly(port: int, user: str, sql: str) -> tuple[str, float, float, float, float]:
    import asyncpg
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=TIER_PASSWORD,
                                 database="crm", ssl=False, timeout=60)
    started, wall_started = time.monotonic(), time.time()
    try:
        await conn.execute(sql)
        outcome = "answered"
    except asyncpg.PostgresError as exc:
        outcome = f"error {exc.sqlstate}"
    ended, wall_ended = time.monotonic(), time.time()
    await conn.close()
    return outcome, started, ended, wall_started, wall_ended


SLOW_EVENT_MS = 5  # the worker logs events that hold its loop longer (PGVEIL_SLOW_EVENT_MS)


def slow_events(log: str, start: float, end: float) -> tuple[float, float]:
    """The worker's longest event between two time.time() stamps, from its slow_event lines:
    (wall ms, its own CPU ms); the difference is time the machine gave to other processes."""
    from datetime import datetime
    worst = (0.0, 0.0)
    for line in log.splitlines():
        if '"slow_event"' not in line:
            continue
        record = json.loads(line)
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        if start <= stamp <= end + 0.5 and record["wall_ms"] > worst[0]:
            worst = (record["wall_ms"], record["cpu_ms"])
    return worst


def measure_stalls(proxy, tiers: list[str], only: list[str] | None = None) -> list[dict]:
    rows = []
    cases = {name: sql for name, sql in pathological().items()
             if not only or any(part.lower() in name.lower() for part in only)}
    for tier in tiers:
        for name, sql in cases.items():
            pinger = Pinger(proxy.port)
            time.sleep(0.3)
            outcome, start, end, wall_start, wall_end = asyncio.run(_costly(proxy.port, TIERS[tier], sql))
            time.sleep(0.1)
            pings = pinger.stop()
            worst, count = worst_during(pings, start, end)
            baseline = max(((b - a) * 1000 for a, b in pings if b < start), default=float("nan"))
            event_wall, event_cpu = slow_events(proxy.log(), wall_start, wall_end)
            row = {"statement": name, "tier": tier, "outcome": outcome, "seconds": round(end - start, 3),
                   "worst_ms": round(worst, 1), "pings": count, "baseline_worst_ms": round(baseline, 1),
                   "worker_event_wall_ms": event_wall, "worker_event_cpu_ms": event_cpu,
                   "target_ms": STALL_TARGET_MS}
            rows.append(row)
            print(f"stall {tier:9s} {name:38s} {outcome:12s} {end - start:7.2f} s  worst SELECT 1 "
                  f"{worst:7.1f} ms over {count} pings; worker's longest event {event_wall} ms "
                  f"({event_cpu} ms CPU)", flush=True)
    return rows


# ----------------------------------------------------------------------------- memory
def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children_rss_kb(pid: int) -> int:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return sum(rss_kb(int(c)) for c in path.read_text().split()) if path.exists() else 0


def cache_metrics(metrics_port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("pgveil_cache_bytes{", "pgveil_cache_entries{", "pgveil_decisions_apart{")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _flood(port: int, user: str, count: int, sessions: int = 4) -> int:
    import asyncpg
    conns = [await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=TIER_PASSWORD,
                                   database="crm", ssl=False) for _ in range(sessions)]

    async def run(k):
        done = 0
        for i in range(k, count, sessions):
            await conns[k].execute(distinct_statement(i))
            done += 1
        return done
    done = sum(await asyncio.gather(*(run(k) for k in range(sessions))))
    for c in conns:
        await c.close()
    return done


def measure_memory(cluster, rules: Path, tier: str, count: int) -> dict:
    metrics_port = free_port()
    proxy = start_proxy(cluster.port, "--upstream-sslmode", "disable", "--rules", str(rules), "--catalog-dsn",
                        cluster.dsn(database="crm"), "--metrics", f"127.0.0.1:{metrics_port}",
                        "--log-level", "warning")
    try:
        asyncio.run(_flood(proxy.port, TIERS[tier], 20, 1))  # the lazily built parts exist before the baseline
        time.sleep(0.5)
        before, children_before = rss_kb(proxy.proc.pid), children_rss_kb(proxy.proc.pid)
        started = time.monotonic()
        done = asyncio.run(_flood(proxy.port, TIERS[tier], count))
        seconds = time.monotonic() - started
        time.sleep(2.5)  # the metrics are copied every 2 s
        after, children_after = rss_kb(proxy.proc.pid), children_rss_kb(proxy.proc.pid)
        caches = cache_metrics(metrics_port)
    finally:
        proxy.stop()
    row = {"tier": tier, "statements": done, "statement_kb": 64, "seconds": round(seconds, 1),
           "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1),
           "growth_mb": round((after - before) / 1024, 1), "target_mb": MEMORY_TARGET_MB,
           "children_rss_before_mb": round(children_before / 1024, 1),
           "children_rss_after_mb": round(children_after / 1024, 1),
           "decision_cache_mb": round(caches.get('pgveil_cache_bytes{cache="decisions"}', 0) / 2 ** 20, 1),
           "decision_cache_entries": int(caches.get('pgveil_cache_entries{cache="decisions"}', 0)),
           "decided_apart": int(caches.get('pgveil_decisions_apart{result="decided"}', 0))}
    print(f"memory {tier}: {done} distinct 64 KB statements in {seconds:.0f} s; worker RSS {row['rss_before_mb']} MB "
          f"-> {row['rss_after_mb']} MB (+{row['growth_mb']} MB, target {MEMORY_TARGET_MB:.0f}); decision cache "
          f"{row['decision_cache_mb']} MB in {row['decision_cache_entries']} entries", flush=True)
    return row


# ----------------------------------------------------------------------------- the whole section
def run(cluster, tiers: list[str], flood: int, flood_tiers: list[str], cases: list[str] | None = None) -> dict:
    """The stall section on a running cluster (bench/run.py calls this)."""
    existing = set(cluster.psql("SELECT rolname FROM pg_roles").split())
    if "crm" not in cluster.psql("SELECT datname FROM pg_database").split():
        setup_database(cluster)
    new = [u for u in TIER_USERS if u not in existing]
    if new:
        cluster.psql("\n".join(f"CREATE ROLE {u} LOGIN PASSWORD '{TIER_PASSWORD}';" for u in new))
    cluster.psql("\n".join(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {u};"
                           for u in TIER_USERS), "crm")
    rules = Path(tempfile.mkdtemp(prefix="pgveil-stall-")) / "crm.yaml"
    rules.write_text(RULES.read_text())
    os.environ["PGVEIL_SLOW_EVENT_MS"] = str(SLOW_EVENT_MS)
    try:
        proxy = start_proxy(cluster.port, "--upstream-sslmode", "disable", "--rules", str(rules), "--catalog-dsn",
                            cluster.dsn(database="crm"), "--log-level", "warning", "--workers", "1")
    finally:
        del os.environ["PGVEIL_SLOW_EVENT_MS"]
    try:
        stalls = measure_stalls(proxy, tiers, cases)
    finally:
        proxy.stop()
    memory = [measure_memory(cluster, rules, tier, flood) for tier in flood_tiers] if flood else []
    return {"stalls": stalls, "memory": memory, "workers": 1}


def print_table(section: dict) -> None:
    print("\nstall: the other session's worst SELECT 1 latency while one statement runs (one worker)")
    print("(worker event: the worker's longest event meanwhile, wall and its own CPU, from PGVEIL_SLOW_EVENT_MS "
          f"logging; under {SLOW_EVENT_MS} ms when none was logged)")
    print(f"{'statement':38s}{'tier':11s}{'outcome':13s}{'took s':>8s}{'worst ms':>10s}{'target':>8s}"
          f"{'idle worst':>12s}{'worker event ms':>17s}")
    for r in section["stalls"]:
        flag = "" if r["worst_ms"] <= r["target_ms"] else "  over"
        event = (f"{r['worker_event_wall_ms']:.0f} ({r['worker_event_cpu_ms']:.0f} CPU)"
                 if r.get("worker_event_wall_ms") else f"< {SLOW_EVENT_MS}")
        print(f"{r['statement']:38s}{r['tier']:11s}{r['outcome']:13s}{r['seconds']:8.2f}{r['worst_ms']:10.1f}"
              f"{r['target_ms']:8.0f}{r['baseline_worst_ms']:12.1f}{event:>17s}{flag}")
    for m in section["memory"]:
        flag = "" if m["growth_mb"] <= m["target_mb"] else "  over"
        print(f"memory after {m['statements']:,} distinct 64 KB statements ({m['tier']} tier): worker RSS "
              f"{m['rss_before_mb']} -> {m['rss_after_mb']} MB, +{m['growth_mb']} MB (target {m['target_mb']:.0f} MB)"
              f"{flag}; decision cache {m['decision_cache_mb']} MB; analysing child "
              f"{m['children_rss_after_mb']} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ping", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tiers", default=",".join(TIERS))
    parser.add_argument("--flood", type=int, default=3000,
                        help="distinct 64 KB statements for the memory figure (0: no memory figure)")
    parser.add_argument("--cases", default="", help="only the statements whose names contain one of these "
                                                    "comma-separated words (default: all)")
    parser.add_argument("--flood-tiers", default="masking")
    args = parser.parse_args()
    if args.ping:
        asyncio.run(_ping(args.ping))
        return 0
    from proxy.pgcluster import Cluster, embedded_bin_dir
    cluster = Cluster(embedded_bin_dir())
    cluster.start()
    try:
        section = run(cluster, args.tiers.split(","), args.flood, args.flood_tiers.split(","),
                      [c for c in args.cases.split(",") if c])
    finally:
        cluster.destroy()
    print_table(section)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "stall.json").write_text(json.dumps(section, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
