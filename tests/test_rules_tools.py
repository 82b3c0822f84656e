"""pgveil diff, report entitlements and discover on the sample CRM."""

import csv
import io
import subprocess
import sys

from conftest import ROOT, RULES


def pgveil(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=ROOT)


def test_diff_shows_what_changes_for_whom(pg, tmp_path):
    new = tmp_path / "new.yaml"
    new.write_text(RULES.read_text()
                   .replace("see: {person_name: clear, phone: clear, address: clear, id_number: mask, bank_card: mask}"
                            "\n    statements: [read]\n",
                            "see: {person_name: clear, phone: mask, address: clear, id_number: mask, bank_card: block}"
                            "\n    statements: [read]\n")
                   .replace('  - {user: "partner_*", tier: third_party}\n', ""))
    result = pgveil("diff", str(RULES), str(new), "--catalog-dsn", pg.dsn(database="crm"), "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["tier", "column", "before", "after"]
    changes = {(r[0], r[1]): (r[2], r[3]) for r in rows[1:]}
    assert changes[("sales", "public.customers.bank_card (bank_card)")] == (
        "mask partial(6,4); rows where grade = 'ordinary'", "block; rows where grade = 'ordinary'")
    assert changes[("sales", "public.customers.phone (phone)")][1].startswith("mask partial(3,4)")
    assert ("(identities)", "user partner_* -> third_party") in changes
    assert not any(tier == "customer_service" for tier, _ in changes)  # nobody else is touched
    same = pgveil("diff", str(RULES), str(RULES))
    assert same.returncode == 0 and "no change" in same.stdout


def test_report_entitlements_for_the_periodic_review(pg, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.read_text() + """grants:
  - user: zhang_wei
    see: {id_number: clear}
    from: 2026-01-01T09:00:00+08:00
    until: 2026-01-03T18:00:00+08:00
    reason: "CS-1042 identity check for a refund"
    approved_by: [li_na, wang_fang]
""")
    result = pgveil("report", "entitlements", str(rules), "--catalog-dsn", pg.dsn(database="crm"))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "| user sales_* | sales |" in text and "| (anyone else) | deny |" in text
    assert "| admin_office | copy, read | public.customers.id_number (id_number) | mask partial(6,4) |" in text
    assert "| production | read | public.customers.phone (phone) | not reachable (tables) |" in text
    assert "| #1 | zhang_wei | id_number: clear |" in text and "| no | CS-1042" in text  # expired
    as_csv = pgveil("report", "entitlements", str(rules), "--format", "csv")
    assert as_csv.returncode == 0 and "tier,statements,class,sees" in as_csv.stdout


def test_discover_suggests_classes_without_printing_values(pg):
    result = pgveil("discover", "--dsn", pg.dsn(database="crm"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "public.customers.id_number: id_number" in out
    assert "public.customers.bank_card: bank_card" in out
    assert "public.customers.phone: phone" in out
    assert "public.customers.name:" not in out and "public.customers.grade:" not in out
    from proxy import sampledata
    for row in sampledata.customers(20):
        assert row[3] not in out and row[4] not in out and row[2] not in out  # no sampled value shown
