"""Settings of ``pgveil serve``: command-line flags over an optional YAML config file.

The config file uses the flags' names without dashes (``listen``, ``upstream_sslmode``, ...);
unknown keys are rejected with the file and line, and a flag given on the command line wins.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import yaml

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_AUTH_QUERY = "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1"


class ConfigError(Exception):
    """A setting is wrong; the message says which and where."""


@dataclass
class Settings:
    listen: str = "127.0.0.1:6432"
    upstream: str = "postgresql://127.0.0.1:5432"
    rules: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    upstream_sslmode: str = "prefer"
    upstream_ca: str | None = None
    workers: int = 1
    metrics: str | None = None
    auth_dsn: str | None = None
    auth_query: str = DEFAULT_AUTH_QUERY
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    max_message_size: int = (1 << 30) - 1
    startup_timeout: float = 60.0  # like PostgreSQL's authentication_timeout
    catalog_dsn: str | None = None
    catalog_refresh: float = 60.0
    rules_poll: float = 1.0  # seconds between checks of the rule file for changes
    audit_dir: str = "pgveil-audit"  # auditing is never off: a directory under the working directory
    audit_mode: str = "strict"  # strict | batched
    audit_sink: list = field(default_factory=list)  # postgresql://... or stdout, repeatable
    audit_interval: float = 0.2  # batched mode: seconds between fsyncs
    audit_preallocate: bool = False  # zeros ahead of the records: cheaper strict syncs, no file tailers
    console: str | None = None  # HOST:PORT of the admin console (virtual database pgveil)
    console_idle_timeout: float = 900.0  # seconds a console connection may stay idle; 0: no limit
    audit_seal_key: str | None = None  # investigators' X25519 public key: values sealed to it
    shutdown_grace: float = 1.5  # seconds running statements get to finish on SIGTERM/SIGINT
    worker_index: int = 0  # set for each worker process; names its journal stream
    extra: dict = field(default_factory=dict)

    # -- derived --------------------------------------------------------------
    @property
    def listen_address(self) -> tuple[str, int]:
        return split_host_port(self.listen, "listen")

    @property
    def upstream_address(self) -> tuple[str, int]:
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ConfigError(f"upstream: expected postgresql://HOST:PORT, got {self.upstream!r}")
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise ConfigError(f"upstream: {exc}") from None
        return parts.hostname, port

    def validate(self) -> "Settings":
        self.listen_address
        self.upstream_address
        if self.metrics:
            split_host_port(self.metrics, "metrics")
        if self.upstream_sslmode not in SSLMODES:
            raise ConfigError(f"upstream_sslmode: must be one of {', '.join(SSLMODES)}, got {self.upstream_sslmode!r}")
        if self.upstream_sslmode in ("verify-ca", "verify-full") and not self.upstream_ca:
            raise ConfigError(f"upstream_sslmode {self.upstream_sslmode} needs upstream_ca (a CA file)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together")
        for name in ("tls_cert", "tls_key", "upstream_ca", "rules"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{name}: no such file {path!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers: must be a positive integer, got {self.workers!r}")
        if self.rules and not (self.catalog_dsn or self.auth_dsn):
            raise ConfigError("rules need catalog_dsn: an account that can read the database's catalog")
        if self.audit_mode not in ("strict", "batched", "off"):
            raise ConfigError(f"audit_mode: must be strict or batched, got {self.audit_mode!r}")
        if isinstance(self.audit_sink, str):
            self.audit_sink = [self.audit_sink]
        for sink in self.audit_sink:
            if sink != "stdout" and not str(sink).startswith(("postgresql://", "postgres://")):
                raise ConfigError(f"audit_sink: expected stdout or postgresql://..., got {sink!r}")
        if self.console:
            split_host_port(self.console, "console")
            if not self.rules:
                raise ConfigError("console needs rules: only tiers with the console statement kind may use it")
        if self.audit_seal_key:
            from .audit.seal import PUBLIC_TAG, SealKeyError, read_key
            if not self.rules:
                raise ConfigError("audit_seal_key needs rules: values are sealed for statements that reach "
                                  "relations with classified columns")
            try:
                read_key(self.audit_seal_key, PUBLIC_TAG)
            except SealKeyError as exc:
                raise ConfigError(f"audit_seal_key: {exc}") from None
        if not isinstance(self.console_idle_timeout, (int, float)) or self.console_idle_timeout < 0:
            raise ConfigError(f"console_idle_timeout: must be a number of seconds >= 0, got "
                              f"{self.console_idle_timeout!r}")
        if not isinstance(self.shutdown_grace, (int, float)) or self.shutdown_grace < 0:
            raise ConfigError(f"shutdown_grace: must be a number of seconds >= 0, got {self.shutdown_grace!r}")
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError(f"log_format: must be auto, json or console, got {self.log_format!r}")
        return self


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` to a pair.

    >>> split_host_port("[::1]:6432", "listen")
    ('::1', 6432)
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigError(f"{what}: port {number} is out of range")
    return host, number


def _key_lines(path: str, text: str) -> dict[str, int]:
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def load_config_file(path: str) -> dict:
    """Read a YAML config file into a dict of known settings, or raise ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config file must be a mapping of settings")
    known = {f.name for f in dataclasses.fields(Settings)} - {"extra"}
    lines = _key_lines(path, text)
    result = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}:{lines.get(str(key), 1)}: unknown setting {key!r}")
        result[name] = value
    return result


def build_settings(file_values: dict, flag_values: dict) -> Settings:
    """Settings from the config file's values with flags (those not None) on top."""
    merged = dict(file_values)
    merged.update({k: v for k, v in flag_values.items() if v is not None})
    try:
        settings = Settings(**merged)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    return settings.validate()
