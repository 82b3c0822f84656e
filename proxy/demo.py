"""``pgveil demo``: an embedded PostgreSQL with the sample CRM, and the proxy in front of it."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import tempfile
from pathlib import Path

from . import logs, sampledata
from .config import Settings
from .pgcluster import Cluster, ClusterError, embedded_bin_dir

# One database user per tier of the example rules (rules/crm.yaml), with a demo password.
DEMO_USERS = {
    "crm_app": "customer_service",
    "sales_li": "sales",
    "prod_wang": "production",
    "admin_chen": "admin_office",
    "it_zhou": "it",
    "partner_acme": "third_party",
    "dba_sun": "dba",
}
RULES = Path(__file__).resolve().parent.parent / "rules" / "crm.yaml"
DEMO_PASSWORD = "demo"


def _cache_dir() -> Path:
    if os.geteuid() == 0:  # the server runs as an unprivileged user, who cannot enter /root
        return Path(tempfile.gettempdir()) / "pgveil-demo"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pgveil" / "demo"


def prepare(cluster: Cluster, customers: int) -> None:
    """Create the CRM database, its data and the demo users (once)."""
    if cluster.psql("SELECT 1 FROM pg_database WHERE datname = 'crm'").strip() != "1":
        cluster.psql("CREATE DATABASE crm")
    if cluster.psql("SELECT to_regclass('public.customers') IS NOT NULL", "crm").strip() != "t":
        cluster.psql(sampledata.crm_sql(customers, customers * 3), "crm")
    for user in DEMO_USERS:
        cluster.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN "
                     f"CREATE ROLE {user} LOGIN PASSWORD '{DEMO_PASSWORD}'; END IF; END $$;")
        cluster.psql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {user}", "crm")


def run_demo(args) -> int:
    from .server import install_event_loop_policy

    logs.configure("console", "warning")
    data_dir = Path(args.data_dir) if args.data_dir else _cache_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        cluster = Cluster(embedded_bin_dir(), data_dir=data_dir / "pgdata", port=0)
        cluster.data_dir.mkdir(exist_ok=True)
        cluster.start()
    except ClusterError as exc:
        print(f"pgveil demo: {exc}")
        return 1
    try:
        print(f"Embedded PostgreSQL on 127.0.0.1:{cluster.port} (data in {cluster.data_dir}); loading the sample CRM ...")
        prepare(cluster, args.customers)
        rules = args.rules or str(RULES)
        settings = Settings(listen=args.listen, upstream=f"postgresql://127.0.0.1:{cluster.port}",
                            upstream_sslmode="disable", rules=rules,
                            catalog_dsn=cluster.dsn(database="crm")).validate()
        install_event_loop_policy()
        return asyncio.run(_serve(settings, cluster))
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()
        print("Stopped the proxy and PostgreSQL.")


async def _serve(settings: Settings, cluster: Cluster) -> int:
    from .server import Proxy

    proxy = Proxy(settings)
    await proxy.start()
    host, port = settings.listen_address
    psql = shlex.quote(str(cluster.bin_dir / "psql"))
    print()
    print(f"pgveil is listening on {host}:{port}, in front of the sample CRM database 'crm'.")
    print(f"Rules in force: {settings.rules} (version {proxy.engine.rules.version}).")
    audit_dir = os.path.abspath(settings.audit_dir)
    print(f"Audit journal: {audit_dir}  (pgveil audit search {audit_dir}; pgveil audit verify {audit_dir})")
    print(f"Connect as one of the demo users (password '{DEMO_PASSWORD}'), one per tier:")
    for user, tier in DEMO_USERS.items():
        print(f"  {tier:17s} PGPASSWORD={DEMO_PASSWORD} {psql} -h {host} -p {port} -U {user} crm")
    print("Try: SELECT name, phone, id_number, bank_card, grade FROM customers LIMIT 5;")
    print("Press Ctrl-C to stop.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await proxy.stop()
    return 0
