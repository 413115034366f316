"""Telemetry set-up shared by the commands that emit spans (train, generate, serve, eval).

Telemetry never fails a command: a set-up or flush error is a warning and the command runs on.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def configure_telemetry(service_name: str | None = None) -> Any:
    """Set up span export for a command; None (with a warning) when it cannot be."""
    try:
        from trace_ptune.telemetry import configure

        return configure(service_name=service_name)
    except Exception as exc:  # no exporters available: run anyway
        logger.warning("telemetry is off: %s", exc)
        return None


def flush_telemetry(telemetry: Any) -> None:
    """Export what the command recorded before it prints its result (bounded by the exporter timeout)."""
    if telemetry is None:
        return
    try:
        telemetry.force_flush()
    except Exception as exc:  # telemetry never fails the command
        logger.warning("could not flush spans: %s", exc)
