"""psql, the binary shipped with the server, through the proxy."""

from conftest import CLEAR_PASSWORD, CLEAR_USER, MD5_PASSWORD, MD5_USER, TRUST_USER, run_psql


def test_query_and_describe(proxy, psql_bin):
    result = run_psql(psql_bin, proxy, "-At", "-c", "SELECT count(*) FROM customers", "-c", r"\d customers")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "500"
    assert any("id_number" in line and "character(18)" in line for line in lines)


def test_multi_statement_and_errors_keep_session(proxy, psql_bin):
    script = """
SELECT 1 AS one \\gset
SELECT :one + 1;
SELECT * FROM no_such_table;
BEGIN; SELECT 2; ROLLBACK;
SELECT 'still here';
"""
    result = run_psql(psql_bin, proxy, "-Atq", input=script)
    assert result.returncode == 0
    assert "relation \"no_such_table\" does not exist" in result.stderr
    assert result.stdout.split() == ["2", "2", "still", "here"]


def test_copy_both_ways(proxy, psql_bin, tmp_path):
    out = tmp_path / "orders.csv"
    result = run_psql(psql_bin, proxy, "-c", f"\\copy (SELECT * FROM orders ORDER BY id) TO '{out}' CSV")
    assert result.returncode == 0, result.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 1500 and rows[0].startswith("1,")
    script = f"""
CREATE TEMP TABLE orders_copy (LIKE orders);
\\copy orders_copy FROM '{out}' CSV
SELECT count(*), sum(quantity) = (SELECT sum(quantity) FROM orders) FROM orders_copy;
"""
    result = run_psql(psql_bin, proxy, "-At", input=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1500|t"


def test_auth_methods_relay(proxy, psql_bin):
    for user, password in ((TRUST_USER, ""), (CLEAR_USER, CLEAR_PASSWORD), (MD5_USER, MD5_PASSWORD)):
        result = run_psql(psql_bin, proxy, "-At", "-c", "SELECT current_user", user=user, password=password)
        assert result.returncode == 0, (user, result.stderr)
        assert result.stdout.strip() == user


def test_wrong_password_shows_postgres_error(proxy, psql_bin):
    result = run_psql(psql_bin, proxy, "-c", "SELECT 1", password="wrong")
    assert result.returncode != 0
    assert 'password authentication failed for user "app"' in result.stderr


def test_unknown_database_error_is_the_servers(proxy, psql_bin):
    result = run_psql(psql_bin, proxy, "-c", "SELECT 1", database="nope")
    assert result.returncode != 0
    assert 'database "nope" does not exist' in result.stderr
