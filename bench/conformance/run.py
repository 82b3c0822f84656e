"""Drivers' own test suites, direct and through pgveil, in the same run (``make conformance``).

"Changing nothing but host and port" is a claim other people's tests check better than ours.
This starts one PostgreSQL (proxy/pgcluster.py) and one pgveil in front of it that enforces
a rule file in which every user is in an all-clear tier (sees every class in clear, every
statement kind allowed: the tier for which pgveil must be invisible), with strict auditing,
pgveil's default.  Each suite then runs twice, direct and through pgveil, and the table shows
the counts and every test that passes only direct, with the first line of its error.

    python bench/conformance/run.py [--suites asyncpg,psycopg,sqlalchemy,node-postgres,jdbc,sqlsmith]
                                    [--test-timeout 60] [--time-limit 4200] [--work .conformance]
                                    [--asyncpg 0.32.0] [--psycopg 3.3.4 --psycopg-source GIT]
                                    [--sqlalchemy 2.1.9] [--node-postgres pg@8.23.0 --node-postgres-source GIT]
                                    [--jdbc debian] [--sqlsmith-queries 1000 --sqlsmith-seed 20261203]

pgjdbc's own suite is not run: its Gradle build fetches from Maven Central, which this
workplace cannot reach; bench/conformance/JdbcCheck.java, run with Debian's pgjdbc, covers the
JDBC paths instead (prepared and batched statements, metadata, COPY, cancel, notifications).

sqlsmith (Debian's) runs last, with a cluster of its own holding the sample CRM
(bench/conformance/smith.py): random SQL with one seed, direct, through pgveil's all-clear
tier and direct again, and its row compares the error histograms.

Writes bench/results/conformance.json and prints the table (markdown).  Everything it started
(PostgreSQL, pgveil, the suites' processes) is stopped when it ends, whatever the ending.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy.pgcluster import Cluster, embedded_bin_dir  # noqa: E402
from jdbc import JdbcSuite  # noqa: E402
from relay import PlainRelay  # noqa: E402
from smith import SqlsmithCheck  # noqa: E402
from node import NodePostgresSuite  # noqa: E402
from suites import AsyncpgSuite, PsycopgSuite, Run, SqlalchemySuite, Target  # noqa: E402
from tests.conftest import start_proxy  # noqa: E402

RULES = """\
# every user sees everything and may run every kind of statement: pgveil must be invisible
version: 1
tiers:
  all_clear:
    see: {"*": clear}
    statements: [read, write, ddl, copy, session, admin]
identities:
  - {user: "*", tier: all_clear}
default: deny
"""

# SQLAlchemy's PostgreSQL dialect tests that talk to the server most: reflection (the catalog
# queries of every ORM and migration tool), queries, the dialect's own round trips, upserts
SQLALCHEMY_TESTS = [f"test/dialect/postgresql/{name}.py" for name in
                    ("test_reflection", "test_query", "test_dialect", "test_on_conflict")]

# run before the suites: what their own set-up instructions ask of the database
DATABASE_SETUP = """
CREATE SCHEMA IF NOT EXISTS test_schema;
CREATE SCHEMA IF NOT EXISTS test_schema_2;
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE EXTENSION IF NOT EXISTS citext;
"""


def make_suites(args, work: Path) -> dict:
    factories = {
        "asyncpg": lambda: AsyncpgSuite(work, args.asyncpg, args.test_timeout),
        "psycopg": lambda: PsycopgSuite(work, args.psycopg, args.test_timeout, args.psycopg_source),
        "sqlalchemy": lambda: SqlalchemySuite(work, args.sqlalchemy, args.test_timeout, args.sqlalchemy_tests),
    }
    factories["node-postgres"] = lambda: NodePostgresSuite(work, args.node_postgres, args.test_timeout,
                                                           args.node_postgres_source)
    factories["jdbc"] = lambda: JdbcSuite(work, args.jdbc, args.test_timeout)
    factories["sqlsmith"] = lambda: SqlsmithCheck(args.sqlsmith_queries, args.sqlsmith_seed)
    unknown = set(args.suites) - set(factories)
    if unknown:
        raise SystemExit(f"unknown suites: {', '.join(sorted(unknown))} (known: {', '.join(factories)})")
    return {name: factories[name]() for name in args.suites}


def compare(direct: Run, veiled: Run) -> list[tuple[str, str]]:
    """Tests that pass direct and do not pass through pgveil, with pgveil's error line."""
    only = []
    for name, outcome in sorted(direct.outcomes.items()):
        if outcome.status != "passed":
            continue
        other = veiled.outcomes.get(name)
        if other is None:
            only.append((name, "not run through pgveil (the run stopped first)"))
        elif other.status != "passed":
            only.append((name, f"{other.status}: {other.message}"))
    return only


