"""pgbench through the proxy: initialisation, then -S and the TPC-B-like script in every mode."""

import os
import re
import subprocess

import pytest

from conftest import APP_PASSWORD, APP_USER


def pgbench(pg, proxy, *args, timeout=120):
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="disable")
    cmd = [str(pg.bin_dir / "pgbench"), "-h", "127.0.0.1", "-p", str(proxy.port), "-U", APP_USER, *args, "bench"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def bench_db(pg, proxy):
    pg.psql(f"CREATE DATABASE bench OWNER {APP_USER}")
    result = pgbench(pg, proxy, "-i", "-s", "1", "-q")
    assert result.returncode == 0, result.stderr
    return "bench"


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("script", ["-S", "-b tpcb-like"])
def test_pgbench_all_transactions_succeed(pg, proxy, bench_db, mode, script):
    result = pgbench(pg, proxy, *script.split(), "-M", mode, "-c", "8", "-j", "2", "-T", "2")
    assert result.returncode == 0, result.stderr + result.stdout
    processed = int(re.search(r"number of transactions actually processed: (\d+)", result.stdout).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    assert processed > 0
    assert failed is None or int(failed.group(1)) == 0
