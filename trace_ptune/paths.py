"""Where trace-ptune keeps its files: ``TRACE_PTUNE_HOME`` or the XDG data directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


def live_collector(db: Path) -> dict[str, Any] | None:
    """The side file of a collector running on ``db``, or None when none is alive.

    The side file is ``{"urls": {"http": ..., "grpc": ..., "pg": ...}, "pid": ..., "db": ...,
    "started_at": ..., "auth": bool}``, written by ``trace-ptune collector run`` and removed when
    it stops; a file left behind by a killed collector names a dead pid and is ignored.
    """
    side = collector_side_file(Path(db).expanduser())
    try:
        info = json.loads(side.read_text())
        pid = int(info["pid"])
        urls = info["urls"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(urls, dict):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        pass
    except OSError:
        return None
    return info


def is_foreign_file(path: Path) -> bool:
    """True when ``path`` is a non-empty file that is not a DuckDB database.

    DuckDB 2.0 will open some other files (JSON lines, for one) without complaint, so a
    mistyped ``--db`` could silently store nowhere. DuckDB files carry ``DUCK`` at offset 8.
    """
    try:
        with Path(path).open("rb") as f:
            head = f.read(12)
    except OSError:  # missing, a directory, unreadable
        return False
    return len(head) > 0 and head[8:12] != b"DUCK"
