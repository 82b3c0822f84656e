"""pgveil: a transparent access proxy for PostgreSQL."""

__version__ = "0.1.0"
