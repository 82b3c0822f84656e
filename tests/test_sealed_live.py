"""Sealed values for investigators, through a real proxy with rules/crm.yaml in front of a real server:
literals (psql), parameters (psycopg text and binary, asyncpg binary) and COPY data are found by
``pgveil audit investigate`` with the private key, and by nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys

import asyncpg
import psycopg
import pytest

from conftest import RULES, ROOT, TIER_PASSWORD, run_psql, start_proxy
from proxy.audit.journal import read_records, stream_files

NAME_LITERAL = "Zhao-LIT-4711"  # hyphens never occur in base64: a plaintext search cannot hit a box by chance
NAME_TEXT_PARAM = "Qian-TXT-5822"
NAME_COPY = "Sun-COPY-6933"
ID_NUMBER = "110101-1990-0101-77"
ROWS = {}  # rows the clients got, to compare with what investigate says


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys") / "investigators"
    done = cli("audit", "keygen", str(out))
    assert done.returncode == 0, done.stderr
    other = tmp_path_factory.mktemp("keys") / "someone-else"
    assert cli("audit", "keygen", str(other)).returncode == 0
    return out, other


@pytest.fixture(scope="module")
def sealed(pg, tier_users, keys, psql_bin):
    """A proxy sealing to the investigators' key, and the traffic the tests look for."""
    private, _ = keys
    proxy = start_proxy(pg.port, "--upstream-sslmode", "disable", "--rules", str(RULES),
                        "--catalog-dsn", pg.dsn(database="crm"), "--audit-seal-key", f"{private}.pub")
    try:
        _traffic(proxy, psql_bin)
        proxy.stop()  # everything on disk
        yield proxy
    finally:
        proxy.stop()


def _traffic(proxy, psql_bin) -> None:
    # a literal, in formatted SQL with a comment, through psql (simple protocol); no sensitive column read
    sql = f"""
        -- who is it?
        SELECT name
          FROM customers
         WHERE id = 42   /* the customer */
    """
    done = run_psql(psql_bin, proxy, "-c", sql, user="sales_li", password=TIER_PASSWORD)
    assert done.returncode == 0, done.stderr
    done = run_psql(psql_bin, proxy, "-c", f"SELECT count(*) FROM customers WHERE name = '{NAME_LITERAL}' "
                                           f"OR id_number = '{ID_NUMBER}'", user="crm_app", password=TIER_PASSWORD)
    assert done.returncode == 0, done.stderr
    # the same number, not against customers.id; and against a relation that is not protected
    done = run_psql(psql_bin, proxy, "-c", "SELECT id FROM customers WHERE id < 50 ORDER BY id LIMIT 42",
                    user="crm_app", password=TIER_PASSWORD)
    assert done.returncode == 0, done.stderr
    done = run_psql(psql_bin, proxy, "-c", "SELECT quantity FROM orders WHERE id = 77",
                    user="prod_wang", password=TIER_PASSWORD)
    assert done.returncode == 0, done.stderr
    # parameters with server-side binding: psycopg text (%s) and binary (%b) formats
    with psycopg.connect(proxy.dsn("crm_app", TIER_PASSWORD, application_name="psycopg-params")) as conn:
        ROWS["psycopg"] = len(conn.execute("SELECT phone FROM customers WHERE name = %s OR id = %b",
                                           (NAME_TEXT_PARAM, 43)).fetchall())
        conn.execute("SELECT phone FROM customers WHERE id = %s", (44,)).fetchall()

    async def with_asyncpg():  # asyncpg binds integers in binary (int4 here), a named prepared statement
        conn = await asyncpg.connect(proxy.dsn("crm_app", TIER_PASSWORD, application_name="asyncpg-params"))
        try:
            stmt = await conn.prepare("SELECT name FROM customers WHERE id = $1")
            for customer in (45, 46, 45):
                await stmt.fetch(customer)
        finally:
            await conn.close()
    asyncio.run(with_asyncpg())
    # COPY FROM STDIN into a protected relation (dba: an all-clear tier, decided without analysis)
    data = f"990001\t{NAME_COPY}\t\\N\t\\N\t\\N\t\\N\tordinary\t2026-01-01\n"
    done = run_psql(psql_bin, proxy, "-c", "COPY customers (id, name, phone, id_number, bank_card, address, grade, "
                                           "created_at) FROM STDIN", user="dba_sun", password=TIER_PASSWORD,
                    input=data)
    assert done.returncode == 0 and "COPY 1" in done.stdout, done.stderr
    done = run_psql(psql_bin, proxy, "-c", "DELETE FROM customers WHERE id = 990001", user="dba_sun",
                    password=TIER_PASSWORD)
    assert done.returncode == 0, done.stderr


def investigate(proxy, key, *args) -> tuple[int, list[dict], str]:
    done = cli("audit", "investigate", str(proxy.audit_dir), "--key", str(key), "--json", *args)
    hits = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, hits, done.stderr


def test_keygen_writes_a_private_key_only_its_owner_reads(keys):
    private, _ = keys
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert open(f"{private}.pub").read().startswith("pgveil-seal-public ")
    assert cli("audit", "keygen", str(private)).returncode == 1  # never overwritten


