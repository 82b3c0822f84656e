"""Settings from flags and config file; the command line; workers sharing a port."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from conftest import ROOT, start_proxy
from proxy.config import ConfigError, build_settings, load_config_file


def test_config_file_keys_and_flags_win(tmp_path):
    path = tmp_path / "pgveil.yaml"
    path.write_text("listen: 127.0.0.1:7000\nupstream-sslmode: require\nworkers: 3\n")
    settings = build_settings(load_config_file(str(path)), {"listen": "127.0.0.1:7001", "workers": None})
    assert settings.listen_address == ("127.0.0.1", 7001)
    assert settings.upstream_sslmode == "require" and settings.workers == 3


def test_unknown_key_names_file_and_line(tmp_path):
    path = tmp_path / "pgveil.yaml"
    path.write_text("listen: 127.0.0.1:7000\n\nupstreem: postgresql://x\n")
    with pytest.raises(ConfigError, match=r"pgveil.yaml:3: unknown setting 'upstreem'"):
        load_config_file(str(path))


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "pgveil.yaml"
    path.write_text("listen: [\n")
    with pytest.raises(ConfigError, match=r"pgveil.yaml:2: invalid YAML"):
        load_config_file(str(path))


@pytest.mark.parametrize("flags, words", [
    ({"listen": "nonsense"}, "listen: expected HOST:PORT"),
    ({"upstream": "mysql://x:1"}, "upstream: expected postgresql://"),
    ({"upstream_sslmode": "verify-full"}, "needs upstream_ca"),
    ({"tls_cert": "/nonexistent.crt", "tls_key": "/nonexistent.key"}, "no such file"),
    ({"tls_cert": "x"}, "go together"),
    ({"workers": 0}, "positive integer"),
])
def test_bad_settings_are_clear(flags, words):
    with pytest.raises(ConfigError, match=words):
        build_settings({}, flags)


def test_cli_reports_bad_config_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "proxy", "serve", "--listen", "bad"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2 and "listen: expected HOST:PORT" in result.stderr


def test_console_script_version():
    pgveil = Path(sys.executable).parent / "pgveil"
    result = subprocess.run([str(pgveil), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("pgveil ")


def children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_workers_share_the_port_and_cancel_across_them(pg):
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--workers", "2")
    try:
        # the first worker may listen before the parent has forked the second (a busy 2-core machine)
        deadline = time.monotonic() + 10
        while len(children_of(proxy.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(children_of(proxy.proc.pid)) == 2
        # many connections: with SO_REUSEPORT both workers take some; cancels reach any worker
        for _ in range(6):
            with psycopg.connect(proxy.dsn()) as conn:
                threading.Timer(0.2, conn.cancel_safe).start()
                started = time.monotonic()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute("SELECT pg_sleep(20)")
                assert time.monotonic() - started < 10
    finally:
        proxy.stop()
    assert proxy.proc.returncode == 0  # SIGTERM reached the workers and they ended cleanly
