"""Strict audit's "proven read-only" (proxy/session/readonly.py) and the relations a read touches,
against the real PostgreSQL the tests start, with the catalog read as the proxy reads it.

A SELECT of a plain table can still run code the statement does not show:
- a row-level security policy's expression runs on every row read, and may call a function that
  writes;
- a read of a view runs the view's functions, and an all-clear tier's statements are not
  analysed, so the relations it reads are not known;
- a read of an inheritance parent (or a partitioned table) reads its children, and a child may
  be a foreign table, whose wrapper may run a program (file_fdw's ``program``).

Neither may be sent before its record is durable, so neither is proven read-only.
"""

from __future__ import annotations

import pytest

from conftest import live_catalog
from proxy.normalize import normalize
from proxy.policy import Engine
from proxy.rules import load_rules
from proxy.session.readonly import proven_read_only

RULES_TEXT = """
version: 1
tiers:
  dba:
    see: {"*": clear}
    statements: [read, write, ddl, copy, session, admin]
  reader:
    see: {"*": clear}
    tables: [public.plain, public.guarded, public.family, public.noisy]
identities:
  - {user: a, tier: dba}
default: deny
"""
SCENE = """
CREATE TABLE side(what text);
CREATE FUNCTION public.note(what text) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO side VALUES (what); SELECT true $$;
CREATE TABLE plain(id integer);
INSERT INTO plain VALUES (1);
CREATE TABLE guarded(id integer);
INSERT INTO guarded VALUES (1);
ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone ON guarded USING (public.note('row security'));
CREATE ROLE ro6_reader;
GRANT SELECT ON plain, guarded TO ro6_reader;
GRANT INSERT ON side TO ro6_reader;
CREATE EXTENSION file_fdw;
CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
CREATE TABLE family(id integer);
INSERT INTO family VALUES (1);
CREATE FOREIGN TABLE kid () INHERITS (family) SERVER files OPTIONS (program 'echo 2');
CREATE VIEW noisy AS SELECT id, public.note('view') AS noted FROM plain;
"""


@pytest.fixture(scope="module")
def scene(pg):
    pg.psql("CREATE DATABASE ro6")
    pg.psql(SCENE, "ro6")

    catalog = live_catalog(pg, "ro6")
    yield pg, catalog, Engine(load_rules(RULES_TEXT), catalog)
    pg.psql("DROP DATABASE ro6 WITH (FORCE)")
    pg.psql("DROP ROLE ro6_reader")


def proven(engine, catalog, sql: str, tier: str = "reader") -> bool:
    """``reader`` is restricted (a table list), so its statements are analysed; ``dba`` is all-clear."""
    decision = engine.decide(sql, engine.rules.tier(tier), ("public",), "a", None)
    assert not decision.refused, decision
    return proven_read_only(decision.normalized or normalize(sql), decision, catalog, None)


def test_a_plain_table_is_proven(scene):
    """relkind is PostgreSQL's "char": read as bytes (b'r') it matched no kind, so that nothing
    that named a relation was ever proven, with the catalog read from a database."""
    _, catalog, engine = scene
    assert catalog.by_name[("public", "plain")].kind == "r"
    assert proven(engine, catalog, "SELECT id FROM plain")
    assert not proven(engine, catalog, "SELECT id FROM noisy")  # a view may call any function


def test_an_all_clear_tier_reading_any_relation_is_not_proven(scene):
    """An all-clear tier's text is not analysed, so the relations it reads are unknown: a view
    that writes looks like a table."""
    pg, catalog, engine = scene
    pg.psql("TRUNCATE side", "ro6")
    pg.psql("SELECT id FROM noisy", "ro6")
    assert "view" in pg.psql("SELECT what FROM side", "ro6"), "the scene: the read ran the view's function"
    for sql in ("SELECT id FROM noisy", "SELECT id FROM plain", "select n.id from plain p join noisy n using (id)",
                "TABLE noisy"):
        assert not proven(engine, catalog, sql, "dba"), sql
    for sql in ("SELECT 1", "SELECT now()", "SHOW search_path"):
        assert proven(engine, catalog, sql, "dba"), sql


def test_a_table_with_row_level_security_is_not_proven(scene):
    pg, catalog, engine = scene
    pg.psql("TRUNCATE side", "ro6")
    pg.psql("SET ROLE ro6_reader; SELECT id FROM guarded", "ro6")
    assert "row security" in pg.psql("SELECT what FROM side", "ro6"), "the scene: the read ran the policy's function"
    assert catalog.by_name[("public", "guarded")].row_security
    assert not proven(engine, catalog, "SELECT id FROM guarded")
    assert not proven(engine, catalog, "SELECT p.id FROM plain p JOIN guarded g ON g.id = p.id")
    assert proven(engine, catalog, "SELECT p.id FROM plain p JOIN plain g ON g.id = p.id")


def test_a_parent_with_a_foreign_child_is_not_proven(scene):
    pg, catalog, engine = scene
    assert pg.psql("SELECT count(*) FROM family", "ro6").strip() == "2", "the scene: the parent's read ran the program"
    assert [r.name for r in catalog.descendants(catalog.by_name[("public", "family")])] == ["kid"]
    assert not proven(engine, catalog, "SELECT id FROM family")


def test_row_security_is_part_of_the_catalog_version(scene):
    """A policy enabled later must redo cached decisions, as any catalog change does."""
    _, catalog, _ = scene
    from dataclasses import replace

    from proxy.catalog import Catalog
    relations = list(catalog.by_oid.values())
    flipped = [replace(r, row_security=not r.row_security) if r.name == "plain" else r for r in relations]
    assert Catalog(relations).version != Catalog(flipped).version