def again(suite, names: list[str], direct: Target, relay: Target, veiled: Target, deadline: float,
          rounds: int = 3) -> dict:
    """The tests that passed only direct, ``rounds`` times more each way, and through a plain TCP
    relay: {test: {"direct": passes, "relay": passes, "pgveil": passes}}."""
    if not names or not hasattr(suite, "rerun"):
        return {}
    counts = {name: {"direct": 0, "relay": 0, "pgveil": 0} for name in names}
    for _ in range(rounds):
        for label, target in (("direct", direct), ("relay", relay), ("pgveil", veiled)):
            if time.monotonic() > deadline:
                return counts
            run = suite.rerun(target, f"again-{label}", names, deadline)
            for name in names:
                outcome = run.outcomes.get(name)
                counts[name][label] += bool(outcome and outcome.status == "passed")
    return counts


def table(rows: list[dict]) -> str:
    lines = ["| suite | direct passed / failed | through pgveil passed / failed | passes only direct |",
             "| --- | ---: | ---: | --- |"]
    for row in rows:
        only = "; ".join(f"`{name if 'sqlsmith' in row else name.split('::')[-1]}` ({why}){rerun_note(row, name)}"
                         for name, why in row["only_direct"]) or "none"
        if "sqlsmith" in row:  # (its rows are error histogram entries, beside what differs by itself)
            only += f"; direct against direct again: {row['sqlsmith']['noise']} errors differ"
        only = only.replace("|", "\\|")
        lines.append(f"| {row['suite']} {row['version']} | {row['direct']['passed']} / {row['direct']['failed']} | "
                     f"{row['pgveil']['passed']} / {row['pgveil']['failed']} | {only} |")
    return "\n".join(lines)


def rerun_note(row: dict, name: str) -> str:
    counts = row.get("again", {}).get(name)
    if not counts:
        return ""
    return (f"; again: direct {counts['direct']}, plain relay {counts['relay']}, pgveil {counts['pgveil']} "
            f"passes")


