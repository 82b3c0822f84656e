"""Where a pgveil worker's CPU goes under pgbench: py-spy on the one worker, and its CPU time
per transaction from /proc.

For each configuration (tier x audit mode) and each pgbench mode, one pgveil with one worker is
started, warmed, then sampled with ``py-spy record`` (non-blocking, active samples only, so the
samples are the worker's CPU time) while pgbench ``-S`` (or TPC-B) runs.  Printed per run: TPS,
the worker's CPU microseconds per transaction (utime + stime from /proc, which is far less
noisy on a shared machine than TPS), and the functions with the most samples, self and
inclusive, as a share of the worker's samples.

    python bench/worker_profile.py [--configs masking:strict,masking:batched,relay:off] [--modes simple,extended,prepared]
                            [--script select|tpcb] [--seconds 8] [--clients 8] [--top 25] [--out DIR]

Needs py-spy (``pip install '.[bench]'``); as root, or with ptrace allowed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from conftest import start_proxy  # noqa: E402
from proxy.pgcluster import Cluster, embedded_bin_dir  # noqa: E402
from run import BENCH_RULES, PASSWORD, USER, pgbench  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def read_stacks(path: Path) -> tuple[Counter, Counter, int]:
    """py-spy's raw output (``frame;frame;... count``): samples per function, self and inclusive."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return own, inclusive, total


def short(frame: str) -> str:
    """``relay (proxy/server.py:123)`` -> ``server.py:relay``; C functions as py-spy names them."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    return f"{Path(file).name}:{name}" if file else name


def profile_one(cluster, port: int, pid: int, mode: str, script: str, seconds: int, clients: int, out: Path,
                native: bool = False, sample: bool = True) -> dict:
    extra = ("-S",) if script == "select" else ()
    pgbench(cluster, port, *extra, "-M", mode, "-c", str(clients), "-j", "2", "-T", "1")  # warm: caches, plans
    out.write_text("")
    spy = None if not sample else subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "250",
                            *(["--native"] if native else ["--nonblocking"]),  # native stacks need a pause
                            "-f", "raw", "-o", str(out), "--pid", str(pid), "-d", str(seconds + 1)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    tps = pgbench(cluster, port, *extra, "-M", mode, "-c", str(clients), "-j", "2", "-T", str(seconds))
    wall = time.perf_counter() - started
    used = cpu_seconds(pid) - cpu
    if spy is not None:
        spy.wait(30)
    return {"tps": tps, "cpu_us_per_tx": used / (tps * wall) * 1e6 if tps else 0.0, "cpu_share": used / wall}


def start_reference(cluster, name: str, directory: Path):
    """PgBouncer (session mode) or the Python floor, in one process, for their CPU per transaction."""
    from run import start_floor, start_pgbouncer
    if name == "floor":
        return start_floor(cluster, 1)
    bouncer = start_pgbouncer(cluster, directory)
    if bouncer is None:
        raise SystemExit("pgbouncer is not available")
    return bouncer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="masking:strict,masking:batched,relay:off",
                        help="tier:audit, comma-separated; also 'floor' (bench/floor.py, one process: the "
                             "Python floor) and 'pgbouncer' (its CPU only, not sampled)")
    parser.add_argument("--modes", default="simple,extended,prepared")
    parser.add_argument("--script", default="select")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="C frames too (py-spy --native)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "profiles"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(embedded_bin_dir())
    cluster.start()
    rules_dir = Path(tempfile.mkdtemp(prefix="pgveil-profile-"))
    try:
        cluster.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'; CREATE DATABASE bench OWNER {USER};")
        subprocess.run([str(cluster.bin_dir / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", USER,
                        "-i", "-q", "-s", str(args.scale), "bench"],
                       env=dict(os.environ, PGPASSWORD=PASSWORD), check=True, capture_output=True)
        for config in args.configs.split(","):
            tier, _, audit = config.partition(":")
            proxy = start_reference(cluster, tier, rules_dir) if tier in ("floor", "pgbouncer") else None
            if proxy is None:
                extra = ["--upstream-sslmode", "disable", "--log-level", "warning", "--workers", "1",
                         "--audit-mode", audit or "strict"]
                if tier != "relay":
                    path = rules_dir / f"{tier}.yaml"
                    path.write_text(BENCH_RULES.format(tier=tier))
                    extra += ["--rules", str(path), "--catalog-dsn", cluster.dsn(database="bench")]
                proxy = start_proxy(cluster.port, *extra)
            try:
                for mode in args.modes.split(","):
                    stacks = out / f"{tier}-{audit}-{args.script}-{mode}.txt"
                    got = profile_one(cluster, proxy.port, proxy.proc.pid, mode, args.script, args.seconds,
                                      args.clients, stacks, args.native, sample=tier != "pgbouncer")
                    own, inclusive, total = read_stacks(stacks)
                    what = tier if tier in ("floor", "pgbouncer") else f"{tier} tier, audit {audit}"
                    print(f"\n== {what}, pgbench {args.script} -M {mode}: {got['tps']:.0f} TPS, "
                          f"worker {got['cpu_us_per_tx']:.0f} us CPU per transaction "
                          f"({got['cpu_share'] * 100:.0f}% of a core), {total} samples", flush=True)
                    print(f"   {'self %':>7s}  function{'':44s}{'incl %':>7s}  function")
                    for (f1, n1), (f2, n2) in zip(own.most_common(args.top), inclusive.most_common(args.top)):
                        print(f"   {n1 / total * 100:7.1f}  {f1[:52]:52s}{n2 / total * 100:7.1f}  {f2[:60]}")
            finally:
                proxy.stop()
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
