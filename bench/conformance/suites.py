"""The drivers' own test suites, each at a pinned version, fetched the ordinary way.

A suite knows how to get its tests and a Python (or Node) environment to run them in, how to
run them against one PostgreSQL address, and how to read the outcome of each test.  The
runner (run.py) runs every suite twice against the same server, once direct and once through
pgveil, and compares the outcomes test by test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Target:
    """Where a suite connects: a host, a port, and the superuser's name and password."""
    host: str
    port: int
    user: str
    password: str
    database: str = "postgres"

    def env(self) -> dict:
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGPASSWORD": self.password,
                "PGDATABASE": self.database, "PGSSLMODE": "disable"}


@dataclass
class Outcome:
    """One test's result: passed, failed, error or skipped, with the first line of its error."""
    status: str
    message: str = ""


@dataclass
class Run:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""  # why the run stopped early, if it did

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == status)


def sh(cmd: list, *, cwd: Path | None = None, env: dict | None = None, timeout: float = 1800,
       log: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command, its output appended to ``log``; raise when it fails."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout)
    finally:
        if log:
            out.close()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}); see {log}")
    return result


def stop_group(proc: subprocess.Popen) -> None:
    """End a suite's process group (started with start_new_session) if it still runs: SIGINT
    first, on which pytest still writes its report of the tests that ran."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("E ") or line.startswith("E\t"):
            return line[1:].strip()[:200]
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def read_junit(path: Path) -> dict[str, Outcome]:
    """pytest's JUnit XML: one outcome per test id (class::name)."""
    outcomes: dict[str, Outcome] = {}
    if not path.exists():
        return outcomes
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status = "failed"
                message = first_line(child.get("message")) or first_line(child.text)
                break
            if child.tag == "skipped":
                status = "skipped"
        outcomes[name] = outcomes.get(name) if status == "passed" and name in outcomes else Outcome(status, message)
    return outcomes


class PytestSuite:
    """A suite run with pytest in a virtual environment of its own."""

    name = ""
    packages: list[str] = []

    def __init__(self, work: Path, version: str, test_timeout: int, python: str = sys.executable) -> None:
        self.work = work / self.name
        self.version = version
        self.test_timeout = test_timeout
        self.python = python
        self.log = self.work / "prepare.log"

    @property
    def venv_python(self) -> Path:
        return self.work / "venv" / "bin" / "python"

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        stamp = self.work / f".prepared-{self.version}"
        if stamp.exists():
            return
        if not self.venv_python.exists():
            sh([self.python, "-m", "venv", self.work / "venv"], log=self.log)
        sh([self.venv_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            *self.requirements()], log=self.log)
        self.fetch_tests()
        stamp.write_text("")

    def requirements(self) -> list[str]:
        return [*self.packages, "pytest", "pytest-timeout"]

    def fetch_tests(self) -> None:
        raise NotImplementedError

    def command(self, target: Target, junit: Path) -> tuple[list, Path, dict]:
        raise NotImplementedError

    def rerun(self, target: Target, label: str, names: list[str], deadline: float) -> Run:
        """Only the tests ``names`` (ids as in :class:`Run`) again."""
        functions = sorted({name.split("::")[-1].split("[")[0] for name in names})
        return self.run(target, label, deadline, ["-k", " or ".join(functions)])

    def run(self, target: Target, label: str, deadline: float, extra: list | None = None) -> Run:
        junit = self.work / f"junit-{label}.xml"
        junit.unlink(missing_ok=True)
        cmd, cwd, extra_env = self.command(target, junit)
        cmd += extra or []
        env = dict(os.environ, **target.env(), **extra_env)
        env.pop("PYTHONPATH", None)
        env["PATH"] = f"{self.venv_python.parent}:{env.get('PATH', '')}"  # tools the tests start (pproxy)
        log = self.work / f"run-{label}.log"
        note = ""
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                note = "stopped at the run's time limit"
            finally:
                stop_group(proc)
        return Run(read_junit(junit), time.monotonic() - started, note)