def test_the_journal_holds_no_plaintext_value(sealed):
    data = b"".join(p.read_bytes() for files in stream_files(sealed.audit_dir).values() for p in files)
    for value in (NAME_LITERAL, NAME_TEXT_PARAM, NAME_COPY, ID_NUMBER):
        assert value.encode() not in data, value
    records = [r for _, _, r, _ in read_records(sealed.audit_dir)]
    kinds = {r["type"] for r in records}
    assert {"seal_key", "bind", "copy_data"} <= kinds
    statements = [r for r in records if r["type"] == "statement"]
    protected = [r for r in statements if "customers" in r["sql"] and "pgveil" not in r["sql"]]
    assert protected and all("sealed" in r for r in protected)
    assert not any("sealed" in r for r in statements if "FROM orders" in r["sql"])  # not a protected relation


def test_investigate_finds_a_literal_without_a_sensitive_column(sealed, keys):
    code, hits, err = investigate(sealed, keys[0], "--value", "42")
    assert code == 0, err
    by_user = {(h["user"], h["how"]) for h in hits}
    assert ("sales_li", "literal") in by_user  # WHERE id = 42, reading only the name
    hit = next(h for h in hits if h["user"] == "sales_li")
    assert hit["tier"] == "sales" and hit["sql"] == "SELECT name FROM customers WHERE id = ?"
    assert hit["status"] == "ok" and hit["rows"] in (0, 1) and len(hit["fingerprint"]) == 16
    assert ("crm_app", "literal") in by_user  # LIMIT 42
    code, hits, _ = investigate(sealed, keys[0], "--value", "42", "--param-of", "public.customers.id")
    assert [(h["user"], h["how"]) for h in hits] == [("sales_li", "literal")]  # LIMIT 42 is not the id


def test_investigate_finds_strings_as_literals_and_text_parameters(sealed, keys):
    _, hits, _ = investigate(sealed, keys[0], "--value", ID_NUMBER)
    assert [(h["user"], h["how"]) for h in hits] == [("crm_app", "literal")]
    _, hits, _ = investigate(sealed, keys[0], "--value", NAME_TEXT_PARAM)
    assert [(h["user"], h["application_name"], h["how"]) for h in hits] == [("crm_app", "psycopg-params",
                                                                             "parameter $1")]
    assert hits[0]["status"] == "ok" and hits[0]["rows"] == ROWS["psycopg"]


def test_investigate_finds_binary_and_text_parameters(sealed, keys):
    _, hits, _ = investigate(sealed, keys[0], "--value", "43")  # psycopg %b: int2 in binary
    assert [(h["application_name"], h["how"]) for h in hits] == [("psycopg-params", "parameter $2")]
    assert hits[0]["rows"] == ROWS["psycopg"]
    _, hits, _ = investigate(sealed, keys[0], "--value", "44", "--param-of", "public.customers.id")
    assert [(h["application_name"], h["how"]) for h in hits] == [("psycopg-params", "parameter")]
    _, hits, _ = investigate(sealed, keys[0], "--value", "45")  # asyncpg: binary int4, bound twice
    assert [(h["application_name"], h["how"], h["rows"]) for h in hits] == [("asyncpg-params", "parameter $1", 1)] * 2
    _, hits, _ = investigate(sealed, keys[0], "--value", "46", "--param-of", "public.customers.id")
    assert len(hits) == 1 and hits[0]["sql"] == "SELECT name FROM customers WHERE id = $1"


def test_investigate_finds_copy_data(sealed, keys):
    _, hits, _ = investigate(sealed, keys[0], "--value", NAME_COPY)
    assert [(h["user"], h["tier"], h["how"], h["rows"]) for h in hits] == [("dba_sun", "dba", "copy line 1", 1)]
    _, hits, _ = investigate(sealed, keys[0], "--value", NAME_COPY, "--param-of", "public.customers.name")
    assert len(hits) == 1
    _, hits, _ = investigate(sealed, keys[0], "--value", NAME_COPY, "--param-of", "public.customers.address")
    assert hits == []


def test_not_protected_relations_are_not_sealed(sealed, keys):
    _, hits, _ = investigate(sealed, keys[0], "--value", "77")
    assert hits == []


def test_the_wrong_key_finds_nothing_and_says_so(sealed, keys):
    code, hits, err = investigate(sealed, keys[1], "--value", "42")
    assert code == 1 and hits == []
    assert "opens none" in err


def test_investigations_are_journaled_and_the_chain_holds(sealed, keys):
    investigate(sealed, keys[0], "--value", NAME_LITERAL)
    records = [r for _, _, r, _ in read_records(sealed.audit_dir) if r["type"] == "investigation"]
    assert records and records[-1]["stream"] == "investigate" and records[-1]["found"] == 1
    assert NAME_LITERAL not in json.dumps(records)
    done = cli("audit", "verify", str(sealed.audit_dir))
    assert done.returncode == 0, done.stdout


def test_a_tampered_sealed_field_fails_verify(sealed, tmp_path):
    copy = tmp_path / "audit"
    shutil.copytree(sealed.audit_dir, copy)
    for files in stream_files(copy).values():
        for path in files:
            lines = path.read_bytes().splitlines(keepends=True)
            for i, line in enumerate(lines):
                record = json.loads(line)
                if record["type"] == "bind":
                    box = record["sealed"]["box"]
                    swapped = box[:10] + ("A" if box[10] != "A" else "B") + box[11:]
                    lines[i] = line.replace(box.encode(), swapped.encode())
                    path.write_bytes(b"".join(lines))
                    done = cli("audit", "verify", str(copy))
                    assert done.returncode == 1 and "edited" in done.stdout, done.stdout
                    return
    pytest.fail("no bind record to tamper with")
