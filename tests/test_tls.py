"""TLS on both legs.

Client leg: pgveil terminates TLS with its own certificate (sslmode=require and verify-full).
Upstream leg: Debian's PostgreSQL (the embedded wheel has no SSL) with TLS; SCRAM then cannot be
relayed, so pgveil verifies the client itself with the role's verifier (read through --auth-dsn)
and authenticates upstream with channel binding to the server's certificate.
"""

import ssl

import asyncpg
import psycopg
import pytest

from certs import make_ca, make_server_cert
from conftest import APP_PASSWORD, APP_USER, hba_lines, setup_database, start_proxy
from proxy.pgcluster import Cluster, ensure_debian_postgresql


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca_path, ca_key, ca_cert = make_ca(directory)
    proxy_cert = make_server_cert(directory, "proxy", ca_key, ca_cert)
    db_cert = make_server_cert(directory, "db", ca_key, ca_cert)
    return {"ca": str(ca_path), "proxy": tuple(map(str, proxy_cert)), "db": tuple(map(str, db_cert))}


@pytest.fixture(scope="module")
def tls_proxy(pg, pki):
    process = start_proxy(pg.port, "--upstream-sslmode", "disable",
                          "--tls-cert", pki["proxy"][0], "--tls-key", pki["proxy"][1])
    yield process
    process.stop()


def test_client_tls_require(tls_proxy):
    with psycopg.connect(tls_proxy.dsn(sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 6


def test_client_tls_verify_full(tls_proxy, pki):
    dsn = tls_proxy.dsn(sslmode="verify-full", sslrootcert=pki["ca"]).replace("127.0.0.1", "localhost")
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone()[0] == APP_USER


def test_client_tls_verify_full_rejects_unknown_ca(tls_proxy, tmp_path):
    other_ca, _, _ = make_ca(tmp_path, "some other CA")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(tls_proxy.dsn(sslmode="verify-full", sslrootcert=str(other_ca)))


async def test_client_tls_asyncpg(tls_proxy, pki):
    context = ssl.create_default_context(cafile=pki["ca"])
    conn = await asyncpg.connect(tls_proxy.dsn().replace("127.0.0.1", "localhost"), ssl=context)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- upstream TLS
@pytest.fixture(scope="module")
def tls_db(pki):
    bin_dir = ensure_debian_postgresql()
    if bin_dir is None:
        pytest.fail("Debian's postgresql package is needed for the upstream-TLS tests and could not be installed")
    cluster = Cluster(bin_dir, ssl_files=pki["db"],
                      hba=["hostnossl all all 127.0.0.1/32 reject"] + [line.replace("host ", "hostssl ")
                                                                           for line in hba_lines()])
    cluster.start()
    try:
        setup_database(cluster, customers=20)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def bridge_proxy(tls_db, pki):
    auth_dsn = tls_db.dsn() + f"?sslmode=verify-full&sslrootcert={pki['ca']}"
    process = start_proxy(tls_db.port, "--upstream-sslmode", "verify-full", "--upstream-ca", pki["ca"],
                          "--tls-cert", pki["proxy"][0], "--tls-key", pki["proxy"][1], "--auth-dsn",
                          auth_dsn.replace("127.0.0.1", "localhost"))
    yield process
    process.stop()


def test_direct_connection_to_tls_db_uses_channel_binding(tls_db, pki):
    """The anchor: the database itself requires TLS and offers SCRAM-SHA-256-PLUS."""
    dsn = tls_db.dsn(APP_USER, APP_PASSWORD, "crm") + "?sslmode=require&channel_binding=require"
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use


@pytest.mark.parametrize("channel_binding", ["prefer", "require"])
def test_scram_through_both_tls_legs(bridge_proxy, tls_db, channel_binding):
    dsn = bridge_proxy.dsn(sslmode="require", channel_binding=channel_binding)
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user, count(*) FROM customers").fetchone() == (APP_USER, 20)
        # the upstream leg is TLS too, seen from the database
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True


def test_scram_bridge_wrong_password(bridge_proxy):
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"'):
        psycopg.connect(bridge_proxy.dsn(password="wrong", sslmode="require"))


def test_scram_bridge_unknown_role(bridge_proxy):
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "ghost"'):
        psycopg.connect(bridge_proxy.dsn(user="ghost", password="x", sslmode="require"))


async def test_scram_bridge_asyncpg_and_cancel(bridge_proxy):
    import asyncio
    conn = await asyncpg.connect(bridge_proxy.dsn(), ssl="require")
    try:
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute("SELECT pg_sleep(20)", timeout=0.5)  # the cancel goes over TLS
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_md5_and_plain_client_relay_over_upstream_tls(bridge_proxy):
    from conftest import MD5_PASSWORD, MD5_USER
    with psycopg.connect(bridge_proxy.dsn(MD5_USER, MD5_PASSWORD, sslmode="disable")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == MD5_USER


def test_plain_client_without_auth_dsn_over_upstream_tls(tls_db, pki):
    """No --auth-dsn: a client without TLS is relayed with the -PLUS offer hidden."""
    process = start_proxy(tls_db.port, "--upstream-sslmode", "verify-ca", "--upstream-ca", pki["ca"])
    try:
        with psycopg.connect(process.dsn(sslmode="disable")) as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        process.stop()
