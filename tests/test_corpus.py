"""Real-world SQL through the proxy: what ORMs, drivers, psql, pg_dump and admin tools send.

The corpus (tests/fixtures/corpus/*.sql, see generate.py there) is replayed statement by
statement, each as one simple Query in its own transaction (rolled back), on six sessions: two
straight to PostgreSQL, and through pgveil as an all-clear tier (dba), a masking tier (sales;
once more with the extended protocol) and a blocking tier (production).  For the all-clear tier
the answer must be the one PostgreSQL gives (the same rows, or the same SQLSTATE); for every
tier every statement is answered within a timeout, never with an internal error, and the
session still works after it; no ID, bank card or phone number reaches a tier that may not see it.

A statement whose two direct answers differ (now(), pg_stat_activity, a backend's pid) is
compared by its columns and SQLSTATE only.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from conftest import RULES, TIER_PASSWORD, start_with_rules

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
MARK = "-- corpus: "
TIMEOUT = 15.0  # seconds for one statement; the slowest direct one takes well under a second
TIERS = {"dba": "dba_sun", "masking": "sales_li", "blocking": "prod_wang"}
INTERNAL = "XX000"
GIVE_UP = 3  # timeouts after which a session's proxy is taken as hung
_DIGITS = re.compile(r"[0-9]{11,19}X?")  # phone, bank card and ID numbers in an answer
_COPY_OUT = re.compile(r"(?is)\s*COPY\b.*\bTO\s+STDOUT\b")


@dataclass(frozen=True)
class Entry:
    file: str
    header: str
    sql: str

    def __str__(self) -> str:
        return f"{self.file}: {self.header}\n{self.sql[:400]!r}"


def load_corpus() -> list[Entry]:
    """Every entry of every corpus file, in file order (see generate.py for the format)."""
    entries = []
    for path in sorted(CORPUS.glob("*.sql")):
        with open(path, encoding="utf-8", newline="") as f:  # CRLF kept as sent
            text = f.read()
        assert text.startswith(MARK), path
        for chunk in text[len(MARK):].split("\n" + MARK):
            header, _, sql = chunk.partition("\n")
            entries.append(Entry(path.name, header, sql.removesuffix("\n")))
    return entries


@dataclass
class Session:
    """One client session that replays the corpus and keeps every answer."""

    name: str
    dsn: str
    extended: bool = False  # Parse/Bind/Execute (binary results) in place of a simple Query
    conn: psycopg.AsyncConnection | None = None
    answers: list = field(default_factory=list)
    broken: list = field(default_factory=list)  # (entry, what happened)

    async def connect(self) -> None:
        self.conn = await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=10, autocommit=True)

    async def _run(self, sql: str) -> tuple:
        results = []
        async with self.conn.cursor() as cur:
            await cur.execute("BEGIN")
            try:
                if _COPY_OUT.match(sql):
                    async with cur.copy(sql) as copy:
                        results.append(("copy", b"".join([bytes(block) async for block in copy])))
                else:
                    await cur.execute(sql, binary=True) if self.extended else await cur.execute(sql)
                    while True:
                        rows = await cur.fetchall() if cur.description else None
                        columns = [d.name for d in cur.description] if cur.description else None
                        results.append((cur.statusmessage, columns, rows))
                        if not cur.nextset():
                            break
                answer = ("ok", tuple(map(repr, results)))
            except psycopg.DatabaseError as exc:
                answer = ("error", exc.sqlstate or type(exc).__name__)
            await cur.execute("ROLLBACK")  # writes undone
            await cur.execute("SELECT 1")  # and the session still answers
            assert (await cur.fetchall()) == [(1,)]
        return answer

    async def replay(self, entry: Entry) -> None:
        """Run one statement; a timeout or a dead session is recorded, and a new session started.
        After a few timeouts the proxy is taken as hung and the session gives up (the rest not run)."""
        if self.conn is None or sum("TimeoutError" in what for _, what in self.broken) >= GIVE_UP:
            self.broken.append((entry, "not run: the proxy stopped answering"))
            self.answers.append(("broken", "not run"))
            return
        try:
            answer = await asyncio.wait_for(self._run(entry.sql), TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError, psycopg.Error, AssertionError) as exc:
            self.broken.append((entry, f"{type(exc).__name__}: {exc}"))
            self.answers.append(("broken", type(exc).__name__))
            await self.conn.close()
            self.conn = None
            try:
                await self.connect()
            except psycopg.Error as exc:
                self.broken.append((entry, f"no new session: {exc}"))
            return
        self.answers.append(answer)


def columns_of(answer: tuple) -> tuple:
    """An answer without its rows: the column names and status of each result, or the SQLSTATE."""
    if answer[0] != "ok":
        return answer
    return ("ok", tuple(re.sub(r"\[\(.*\)\]\)$", "rows)", result, flags=re.S) for result in answer[1]))


async def recheck(entries: list[Entry], trio: list[Session]) -> None:
    """The dba's answers that differ from two equal direct ones, once more one session at a time:
    statements on pg_stat_activity see the other sessions, which ran at the same moment."""
    direct, dba, again = trio
    for i, entry in enumerate(entries):
        if direct.answers[i] == again.answers[i] != dba.answers[i] and dba.answers[i][0] != "broken":
            answers = []
            for session in trio:
                await session.replay(entry)
                answers.append(session.answers.pop())
            for session, answer in zip(trio, answers):
                session.answers[i] = answer


@pytest.fixture(scope="module")
async def replayed(pg, tier_users, tmp_path_factory):
    """The corpus replayed on all five sessions."""
    proxy = start_with_rules(pg, tmp_path_factory.mktemp("corpus") / "rules.yaml", RULES.read_text())
    sessions = {"direct": Session("direct", pg.dsn(TIERS["dba"], TIER_PASSWORD, "crm")),
                "direct again": Session("direct again", pg.dsn(TIERS["dba"], TIER_PASSWORD, "crm"))}
    sessions.update({tier: Session(tier, proxy.dsn(user, TIER_PASSWORD)) for tier, user in TIERS.items()})
    sessions["masking, extended"] = Session("masking, extended", proxy.dsn(TIERS["masking"], TIER_PASSWORD), True)
    entries = load_corpus()
    try:
        for session in sessions.values():
            await session.connect()
        for entry in entries:  # the sessions run each statement at the same time, then the next
            await asyncio.gather(*(session.replay(entry) for session in sessions.values()))
        await recheck(entries, [sessions[name] for name in ("direct", "dba", "direct again")])
        async with await psycopg.AsyncConnection.connect(pg.dsn(database="crm")) as conn:
            cursor = await conn.execute("SELECT id_number, bank_card, phone FROM customers")
            secrets = await cursor.fetchall()
        yield entries, sessions, secrets
    finally:
        for session in sessions.values():
            if session.conn is not None:
                await session.conn.close()
        proxy.stop()


def test_corpus_is_large_and_varied():
    entries = load_corpus()
    assert len(entries) >= 300
    files = {entry.file for entry in entries}
    assert {"sqlalchemy.sql", "django.sql", "pgjdbc.sql", "psql.sql", "pg_dump.sql", "asyncpg.sql", "psycopg.sql",
            "apps_from_source.sql", "reports.sql"} <= files
    assert any("-- first customers" in entry.sql for entry in entries)
    assert any("\r\n" in entry.sql for entry in entries) and any("\t" in entry.sql for entry in entries)


@pytest.mark.parametrize("tier", ["direct", *TIERS, "masking, extended"])
async def test_every_statement_is_answered(replayed, tier):
    entries, sessions, _ = replayed
    broken = sessions[tier].broken
    assert not broken, f"{len(broken)} statements stalled or broke the {tier} session, first:\n" + \
        "\n\n".join(f"{entry}\n-> {what}" for entry, what in broken[:5])


@pytest.mark.parametrize("tier", [*TIERS, "masking, extended"])
async def test_no_internal_error(replayed, tier):
    entries, sessions, _ = replayed
    internal = [entry for entry, answer in zip(entries, sessions[tier].answers) if answer == ("error", INTERNAL)]
    assert not internal, f"{len(internal)} internal errors for {tier}, first:\n" + "\n\n".join(map(str, internal[:5]))


async def test_all_clear_tier_answers_as_postgres(replayed):
    entries, sessions, _ = replayed
    direct, again, dba = (sessions[name].answers for name in ("direct", "direct again", "dba"))
    different = []
    for entry, first, second, through in zip(entries, direct, again, dba):
        if first == second:  # a stable answer: it must be the same through pgveil
            if through != first:
                different.append((entry, first, through))
        elif columns_of(through) not in (columns_of(first), columns_of(second)):
            different.append((entry, columns_of(first), columns_of(through)))
    assert not different, f"{len(different)} statements answered differently for the dba, first:\n" + "\n\n".join(
        f"{entry}\ndirect: {str(a)[:300]}\npgveil: {str(b)[:300]}" for entry, a, b in different[:5])
    stable = sum(a == b for a, b in zip(direct, again))
    assert stable > len(entries) * 0.8, "most answers should be comparable row for row"


@pytest.mark.parametrize("tier, columns", [("masking", ("id_number", "bank_card")),
                                           ("masking, extended", ("id_number", "bank_card")),
                                           ("blocking", ("id_number", "bank_card", "phone"))])
async def test_protected_values_never_reach_a_restricted_tier(replayed, tier, columns):
    """No answer of the corpus (rows, COPY data, error texts) holds a value the tier may not see."""
    entries, sessions, secrets = replayed
    index = {"id_number": 0, "bank_card": 1, "phone": 2}
    values = {row[index[c]].strip() for row in secrets for c in columns if row[index[c]]}
    assert len(values) > 500
    seen = [(entry, value) for entry, answer in zip(entries, sessions[tier].answers)
            for value in values.intersection(_DIGITS.findall(str(answer))) if value not in entry.sql]
    assert not seen, f"{len(seen)} protected values reached {tier}, first: " + "\n".join(
        f"{entry}: {value}" for entry, value in seen[:5])
