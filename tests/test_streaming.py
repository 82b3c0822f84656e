"""Results stream through with bounded memory: pgveil reads from the database only as fast as
the client drains."""

import threading
import time

import psycopg

from conftest import start_proxy


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_large_result_to_a_slow_client_keeps_proxy_memory_bounded(pg):
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable")
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(proxy.proc.pid))
            time.sleep(0.05)

    try:
        baseline = rss_bytes(proxy.proc.pid)
        sampler = threading.Thread(target=sample)
        sampler.start()
        total = 0
        with psycopg.connect(proxy.dsn()) as conn:
            # 400 MB of COPY data: far more than the proxy may hold
            sql = "COPY (SELECT repeat('x', 4000) FROM generate_series(1, 100000)) TO STDOUT"
            with conn.cursor().copy(sql) as copy:
                for chunk in copy:
                    total += len(chunk)
                    if total < 40_000_000:
                        time.sleep(0.0005)  # a slow reader for the first part
        stop.set()
        sampler.join()
        assert total > 400_000_000
        assert peak[0] - baseline < 64 * 1024 * 1024, f"proxy grew by {(peak[0] - baseline) >> 20} MB"
    finally:
        stop.set()
        proxy.stop()
