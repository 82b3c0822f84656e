"""What the audit costs per statement on the event loop (issue 17): a long session's bookkeeping
stays as cheap as a short one's, a read-only proof is made once per statement shape, and the
journal's lines are what its chain says."""

import hashlib
import time

import orjson

from proxy.audit import records
from proxy.audit.journal import Journal, canonical, read_records, verify
from proxy.session import recorder as recorder_module
from proxy.session.readonly import proven_read_only
from proxy.session.recorder import KEPT, PROOFS_KEPT, _forget_oldest, _proven_read_only

import test_readonly as readonly_fixture  # its rules, catalog and engine


def _per_insert(remember, rounds: int = 20_000) -> float:
    """Seconds per statement a session spends remembering one more, with KEPT already held."""
    held = {f"s-{i}": i for i in range(KEPT)}
    started = time.thread_time()
    for i in range(KEPT, KEPT + rounds):
        remember(held, f"s-{i}")
    return (time.thread_time() - started) / rounds


def _remember(held: dict, key: str) -> None:
    held[key] = 1
    if len(held) > KEPT:
        _forget_oldest(held, KEPT)


def test_a_long_session_forgets_its_oldest_statements_without_a_scan_per_statement():
    # deleting the oldest key one statement at a time scans past every key deleted before it:
    # about KEPT / 2 slots per statement in steady state (4 us here), against a plain insert's 0.1 us
    def plain(held, key):
        held[key] = 1

    ratio = min(_per_insert(_remember) / _per_insert(plain) for _ in range(3))
    assert ratio < 3, ratio


def test_what_a_session_forgets_is_the_oldest_and_it_stays_bounded():
    held: dict = {}
    for i in range(3 * KEPT):
        _remember(held, f"s-{i}")
    assert len(held) <= KEPT
    assert f"s-{3 * KEPT - 1}" in held and f"s-{3 * KEPT - KEPT // 2}" in held  # the newest half at least
    assert "s-0" not in held and f"s-{KEPT}" not in held


def _decision(sql: str, tier: str = "sales"):
    engine = readonly_fixture.ENGINE
    return engine.decide(sql, engine.rules.tier(tier), ("public",), "a", None)


def _with_user_function(catalog):
    """The catalog with a user's function named lower (public.lower), and its own version."""
    catalog.user_functions = frozenset({"lower"})
    catalog.version += "+lower"
    return catalog


def test_a_read_only_proof_is_made_once_per_shape_and_again_under_another_path_or_catalog(monkeypatch):
    calls = []

    def counted(*args):
        calls.append(args)
        return proven_read_only(*args)

    monkeypatch.setattr(recorder_module, "proven_read_only", counted)
    monkeypatch.setattr(recorder_module, "_PROOFS", {})
    catalog = readonly_fixture.CATALOG
    texts = ["SELECT id_number FROM customers WHERE id = 1",
             "SELECT id_number  FROM customers WHERE id = 2",
             "select id_number from customers where id = 'x'"]  # the same normalised text?
    answers = []
    for sql in texts:
        decision = _decision(sql)
        answers.append(_proven_read_only(decision.normalized, decision, catalog, None))
    shapes = {_decision(sql).normalized for sql in texts}
    assert answers == [True] * 3
    assert len(calls) == len(shapes) < len(texts)
    decision = _decision(texts[0])
    assert _proven_read_only(decision.normalized, decision, catalog, '"$user", public') is True
    assert len(calls) == len(shapes) + 1  # another search path: proven again
    other = _with_user_function(readonly_fixture.Catalog.from_spec(
        {"public.customers": {"id": "integer", "id_number": "text"}}))
    _proven_read_only(decision.normalized, decision, other, None)
    assert len(calls) == len(shapes) + 2  # another catalog: proven again


def test_a_remembered_proof_answers_as_the_proof_itself():
    engine = readonly_fixture.ENGINE
    # a user's function named like a built-in (lower), a write, a call of a function, a view
    catalog = _with_user_function(readonly_fixture.Catalog.from_spec(
        {"public.customers": {"id": "integer", "id_number": "text"}, "public.v": {"id": "integer"}},
        views={"public.v": {"id": ["public.customers.id"]}}))
    texts = ["SELECT lower(id_number) FROM customers WHERE id = 1",
             "SELECT id_number FROM customers WHERE id_number = 'lower(x)'",
             "SELECT id FROM v WHERE id = 3",
             "UPDATE customers SET id_number = 'x' WHERE id = 4",
             "SELECT nextval('s')",
             "SELECT id FROM customers WHERE id = 5"]
    for tier in ("sales", "dba"):
        for sql in texts * 2:
            decision = engine.decide(sql, engine.rules.tier(tier), ("public",), "a", None)
            normalized = decision.normalized or sql
            assert _proven_read_only(normalized, decision, catalog, None) == \
                proven_read_only(normalized, decision, catalog, None), (tier, sql)


def test_the_worker_remembers_a_bounded_number_of_proofs(monkeypatch):
    monkeypatch.setattr(recorder_module, "_PROOFS", {})
    decision = _decision("SELECT id_number FROM customers WHERE id = 1")
    for i in range(3 * PROOFS_KEPT):  # as many shapes (the proof reads the normalised text)
        _proven_read_only(f"{decision.normalized} /* {i} */", decision, readonly_fixture.CATALOG, None)
    assert len(recorder_module._PROOFS) <= PROOFS_KEPT


def test_the_journal_writes_each_record_as_its_canonical_json_with_the_chained_hash(tmp_path):
    journal = Journal(tmp_path)
    notes = journal.open()
    who = {"session": "s", "user": "u", "tier": "t", "client_addr": "127.0.0.1", "client_port": 5,
           "database": "d", "application_name": "a"}
    batch = notes + [records.statement(who, "s-1", "SELECT 1", "simple", None, "v1"),
                     records.outcome(who, "s-1", "ok", 1, 0.5, None)]
    journal.append(batch)
    journal.append([records.outcome(who, "s-1", "error", None, 0.1, "42501")])
    journal.close()
    assert verify(tmp_path).ok
    prev = "0" * 64
    lines = [line for _, _, _, line in read_records(tmp_path)]
    assert len(lines) == 4
    for number, (_, _, record, line) in enumerate(read_records(tmp_path), start=1):
        body = {k: v for k, v in record.items() if k != "hash"}
        assert record["seq"] == number and record["prev"] == prev
        assert record["hash"] == hashlib.sha256(prev.encode() + canonical(body)).hexdigest()
        assert line == canonical(body)[:-1] + b',"hash":"' + record["hash"].encode() + b'"}\n'
        assert canonical(body) == orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        prev = record["hash"]
