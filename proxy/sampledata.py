"""A deterministic sample CRM: customers with valid resident ID and bank card numbers,
products and orders.  Pure: it only builds SQL text.

>>> id_check_digit("11010519491231002")
'X'
>>> luhn_ok("6222020200112233445") or luhn_ok(bank_card(__import__("random").Random(1)))
True
"""

from __future__ import annotations

import random
from datetime import date, timedelta

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰涛明超秀霞平刚桂英华"
CITIES = [("110105", "北京市朝阳区"), ("310104", "上海市徐汇区"), ("440305", "深圳市南山区"),
          ("330106", "杭州市西湖区"), ("510107", "成都市武侯区"), ("420106", "武汉市武昌区")]
STREETS = ["建国路", "中山路", "人民路", "解放路", "科技园路", "文一西路"]
GRADES = ["ordinary"] * 16 + ["confidential"] * 3 + ["top_secret"]
PRODUCTS = ["龙井 Longjing 250g", "普洱 Pu-erh cake 357g", "铁观音 Tieguanyin 500g",
            "白茶 White tea 200g", "红茶 Keemun 250g", "茉莉花茶 Jasmine 100g"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id integer PRIMARY KEY,
    name text NOT NULL,
    unit_price numeric(10,2) NOT NULL
);
CREATE TABLE IF NOT EXISTS customers (
    id integer PRIMARY KEY,
    name text NOT NULL,
    phone text,
    id_number char(18),
    bank_card text,
    address text,
    grade text NOT NULL DEFAULT 'ordinary' CHECK (grade IN ('ordinary', 'confidential', 'top_secret')),
    created_at date NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers(id),
    product_id integer NOT NULL REFERENCES products(id),
    quantity integer NOT NULL,
    delivery_date date NOT NULL
);
"""


def id_check_digit(first17: str) -> str:
    """The GB 11643 check character of an 18-digit resident ID number."""
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    total = sum(int(d) * w for d, w in zip(first17, weights))
    return "10X98765432"[total % 11]


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in number]
    for i in range(len(digits) - 2, -1, -2):
        digits[i] = digits[i] * 2 - 9 if digits[i] * 2 > 9 else digits[i] * 2
    return sum(digits) % 10 == 0


def bank_card(rng: random.Random) -> str:
    body = rng.choice(["622202", "621700", "622848", "623058"]) + "".join(str(rng.randrange(10)) for _ in range(12))
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def id_number(rng: random.Random, region: str) -> str:
    born = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 55))
    first17 = f"{region}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return first17 + id_check_digit(first17)


def _quote(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def customers(n: int, seed: int = 42) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        region, city = rng.choice(CITIES)
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
        phone = "1" + rng.choice("3456789") + "".join(str(rng.randrange(10)) for _ in range(9))
        address = f"{city}{rng.choice(STREETS)}{rng.randrange(1, 300)}号"
        created = date(2020, 1, 1) + timedelta(days=rng.randrange(1800))
        rows.append((i, name, phone, id_number(rng, region), bank_card(rng), address, rng.choice(GRADES),
                     created.isoformat()))
    return rows


def orders(n: int, n_customers: int, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    return [(i, rng.randrange(1, n_customers + 1), rng.randrange(1, len(PRODUCTS) + 1), rng.randrange(1, 50),
             (date(2024, 1, 1) + timedelta(days=rng.randrange(700))).isoformat()) for i in range(1, n + 1)]


def _insert(table: str, columns: str, rows: list[tuple], batch: int = 500) -> str:
    parts = []
    for at in range(0, len(rows), batch):
        values = ",\n".join("(" + ", ".join(_quote(v) for v in row) + ")" for row in rows[at:at + batch])
        parts.append(f"INSERT INTO {table} ({columns}) VALUES\n{values};\n")
    return "".join(parts)


def crm_sql(n_customers: int = 2000, n_orders: int = 6000) -> str:
    """SQL that creates and fills the sample CRM (idempotent on an empty database)."""
    products = [(i + 1, name, 50 + 37 * i) for i, name in enumerate(PRODUCTS)]
    return (SCHEMA
            + _insert("products", "id, name, unit_price", products)
            + _insert("customers", "id, name, phone, id_number, bank_card, address, grade, created_at",
                      customers(n_customers))
            + _insert("orders", "id, customer_id, product_id, quantity, delivery_date", orders(n_orders, n_customers)))
