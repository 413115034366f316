"""Progress lines of the demo on stderr (rich), or nothing with ``quiet``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


class Reporter:
    """Numbered steps with their duration, plus indented detail lines."""

    def __init__(self, quiet: bool = False, total: int = 6) -> None:
        self.quiet = quiet
        self.total = total
        self._n = 0
        self._console: Any = None
        if not quiet:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self._n += 1
        self._print(f"[bold cyan][{self._n}/{self.total}][/] {title}")
        start = time.perf_counter()
        yield
        self._print(f"      [green]done[/] in {time.perf_counter() - start:.1f} s")

    def info(self, text: str) -> None:
        self._print(f"      {text}")

    def rule(self, text: str) -> None:
        if self._console is not None:
            self._console.rule(text)

    def _print(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text)
