"""The policy's vocabulary (proxy/verdicts.py): every refusal carries a reason code, the named
constructors say what the session used to write by hand, the audit records the code and the
metrics count refusals by it (no English read).  Pure: no network."""

import ast
from pathlib import Path

import pytest

from policy_fixture import HERE, fixture_catalog, fixture_rules, parse_cases
from proxy import metrics, policy, rewrite, verdicts
from proxy.audit import records
from proxy.policy import Context, Engine, decide, failed_analysis
from proxy.verdicts import Decision, Reason, Refusal

RULES = fixture_rules()
CATALOG = fixture_catalog()
REFUSED_CASES = [c for c in parse_cases((HERE / "policy_cases.txt").read_text()) if c[3].startswith("!")]
PROXY = Path(__file__).resolve().parent.parent / "proxy"


def test_the_vocabulary_is_one_set_of_classes_wherever_it_is_imported_from():
    for name in ("Decision", "Context", "Refusal", "NotUnderstood", "ColumnUse"):
        assert getattr(policy, name) is getattr(verdicts, name)
        if name != "Decision":
            assert getattr(rewrite, name) is getattr(verdicts, name)


@pytest.mark.parametrize("line, sql, tier, expected", REFUSED_CASES, ids=[f"L{c[0]}-{c[2]}" for c in REFUSED_CASES])
def test_every_refusal_of_the_fixtures_has_a_reason_code(line, sql, tier, expected):
    decision = decide(sql, Context(RULES.tier(tier), RULES, CATALOG))
    assert decision.refused and f"! {decision.reason}" == expected
    assert isinstance(decision.code, Reason) and decision.code is not Reason.OTHER, decision.reason


def test_refusal_codes_follow_the_kind_of_refusal():
    def code(sql, tier):
        return decide(sql, Context(RULES.tier(tier), RULES, CATALOG)).code
    assert code("SELECT bank_card FROM customers", "sales") is Reason.NOT_VISIBLE
    assert code("SELECT * FROM customers", "production") is Reason.NOT_VISIBLE
    assert code("DO $$ BEGIN END $$", "sales") is Reason.DO
    assert code("SELECT pg_read_file('/etc/passwd')", "sales") is Reason.FUNCTION
    assert code("SELECT FROM WHERE (", "sales") is Reason.NOT_UNDERSTOOD
    assert code("DROP TABLE customers", "sales") is Reason.STATEMENT_KIND


