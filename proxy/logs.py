"""Diagnostic logs with structlog: JSON lines for machines, a readable console for people.

Logs are for diagnosis.  The audit stream is a separate, versioned data format.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Set up structlog once per process.  ``fmt``: auto (console on a TTY), json, console."""
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its parse fallbacks are ours to judge
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str = "pgveil"):
    return structlog.get_logger(name)
