"""Log an instrumentation failure once per kind, at WARNING, and carry on."""

from __future__ import annotations

import logging

_seen: set[str] = set()


def warn_once(logger: logging.Logger, key: str, message: str, *args: object) -> None:
    """Log ``message`` at WARNING the first time ``key`` is seen in this process."""
    if key in _seen:
        return
    _seen.add(key)
    logger.warning(message, *args)
