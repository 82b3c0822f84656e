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
