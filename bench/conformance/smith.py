"""Random SQL in ``make conformance``: sqlsmith with one seed, direct and through pgveil.

bench/sqlsmith.py does the work: a cluster of its own with the sample CRM, pgveil in front of
it with rules/crm.yaml and strict auditing, and sqlsmith (Debian's package) run with the same
seed straight to PostgreSQL, through pgveil as the all-clear tier (``dba``), and straight to
PostgreSQL once more to measure what differs by itself (TABLESAMPLE, random(), timeouts).

Its row in the table counts the queries each way: those answered without an error ("passed")
and those answered with one ("failed", the error histogram's total).  A run that stalled or
lost its session says so in its note.  "Passes only direct" lists every entry (SQLSTATE and
first line) of the error histogram whose count differs between direct and pgveil, with the
difference between the two direct runs beside it: the issue asks for the same histogram.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import sqlsmith as smith  # noqa: E402  (bench/sqlsmith.py)


class SqlsmithCheck:
    name = "sqlsmith"

    def __init__(self, queries: int, seed: int) -> None:
        self.queries = queries
        self.seed = seed
        self.version = ""

    def prepare(self) -> None:
        binary = smith.sqlsmith_binary()
        package = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "sqlsmith"], capture_output=True,
                                 text=True)
        self.version = (package.stdout.strip() or Path(binary).name) + \
            f" (seed {self.seed}, {self.queries} queries, sample CRM, tier dba)"

    def row(self, deadline: float) -> dict:
        """Run direct, through pgveil (dba) and direct again; the table's row for them."""
        cluster, proxy = smith.start(audit_mode="strict")
        runs = {}
        try:
            for name, user in (("direct", None), ("pgveil", "dba_sun"), ("direct again", None)):
                left = deadline - time.monotonic()
                if left < 10:
                    break
                print(f"running sqlsmith {name} ...", flush=True)
                runs[name] = smith.run_sqlsmith(cluster, proxy, name, user, self.seed, self.queries, left)
                print(f"  {self.summary(runs[name])}", flush=True)
        finally:
            proxy.stop()
            cluster.destroy()
        direct, veiled = runs.get("direct"), runs.get("pgveil")
        if direct is None or veiled is None:
            return {"suite": self.name, "version": self.version, "direct": self.summary(direct),
                    "pgveil": self.summary(veiled), "only_direct": [("(run)", "stopped at the run's time limit")]}
        again = runs.get("direct again", direct)
        result = smith.compare(direct, again, veiled)
        only = [(key, f"direct {x}, pgveil {y}") for key, (x, y) in result["differences"].items()]
        return {"suite": self.name, "version": self.version, "direct": self.summary(direct),
                "pgveil": self.summary(veiled), "only_direct": only, "only_pgveil": [],
                "sqlsmith": {"noise": result["noise"], "distance": result["distance"],
                             "direct_again": self.summary(again) if "direct again" in runs else None}}

    def summary(self, run) -> dict:
        if run is None:
            return {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0, "note": "not run"}
        troubles = ", ".join(what for what, bad in (
            ("stalled", run.stalled), (f"{run.broken} sessions broke", run.broken),
            (f"exit {run.returncode}", run.returncode),
            (f"{len(run.progress)} of {self.queries} queries answered", len(run.progress) < self.queries)) if bad)
        return {"passed": self.queries - len(run.errors), "failed": len(run.errors), "skipped": 0,
                "seconds": round(run.seconds, 1), "note": troubles}
