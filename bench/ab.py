"""A/B: pgveil from two source trees against one PostgreSQL, pgbench -S alternating.

    python bench/ab.py OLD_TREE [NEW_TREE]     (ROUNDS=2 SECS=5 by default)

For "is this change slower": e.g. ``git worktree add /tmp/old <commit>`` and ``python bench/ab.py
/tmp/old``.  Masking tier strict and batched, relay with audit off; new / old per mode.
"""
import os, subprocess, sys, tempfile, statistics
from pathlib import Path
HERE = Path(__file__).resolve().parent.parent
OLD = Path(sys.argv[1]).resolve()
NEW = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else HERE
sys.path.insert(0, str(HERE)); sys.path.insert(0, str(HERE / "bench")); sys.path.insert(0, str(HERE / "tests"))
from run import pgbench, BENCH_RULES, USER, PASSWORD  # noqa
from conftest import start_proxy  # noqa
from proxy.pgcluster import Cluster, embedded_bin_dir  # noqa


def start(tree, upstream, *args):
    return start_proxy(upstream, "--upstream-sslmode", "disable", "--log-level", "warning", "--workers", "2",
                       *args, tree=tree)


cluster = Cluster(embedded_bin_dir(), settings={"max_connections": "300"})
cluster.start()
procs = []
try:
    cluster.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'; CREATE DATABASE bench OWNER {USER};")
    subprocess.run([str(cluster.bin_dir / "pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", USER,
                    "-i", "-q", "-s", "10", "bench"], env=dict(os.environ, PGPASSWORD=PASSWORD), check=True,
                   capture_output=True)
    rules = Path(tempfile.mkdtemp()) / "masking.yaml"
    rules.write_text(BENCH_RULES.format(tier="masking"))
    cat = cluster.dsn(database="bench")
    configs = {}
    for name, tree in (("old", OLD), ("new", NEW)):
        for label, args in (("masking strict", ("--rules", str(rules), "--catalog-dsn", cat)),
                            ("masking batched", ("--rules", str(rules), "--catalog-dsn", cat, "--audit-mode", "batched")),
                            ("relay off", ("--audit-mode", "off",))):
            proxy = start(tree, cluster.port, *args)
            procs.append(proxy)
            configs[f"{label} {name}"] = proxy.port
    results = {}
    for mode in ("simple", "extended", "prepared"):
        for rnd in range(int(os.environ.get("ROUNDS", "2"))):
            order = list(configs) if rnd % 2 == 0 else list(reversed(configs))
            for key in order:
                tps = pgbench(cluster, configs[key], "-S", "-M", mode, "-c", "16", "-j", "2", "-T", os.environ.get("SECS", "5"))
                results.setdefault((mode, key), []).append(tps)
    for (mode, key), v in sorted(results.items()):
        print(f"{mode:9s} {key:24s} {statistics.median(v):8.0f}  {['%.0f' % x for x in v]}")
    for mode in ("simple", "extended", "prepared"):
        for label in ("masking strict", "masking batched", "relay off"):
            o = statistics.median(results[(mode, f'{label} old')]); n = statistics.median(results[(mode, f'{label} new')])
            print(f"{mode:9s} {label:16s} new/old = {n / o:.2f}")
finally:
    for proxy in procs:
        proxy.stop()
    cluster.stop()
