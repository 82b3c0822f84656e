"""The statements that cost the analysis most (issue 13), shared by tests/test_stall.py and
bench/stall.py: each as a client sends it, in one Query message."""

from __future__ import annotations


def pathological() -> dict[str, str]:
    return {
        "IN list of 200,000": "SELECT id FROM customers WHERE id IN ("
                              + ", ".join(str(i) for i in range(200_000)) + ")",
        "3,000 nested parentheses": "SELECT " + "(" * 3000 + "1" + ")" * 3000,
        "800 nested function calls": "SELECT " + "abs(" * 800 + "1" + ")" * 800,
        "3,000 statements in one Query": "SELECT 1;\n" * 3000,
        "4 MB string literal": "SELECT length('" + "x" * (4 << 20) + "')",
        "500 UNION ALL branches": "\nUNION ALL\n".join(
            f"SELECT id, name, phone FROM customers WHERE id = {i}" for i in range(500)),
        # the words after which the session follows its state (search_path, cursors, prepared
        # statements, RESET ALL): at the end of a long literal (a quick look finds them last), and
        # as 3,000 statements that each change it
        "4 MB literal, state words at its end": "SELECT length('" + "x" * (4 << 20) + STATE_TEXT + "')",
        "3,000 statements of state words": "BEGIN;\n" + "".join(
            f"SET search_path = public;\nDECLARE c{i} CURSOR FOR SELECT {i};\nFETCH 1 FROM c{i};\nCLOSE c{i};\n"
            f"PREPARE p{i} AS SELECT {i};\nDEALLOCATE p{i};\n" for i in range(500)) + "COMMIT;",
    }


STATE_TEXT = "SET search_path = x; DECLARE c CURSOR FOR SELECT 1; PREPARE p AS SELECT 1; FETCH c; RESET ALL; "


# tiers of rules/crm.yaml (users of tests/conftest.py TIER_USERS)
TIERS = {"all-clear": "dba_sun", "masking": "sales_li", "blocking": "it_zhou"}


def distinct_statement(i: int, size: int = 64 * 1024) -> str:
    """The i-th of many distinct statements of about ``size`` characters (the memory flood)."""
    head = f"SELECT {i} AS n, length('"
    return head + f"{i:08d}" * ((size - len(head) - 3) // 8) + "')"
