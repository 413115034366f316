"""The trace-ptune collector: OTLP in (HTTP and gRPC), DuckDB out, read back over SQL.

Never imports torch or transformers: a collector host installs only the core package.

- :class:`Collector` / :class:`CollectorConfig`: run the receivers, query API and Postgres wire.
- :class:`CollectorClient`: query a running collector over HTTP.
- :func:`check_read_only`: the read-only SQL guard shared with ``trace-ptune query``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trace_ptune._lazy import lazy_exports

if TYPE_CHECKING:
    from trace_ptune.collector.client import CollectorClient
    from trace_ptune.collector.server import Collector, CollectorConfig
    from trace_ptune.collector.sql_guard import check_read_only

__all__ = ["Collector", "CollectorClient", "CollectorConfig", "check_read_only"]

_LAZY = {
    "Collector": "trace_ptune.collector.server",
    "CollectorConfig": "trace_ptune.collector.server",
    "CollectorClient": "trace_ptune.collector.client",
    "check_read_only": "trace_ptune.collector.sql_guard",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
