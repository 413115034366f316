"""Start a real collector in this process on a DuckDB file, for tests and the benchmark."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from trace_ptune.collector.server import Collector, CollectorConfig


@contextlib.contextmanager
def running_collector(db: str | Path, *, token: str | None = None) -> Iterator[Collector]:
    """A collector owning ``db`` with its HTTP endpoint on a free loopback port."""
    collector = Collector(
        CollectorConfig(db=db, http="127.0.0.1:0", grpc=None, token=token, quiet=True)
    ).start()
    try:
        yield collector
    finally:
        collector.stop()
