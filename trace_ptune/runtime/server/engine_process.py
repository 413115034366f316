"""The engine in a process of its own: HTTP handling and the decode loop on separate cores.

By default ``trace-ptune serve`` runs two processes. The server process runs uvicorn and the app
(body parsing, tenancy, routing through the adapter store, responses); a child process loads the
model and runs the :class:`~trace_ptune.runtime.server.scheduler.Scheduler` and the engine, and
emits the generation spans. In one process both share one interpreter lock, so every request
the event loop handles delays the next decode step; in two they overlap.

They talk over a :func:`multiprocessing.Pipe`:

- server -> engine: ``("submit", id, rows, carrier, stream)`` (the caller's W3C trace context and
  baggage travel as a carrier dict, so spans are still children of the caller's trace),
  ``("cancel", id)`` (the client went away), ``("stats",)`` and ``("stop",)``;
- engine -> server: ``("ready", info)`` or ``("error", message)`` once the model is loaded,
  ``("events", id, items)`` (the scheduler's ``Delta`` / ``Done`` lists), ``("stats", counters)``
  and ``("stopped",)`` after a drain.

:class:`RemoteScheduler` has the scheduler's surface (``start``, ``submit``, ``stop``, counters),
so the app does not know which one it drives. The engine process ignores SIGINT and SIGTERM: the
server drains it on shutdown, and it exits by itself when the server process goes away.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from trace_ptune.errors import ConfigError
from trace_ptune.runtime.requests import GenerationResult
from trace_ptune.runtime.server.scheduler import Delta, Done, Work

logger = logging.getLogger(__name__)

_COUNTERS = ("batches", "steps", "rows", "max_rows_seen", "step_seconds", "joins")


@dataclass
class EngineSpec:
    """What the engine process needs to build the engine and its scheduler (picklable)."""

    model: str
    dtype: str | None = None
    store: str | None = None
    memory_budget_mb: float = 1024.0
    max_batch_size: int = 32
    allow_base_mismatch: bool = False
    capture_content: bool | None = None
    torch_threads: int | None = None
    scheduler: dict[str, Any] = field(default_factory=dict)  # Scheduler keyword arguments
    service_name: str = "trace-ptune-serve"


class RemoteScheduler:
    """Drives a :class:`Scheduler` running in an engine process; see the module docstring."""

    def __init__(self, spec: EngineSpec, *, start_timeout: float = 600.0) -> None:
        self.spec = spec
        self.mode = spec.scheduler.get("mode", "iteration")
        self.start_timeout = start_timeout
        self.info: dict[str, Any] = {}
        self._counters: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self._works: dict[int, tuple[Work, int]] = {}  # id -> (work, rows not finished)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stats_event = threading.Event()
        self._stopped = threading.Event()
        self._stopping = False
        self._proc: Any = None
        self._conn: Any = None
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Spawn the engine process and wait until its model is loaded (idempotent)."""
        if self._proc is not None:
            return
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_engine_main, args=(child, self.spec), name="trace-ptune-engine")
        self._proc.daemon = True
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.start_timeout):
            self._proc.kill()
            raise ConfigError(
                f"the engine process did not load {self.spec.model!r} within {self.start_timeout:g} s; "
                "check the model name and the machine's memory"
            )
        try:
            kind, payload = parent.recv()
        except EOFError:
            self._proc.join(5)
            raise ConfigError(
                f"the engine process exited while loading {self.spec.model!r} "
                f"(exit code {self._proc.exitcode}); see its error above"
            ) from None
        if kind == "error":
            self._proc.join(10)
            raise ConfigError(payload)
        self.info = payload
        self._reader = threading.Thread(target=self._read, name="trace-ptune-engine-reader", daemon=True)
        self._reader.start()

    def engine_view(self) -> Any:
        """What the app reads of an engine (``base.name``, ``base.fingerprint``), once started."""
        from types import SimpleNamespace

        return SimpleNamespace(base=SimpleNamespace(**self.info), registry=None)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and not self._stopped.is_set()

    @property
    def inflight(self) -> int:
        return len(self._works)

    # the scheduler's counters, as of the last refresh()
    batches = property(lambda self: int(self._counters["batches"]))
    steps = property(lambda self: int(self._counters["steps"]))
    rows = property(lambda self: int(self._counters["rows"]))
    max_rows_seen = property(lambda self: int(self._counters["max_rows_seen"]))
    step_seconds = property(lambda self: float(self._counters["step_seconds"]))
    joins = property(lambda self: int(self._counters["joins"]))

    def refresh(self, timeout: float = 1.0) -> None:
        """Fetch the engine process's current counters (best effort within ``timeout``)."""
        if not self.running:
            return
        self._stats_event.clear()
        with contextlib.suppress(OSError, ValueError):
            self._send(("stats",))
            self._stats_event.wait(timeout)

    def submit(self, work: Work) -> None:
        if self._stopping:
            raise RuntimeError("the scheduler is shutting down")
        if not self.running:
            code = self._proc.exitcode if self._proc is not None else None
            raise RuntimeError(f"the engine process stopped (exit code {code})")
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        if work.parent is not None:
            propagate.inject(carrier, context=work.parent)
        work_id = next(self._ids)
        with self._lock:
            self._works[work_id] = (work, len(work.requests))
        try:
            self._send(("submit", work_id, list(work.requests), carrier, work.stream))
        except (OSError, ValueError) as exc:
            with self._lock:
                self._works.pop(work_id, None)
            raise RuntimeError(f"the engine process is gone ({exc})") from None

    def cancel(self, work: Work) -> None:
        """Stop generating for ``work`` in the engine process (its client went away)."""
        with self._lock:
            ids = [i for i, (w, _) in self._works.items() if w is work]
        for work_id in ids:
            with contextlib.suppress(OSError, ValueError):
                self._send(("cancel", work_id))

    def stop(self, timeout: float | None = None) -> None:
        """Let the engine process finish every submitted work, flush its spans and exit."""
        self._stopping = True
        if self._proc is None:
            return
        if self._proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._send(("stop",))
            self._stopped.wait(timeout)
        self._proc.join(timeout if timeout is not None else None)
        if self._proc.is_alive():  # pragma: no cover - a wedged engine
            logger.warning("the engine process did not stop in time; terminating it")
            self._proc.terminate()
            self._proc.join(5)
        if self._reader is not None:
            self._reader.join(5)

    # ------------------------------------------------------------------ the pipe
    def _send(self, msg: tuple) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "events":
                self._deliver(msg[1], msg[2])
            elif kind == "stats":
                self._counters.update(msg[1])
                self._stats_event.set()
            elif kind == "stopped":
                break
        self._stopped.set()
        self._fail_all("the engine process stopped")

    def _deliver(self, work_id: int, items: list[Delta | Done]) -> None:
        with self._lock:
            entry = self._works.get(work_id)
            if entry is None:
                return
            work, left = entry
            left -= sum(1 for item in items if isinstance(item, Done))
            if left <= 0:
                del self._works[work_id]
            else:
                self._works[work_id] = (work, left)
        work.post(items)

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            works = list(self._works.values())
            self._works.clear()
        for work, _ in works:
            work.post(_failed(len(work.requests), reason))


