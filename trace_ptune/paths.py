"""Where trace-ptune keeps its files: ``TRACE_PTUNE_HOME`` or the XDG data directory."""

from __future__ import annotations

import os
from pathlib import Path

from trace_ptune import semconv


def home() -> Path:
    """The trace-ptune home: ``$TRACE_PTUNE_HOME``, else ``$XDG_DATA_HOME/trace-ptune``."""
    explicit = os.environ.get(semconv.ENV_HOME)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "trace-ptune"


def adapters_dir() -> Path:
    """Root of the local adapter store."""
    return home() / "adapters"


def models_dir() -> Path:
    """Cache of converted base models (presets) and fingerprints.

    ``TRACE_PTUNE_MODEL_CACHE`` overrides it (tests share one cache across temporary homes).
    """
    override = os.environ.get("TRACE_PTUNE_MODEL_CACHE")
    if override:
        return Path(override).expanduser()
    return home() / "models"


def default_db() -> Path:
    """The default collector database."""
    return home() / "traces.duckdb"


def collector_side_file(db: Path) -> Path:
    """``<db>.collector.json``: written by a running collector beside its database."""
    return db.with_name(db.name + ".collector.json")
