"""A JDBC check program of our own (JdbcCheck.java) with Debian's pgjdbc: pgjdbc's own suite needs
its Gradle build and Maven Central, which this workplace cannot reach.  The version is the jar's."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from suites import Outcome, Run, Target, sh

HERE = Path(__file__).resolve().parent
DEBIAN_JAR = Path("/usr/share/java/postgresql.jar")


def jar_version(jar: Path) -> str:
    import zipfile
    try:
        with zipfile.ZipFile(jar) as z:
            for line in z.read("META-INF/MANIFEST.MF").decode().splitlines():
                if line.startswith("Implementation-Version:"):
                    return line.split(":", 1)[1].strip()
    except (OSError, KeyError, zipfile.BadZipFile):
        pass
    return jar.name


class JdbcSuite:
    name = "jdbc"

    def __init__(self, work: Path, jar: str, test_timeout: int) -> None:
        self.work = work / self.name
        self.jar = Path(jar if jar not in ("", "debian") else DEBIAN_JAR)
        self.test_timeout = test_timeout
        self.version = "pgjdbc " + jar_version(self.jar)

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if not self.jar.exists():
            sh(["apt-get", "install", "-y", "-q", "libpostgresql-jdbc-java"], log=self.work / "prepare.log")
        shutil.copy(HERE / "JdbcCheck.java", self.work / "JdbcCheck.java")
        sh(["javac", "-cp", self.jar, "-d", self.work, self.work / "JdbcCheck.java"], log=self.work / "prepare.log")

    def run(self, target: Target, label: str, deadline: float) -> Run:
        started = time.monotonic()
        env = dict(os.environ, **target.env())
        run = Run()
        try:
            result = subprocess.run(["java", "-cp", f"{self.work}:{self.jar}", "JdbcCheck"], env=env,
                                    capture_output=True, text=True,
                                    timeout=min(self.test_timeout * 10, max(1.0, deadline - time.monotonic())))
            output = result.stdout
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            run.note = "stopped at its time limit"
        (self.work / f"run-{label}.log").write_text(output)
        for line in output.splitlines():
            if line.startswith("PASS "):
                run.outcomes[line[5:].strip()] = Outcome("passed")
            elif line.startswith("FAIL "):
                name, _, message = line[5:].partition(": ")
                run.outcomes[name.strip()] = Outcome("failed", message[:200])
        run.seconds = time.monotonic() - started
        return run
