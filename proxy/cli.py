"""``pgveil`` command line: serve, demo."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from . import __version__, logs
from .config import ConfigError, build_settings, load_config_file


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the proxy", description="Run the proxy in front of a PostgreSQL server.")
    p.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    p.add_argument("--listen", help="HOST:PORT to accept clients on (default 127.0.0.1:6432)")
    p.add_argument("--upstream", help="postgresql://HOST:PORT of the database")
    p.add_argument("--rules", help="rule file (YAML)")
    p.add_argument("--tls-cert", help="certificate (PEM) offered to clients")
    p.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    p.add_argument("--upstream-sslmode", choices=["disable", "prefer", "require", "verify-ca", "verify-full"])
    p.add_argument("--upstream-ca", help="CA file to verify the database's certificate")
    p.add_argument("--workers", type=int, help="processes sharing the port with SO_REUSEPORT")
    p.add_argument("--metrics", help="HOST:PORT for /metrics, /healthz and /readyz")
    p.add_argument("--auth-dsn", help="account that reads SCRAM verifiers when the upstream leg uses TLS")
    p.add_argument("--auth-query", help="query returning the SCRAM verifier of role $1")
    p.add_argument("--catalog-dsn", help="account that reads tables, columns and views for the rules")
    p.add_argument("--rules-poll", type=float, help="seconds between checks of the rule file (default 1; 0: SIGHUP only)")
    p.add_argument("--catalog-refresh", type=float, help="seconds between catalog refreshes (default 60)")
    p.add_argument("--audit-dir", help="journal directory (default ./pgveil-audit)")
    p.add_argument("--audit-mode", choices=["strict", "batched", "off"],
                   help="strict (default): decisions on disk first; off exists only to measure the cost")
    p.add_argument("--audit-sink", action="append", help="postgresql://... or stdout (repeatable)")
    p.add_argument("--audit-preallocate", action="store_true", default=None,
                   help="write zeros ahead of the journal's records, so strict mode's syncs commit no new file "
                        "size (faster); the file being written then ends in zeros: follow it with "
                        "'pgveil audit tail' or a sink, not a file tailer")
    p.add_argument("--console", help="HOST:PORT of the admin console (psql -p PORT pgveil; tiers with 'console')")
    p.add_argument("--console-idle-timeout", type=float,
                   help="seconds a console connection may stay idle (default 900; 0: no limit)")
    p.add_argument("--audit-seal-key", help="investigators' public key (pgveil audit keygen): the values of "
                   "statements reaching classified relations are recorded sealed to it")
    p.add_argument("--startup-timeout", type=float, help="seconds a client has to authenticate (default 60)")
    p.add_argument("--shutdown-grace", type=float,
                   help="on SIGTERM/SIGINT, seconds running statements get to finish before their sessions are "
                        "ended with FATAL 57P01 (default 1.5)")
    p.add_argument("--log-format", choices=["auto", "json", "console"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from .runtime import check_rules  # not the server yet: prometheus_client must see the environment first

    flags = {k: getattr(args, k) for k in ("listen", "upstream", "rules", "tls_cert", "tls_key", "upstream_sslmode",
                                            "upstream_ca", "workers", "metrics", "auth_dsn", "auth_query",
                                            "log_format", "log_level", "startup_timeout", "catalog_dsn",
                                            "catalog_refresh", "audit_dir", "audit_mode", "audit_sink", "rules_poll",
                                            "audit_seal_key", "console", "shutdown_grace", "audit_preallocate",
                                            "console_idle_timeout")}
    try:
        file_values = load_config_file(args.config) if args.config else {}
        settings = build_settings(file_values, flags)
        if settings.rules:
            check_rules(settings.rules)  # a broken rule file stops here, with its file and line
    except ConfigError as exc:
        print(f"pgveil: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    if settings.workers > 1 and settings.metrics and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # every worker's values in shared files, summed by the endpoint (set before the metrics import)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pgveil-metrics-")
    from .startup import serve
    try:
        return serve(settings)
    except OSError as exc:
        print(f"pgveil: cannot listen on {settings.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="embedded PostgreSQL + sample CRM + proxy",
                       description="Start an embedded PostgreSQL with a sample CRM and the proxy in front of it.")
    p.add_argument("--listen", default="127.0.0.1:6432")
    p.add_argument("--data-dir", help="where the demo database lives (default: under the user's cache)")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--rules", help="rule file to enforce (default: rules/crm.yaml)")
    p.add_argument("--console", help="HOST:PORT of the admin console (default: the --listen port + 1)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _rules_parsers(sub) -> None:
    from .tools import cmd_check, cmd_explain

    p = sub.add_parser("check", help="validate a rule file and summarise it",
                       description="Validate a rule file; print tiers x classes. Exit 1 on errors.")
    p.add_argument("rules")
    p.add_argument("--catalog-dsn", help="also warn about column patterns that match nothing in this database")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("explain", help="what a tier gets for a statement",
                       description="Show the decision, the reason and the rewritten SQL for one statement.")
    p.add_argument("--rules", required=True)
    p.add_argument("--tier", required=True)
    p.add_argument("--catalog-dsn", help="read tables and columns from this database")
    p.add_argument("--schema", help="YAML {schema.table: {column: type}} instead of a database")
    p.add_argument("--search-path", default='"$user", public')
    p.add_argument("--user", help="database user, for $user in the search path")
    p.add_argument("sql")
    p.set_defaults(func=cmd_explain)
    from .tools import cmd_diff, cmd_report
    p = sub.add_parser("diff", help="what a rule change changes for whom, before reloading it")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--catalog-dsn", help="per column instead of per class")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.set_defaults(func=cmd_diff)
    from .discover import cmd_discover
    p = sub.add_parser("discover", help="suggest classes for columns holding personal data (values never shown)")
    p.add_argument("--dsn", required=True)
    p.add_argument("--sample", type=int, default=200, help="values sampled per column")
    p.add_argument("--threshold", type=float, default=0.8, help="share of samples that must match")
    p.set_defaults(func=cmd_discover)
    p = sub.add_parser("report", help="reports for the periodic review")
    kinds = p.add_subparsers(dest="report", required=True)
    p = kinds.add_parser("entitlements", help="who can see which column how, with grants and their expiry")
    p.add_argument("rules")
    p.add_argument("--catalog-dsn", help="per column instead of per class")
    p.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    p.set_defaults(func=cmd_report)
    from .audit.cli import add_usage_parser
    add_usage_parser(kinds)
    from .tools import cmd_privileges
    p = sub.add_parser("privileges", help="GRANT/REVOKE so the database refuses blocked columns too",
                       description="Print the GRANT/REVOKE statements that leave each tier's login roles no "
                                   "SELECT on the columns their tier has blocked.")
    p.add_argument("rules")
    p.add_argument("--catalog-dsn", required=True)
    p.set_defaults(func=cmd_privileges)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgveil", description="A transparent access proxy for PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"pgveil {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _demo_parser(sub)
    _rules_parsers(sub)
    from .audit.cli import add_parsers as audit_parsers
    audit_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
