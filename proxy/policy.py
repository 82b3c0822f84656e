"""The policy engine: (statement, identity, rules, catalog) -> :class:`Decision`.

A short pipeline, like sqlglot's optimizer: **split** the text into statements with
sqlglot's tokenizer, **classify** each by its leading keyword (never by sqlglot's guess: its
parser turns some statements it does not know into something else), **gate** the kind
against the tier, **parse** and **rewrite** (:mod:`proxy.rewrite`, :mod:`proxy.writes`), then
**generate** the SQL to send and check that it parses back to itself.

For a tier that is not all-clear the generated SQL is what reaches the database, never the
client's text: the database then runs exactly what was analysed (a comment, a quoting trick
or a parser difference cannot hide a relation from the analysis).  Anything the engine does
not understand is refused (fail closed).  An all-clear tier's statements go as they are.

The engine's parts, each in its own module and all re-exported here (``from proxy.policy
import ...`` is the engine's front door):

- :mod:`proxy.verdicts`: the vocabulary (:class:`Decision`, :class:`Refusal` with its reason
  codes and named constructors, :class:`Context`, :class:`ColumnUse`);
- :mod:`proxy.segments`: splitting a text into statements, and their leading keywords;
- :mod:`proxy.statement`: one statement's gate and analysis;
- :mod:`proxy.pipeline`: :func:`decide` for a whole text, :func:`failed_analysis`;
- :mod:`proxy.decision_cache`: decisions by text and by shape;
- :mod:`proxy.engine`: :class:`Engine`, what a process's sessions share.

Pure: no I/O.

>>> from proxy.rules import load_rules, EXAMPLE
>>> from proxy.catalog import Catalog
>>> rules = load_rules(EXAMPLE)
>>> catalog = Catalog.from_spec({"public.customers": {"id": "integer", "bank_card": "text"}})
>>> decide("SELECT bank_card FROM customers", Context(rules.tier("sales"), rules, catalog)).reason
'column customers.bank_card is not visible to tier sales'
"""

from __future__ import annotations

from .decision_cache import (CACHE_BYTES, ENTRY_OVERHEAD, MARKER_BASE, MAX_TEMPLATES, SHAPE_READ_LIMIT,  # noqa: F401
                             UNCACHEABLE, DecisionCache, Template, _render, _with_text, entry_bytes, instantiate,
                             shape_of)
from .engine import Engine, carried_classes, carry_classes  # noqa: F401
from .pipeline import KINDS, _decide_all_clear, _refuse, decide, failed_analysis, parse_search_path  # noqa: F401
from .rewrite import name_of  # noqa: F401
from .segments import (CURSOR_WORDS, DDL_WORDS, HARMLESS_WORDS, QUERY_WORDS, SESSION_WORDS,  # noqa: F401
                       TRANSACTION_WORDS, WRITE_WORDS, Segment, split_statements)
from .statement import (ALTER_WITH_SETTINGS, CREATE_REFUSED, CURSOR_QUERIES, EXPLAINABLE, PREPARABLE,  # noqa: F401
                        Statement, generate)
from .verdicts import ColumnUse, Context, Decision, NotUnderstood, Reason, Refusal  # noqa: F401

__all__ = ["Engine", "Decision", "DecisionCache", "Context", "decide", "split_statements", "parse_search_path", "name_of",
           "Refusal", "Reason", "ColumnUse", "failed_analysis"]
