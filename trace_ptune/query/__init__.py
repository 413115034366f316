"""Read models behind ``trace-ptune query``: regression attribution, adapters, lineage, traces.

Every function takes an open :class:`Source` (a DuckDB file read-only, or a running collector's
query API; see :func:`open_source`) and returns JSON-ready dicts, the same rows the CLI prints
with ``--json``. Nothing here imports torch or transformers.
"""

from __future__ import annotations

from trace_ptune.query.regressions import regressions
from trace_ptune.query.source import CollectorSource, FileSource, Source, open_source

__all__ = ["CollectorSource", "FileSource", "Source", "open_source", "regressions"]