def summary(run: Run) -> dict:
    return {"passed": run.count("passed"), "failed": run.count("failed"), "skipped": run.count("skipped"),
            "seconds": round(run.seconds, 1), "note": run.note}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="asyncpg,psycopg,sqlalchemy,node-postgres,jdbc,sqlsmith",
                        type=lambda s: [x for x in s.split(",") if x])
    parser.add_argument("--test-timeout", type=int, default=60, help="seconds for one test")
    parser.add_argument("--time-limit", type=float, default=4200, help="seconds for the whole run")
    parser.add_argument("--work", type=Path, default=ROOT / ".conformance")
    parser.add_argument("--asyncpg", default="0.32.0")
    parser.add_argument("--psycopg", default="3.3.4")
    parser.add_argument("--psycopg-source", default="https://github.com/psycopg/psycopg.git")
    parser.add_argument("--sqlalchemy", default="2.1.9")
    parser.add_argument("--sqlalchemy-tests", default=" ".join(SQLALCHEMY_TESTS),
                        help="what of SQLAlchemy's tests to run ('test/dialect/postgresql': all 10,000 of its "
                             "PostgreSQL dialect tests, over an hour each way on two busy cores)")
    parser.add_argument("--node-postgres", default="pg@8.23.0", help="a tag of the node-postgres repository")
    parser.add_argument("--node-postgres-source", default="https://github.com/brianc/node-postgres.git")
    parser.add_argument("--jdbc", default="debian", help="pgjdbc jar (debian: libpostgresql-jdbc-java's)")
    parser.add_argument("--sqlsmith-queries", type=int, default=1000)
    parser.add_argument("--sqlsmith-seed", type=int, default=20261203)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "conformance.json")
    args = parser.parse_args()
    # SIGTERM and SIGHUP end the run as Ctrl-C does: what it started is stopped on the way out
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    started = time.monotonic()
    deadline = started + args.time_limit
    args.work.mkdir(parents=True, exist_ok=True)
    suites = make_suites(args, args.work.resolve())
    smith = suites.pop("sqlsmith", None)  # its own cluster, with the sample CRM: after the others
    if smith is not None:
        print("preparing sqlsmith ...", flush=True)
        smith.prepare()
    for name, suite in suites.items():
        print(f"preparing {name} {suite.version} ...", flush=True)
        suite.prepare()

    cluster = Cluster(embedded_bin_dir(), settings={"max_prepared_transactions": "10"})
    proxy = relay_server = rules = None
    rows = []
    try:
        cluster.start()
        for statement in DATABASE_SETUP.strip().splitlines():
            try:
                cluster.psql(statement)
            except Exception as exc:  # an extension the server lacks: the tests that need it fail both ways
                print(f"  setup: {exc}".strip(), flush=True)
        rules = Path(tempfile.mkstemp(prefix="pgveil-conformance-", suffix=".yaml")[1])
        rules.write_text(RULES)
        proxy = start_proxy(cluster.port, "--upstream-sslmode", "disable", "--rules", str(rules),
                            "--catalog-dsn", cluster.dsn())
        direct = Target("127.0.0.1", cluster.port, cluster.superuser, cluster.password)
        relay_server = PlainRelay(cluster.port)
        relay = Target("127.0.0.1", relay_server.port, cluster.superuser, cluster.password)
        veiled = Target("127.0.0.1", proxy.port, cluster.superuser, cluster.password)
        for name, suite in suites.items():
            runs = {}
            for label, target in (("direct", direct), ("pgveil", veiled)):
                # direct may take half the time left, so that pgveil's run gets at least as long
                share = (deadline - time.monotonic()) / (2 if label == "direct" else 1)
                print(f"running {name} {label} ...", flush=True)
                runs[label] = suite.run(target, label, time.monotonic() + share)
                print(f"  {summary(runs[label])}", flush=True)
                if proxy.proc.poll() is not None:
                    raise RuntimeError(f"pgveil exited: {proxy.log()[-2000:]}")
            only = compare(runs["direct"], runs["pgveil"])
            rows.append({"suite": name, "version": suite.version, "direct": summary(runs["direct"]),
                         "pgveil": summary(runs["pgveil"]), "only_direct": only,
                         "only_pgveil": [n for n, _ in compare(runs["pgveil"], runs["direct"])],
                         "again": again(suite, [n for n, _ in only], direct, relay, veiled, deadline)})
    finally:
        if relay_server is not None:
            relay_server.close()
        if proxy is not None:
            proxy.stop()
        cluster.destroy()
        if rules is not None:
            rules.unlink(missing_ok=True)
    if smith is not None and time.monotonic() < deadline:
        rows.append(smith.row(deadline))
    elapsed = time.monotonic() - started
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seconds": round(elapsed),
              "tier": "all_clear (rules: every user, every class clear, every statement kind), audit strict",
              "suites": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['date']}, {elapsed / 60:.1f} min, pgveil tier: {report['tier']}\n")
    print(table(rows))
    print("\n(again: the tests that passed only direct, 3 times more each way and through a plain TCP relay)")
    return 0 if all(not row["only_direct"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
