"""Run ``trace-ptune collector run`` as a child process on free loopback ports.

The child writes ``<db>.collector.json`` with the ports it bound (HTTP, gRPC, Postgres wire);
we wait for that file to name our child, then for ``GET /health``. Stopping sends SIGTERM (the
collector drains, checkpoints and exits 0) and kills only if it does not exit in time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from trace_ptune import paths
from trace_ptune.errors import DemoError

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


class CollectorProcess:
    """A collector child process owning ``db``; ``urls`` has ``http``, ``grpc`` and ``pg``."""

    def __init__(self, db: Path, log: Path) -> None:
        self.db = db
        self.log = log
        self.urls: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = _START_TIMEOUT_S) -> CollectorProcess:
        cmd = [
            sys.executable,
            "-m",
            "trace_ptune.cli.main",
            "collector",
            "run",
            "--db",
            str(self.db),
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--pg",
            "127.0.0.1:0",
        ]
        with open(self.log, "wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DemoError(
                    f"the collector exited with code {self._proc.returncode} while starting; "
                    f"see its log {self.log}: {self._tail()}"
                )
            info = paths.live_collector(self.db)
            if info and info.get("pid") == self._proc.pid and _healthy(info["urls"].get("http")):
                self.urls = dict(info["urls"])
                return self
            time.sleep(0.1)
        self.stop()
        raise DemoError(
            f"the collector did not become healthy within {timeout_s:.0f} s; see its log {self.log}."
        )

    @property
    def http(self) -> str:
        return self.urls["http"]

    @property
    def pg(self) -> str:
        return self.urls.get("pg", "")

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait (the collector flushes and checkpoints); kill after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def _tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _healthy(url: str | None) -> bool:
    if not url:
        return False
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1.0) as response:
            return response.status == 200
    except OSError:
        return False