class AsyncpgSuite(PytestSuite):
    """asyncpg's tests from its sdist, against a running cluster (PGHOST set: asyncpg/_testbase
    uses it instead of starting its own)."""

    name = "asyncpg"

    @property
    def packages(self) -> list[str]:
        return [f"asyncpg=={self.version}", "uvloop", "distro~=1.9.0"]

    def fetch_tests(self) -> None:
        sdist_dir = self.work / "sdist"
        shutil.rmtree(sdist_dir, ignore_errors=True)
        sh([self.venv_python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "asyncpg",
            f"asyncpg=={self.version}", "-d", sdist_dir], log=self.log)
        archive = next(sdist_dir.glob("asyncpg-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(sdist_dir, filter="data")
        tests = self.work / "tests"
        shutil.rmtree(tests, ignore_errors=True)
        # the tests alone, beside no asyncpg source tree: they import the installed asyncpg
        shutil.copytree(next(sdist_dir.glob("asyncpg-*/tests")), tests)
        (self.work / "pytest.ini").write_text("[pytest]\n")  # not pgveil's settings from a parent folder

    def command(self, target: Target, junit: Path) -> tuple[list, Path, dict]:
        return ([self.venv_python, "-m", "pytest", "-q", "-c", self.work / "pytest.ini", "-p", "no:cacheprovider",
                 f"--timeout={self.test_timeout}", f"--junitxml={junit}", "tests",
                 "--ignore=tests/test__sourcecode.py"], self.work, {})


class PsycopgSuite(PytestSuite):
    """psycopg's tests from its git tag, with the released psycopg of that version."""

    name = "psycopg"
    # the protocol-heavy part: connections, cursors, COPY, pipelines, notifications, prepared
    # statements, transactions; not the type adapters, the pool, nor the COPY tests of 15-20 s each
    # (big_size: tens of megabytes through COPY, which tests/test_streaming.py measures already)
    files = ["test_connection.py", "test_connection_async.py", "test_copy.py", "test_copy_async.py",
             "test_pipeline.py", "test_pipeline_async.py", "test_notify.py", "test_notify_async.py",
             "test_prepared.py", "test_prepared_async.py", "test_transaction.py", "test_transaction_async.py",
             "test_errors.py", "test_cursor.py", "test_cursor_async.py"]

    def __init__(self, work: Path, version: str, test_timeout: int, source: str) -> None:
        super().__init__(work, version, test_timeout)
        self.source = source  # a git directory (a clone or a bare mirror) or a URL to clone

    @property
    def packages(self) -> list[str]:
        return [f"psycopg[binary]=={self.version}", "anyio>=4.0", "pproxy>=2.7", "pytest-randomly>=3.5"]

    def fetch_tests(self) -> None:
        tests = self.work / "src"
        shutil.rmtree(tests, ignore_errors=True)
        tests.mkdir()
        git_dir = self.source
        if "://" in self.source:
            git_dir = str(self.work / "clone.git")
            if not Path(git_dir).exists():
                sh(["git", "clone", "--bare", "--filter=blob:none", self.source, git_dir], log=self.log)
        archive = subprocess.run(["git", "--git-dir", git_dir, "archive", self.version, "tests", "pyproject.toml"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "x", "-C", str(tests)], input=archive, check=True)

    def command(self, target: Target, junit: Path) -> tuple[list, Path, dict]:
        dsn = f"host={target.host} port={target.port} user={target.user} dbname={target.database} sslmode=disable"
        # its conftest refuses to run after a run that did not finish ("segfault"), which a time limit may cause
        shutil.rmtree(self.work / "cache", ignore_errors=True)
        present = [f"tests/{f}" for f in self.files if (self.work / "src" / "tests" / f).exists()]
        return ([self.venv_python, "-m", "pytest", "-q", "-p", "no:randomly", "-o", f"cache_dir={self.work / 'cache'}",
                 f"--timeout={self.test_timeout}", f"--junitxml={junit}", "--test-dsn", dsn, "-m", "not mypy",
                 "-k", "not big_size",
                 *present], self.work / "src", {})


class SqlalchemySuite(PytestSuite):
    """SQLAlchemy's PostgreSQL dialect tests from its sdist, with its own pytest plugin (--dburi)."""

    name = "sqlalchemy"

    def __init__(self, work: Path, version: str, test_timeout: int, tests: str = "test/dialect/postgresql") -> None:
        super().__init__(work, version, test_timeout)
        self.tests = tests.split()

    @property
    def packages(self) -> list[str]:
        return [f"SQLAlchemy=={self.version}", "psycopg[binary]", "pytest-xdist"]

    def fetch_tests(self) -> None:
        sdist_dir = self.work / "sdist"
        shutil.rmtree(sdist_dir, ignore_errors=True)
        sh([self.venv_python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "sqlalchemy",
            f"SQLAlchemy=={self.version}", "-d", sdist_dir], log=self.log)
        archive = next(sdist_dir.glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(sdist_dir, filter="data")
        src = self.work / "src"
        shutil.rmtree(src, ignore_errors=True)
        root = next(p for p in sdist_dir.iterdir() if p.is_dir())
        src.mkdir()
        for name in ("test", "lib", "setup.cfg", "pyproject.toml", "tox.ini"):  # its conftest loads lib/...
            if (root / name).is_dir():
                shutil.copytree(root / name, src / name)
            elif (root / name).exists():
                shutil.copy(root / name, src / name)

    def command(self, target: Target, junit: Path) -> tuple[list, Path, dict]:
        uri = (f"postgresql+psycopg://{target.user}:{target.password}@{target.host}:{target.port}/"
               f"{target.database}")
        return ([self.venv_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--timeout={self.test_timeout}",
                 f"--junitxml={junit}", f"--dburi={uri}", "--dropfirst", *self.tests],
                self.work / "src", {})


def read_json_lines(path: Path) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                item = json.loads(line)
                outcomes[item["name"]] = Outcome(item["status"], item.get("message", ""))
    return outcomes
