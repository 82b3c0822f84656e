"""pgbench through pgveil against a direct connection, in the same run.

Every configuration runs in each round, in alternating order, against one PostgreSQL started
here; the result is the median TPS per configuration and its ratio to direct (machines are
shared and noisy: ratios are the result, not absolute numbers).

    python bench/run.py [--seconds 10] [--rounds 3] [--modes simple,extended,prepared]

Prints a table and writes bench/results/pgbench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_port, start_proxy  # noqa: E402
from proxy.pgcluster import Cluster, embedded_bin_dir  # noqa: E402

USER, PASSWORD = "bench", "bench-secret"
# pgbench's accounts get a protected column, so the masking tier rewrites every statement on them.
BENCH_RULES = """
version: 1
classes: {{secret: {{mask: {{fn: partial, keep_first: 2, keep_last: 2}}}}}}
columns: {{public.pgbench_accounts.filler: secret}}
tiers:
  all-clear: {{see: {{"*": clear}}, statements: [read, write, ddl, copy, session, admin]}}
  masking: {{see: {{secret: mask}}, statements: [read, write, session]}}
identities: [{{user: bench, tier: {tier}}}]
"""


def pgbench(cluster: Cluster, port: int, *args: str) -> float:
    env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable")
    cmd = [str(cluster.bin_dir / "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, *args, "bench"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed: {result.stderr}{result.stdout}")
    match = re.search(r"tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing)\)",
                      result.stdout)
    return float(match.group(1))


class Bouncer:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def start_pgbouncer(cluster: Cluster, directory: Path):
    """PgBouncer in session mode (Debian's package, installed when missing and we may)."""
    from proxy.pgcluster import ensure_debian_package
    binary = ensure_debian_package("pgbouncer", "pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        print("pgbouncer is not available: its rows are left out", flush=True)
        return None
    secret = cluster.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'").strip()
    (directory / "userlist.txt").write_text(f'"{USER}" "{secret}"\n')
    port = free_port()
    (directory / "pgbouncer.ini").write_text(f"""[databases]
bench = host=127.0.0.1 port={cluster.port} dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
auth_type = scram-sha-256
auth_file = {directory / "userlist.txt"}
pool_mode = session
max_client_conn = 200
default_pool_size = 40
logfile = {directory / "pgbouncer.log"}
pidfile = {directory / "pgbouncer.pid"}
""")
    import pwd
    user = {}
    if os.geteuid() == 0:  # PgBouncer will not run as root
        try:
            user = {"user": pwd.getpwnam("postgres").pw_uid}
        except KeyError:
            user = {"user": pwd.getpwnam("pgveil-pg").pw_uid}
        subprocess.run(["chmod", "-R", "a+rwX", str(directory)], check=True)
    proc = subprocess.Popen([binary, str(directory / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **user)
    from conftest import wait_port
    wait_port(port, proc=proc)
    return Bouncer(proc, port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--modes", default="simple,extended,prepared")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--configs", default="pgbouncer,relay,audit,all-clear,masking",
                        help="what runs beside direct: pgbouncer, relay, audit, all-clear, masking")
    args = parser.parse_args()

    cluster = Cluster(embedded_bin_dir(), settings={"max_connections": "200"})
    cluster.start()
    proxies = {}
    try:
        cluster.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'; CREATE DATABASE bench OWNER {USER};")
        print(f"initialising pgbench scale {args.scale} ...", flush=True)
        subprocess.run([str(cluster.bin_dir / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", USER,
                        "-i", "-q", "-s", str(args.scale), "bench"],
                       env=dict(os.environ, PGPASSWORD=PASSWORD), check=True, capture_output=True)
        rules_dir = Path(tempfile.mkdtemp(prefix="pgveil-bench-"))
        catalog = cluster.dsn(database="bench")
        common = ("--upstream-sslmode", "disable", "--log-level", "warning", "--workers", str(args.workers))
        wanted = args.configs.split(",")
        if "relay" in wanted:  # auditing is on by default, in strict mode
            proxies["pgveil relay, audit strict"] = start_proxy(cluster.port, *common)
        if "audit" in wanted:
            proxies["pgveil relay, audit batched"] = start_proxy(cluster.port, *common, "--audit-mode", "batched")
            proxies["pgveil relay, audit off"] = start_proxy(cluster.port, *common, "--audit-mode", "off")
        for tier in ("all-clear", "masking"):
            if tier in wanted:
                path = rules_dir / f"{tier}.yaml"
                path.write_text(BENCH_RULES.format(tier=tier))
                proxies[f"pgveil {tier} tier"] = start_proxy(cluster.port, *common, "--rules", str(path),
                                                             "--catalog-dsn", catalog)
        configs = {"direct": cluster.port, **{name: p.port for name, p in proxies.items()}}
        if "pgbouncer" in wanted:
            bouncer = start_pgbouncer(cluster, rules_dir)
            if bouncer is not None:
                proxies["pgbouncer"] = bouncer
                configs["pgbouncer session mode"] = bouncer.port
        modes = args.modes.split(",")
        results: dict[str, dict[str, list[float]]] = {m: {c: [] for c in configs} for m in modes}
        for round_no in range(args.rounds):
            for mode in modes:
                order = list(configs) if round_no % 2 == 0 else list(reversed(configs))
                for name in order:
                    tps = pgbench(cluster, configs[name], "-S", "-M", mode, "-c", str(args.clients), "-j", "2",
                                  "-T", str(args.seconds))
                    results[mode][name].append(tps)
                    print(f"round {round_no + 1} {mode:9s} {name:28s} {tps:10.0f} tps", flush=True)
    finally:
        for p in proxies.values():
            p.stop()
        cluster.destroy()

    table = []
    for mode in modes:
        direct = statistics.median(results[mode]["direct"])
        for name, values in results[mode].items():
            median = statistics.median(values)
            table.append({"mode": mode, "config": name, "tps_median": round(median),
                          "ratio_to_direct": round(median / direct, 3), "runs": [round(v) for v in values]})
    print()
    print(f"pgbench -S -c {args.clients} -j 2, scale {args.scale}, {args.seconds}s x {args.rounds} rounds, "
          f"pgveil with {args.workers} workers "
          f"({platform.node()}, {os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d})")
    print(f"{'mode':10s}{'configuration':30s}{'median TPS':>12s}{'x direct':>10s}")
    for row in table:
        print(f"{row['mode']:10s}{row['config']:30s}{row['tps_median']:12d}{row['ratio_to_direct']:10.2f}")
    for mode in modes:
        off = statistics.median(results[mode].get("pgveil relay, audit off", [0])) or None
        for variant in ("strict", "batched"):
            values = results[mode].get(f"pgveil relay, audit {variant}")
            if off and values:
                print(f"audit {variant} / audit off ({mode}): {statistics.median(values) / off:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "pgbench.json").write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(), "cores": os.cpu_count(), "seconds": args.seconds,
        "rounds": args.rounds, "scale": args.scale, "clients": args.clients, "results": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
