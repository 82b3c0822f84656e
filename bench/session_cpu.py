"""In-process: the CPU of a pgbench ``-S`` simple-Query transaction in pgveil's Python, per tier and
audit mode, without sockets.

Two figures per case, each the best of ``--repeat`` runs of ``--transactions`` transactions
measured with this thread's CPU clock (the least disturbed figure on a shared machine):

- ``session``: the session alone (events in, commands out; strict's durable tokens answered at
  once);
- ``+ records``: the same, and each audit record counted by the metrics and written through
  the audit writer to a journal (chained, serialised, hashed, in the page cache; no fsync), as
  the worker does.

Eight sessions take turns, as pgbench's clients do; the literal changes every transaction.  A
worker under pgbench spends about 2.5 times these figures (caches are cold between events,
and the socket writes and the event loop come on top): compare trees with the same tool.

    python bench/session_cpu.py [--cases "relay batched,masking strict"] [--transactions 4000] [--repeat 5]
                                [--profile "relay batched"]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path.cwd()  # the tree measured: run it from that tree's root
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import playbook as pb  # noqa: E402
from proxy import codec, metrics  # noqa: E402
from proxy.audit import records  # noqa: E402
from proxy.audit.writer import AuditWriter  # noqa: E402
from proxy.catalog import Catalog  # noqa: E402
from proxy.policy import Engine  # noqa: E402
from proxy.rules import load_rules  # noqa: E402
from proxy.session import (AuditDurable, ClientData, ServerData, Session, SessionConfig,  # noqa: E402
                           UpstreamConnected, WriteAudit)

RULES = """
version: 1
classes: {secret: {mask: {fn: partial, keep_first: 2, keep_last: 2}}}
columns: {public.pgbench_accounts.filler: secret}
tiers:
  all-clear: {see: {"*": clear}, statements: [read, write, ddl, copy, session, admin]}
  masking: {see: {secret: mask}, statements: [read, write, session]}
identities: [{user: ac, tier: all-clear}, {user: mk, tier: masking}]
"""
CATALOG = Catalog.from_spec({"public.pgbench_accounts": {"aid": "integer", "bid": "integer", "abalance": "integer",
                                                         "filler": "character(84)"}})
CASES = {"relay off": ("ac", False, False, False), "relay batched": ("ac", True, False, False),
         "relay strict": ("ac", True, True, False), "all-clear batched": ("ac", True, False, True),
         "all-clear strict": ("ac", True, True, True), "masking batched": ("mk", True, False, True),
         "masking strict": ("mk", True, True, True)}
ANSWER = (codec.encode(codec.RowDescription((("abalance", 0, 0, 23, 4, -1, 0),))) + codec.encode(codec.DataRow((b"0",)))
          + pb.complete("SELECT 1") + pb.ready())
SESSIONS = 8


def session(user: str, audit: bool, strict: bool, rules: bool) -> Session:
    engine = Engine(load_rules(RULES), CATALOG) if rules else None
    s = Session(SessionConfig(engine=engine, clock=lambda: pb.T0, audit=audit, audit_strict=strict,
                              monotonic=time.monotonic, stamp=records.now, record_id=records.new_id),
                ("10.1.2.3", 5000))
    for event in (ClientData(pb.startup(user)), UpstreamConnected(False),
                  ServerData(pb.AUTH_OK + codec.encode(codec.ParameterStatus("search_path", '"$user", public'))
                             + pb.ready())):
        s.handle(event)
    return s


def run(case: str, transactions: int, repeat: int, write: bool, profile: bool = False) -> float:
    """Microseconds of CPU per transaction, the best of ``repeat`` runs."""
    writer = AuditWriter(tempfile.mkdtemp(prefix="pgveil-session-cpu-"), mode="batched", interval=3600)

    async def measure() -> float:
        writer.start()
        sessions = [session(*CASES[case]) for _ in range(SESSIONS)]
        queries = [pb.q(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i * 7919 % 100_000 + 1};")
                   for i in range(transactions)]

        def carry_out(s: Session, commands: list) -> None:
            for command in commands:
                if type(command) is WriteAudit:
                    if write:
                        metrics.observe(command.record)
                        writer.submit(command.record)
                    if command.durable:
                        carry_out(s, s.handle(AuditDurable(command.token)))

        def once() -> None:
            for i in range(transactions):
                s = sessions[i % SESSIONS]
                carry_out(s, s.handle(ClientData(queries[i])))
                carry_out(s, s.handle(ServerData(ANSWER)))
                if i % 4 == 3:
                    writer._flush()  # the writer's turn of the loop
            writer._flush()

        once()  # warm: caches, the sessions' first decisions
        best = float("inf")
        for _ in range(repeat):
            started = time.thread_time()
            once()
            best = min(best, time.thread_time() - started)
        if profile:
            cProfile.runctx("once()", globals(), {"once": once}, "/tmp/pgveil-session-cpu.prof")
            pstats.Stats("/tmp/pgveil-session-cpu.prof").sort_stats("tottime").print_stats(30)
        await writer.close()
        return best / transactions * 1e6

    return asyncio.run(measure())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--transactions", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", default="", help="a case to profile (cProfile, with the records written)")
    args = parser.parse_args()
    print(f"{'us of CPU per transaction':26s} {'session':>8s} {'+ records':>10s}")
    for case in args.cases.split(","):
        alone = run(case, args.transactions, args.repeat, write=False)
        written = run(case, args.transactions, args.repeat, write=True, profile=case == args.profile)
        print(f"{case:26s} {alone:8.1f} {written:10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
