"""How long `pgveil report usage` takes over a month of records (issue 19: about a million
records in well under a minute).

    python bench/usage.py [--records 1000000]

Writes a journal of statement and outcome records (a CRM day's mix: 30 users, most statements
masked, some in clear under a grant or purpose, some refused, a few stopped by max_rows) spread
over 30 days, then times the report over it as a whole process, and writes
bench/results/usage.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.audit.journal import Journal  # noqa: E402

CLASSES = [("id_number", "id_number"), ("bank_card", "bank_card"), ("phone", "phone"), ("address", "address")]


def records(count: int, seed: int = 7):
    rng = random.Random(seed)
    start = 1_762_000_000  # 2025-11-01
    users = [f"user{i:02d}" for i in range(30)]
    made = 0
    n = 0
    while made < count:
        n += 1
        user = rng.choice(users)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + rng.randrange(30 * 86400))) + ".000000Z"
        refused = rng.random() < 0.02
        cols = [] if refused else [{"relation": "public.customers", "column": c, "class": k,
                                    "action": rng.choice(("mask", "mask", "clear", "block"))}
                                   for c, k in rng.sample(CLASSES, rng.randrange(0, 3))]
        sid = f"s{n}"
        yield {"v": 1, "id": sid, "ts": ts, "type": "statement", "session": f"x{n // 50}", "user": user,
               "tier": "sales", "client_addr": f"10.0.0.{rng.randrange(1, 3) if user == 'user00' else 5}",
               "client_port": 5000, "database": "crm", "application_name": "app", "protocol": "extended",
               "sql": "SELECT id, name, phone FROM customers WHERE id = $1", "fingerprint": "abcd",
               "kinds": ["read"], "relations": ["public.customers"], "columns": cols,
               "decision": "refuse" if refused else "rewrite", "reason": "blocked" if refused else "",
               "unparsed": False, "rules_version": "r1", "purpose": None, "grant": None}
        yield {"v": 1, "id": f"o{n}", "ts": ts, "type": "outcome", "session": f"x{n // 50}", "user": user,
               "statement": sid, "status": "limited" if rng.random() < 0.001 else "ok",
               "rows": rng.randrange(0, 20), "duration_us": 300, "sqlstate": None}
        made += 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgveil-usage-") as directory:
        journal = Journal(directory, stream="0", max_bytes=256 << 20)
        journal.open()
        batch = []
        for record in records(args.records):
            batch.append(record)
            if len(batch) == 10_000:
                journal.append(batch)
                batch = []
        journal.append(batch)
        journal.close()
        size = sum(p.stat().st_size for p in Path(directory).iterdir())
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "proxy", "report", "usage", directory, "--format", "json"],
                              cwd=ROOT, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - began
    result = {"records": args.records, "journal_mb": round(size / 1e6, 1), "seconds": round(seconds, 2),
              "records_per_second": int(args.records / seconds), "usage_rows": len(json.loads(done.stdout)["usage"])}
    print(f"pgveil report usage: {result['records']:,} records ({result['journal_mb']} MB) in "
          f"{result['seconds']} s, {result['records_per_second']:,} records/s (target: well under 60 s)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "usage.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
