"""Read models behind ``trace-ptune query``: regression attribution, adapters, lineage, traces.

Every function takes an open :class:`Source` (a DuckDB file opened read-only, or a running
collector's query API; :func:`open_source` resolves which, as the CLI does) and returns
JSON-ready dicts: the same rows the CLI prints with ``--json``. Nothing here imports torch or
transformers, and DuckDB is imported only when a file is opened.

>>> from trace_ptune.query import open_source, regressions
>>> with open_source(db="traces.duckdb") as source:  # doctest: +SKIP
...     rows = regressions(source, since="7d")
"""

from __future__ import annotations

from trace_ptune.query.adapters import adapters, resolve_adapter
from trace_ptune.query.compare import compare
from trace_ptune.query.lineage import lineage
from trace_ptune.query.regressions import regressions
from trace_ptune.query.source import CollectorSource, FileSource, Source, open_source
from trace_ptune.query.traces import run_sql, trace, traces

__all__ = [
    "CollectorSource",
    "FileSource",
    "Source",
    "adapters",
    "compare",
    "lineage",
    "open_source",
    "regressions",
    "resolve_adapter",
    "run_sql",
    "trace",
    "traces",
]
