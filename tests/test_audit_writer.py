"""The audit writer's group commit through its fdatasync helper process, and without it."""

from __future__ import annotations

import asyncio
import os
import signal

from proxy.audit import records, writer as writer_module
from proxy.audit.journal import read_records, verify
from proxy.audit.writer import AuditWriter


def record(n: int) -> dict:
    return dict(records.base("journal", {}), event=f"test-{n}")


async def submit_durable(writer: AuditWriter, first: int, count: int) -> list:
    """Submit ``count`` records that wait for the disk; the errors their callbacks were given."""
    loop = asyncio.get_running_loop()
    futures = []
    for n in range(first, first + count):
        future = loop.create_future()
        writer.submit(record(n), lambda error, f=future: f.done() or f.set_result(error))
        futures.append(future)
    return await asyncio.wait_for(asyncio.gather(*futures), 10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def events(directory) -> list[str]:
    return [r["event"] for _, _, r, _ in read_records(directory) if r and r.get("event", "").startswith("test-")]


def test_strict_records_are_synced_by_the_helper_process(tmp_path):
    async def run():
        writer = AuditWriter(str(tmp_path), "strict")
        writer.start()
        pid = writer._syncer.pid
        assert pid is not None and pid != os.getpid() and alive(pid)
        errors = await submit_durable(writer, 0, 50)
        for batch in range(5):  # records submitted while earlier requests are still with the helper
            for answers in await asyncio.gather(*(submit_durable(writer, 100 + 10 * batch + i, 1)
                                                  for i in range(10))):
                errors += answers
        synced = writer.fsyncs
        await writer.close()
        return pid, errors, synced

    pid, errors, synced = asyncio.run(run())
    assert errors == [None] * 100
    assert synced >= 1
    assert sorted(events(tmp_path)) == sorted(f"test-{n}" for n in [*range(50), *range(100, 150)])
    assert verify(tmp_path).ok
    assert not alive(pid)  # the helper left with the writer


def test_records_waiting_on_a_helper_that_dies_are_synced_by_the_thread_and_the_helper_returns(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setattr(writer_module, "HELPER_RETRY", 0.1)

    async def run():
        writer = AuditWriter(str(tmp_path), "strict", interval=0.05)
        writer.start()
        first = writer._syncer.pid
        os.kill(first, signal.SIGSTOP)  # requests reach it and stay unanswered ...
        loop = asyncio.get_running_loop()
        pending = loop.create_task(submit_durable(writer, 0, 20))
        await asyncio.sleep(0.3)
        assert not pending.done()  # nobody was told "on disk" by a helper that did not sync
        os.kill(first, signal.SIGKILL)  # ... and it dies with them
        errors = await pending
        assert writer._syncer is None or writer._syncer.pid != first
        errors += await submit_durable(writer, 20, 20)  # meanwhile, or through the new helper
        for _ in range(100):
            if writer._syncer is not None:
                break
            await asyncio.sleep(0.05)
        second = writer._syncer.pid if writer._syncer else None
        errors += await submit_durable(writer, 40, 20)
        await writer.close()
        return first, second, errors

    first, second, errors = asyncio.run(run())
    assert errors == [None] * 60
    assert second is not None and second != first
    assert sorted(events(tmp_path)) == sorted(f"test-{n}" for n in range(60))
    assert verify(tmp_path).ok


def test_batched_mode_starts_no_helper(tmp_path):
    async def run():
        writer = AuditWriter(str(tmp_path), "batched")
        writer.start()
        helper = writer._syncer
        writer.submit(record(1))
        await asyncio.sleep(0.3)  # the interval's fsync, in the thread
        synced = writer.fsyncs
        await writer.close()
        return helper, synced

    helper, synced = asyncio.run(run())
    assert helper is None and synced >= 1
    assert events(tmp_path) == ["test-1"]


def test_records_written_while_syncs_run_are_asked_for_at_once_and_share_the_next_fdatasync(tmp_path):
    """Records written in five loop turns while the helper is busy (here: stopped): each turn's
    request reaches the helper at once (none waits in the worker for an answer), and a free
    thread of the helper syncs all the requests it has received in one fdatasync."""
    async def run():
        writer = AuditWriter(str(tmp_path), "strict", interval=60)
        writer.start()
        await submit_durable(writer, 0, 1)  # the helper has the file
        pid, before = writer._syncer.pid, writer.fsyncs
        os.kill(pid, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        pending = []
        for turn in range(5):
            pending.append(loop.create_task(submit_durable(writer, 10 * turn + 1, 3)))
            await asyncio.sleep(0.02)  # one request per loop turn that wrote records
        asked = writer._syncer.in_flight
        assert not any(task.done() for task in pending)  # nobody is told "on disk" before the sync
        os.kill(pid, signal.SIGCONT)
        errors = [e for answers in await asyncio.gather(*pending) for e in answers]
        syncs = writer.fsyncs - before
        await writer.close()
        return errors, asked, syncs

    errors, asked, syncs = asyncio.run(run())
    assert errors == [None] * 15
    assert asked == 5
    assert 1 <= syncs < 5  # (the helper's threads take what they have received when free)
    assert verify(tmp_path).ok


def test_answers_that_overtake_each_other_and_an_error_fail_closed(tmp_path):
    """The worker's side of the helper's protocol, the test playing the helper: 'K<n>' says the
    first n requests are durable (a sync that a later one overtook says less than is known), and
    an error fails every request unanswered, whichever sync it came from."""
    import socket
    from proxy.audit.syncer import Syncer

    async def run():
        loop = asyncio.get_running_loop()
        answers = []
        syncer = Syncer(loop, lambda count, error: answers.append((count, error)), lambda: answers.append("lost"))
        ours, helper = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        syncer._sock = ours
        loop.add_reader(ours.fileno(), syncer._readable)
        with open(tmp_path / "f", "ab") as file:
            for _ in range(3):
                assert syncer.request(file)
            for reply in (b"K2", b"K1", b"E2 the disk is gone"):
                helper.send(reply)
                await asyncio.sleep(0.05)
            asked = [helper.recv(64) for _ in range(4)]
        syncer._close(wait=0)
        helper.close()
        return asked, answers

    asked, answers = asyncio.run(run())
    assert asked == [b"F", b"S", b"S", b"S"]
    assert answers == [(2, None), (0, None), (1, "the disk is gone")]
