"""node-postgres' integration tests (packages/pg/test/integration) from its git tag.

The package's own source at that tag, its runtime dependencies and the few development ones
the integration tests use from the npm registry; each test file runs as the package's Makefile
runs it (``node file``), with PG* variables for the server.  The test helper prints
``  name ✔`` per passing test and stops its file at the first failure (``FAILED!``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from suites import Outcome, Run, Target, first_line, sh

TEST_DEPENDENCIES = ["async@2.6.4", "bluebird@3.7.2", "co@4.6.0", "pg-copy-streams@0.3.0"]


class NodePostgresSuite:
    name = "node-postgres"

    def __init__(self, work: Path, version: str, test_timeout: int, source: str) -> None:
        self.work = work / self.name
        self.version = version  # a tag, e.g. pg@8.23.0
        self.test_timeout = test_timeout
        self.source = source
        self.log = self.work / "prepare.log"

    @property
    def package(self) -> Path:
        return self.work / "src" / "packages" / "pg"

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        stamp = self.work / f".prepared-{self.version}"
        if stamp.exists():
            return
        git_dir = self.source
        if "://" in self.source:
            git_dir = str(self.work / "clone.git")
            if not Path(git_dir).exists():
                sh(["git", "clone", "--bare", "--filter=blob:none", self.source, git_dir], log=self.log)
        src = self.work / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        archive = subprocess.run(["git", "--git-dir", git_dir, "archive", self.version, "packages/pg"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "x", "-C", str(src)], input=archive, check=True)
        npm = ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock", "--ignore-scripts"]
        sh([*npm, "--omit=dev"], cwd=self.package, log=self.log)
        # the test dependencies one folder up (src/node_modules, found by node's lookup): in the
        # package itself npm leaves them out with its other development dependencies (--omit=dev)
        sh([*npm, "--no-save", *TEST_DEPENDENCIES], cwd=src, log=self.log)
        stamp.write_text("")

    def files(self) -> list[Path]:
        return sorted((self.package / "test" / "integration").rglob("*-tests.js"))

    def rerun(self, target: Target, label: str, names: list[str], deadline: float) -> Run:
        """The files of the tests ``names`` again (a file is the smallest unit its helper runs)."""
        files = {name.split("::")[0] for name in names}
        root = self.package / "test" / "integration"
        return self.run(target, label, deadline, [path for path in self.files()
                                                  if str(path.relative_to(root)) in files])

    def run(self, target: Target, label: str, deadline: float, files: list[Path] | None = None) -> Run:
        env = dict(os.environ, **target.env())
        run = Run()
        started = time.monotonic()
        log = open(self.work / f"run-{label}.log", "w")
        try:
            for path in self.files() if files is None else files:
                if time.monotonic() > deadline:
                    run.note = "stopped at the run's time limit"
                    break
                self._run_file(path, env, run, log, deadline)
        finally:
            log.close()
        run.seconds = time.monotonic() - started
        return run

    def _run_file(self, path: Path, env: dict, run: Run, log, deadline: float) -> None:
        name = str(path.relative_to(self.package / "test" / "integration"))
        # stderr apart: node's warnings would land inside the helper's "  name ✔" lines
        proc = subprocess.Popen(["node", str(path)], cwd=self.package, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        limit = min(self.test_timeout * 5, max(1.0, deadline - time.monotonic()))
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            out += f"\nFAILED! the file did not finish within {limit:.0f} s\n".encode()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        text, errors = out.decode(errors="replace"), err.decode(errors="replace")
        log.write(f"=== {name} (exit {proc.returncode})\n{text}\n" + (f"--- stderr\n{errors}\n" if errors else ""))
        failed = self._read_outcomes(name, text, run)
        if proc.returncode != 0 and not failed:
            run.outcomes[f"{name}::(file)"] = Outcome(
                "failed", f"exit {proc.returncode}: {first_line(text[-400:]) or first_line(errors[-400:])}")

    @staticmethod
    def _read_outcomes(name: str, text: str, run: Run) -> bool:
        """The helper's lines: ``  test ✔``, ``  test FAILED!`` and the error, or its 5 s limit
        (``  test `` then ``Error: test: test did not complete withint 5000ms``); True if one failed."""
        failed = False
        current = None  # the test whose name was written last
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.endswith("✔"):
                run.outcomes[f"{name}::{stripped[:-1].strip()}"] = Outcome("passed")
            elif "FAILED!" in stripped:
                test = stripped.split("FAILED!")[0].strip() or current or "(file)"
                rest = text.split("FAILED!", 1)[1]
                run.outcomes[f"{name}::{test}"] = Outcome("failed", first_line(rest))
                failed = True
            elif stripped.startswith("Error: test: ") and " did not complete " in stripped and current:
                run.outcomes[f"{name}::{current}"] = Outcome("failed", stripped[len("Error: "):])
                failed = True
            elif line.startswith("  ") and stripped:
                current = stripped
        return failed
