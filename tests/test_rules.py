"""Rules v1: loading, validation with file and line, identities (users, roles, networks)."""

import pytest

from proxy.rules import EXAMPLE, RuleError, load_rules


def test_example_loads_with_a_stable_version():
    first, again = load_rules(EXAMPLE, "a.yaml"), load_rules(EXAMPLE, "b.yaml")
    assert first.version == again.version and len(first.version) == 12
    assert set(first.tiers) == {"customer_service", "sales", "production", "auditor", "dba"}


@pytest.mark.parametrize("text, where, words", [
    ("version: 1\ntiers:\n  a:\n    see: {nope: clear}\n", 4, "unknown class 'nope'"),
    ("version: 1\ntiers:\n  a:\n    sees: {}\n", 4, "unknown key 'sees'"),
    ("version: 1\ntiers:\n  a: {statements: [read, fly]}\n", 3, "unknown statement kind 'fly'"),
    ("version: 1\ntiers:\n  a:\n    rows: {public.c: \"grade <> \"}\n", 4, "row filter does not parse"),
    ("version: 1\ntiers:\n  a: {}\nidentities:\n  - {user: x, tier: b}\n", 5, "unknown tier 'b'"),
    ("version: 1\ntiers:\n  a: {}\nidentities:\n  - {user: x, tier: a, networks: [10.0.0.300/8]}\n", 5,
     "is not a network"),
    ("version: 1\nclasses:\n  c: {mask: {fn: shred}}\ntiers: {}\n", 3, "unknown mask function 'shred'"),
    ("version: 2\ntiers: {}\n", 1, "unsupported rules version"),
    ("version: 1\ntiers: [\n", 3, "invalid YAML"),
])
def test_errors_name_file_line_and_problem(text, where, words):
    with pytest.raises(RuleError) as info:
        load_rules(text, "rules.yaml")
    assert info.value.line == where and words in info.value.message
    assert str(info.value).startswith(f"rules.yaml:{where}: ")


def test_identities_first_match_roles_and_networks():
    rules = load_rules("""
version: 1
tiers: {partner: {}, staff: {}, fallback: {}}
identities:
  - {user: "partner_*", tier: partner, networks: [192.0.2.0/24, "2001:db8::/32"]}
  - {member_of: crm_staff, tier: staff}
default: fallback
""", "r.yaml")
    assert rules.tier_for("partner_acme", address="192.0.2.15").name == "partner"
    assert rules.tier_for("partner_acme", address="2001:db8::1").name == "partner"
    assert rules.tier_for("partner_acme", address="198.51.100.7").name == "fallback"  # not from its network
    assert rules.tier_for("partner_acme", address="").name == "fallback"  # a Unix socket has no address
    assert rules.tier_for("li", frozenset({"crm_staff"})).name == "staff"


