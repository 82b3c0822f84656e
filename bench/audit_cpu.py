"""The audit records' CPU per statement, in-process: what a worker's event loop spends on the two
records of one pgbench ``-S`` statement (its decision and its outcome) from building them to
their bytes in the journal's page cache.

Steps, each in microseconds per record (best of ``--repeat`` runs of ``--records`` records,
which on a shared machine is the least disturbed figure):

- ``build``: records.statement / records.outcome with the session's ``who`` fields;
- ``observe``: the metrics' count of it (proxy/metrics.py);
- ``append``: the journal chaining, serialising, hashing and writing a loop turn's batch
  (batches of 1, 4 and 16 records: 16 clients give a few records per turn);
- ``total``: all of it, through AuditWriter.submit and its per-turn flush, no fsync;
- per statement: the usual form's two records against the compact form's one execution record
  (proxy/audit/executions.py), which the session would write instead.

    python bench/audit_cpu.py [--records 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy import metrics  # noqa: E402
from proxy.audit import records  # noqa: E402
from proxy.audit.journal import Journal  # noqa: E402
from proxy.audit.writer import AuditWriter  # noqa: E402
from proxy.policy import Decision  # noqa: E402

WHO = {"session": "a1b2c3d4e5f6-17", "user": "bench", "tier": "masking", "client_addr": "127.0.0.1",
       "client_port": 51234, "database": "bench", "application_name": "pgbench"}
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
DECISION = Decision("allow", "SELECT abalance FROM public.pgbench_accounts WHERE aid = $1", kinds=("read",),
                    relations=("public.pgbench_accounts",), normalized=SQL)


def pair(n: int) -> list[dict]:
    """The decision and the outcome of statement n, as a session builds them."""
    sid = f"{WHO['session']}-{n}"
    statement = records.statement(WHO, sid, SQL, "extended", DECISION, "v1-abc", purpose=None, grant=None)
    statement["decision_us"] = 3
    return [statement, records.outcome(WHO, sid, "ok", 1, 0.000412, None)]


def compact(n: int) -> list[dict]:
    """Statement n in the compact form (proxy/audit/executions.py): one execution record naming
    the session's decision and carrying the previous execution's outcome."""
    sid = WHO["session"]
    return [{**records.base("execution", {"session": sid}, f"{sid}-x{n}"), "statement": f"{sid}-1", "purpose": None,
             "grant": None, "ended": [{"execution": f"{sid}-x{n - 1}", "status": "ok", "rows": 1,
                                      "duration_us": 412, "sqlstate": None}]}]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(count: int = 20000, repeat: int = 5) -> dict:
    out = {}
    pairs = count // 2
    out["build"] = best(lambda: [pair(i) for i in range(pairs)], repeat) / count * 1e6
    built = [r for i in range(pairs) for r in pair(i)]
    out["observe"] = best(lambda: [metrics.observe(r) for r in built], repeat) / count * 1e6
    for batch in (1, 4, 16):
        directory = tempfile.mkdtemp(prefix="pgveil-audit-cpu-")
        journal = Journal(directory)
        journal.open()

        def append():
            fresh = [dict(r) for r in built]  # the journal adds seq, stream, prev and hash to each
            started = time.perf_counter()
            for i in range(0, len(fresh), batch):
                journal.append(fresh[i:i + batch])
            return time.perf_counter() - started

        out[f"append, batches of {batch}"] = min(append() for _ in range(repeat)) / count * 1e6
        journal.close()
    out["total (build, observe, submit, flush)"] = total(pairs, repeat) / count * 1e6
    out["per statement, usual form (2 records)"] = out["total (build, observe, submit, flush)"] * 2
    out["per statement, compact form (1 record)"] = total(pairs, repeat, compact) / pairs * 1e6
    return out


def total(pairs: int, repeat: int, make=pair) -> float:
    """Through the writer, 8 statements per loop turn (batched mode: no fsync waits here)."""
    async def run() -> float:
        writer = AuditWriter(tempfile.mkdtemp(prefix="pgveil-audit-cpu-"), mode="batched", interval=3600)
        writer.start()
        await asyncio.sleep(0)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            for i in range(pairs):
                for record in make(i):
                    metrics.observe(record)
                    writer.submit(record)
                if i % 8 == 7:
                    await asyncio.sleep(0)
            await asyncio.sleep(0)
            times.append(time.perf_counter() - started)
        await writer.close()
        return min(times)
    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for step, us in measure(args.records, args.repeat).items():
        print(f"{step:40s}{us:8.2f} us" + ("" if step.startswith("per statement") else " per record"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
