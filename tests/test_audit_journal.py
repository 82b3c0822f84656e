"""The journal without a proxy: chaining, rotation, recovery, and tampering found by verify."""

import json

import pytest

from proxy.audit.journal import Journal, read_records, verify
from proxy.audit.records import fingerprint
from proxy.normalize import normalize
from proxy.audit.tracker import StatementTracker


def write(directory, n, max_bytes=1 << 20, stream="0"):
    journal = Journal(directory, stream=stream, max_bytes=max_bytes)
    notes = journal.open()
    journal.append(notes)
    for i in range(n):  # one append per record, as a quiet server writes them
        journal.append([{"type": "statement", "n": i, "sql": f"SELECT {i}"}])
    journal.close()
    return journal


def lines_of(directory):
    return [(path, number, line) for path, number, _, line in read_records(directory)]


def test_chain_verifies_across_rotated_files_and_restarts(tmp_path):
    write(tmp_path, 50, max_bytes=2000)
    write(tmp_path, 50, max_bytes=2000)  # a restart continues the chain
    result = verify(tmp_path)
    assert result.ok, result.problem
    assert result.files > 2 and result.records == 50 + 50 + 2  # two "opened" records
    seqs = [json.loads(line)["seq"] for _, _, line in lines_of(tmp_path)]
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.parametrize("tamper, words", [
    ("edit", "was edited"),
    ("delete", "was removed, inserted or reordered"),
    ("reorder", "was removed, inserted or reordered"),
    ("insert", "was removed, inserted or reordered"),
    ("truncate", "partial record"),
])
def test_verify_finds_tampering(tmp_path, tamper, words):
    write(tmp_path, 20)
    path = sorted(tmp_path.glob("audit-*.jsonl"))[0]
    lines = path.read_bytes().splitlines(keepends=True)
    if tamper == "edit":
        record = json.loads(lines[5])
        record["user"] = "someone_else"
        lines[5] = (json.dumps(record) + "\n").encode()
    elif tamper == "delete":
        del lines[7]
    elif tamper == "reorder":
        lines[3], lines[4] = lines[4], lines[3]
    elif tamper == "insert":
        lines.insert(6, lines[2])
    elif tamper == "truncate":
        lines[-1] = lines[-1][:30]
    path.write_bytes(b"".join(lines))
    result = verify(tmp_path)
    assert not result.ok and words in result.problem


def test_crash_mid_record_is_cut_and_noted(tmp_path):
    write(tmp_path, 10)
    path = sorted(tmp_path.glob("audit-*.jsonl"))[0]
    with open(path, "ab") as f:
        f.write(b'{"type":"statement","half')  # what a kill -9 in the middle of a write leaves
    assert not verify(tmp_path).ok
    journal = Journal(tmp_path)
    notes = journal.open()
    assert notes[0]["event"] == "recovered" and notes[0]["cut_bytes"] == 25
    journal.append(notes + [{"type": "statement", "sql": "SELECT 1"}])
    journal.close()
    assert verify(tmp_path).ok


def test_a_second_process_takes_another_stream(tmp_path):
    first = Journal(tmp_path)
    first.open()
    second = Journal(tmp_path)
    second.open()
    assert (first.stream, second.stream) == ("0", "0_1")
    first.append([{"type": "x"}])
    second.append([{"type": "y"}])
    first.close()
    second.close()
    assert verify(tmp_path).ok and set(verify(tmp_path).streams) == {"0", "0_1"}


def test_failed_write_leaves_chain_intact(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    journal.append([{"type": "ok"}])
    head = journal.head
    journal._file.close()  # the next write fails, as on a full disk
    with pytest.raises(ValueError):
        journal._file.write(b"x")
    journal._file = None
    (tmp_path / "blocker").mkdir()
    journal.directory = tmp_path / "blocker" / "missing"  # the roll cannot open a file there
    with pytest.raises(OSError):
        journal.append([{"type": "lost?"}])
    assert journal.head == head and journal.seq == 1
    journal.directory = tmp_path
    journal.append([{"type": "retried"}])
    journal.close()
    assert verify(tmp_path).ok


@pytest.mark.parametrize("sql", [
    "SELECT * FROM customers WHERE id_number = '110105194912310021'",
    "SELECT * FROM customers WHERE id_number = E'110105194912310021'",
    "SELECT * FROM customers WHERE id_number = $$110105194912310021$$",
    "SELECT * FROM customers WHERE card = 6222020200112233445",
    "SELECT 1 -- 110105194912310021",
    "SELECT '110105194912310021",
    "EXECUTE p('110105194912310021')",
    "UPDATE customers SET phone = '13800138000' WHERE id = 1",
])
def test_normalized_sql_never_keeps_a_literal(sql):
    text = normalize(sql)
    assert "110105194912310021" not in text and "13800138000" not in text and "6222020200112233445" not in text
    assert fingerprint(text) == fingerprint(normalize(sql))


def test_tracker_extended_protocol_error_skips_to_sync():
    t = StatementTracker()
    t.parse("", "a")
    t.bind("", "")
    t.execute("", 0.0)
    t.parse("", "b")
    t.bind("", "")
    t.execute("", 0.0)
    t.sync()
    error = b"SERROR\0C42P01\0Mnope\0\0"
    ended = t.server(ord("E"), error, 0.1)
    assert [(e[0], e[1], e[4]) for e in ended] == [("a", "error", "42P01"), ("b", "skipped", None)]
    assert t.server(ord("Z"), b"I", 0.2) == [] and len(t) == 0


def test_records_follow_the_published_schema(tmp_path):
    """Every field a record carries is described in audit.schema.json, with the right type."""
    from pathlib import Path

    from proxy.audit import records
    from proxy.policy import Decision
    from proxy.rewrite import ColumnUse

    schema = json.loads((Path(records.__file__).parent / "audit.schema.json").read_text())
    who = {"session": "s", "user": "u", "tier": "t", "client_addr": "127.0.0.1", "client_port": 5,
           "application_name": None, "database": "crm"}
    decision = Decision("rewrite", "x", kinds=("read",), relations=("public.c",),
                        columns=(ColumnUse("public.c", "id_number", "id_number", "mask"),))
    journal = Journal(tmp_path)
    notes = journal.open()
    batch = notes + [records.statement(who, "s-1", "SELECT 1", "simple", decision, "v1"),
                     records.outcome(who, "s-1", "ok", 1, 0.5, None)]
    journal.append(batch)
    journal.close()
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
             "null": type(None), "object": dict}
    for _, _, record, _ in read_records(tmp_path):
        assert set(schema["required"]) <= set(record)
        for key, value in record.items():
            assert key in schema["properties"], f"{key} is not in the schema"
            spec = schema["properties"][key]
            if "enum" in spec:
                assert value in spec["enum"] or (isinstance(value, list)), (key, value)
            if "type" in spec:
                allowed = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
                assert isinstance(value, tuple(t for a in allowed for t in
                                               (types[a] if isinstance(types[a], tuple) else (types[a],)))), key


def test_canonical_form_is_the_standard_librarys(tmp_path):
    """An investigator's own script can check the chain with nothing but the json module."""
    import hashlib

    write(tmp_path, 5)
    prev = "0" * 64
    for _, _, record, _ in read_records(tmp_path):
        body = {k: v for k, v in record.items() if k != "hash"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256((prev + text).encode()).hexdigest() == record["hash"]
        prev = record["hash"]
