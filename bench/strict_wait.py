"""Strict auditing's wait alone: the audit writer, its fdatasync helper and the journal, without
a proxy or a database.  N closed-loop "sessions" in one event loop each submit a record that
waits for the disk, wait for its callback, and submit the next; printed: waits per second, the
wait's median and 90th/99th percentiles, fdatasyncs per wait, and the helper's CPU per wait.

    python bench/strict_wait.py [--clients 8] [--seconds 3] [--rounds 3] [--trees OLD,NEW,NEW+prealloc]
                                [--preallocate]

With ``--trees``, each round runs every tree in turn (a child process per run, the tree's own
``proxy`` package), so a before/after comparison shares the machine's noise; ``TREE+prealloc``
runs that tree with ``--audit-preallocate``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def closed_loop(clients: int, seconds: float, preallocate: bool) -> dict:
    from proxy.audit.writer import AuditWriter

    options = {"preallocate": True} if preallocate else {}
    writer = AuditWriter(tempfile.mkdtemp(prefix="pgveil-wait-"), "strict", **options)
    writer.start()
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    stop = loop.time() + seconds

    async def session(n: int) -> None:
        record = {"type": "statement", "session": n, "sql": "SELECT abalance FROM pgbench_accounts WHERE aid = ?",
                  "pad": "x" * 400}
        while loop.time() < stop:
            future = loop.create_future()
            started = time.perf_counter()
            writer.submit(dict(record), lambda error, f=future: f.done() or f.set_result(error))
            if await future is not None:
                raise RuntimeError("the journal failed")
            waits.append(time.perf_counter() - started)

    await asyncio.sleep(0.3)  # the helper is up
    helper = writer._syncer.pid if writer._syncer else None
    helper_cpu = cpu_seconds(helper) if helper else 0.0
    syncs = writer.fsyncs
    began = time.perf_counter()
    await asyncio.gather(*(session(n) for n in range(clients)))
    wall = time.perf_counter() - began
    helper_cpu = cpu_seconds(helper) - helper_cpu if helper else 0.0
    syncs = writer.fsyncs - syncs
    await writer.close()
    waits.sort()
    q = lambda p: waits[int(p * (len(waits) - 1))] * 1e6  # noqa: E731
    return {"per_s": len(waits) / wall, "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1),
            "syncs_per_wait": syncs / len(waits), "helper_us": helper_cpu / len(waits) * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trees", help="comma-separated source trees (TREE+prealloc), run in turn each round")
    parser.add_argument("--preallocate", action="store_true", help="--audit-preallocate (trees that have it)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one run, JSON out
    args = parser.parse_args()
    if args.one or not args.trees:
        result = asyncio.run(closed_loop(args.clients, args.seconds, args.preallocate))
        print(json.dumps(result) if args.one else result)
        return 0
    results: dict[str, list[dict]] = {}
    for round_ in range(args.rounds):
        trees = args.trees.split(",")
        for tree in trees if round_ % 2 == 0 else reversed(trees):
            path, _, option = tree.partition("+")
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", "--clients",
                                  str(args.clients), "--seconds", str(args.seconds)]
                                 + (["--preallocate"] if option == "prealloc" else []),
                                 cwd=path, env=dict(os.environ, PYTHONPATH=str(Path(path).resolve())),
                                 capture_output=True, text=True, check=True)
            results.setdefault(tree, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    for tree, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{tree:28s} {med['per_s']:7.0f} waits/s  p50 {med['p50']:6.0f} us  p90 {med['p90']:6.0f}  "
              f"p99 {med['p99']:6.0f}  max {max(r['max'] for r in runs) / 1000:5.0f} ms  syncs/wait {med['syncs_per_wait']:.2f}  helper {med['helper_us']:4.0f} us/wait  "
              f"{[round(r['per_s']) for r in runs]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
