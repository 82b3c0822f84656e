"""A worker that fails at start is never silent (issue 13): it logs its traceback and exits
non-zero, and ``pgveil serve --workers 2`` reports which worker ended, stops the other one and
exits with that status.  A real process: worker 0 serves the metrics, on a port already taken."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

from conftest import ROOT, free_port


def records(out: str) -> list[dict]:
    """The JSON log records in the processes' shared output (two workers' writes may meet on one line)."""
    found, decoder, at = [], json.JSONDecoder(), out.find("{")
    while at >= 0:
        try:
            record, end = decoder.raw_decode(out, at)
        except ValueError:
            end = at + 1
        else:
            found.append(record)
        at = out.find("{", end)
    return found


def test_a_worker_failing_at_start_is_logged_and_ends_pgveil_with_its_status(pg):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cmd = [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{free_port()}",
               "--upstream", f"postgresql://127.0.0.1:{pg.port}", "--upstream-sslmode", "disable",
               "--log-format", "json", "--workers", "2", "--metrics", f"127.0.0.1:{taken.getsockname()[1]}",
               "--audit-dir", tempfile.mkdtemp(prefix="pgveil-audit-")]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own process group: the workers too are ended below
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            raise AssertionError(f"pgveil went on with a worker missing: {out[-3000:]}") from None
    finally:
        taken.close()
    lines = records(out)
    failed = [r for r in lines if r.get("event") == "worker_failed"]
    assert len(failed) == 1 and failed[0]["worker"] == 0, lines
    assert "Traceback" in failed[0]["exception"] and "already in use" in failed[0]["exception"].lower()
    exited = [r for r in lines if r.get("event") == "worker_exited"]
    assert exited and exited[0]["worker"] == 0 and exited[0]["status"] == 1 and exited[0]["level"] == "error"
    assert proc.returncode == 1, (proc.returncode, out[-2000:])
