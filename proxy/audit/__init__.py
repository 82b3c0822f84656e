"""The audit stream: one record per access, journaled durably and hash-chained, then shipped.

``records`` is pure (the normalised SQL it stores comes from :mod:`proxy.normalize`, the SQL
layer; nothing of that layer imports audit/); ``journal`` does plain file I/O; ``writer`` and
``sinks`` are the asyncio side.
"""

SCHEMA_VERSION = 1
