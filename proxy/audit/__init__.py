"""The audit stream: one record per access, journaled durably and hash-chained, then shipped.

``normalize`` and ``records`` are pure; ``journal`` does plain file I/O; ``writer`` and
``sinks`` are the asyncio side.
"""

SCHEMA_VERSION = 1
