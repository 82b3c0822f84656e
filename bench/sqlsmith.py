"""Random SQL through pgveil: sqlsmith (Debian's package) against the sample CRM (issue 13).

sqlsmith reads the schema and the catalog, then sends random, formatted, deeply nested queries
(and some INSERT/UPDATE/DELETE/MERGE, each in a transaction it rolls back).  With the same seed
it sends the same queries, so it runs straight to PostgreSQL and through pgveil as an all-clear
tier (dba) and a masking tier (sales), and the runs are compared:

- nothing stalls: every run ends within its deadline, and a heartbeat session (``SELECT 1``
  through pgveil every 50 ms) keeps answering; its worst latency is reported;
- no session breaks: sqlsmith marks a lost connection ('c' in its progress line);
- pgveil never answers with an internal error (XX000);
- the error histogram (SQLSTATE and first line of the message) through the all-clear tier is
  the one PostgreSQL gives directly.  A second direct run measures what varies by itself
  (TABLESAMPLE, random(), statement timeouts) and is allowed that much difference.

Errors are read from sqlsmith's --log-to database (its log.sql schema, created here).

    python bench/sqlsmith.py [--queries 3000] [--seed 20261203] [--keep]

``--keep`` appends each query that broke a session, stalled or got XX000 to
tests/fixtures/corpus/sqlsmith.sql, a regression case of the corpus tests.  Results go to
bench/results/sqlsmith.json.  tests/test_sqlsmith.py runs a small seeded run of this.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import RULES, TIER_PASSWORD, TIER_USERS, hba_lines, setup_database, start_with_rules  # noqa: E402
from proxy.pgcluster import Cluster, embedded_bin_dir, ensure_debian_package  # noqa: E402

INTERNAL = "XX000"
LOG_SCHEMA = """
CREATE TABLE instance (id bigserial PRIMARY KEY, rev text, target text, hostname text, version text, seed text,
                       t timestamptz DEFAULT now());
CREATE TABLE error (id bigint REFERENCES instance(id), msg text, query text, sqlstate text, target text,
                    t timestamptz DEFAULT now());
CREATE TABLE stat (id bigint, generated bigint, level float8, nodes float8, retries float8, impedance text,
                   updated timestamptz);
"""
RUNS = {"direct": None, "dba": "dba_sun", "sales": "sales_li", "direct again": None}


@dataclass
class Run:
    """One sqlsmith run: its progress marks, its errors, and how it ended."""

    name: str
    seed: int
    queries: int
    returncode: int | None = None
    seconds: float = 0.0
    progress: str = ""
    tail: str = ""
    errors: list = field(default_factory=list)  # (sqlstate, first line, query)
    heartbeat_worst_ms: float | None = None

    @property
    def broken(self) -> int:
        return self.progress.count("c")

    @property
    def stalled(self) -> bool:
        return self.returncode is None

    def histogram(self) -> collections.Counter:
        return collections.Counter(f"{state} {line}" for state, line, _ in self.errors)


def sqlsmith_binary() -> str:
    found = ensure_debian_package("sqlsmith", "sqlsmith")
    if found is None:
        raise RuntimeError("sqlsmith is not installed (apt-get install sqlsmith)")
    return found


def start(customers: int = 500, audit_mode: str = "strict"):
    """A cluster with the sample CRM, the tier users and sqlsmith's log database; pgveil in front."""
    cluster = Cluster(embedded_bin_dir(), hba=hba_lines())
    cluster.start()
    setup_database(cluster, customers)
    cluster.psql("\n".join(f"CREATE ROLE {user} LOGIN PASSWORD '{TIER_PASSWORD}';" for user in TIER_USERS))
    cluster.psql("\n".join(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {user};"
                           for user in TIER_USERS), "crm")
    cluster.psql("CREATE DATABASE smithlog")
    cluster.psql(LOG_SCHEMA, "smithlog")
    rules = Path(tempfile.mkdtemp(prefix="pgveil-sqlsmith-")) / "rules.yaml"
    proxy = start_with_rules(cluster, rules, RULES.read_text(), "--audit-mode", audit_mode)
    return cluster, proxy


def conninfo(port: int, user: str, password: str, database: str = "crm") -> str:
    return f"host=127.0.0.1 port={port} dbname={database} user={user} password={password} sslmode=disable"


def heartbeat(proxy, stop: threading.Event, worst: list) -> None:
    """SELECT 1 through pgveil every 50 ms while sqlsmith runs; the worst latency in ms."""
    import psycopg
    with psycopg.connect(proxy.dsn("dba_sun", TIER_PASSWORD), autocommit=True) as conn:
        while not stop.is_set():
            began = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            worst[0] = max(worst[0], (time.perf_counter() - began) * 1000)
            stop.wait(0.05)


