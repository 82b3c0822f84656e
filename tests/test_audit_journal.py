"""The journal without a proxy: chaining, rotation, recovery, and tampering found by verify."""

import json

import pytest

from proxy.audit.journal import PREALLOC, Journal, read_records, verify
from proxy.audit.records import fingerprint
from proxy.normalize import normalize
from proxy.audit.tracker import StatementTracker


def write(directory, n, max_bytes=1 << 20, stream="0", prealloc=0):
    journal = Journal(directory, stream=stream, max_bytes=max_bytes, prealloc=prealloc)
    notes = journal.open()
    journal.append(notes)
    for i in range(n):  # one append per record, as a quiet server writes them
        journal.append([{"type": "statement", "n": i, "sql": f"SELECT {i}"}])
    journal.close()
    return journal


def lines_of(directory):
    return [(path, number, line) for path, number, _, line in read_records(directory)]


@pytest.mark.parametrize("prealloc", [0, PREALLOC])
def test_chain_verifies_across_rotated_files_and_restarts(tmp_path, prealloc):
    write(tmp_path, 50, max_bytes=2000, prealloc=prealloc)
    write(tmp_path, 50, max_bytes=2000, prealloc=prealloc)  # a restart continues the chain
    assert not any(path.read_bytes().endswith(b"\0") for path in tmp_path.glob("audit-*.jsonl"))
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


# ----------------------------------------------------------------------------- the preallocated file
def live_journal(directory, n, prealloc=PREALLOC):
    """A preallocated journal written and not closed, as a running proxy leaves it (or a kill -9)."""
    journal = Journal(directory, prealloc=prealloc)
    journal.append(journal.open())
    for i in range(n):
        journal.append([{"type": "statement", "n": i, "sql": f"SELECT {i}"}])
    return journal


def test_records_overwrite_zeros_written_ahead_and_a_closed_file_keeps_only_its_records(tmp_path):
    journal = live_journal(tmp_path, 1)
    (path,) = tmp_path.glob("audit-*.jsonl")
    size = path.stat().st_size
    for i in range(1, 20):
        journal.append([{"type": "statement", "n": i, "sql": f"SELECT {i}"}])
        assert path.stat().st_size == size  # no new size to commit: an fdatasync only writes the records
    data = path.read_bytes()
    assert data.rstrip(b"\0").endswith(b"\n") and len(data) - len(data.rstrip(b"\0")) > 500_000
    assert verify(tmp_path).ok and verify(tmp_path).records == 21  # the readers stop at the zeros
    assert [r["n"] for _, _, r, _ in read_records(tmp_path) if "n" in r] == list(range(20))
    journal.close()
    assert not path.read_bytes().endswith(b"\0") and verify(tmp_path).records == 21


def test_a_crash_leaves_zeros_and_a_half_record_the_next_start_cuts_and_notes(tmp_path):
    journal = live_journal(tmp_path, 5)
    (path,) = tmp_path.glob("audit-*.jsonl")
    end = journal._size
    later = b'{"type":"statement","n":9}\n'
    with open(path, "r+b") as f:  # a crash of the machine: part of a record, zeros, and a later page
        f.seek(end)                 # written back before the one in between (none of it synced)
        f.write(b'{"type":"statement","half')
        f.seek(end + 4096)
        f.write(later)
    assert not verify(tmp_path).ok
    journal._file = None  # (the dead process's)
    again = Journal(tmp_path, stream="0", prealloc=PREALLOC)
    journal._lock.close()
    notes = again.open()
    assert notes[0]["event"] == "recovered" and notes[0]["cut_bytes"] == 4096 + len(later)
    assert not path.read_bytes().endswith(b"\0")
    again.append(notes + [{"type": "statement", "sql": "SELECT 1"}])
    again.close()
    assert verify(tmp_path).ok and verify(tmp_path).records == 1 + 5 + 2 + 1


def test_zeros_that_cannot_be_written_leave_plain_appends(tmp_path, monkeypatch):
    import errno
    import os

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)  # (the journal writes only its zeros with pwrite)
    journal = live_journal(tmp_path, 3)
    (path,) = tmp_path.glob("audit-*.jsonl")
    assert not path.read_bytes().endswith(b"\0")
    journal.close()
    assert verify(tmp_path).ok and verify(tmp_path).records == 4


def test_a_sink_and_tail_follow_a_live_file_to_the_zeros(tmp_path):
    import subprocess
    import sys
    import threading
    import time
    from proxy.audit.sinks import Shipper

    journal = live_journal(tmp_path, 3, prealloc=3 << 20)  # more zeros than the reader reads at once
    shipper = Shipper(str(tmp_path), "0", sink=type("Sink", (), {"key": "t", "name": "t"})())
    got = []
    reader = threading.Thread(target=lambda: got.append(shipper._read_batch()), daemon=True)
    reader.start()
    reader.join(5)  # (a reader that takes the zeros for more records to come never returns)
    assert got, "the sink's reader did not stop at the zeros"
    (lines, _, offset), = got
    assert [json.loads(line).get("n") for line in lines] == [None, 0, 1, 2]
    assert offset == journal._size
    tail = subprocess.Popen([sys.executable, "-m", "proxy", "audit", "tail", str(tmp_path), "--json", "--seconds", "3"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    journal.append([{"type": "statement", "n": 100, "sql": "SELECT 100"}])  # into the zeros
    out, _ = tail.communicate(timeout=30)
    assert [json.loads(line)["n"] for line in out.splitlines()] == [100]  # from the records' end, not the file's
    journal.close()


def test_a_write_that_fails_half_way_is_cut_off_the_preallocated_file(tmp_path):
    import errno

    journal = live_journal(tmp_path, 2)
    real = journal._file

    class HalfWritten:  # a full disk: part of the batch reaches the file, then the write fails
        name = real.name

        def write(self, data):
            real.write(data[:len(data) // 2])
            real.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, attr):
            return getattr(real, attr)

    journal._file = HalfWritten()
    with pytest.raises(OSError):
        journal.append([{"type": "statement", "n": 9, "sql": "SELECT 9"}])
    journal.append([{"type": "statement", "n": 10, "sql": "SELECT 10"}])  # a new file, the chain intact
    journal.close()
    result = verify(tmp_path)
    assert result.ok and result.records == 1 + 2 + 1, result.problem