def test_every_refusal_raised_in_the_engine_names_its_code():
    """A ``Refusal(...)`` written without a code would be counted as ``other``: none may be."""
    missing = []
    for path in sorted(PROXY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Refusal" \
                    and len(node.args) < 2 and not any(k.arg == "code" for k in node.keywords):
                missing.append(f"{path.name}:{node.lineno}")
    assert missing == []


CONSTRUCTED = [
    (Refusal.audit_unavailable(), "58030", Reason.AUDIT),
    (Refusal.catalog_not_loaded(), "57P03", Reason.CATALOG),
    (Refusal.analysis_failed("RecursionError: deep"), "42501", Reason.ANALYSIS_FAILED),
    (Refusal.function_call("sales"), "42501", Reason.MESSAGE),
    (Refusal.unreadable_encoding("client_encoding SJIS cannot be read"), "42501", Reason.ENCODING),
    (Refusal.invalid_encoding("UTF8"), "22021", Reason.ENCODING),
    (Refusal.untranslatable("LATIN1"), "22P05", Reason.ENCODING),
    (Refusal.nonstandard_strings(), "42501", Reason.ENCODING),
    (Refusal.search_path_unreadable('"$user", x y', "it does not parse"), "42501", Reason.SEARCH_PATH),
    (Refusal.search_path_unknown(), "42501", Reason.SEARCH_PATH),
    (Refusal.purpose_not_alone(), "42501", Reason.PURPOSE),
    (Refusal.prepared_limit(16), "54000", Reason.PREPARED_LIMIT),
    (Refusal.undeclared('cursor "c" was not declared', "sales"), "42501", Reason.UNDECLARED),
    (Refusal.access_changed('portal "p" was opened under other access'), "42501", Reason.ACCESS_CHANGED),
    (Refusal.revoked("alice", "abc123"), "28000", Reason.REVOKED),
]


@pytest.mark.parametrize("refusal, sqlstate, code", CONSTRUCTED, ids=[c[2].value + "-" + c[1] for c in CONSTRUCTED])
def test_named_constructors_give_the_sqlstate_code_and_a_refused_decision(refusal, sqlstate, code):
    decision = refusal.decision(kinds=("read",))
    assert (refusal.sqlstate, refusal.code) == (sqlstate, code)
    assert decision.refused and decision.sql == "" and decision.kinds == ("read",)
    assert (decision.sqlstate, decision.code, decision.reason_code, decision.reason) == \
        (sqlstate, code, code, str(refusal))
    assert str(refusal) and "\n" not in str(refusal)


def test_named_constructors_keep_the_messages_clients_saw_before():
    assert str(Refusal.audit_unavailable()) == \
        "pgveil cannot write its audit journal, so it refuses statements until it can"
    assert str(Refusal.prepared_limit(16)).startswith("pgveil keeps at most 16 MB of prepared statement text")
    assert str(Refusal.undeclared("x", "sales")) == "x (tier sales)"


def test_the_engine_refusals_it_builds_itself_carry_codes():
    engine = Engine(RULES, None)
    assert engine.decide("SELECT 1", RULES.tier("sales"), ("$user", "public"), "u").code is Reason.CATALOG
    assert failed_analysis("SELECT 1", RULES.tier("sales"), RecursionError("deep")).code is Reason.ANALYSIS_FAILED


def test_a_refusal_built_without_a_code_is_named_by_its_sqlstate_or_other():
    assert Decision("refuse", "", sqlstate="58030").reason_code == Reason.AUDIT
    assert Decision("refuse", "", sqlstate="42501").reason_code == Reason.OTHER


def test_reason_values_keep_the_metric_labels_dashboards_saw():
    before = {"not_visible", "not_understood", "statement_kind", "function", "write", "audit", "catalog", "setting",
              "copy", "do", "create", "other"}
    assert before <= {r.value for r in Reason}


# ----------------------------------------------------------------------------- audit and metrics
WHO = {"session": "s1", "user": "u", "tier": "sales"}


def test_the_audit_records_a_refusals_code_and_only_a_refusals():
    refused = records.statement(WHO, "s1-1", "SELECT 1", "simple", Refusal.audit_unavailable().decision(), "v1")
    allowed = records.statement(WHO, "s1-2", "SELECT 1", "simple", Decision("allow", "SELECT 1"), "v1")
    by_hand = records.statement(WHO, "s1-3", "SELECT 1", "simple", Decision("refuse", "", sqlstate="58030"), "v1")
    assert refused["reason_code"] == "audit" and type(refused["reason_code"]) is str
    assert "reason_code" not in allowed
    assert by_hand["reason_code"] == "audit"


def _refusals(tier: str, reason: str) -> float:
    metrics.flush()
    value = metrics.REGISTRY.get_sample_value("pgveil_refusals_total", {"tier": tier, "reason": reason})
    return value or 0.0


def _parse_failures(tier: str) -> float:
    metrics.flush()
    return metrics.REGISTRY.get_sample_value("pgveil_parse_failures_total", {"tier": tier}) or 0.0


def test_metrics_count_refusals_by_the_records_code_not_its_words():
    tier = "verdicts-test"
    before = (_refusals(tier, "function"), _refusals(tier, "audit"), _refusals(tier, "other"), _parse_failures(tier))
    base = {"type": "statement", "tier": tier, "decision": "refuse", "kinds": []}
    # the words would have said "function" (old reason_class): the code says "audit"
    metrics.observe({**base, "id": "v-1", "reason": "a function could not write the audit journal",
                     "reason_code": "audit"})
    metrics.observe({**base, "id": "v-2", "reason": "column t.c is not visible", "reason_code": "function"})
    metrics.observe({**base, "id": "v-3", "reason": "is not visible"})  # a record without a code
    metrics.observe({**base, "id": "v-4", "reason": "pgveil could not analyze this statement: x",
                     "reason_code": "analysis_failed"})
    after = (_refusals(tier, "function"), _refusals(tier, "audit"), _refusals(tier, "other"), _parse_failures(tier))
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1, 1]
    assert not hasattr(metrics, "reason_class")