def test_json_schema_accepts_the_example_files_and_rejects_what_the_loader_rejects():
    import json
    from pathlib import Path

    import jsonschema
    import yaml

    root = Path(__file__).resolve().parent.parent
    schema = json.loads((root / "rules" / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in [root / "rules" / "crm.yaml", root / "tests" / "fixtures" / "policy_rules.yaml"]:
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path
    assert list(validator.iter_errors(yaml.safe_load(EXAMPLE))) == []
    assert "schema.json" in (root / "rules" / "crm.yaml").read_text()  # editors find it
    for bad in ("version: 1\ntiers:\n  a:\n    sees: {}\n", "version: 1\ntiers: {a: {statements: [fly]}}\n",
                "version: 1\ntiers: {}\nidentities: [{tier: a}]\n"):
        assert list(validator.iter_errors(yaml.safe_load(bad))), bad


def _with_grant(grant: str, extra: str = "") -> str:
    return EXAMPLE.replace("default: deny", "default: deny\n" + extra + "grants:\n  - " + grant)


@pytest.mark.parametrize("grant, words", [
    ("{user: u, see: {id_number: clear}, until: '2026-12-01T18:00:00+08:00', approved_by: [a]}", "missing 'reason'"),
    ("{user: u, see: {id_number: clear}, until: '2026-12-01T18:00:00+08:00', reason: x}", "missing 'approved_by'"),
    ("{user: u, see: {id_number: clear}, until: '2026-12-01T18:00:00+08:00', reason: ' ', approved_by: [a]}",
     "must not be empty"),
    ("{user: u, see: {id_number: clear}, until: '2026-12-01T18:00:00', reason: x, approved_by: [a]}",
     "needs a time zone"),
    ("{user: u, see: {id_number: clear}, from: '2026-11-20T00:00:00Z', until: '2026-12-01T00:00:00Z', "
     "reason: x, approved_by: [a]}", "longer than 3 days"),
    ("{user: u, tier: nope, until: '2026-12-01T00:00:00Z', reason: x, approved_by: [a]}", "unknown tier 'nope'"),
    ("{user: u, see: {id_number: clear}, tier: sales, until: '2026-12-01T00:00:00Z', reason: x, approved_by: [a]}",
     "either 'see' or 'tier'"),
])
def test_grant_validation(grant, words):
    with pytest.raises(RuleError, match=words):
        load_rules(_with_grant(grant), "g.yaml")


def test_grant_without_from_is_measured_from_loading():
    from datetime import datetime, timezone
    text = _with_grant("{user: u, see: {id_number: clear}, until: '2026-12-01T00:00:00Z', reason: x, approved_by: [a]}")
    load_rules(text, "g.yaml")  # without a clock nothing to compare with
    with pytest.raises(RuleError, match="longer than 3 days"):
        load_rules(text, "g.yaml", now=datetime(2026, 11, 20, tzinfo=timezone.utc))
    ok = load_rules(text.replace("grants:", "max_grant_days: 14\ngrants:"), "g.yaml",
                    now=datetime(2026, 11, 20, tzinfo=timezone.utc))
    assert len(ok.grants) == 1


def test_grants_open_and_close_in_time():
    from datetime import datetime, timezone
    rules = load_rules(_with_grant("{user: sales_li, see: {id_number: clear}, from: '2026-11-22T08:00:00Z', "
                                   "until: '2026-11-22T09:00:00Z', reason: CS-1042, approved_by: [li_na, wang_fang]}"))
    at = lambda hour, minute=0: datetime(2026, 11, 22, hour, minute, tzinfo=timezone.utc)  # noqa: E731
    assert rules.effective_tier("sales_li", now=at(7, 59))[0].action("id_number").action == "mask"
    tier, grants = rules.effective_tier("sales_li", now=at(8, 30))
    assert tier.action("id_number").action == "clear" and tier.action("bank_card").action == "block"
    assert "CS-1042" in grants[0].label() and "li_na, wang_fang" in grants[0].label()
    assert rules.effective_tier("sales_li", now=at(9))[0].action("id_number").action == "mask"


def test_tier_settings_widen_the_allow_list_and_are_validated():
    import json
    from pathlib import Path

    import jsonschema
    import yaml

    text = "version: 1\ntiers:\n  a:\n    settings: [work_mem, \"enable_*\"]\n"
    assert load_rules(text, "r.yaml").tier("a").settings == ("work_mem", "enable_*")
    schema = json.loads((Path(__file__).resolve().parent.parent / "rules" / "schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(text))) == []
    for bad, words in (("[backslash_quote]", "backslash_quote cannot be allowed: it changes how the server reads"),
                       ("[role]", "role cannot be allowed"), ("[\"a b\"]", "is not a setting name")):
        with pytest.raises(RuleError, match=words):
            load_rules(text.replace("[work_mem, \"enable_*\"]", bad), "r.yaml")
        assert list(validator.iter_errors(yaml.safe_load(text.replace("[work_mem, \"enable_*\"]", bad)))), bad