def run_sqlsmith(cluster, proxy, name: str, user: str | None, seed: int, queries: int, deadline: float) -> Run:
    run = Run(name, seed, queries)
    if user is None:
        target = conninfo(cluster.port, "dba_sun", TIER_PASSWORD)
    else:
        target = conninfo(proxy.port, user, TIER_PASSWORD)
    log = conninfo(cluster.port, cluster.superuser, cluster.password, "smithlog")
    before = int(cluster.psql("SELECT coalesce(max(id), 0) FROM instance", "smithlog").strip())
    stop, worst = threading.Event(), [0.0]
    beat = threading.Thread(target=heartbeat, args=(proxy, stop, worst), daemon=True)
    beat.start()
    began = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sqlsmith_binary(), f"--target={target}", f"--log-to={log}", f"--seed={seed}",
                                  f"--max-queries={queries}", "--verbose"], stdout=subprocess.DEVNULL, stderr=err,
                                 text=True)
        try:
            run.returncode = child.wait(deadline)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        run.seconds = time.monotonic() - began
        stop.set()
        beat.join(5)
        run.heartbeat_worst_ms = round(worst[0], 1)
        err.seek(0)
        text = err.read()
    run.progress = "".join(line for line in text.splitlines() if line and set(line) <= set(".ecst"))
    run.tail = text[-2000:]
    import psycopg
    with psycopg.connect(cluster.dsn(database="smithlog")) as conn:
        rows = conn.execute("SELECT coalesce(sqlstate, '?????'), split_part(msg, E'\\n', 1), query FROM error "
                            "WHERE id > %s ORDER BY t", (before,)).fetchall()
    run.errors = [(state, first.strip(), query) for state, first, query in rows]
    return run


def compare(direct: Run, again: Run, other: Run) -> dict:
    """How far ``other``'s histogram is from direct's, against how far direct is from itself."""
    a, b, c = direct.histogram(), again.histogram(), other.histogram()
    noise = sum(((a - b) + (b - a)).values())
    keys = set(a) | set(c)
    differences = {k: (a.get(k, 0), c.get(k, 0)) for k in sorted(keys) if a.get(k, 0) != c.get(k, 0)}
    return {"noise": noise, "distance": sum(abs(x - y) for x, y in differences.values()),
            "differences": differences}


def failures(run: Run) -> list[tuple[str, str]]:
    """(what, query) for every query that got an internal error or broke the session."""
    found = [(f"{state} {line}", query) for state, line, query in run.errors
             if state == INTERNAL or "pgveil internal" in line]
    found += [(f"session broke: {state} {line}", query) for state, line, query in run.errors
              if state.startswith("08") or "server closed the connection" in line or "connection" in line.lower()
              and "terminat" in line.lower()]
    return found


def keep(run: Run, cases: list[tuple[str, str]]) -> None:
    """Append failing queries to the corpus as regression cases (tests/test_corpus.py replays them)."""
    if not cases:
        return
    path = ROOT / "tests" / "fixtures" / "corpus" / "sqlsmith.sql"
    with open(path, "a", encoding="utf-8", newline="") as f:
        for what, query in cases:
            header = f"sqlsmith | seed {run.seed}, through the {run.name} tier: {what}"[:300].replace("\n", " ")
            f.write(f"-- corpus: {header}\n{query}\n")


def report(runs: dict[str, Run]) -> dict:
    out = {"runs": {}, "comparisons": {}}
    for name, run in runs.items():
        states = collections.Counter(state for state, _, _ in run.errors)
        out["runs"][name] = {"seconds": round(run.seconds, 1), "returncode": run.returncode, "stalled": run.stalled,
                             "broken": run.broken, "errors": len(run.errors), "internal": states.get(INTERNAL, 0),
                             "by_sqlstate": dict(states.most_common()), "heartbeat_worst_ms": run.heartbeat_worst_ms,
                             "failures": failures(run)}
        print(f"{name:13} {run.seconds:6.1f}s  rc={run.returncode}  errors={len(run.errors)}  broken={run.broken}  "
              f"XX000={states.get(INTERNAL, 0)}  heartbeat worst={run.heartbeat_worst_ms} ms")
    print("\nerrors by SQLSTATE:")
    states = sorted({s for run in runs.values() for s, _, _ in run.errors})
    print(f"{'sqlstate':9}" + "".join(f"{name:>14}" for name in runs))
    for state in states:
        print(f"{state:9}" + "".join(f"{sum(1 for s, _, _ in run.errors if s == state):>14}" for run in runs.values()))
    direct, again = runs["direct"], runs["direct again"]
    for name in ("dba", "sales"):
        result = compare(direct, again, runs[name])
        out["comparisons"][name] = {**result, "differences": {k: list(v) for k, v in result["differences"].items()}}
        print(f"\n{name} vs direct: {result['distance']} errors differ (direct vs direct: {result['noise']})")
        for key, (x, y) in list(result["differences"].items())[:25]:
            print(f"  direct {x:4}  {name} {y:4}  {key[:110]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for one run")
    parser.add_argument("--audit-mode", default="strict", choices=("strict", "batched", "off"))
    parser.add_argument("--keep", action="store_true", help="append failing queries to the corpus")
    args = parser.parse_args()
    cluster, proxy = start(audit_mode=args.audit_mode)
    try:
        runs = {name: run_sqlsmith(cluster, proxy, name, user, args.seed, args.queries, args.deadline)
                for name, user in RUNS.items()}
        print(f"sqlsmith --seed={args.seed} --max-queries={args.queries}, sample CRM, rules/crm.yaml, "
              f"audit {args.audit_mode}\n")
        result = report(runs)
        if args.keep:
            for name in ("dba", "sales"):
                keep(runs[name], failures(runs[name]))
    finally:
        proxy.stop()
        cluster.destroy()
    result.update(seed=args.seed, queries=args.queries, command=" ".join(sys.argv))
    out = ROOT / "bench" / "results" / "sqlsmith.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    bad = any(r["stalled"] or r["broken"] or r["internal"] for r in result["runs"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