def _failed(rows: int, reason: Any) -> list[Done]:
    """Every row of a work ended with an error the engine process could not avoid."""
    result = GenerationResult(error=f"generation failed: {reason}", error_type="EngineProcessError")
    return [Done(i, result) for i in range(rows)]


class _PipeWork(Work):
    """A work in the engine process: its events go back over the pipe."""

    def __init__(
        self, work_id: int, requests: list[Any], parent: Any, stream: bool, send: Any, live: dict[int, Any]
    ) -> None:
        super().__init__(requests, parent=parent, loop=None, stream=stream)  # type: ignore[arg-type]
        self.work_id = work_id
        self._send = send
        self._live = live  # work id -> work, until its last row is done (for cancel)
        self._left = len(requests)
        live[work_id] = self

    def post(self, items: list[Delta | Done]) -> None:
        if items:
            self._left -= sum(1 for item in items if isinstance(item, Done))
            if self._left <= 0:
                self._live.pop(self.work_id, None)
            with contextlib.suppress(OSError, ValueError, BrokenPipeError):
                self._send(("events", self.work_id, items))


def _engine_main(conn: Any, spec: EngineSpec) -> None:
    """The engine process: load the model, run the scheduler, serve the pipe."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # the server process drains us on shutdown
        signal.signal(sig, signal.SIG_IGN)
    send_lock = threading.Lock()

    def send(msg: tuple) -> None:
        with send_lock:
            conn.send(msg)

    try:
        from opentelemetry import propagate

        from trace_ptune.adapters.store import AdapterStore
        from trace_ptune.cli._telemetry import configure_telemetry
        from trace_ptune.models import load_model
        from trace_ptune.runtime import Engine
        from trace_ptune.runtime.server.scheduler import Scheduler

        if spec.torch_threads is not None:
            import torch

            torch.set_num_threads(spec.torch_threads)
        telemetry = configure_telemetry(service_name=spec.service_name)
        base = load_model(spec.model, dtype=spec.dtype)
        engine = Engine(
            base,
            store=AdapterStore(spec.store),
            memory_budget_mb=spec.memory_budget_mb,
            max_batch_size=spec.max_batch_size,
            allow_base_mismatch=spec.allow_base_mismatch,
            capture_content=spec.capture_content,
        )
        scheduler = Scheduler(engine, max_batch_size=spec.max_batch_size, **spec.scheduler)
        scheduler.start()
    except Exception as exc:
        send(("error", str(exc) or type(exc).__name__))
        conn.close()
        return
    send(("ready", {"name": base.name, "fingerprint": base.fingerprint}))

    def counters() -> dict[str, float]:
        return {name: getattr(scheduler, name) for name in _COUNTERS}

    live: dict[int, _PipeWork] = {}

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the server process is gone: finish and exit
            msg = ("stop",)
        kind = msg[0]
        if kind == "submit":
            _, work_id, rows, carrier, stream = msg
            parent = propagate.extract(carrier) if carrier else None
            try:
                scheduler.submit(_PipeWork(work_id, rows, parent, stream, send, live))
            except RuntimeError as exc:
                with contextlib.suppress(OSError, ValueError):
                    send(("events", work_id, _failed(len(rows), exc)))
        elif kind == "cancel":
            work = live.get(msg[1])
            if work is not None:
                scheduler.cancel(work)
        elif kind == "stats":
            with contextlib.suppress(OSError, ValueError):
                send(("stats", counters()))
        elif kind == "stop":
            scheduler.stop(120.0)
            if telemetry is not None:
                with contextlib.suppress(Exception):
                    telemetry.force_flush()
            with contextlib.suppress(OSError, ValueError):
                send(("stats", counters()))
                send(("stopped",))
            conn.close()
            return
