"""The scheduler thread: the only caller of the engine, batching requests across clients.

HTTP handlers submit a :class:`Work` (every choice of one request) and await its events on an
``asyncio`` queue; the thread turns many works into shared forward passes:

- ``request`` scheduling (dynamic micro-batching): wait for the first work, keep collecting for
  ``batch_wait_ms`` or until ``max_batch_size`` rows, then run that batch to its end. Works
  arriving meanwhile wait for the next batch.
- ``iteration`` scheduling: the same first batch, but works arriving while it runs join it at a
  decode step boundary (the engine's ``start`` / ``add`` / ``step`` API), so a short request never
  waits behind a long one. Joins are gated: arrivals gather until they are ``join_fraction`` of
  the rows in flight or the oldest has waited ``join_max_wait_steps`` steps (or the batch is idle
  or would be full), then join in one prefill; see :meth:`Scheduler._admit_waiting`. The engine
  caps rows decoding together at its ``max_batch_size``; more wait inside the batch for a slot.

Events go back to the event loop with ``call_soon_threadsafe``, one list per work per step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trace_ptune.errors import ConfigError
from trace_ptune.runtime.requests import GenerationRequest, GenerationResult

logger = logging.getLogger(__name__)

SCHEDULING_MODES = ("iteration", "request")


@dataclass
class Delta:
    """New text for one choice."""

    index: int
    text: str


@dataclass
class Done:
    """One choice finished (``result.error`` set when the engine refused or failed it)."""

    index: int
    result: GenerationResult


@dataclass
class Work:
    """The rows of one HTTP request and where their events go."""

    requests: Sequence[GenerationRequest]
    parent: Any  # OpenTelemetry context the rows' spans are children of
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[list[Delta | Done]] = field(default_factory=asyncio.Queue)
    stream: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set by Scheduler.cancel(): the client went away

    def post(self, items: list[Delta | Done]) -> None:
        if items:
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, items)
            except RuntimeError:  # the loop closed: the client is gone
                pass


class Scheduler:
    """Owns the engine on one thread; see the module docstring."""

    def __init__(
        self,
        engine: Any,
        *,
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        mode: str = "iteration",
        join_fraction: float = 0.5,
        join_max_wait_steps: int = 8,
    ) -> None:
        if mode not in SCHEDULING_MODES:
            raise ConfigError(f"Unknown scheduling {mode!r}; use one of {', '.join(SCHEDULING_MODES)}.")
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size={max_batch_size} must be >= 1.")
        if batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms={batch_wait_ms} must be >= 0.")
        if not 0 <= join_fraction <= 1:
            raise ConfigError(f"join_fraction={join_fraction} must be between 0 and 1.")
        if join_max_wait_steps < 0:
            raise ConfigError(f"join_max_wait_steps={join_max_wait_steps} must be >= 0.")
        self.engine = engine
        self.join_fraction = join_fraction
        self.join_max_wait_steps = join_max_wait_steps
        self._held: list[Work] = []  # arrived during a batch, waiting to join it
        self._held_since = 0  # decode step at which the oldest held work arrived
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.mode = mode
        self._inbox: queue.Queue[Work | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._sent: dict[int, str] = {}  # seq id -> text streamed so far
        self._to_cancel: list[Work] = []
        self._cancel_lock = threading.Lock()
        # counters for /health and the benchmark
        self.batches = 0
        self.steps = 0
        self.rows = 0
        self.max_rows_seen = 0
        self.step_seconds = 0.0  # time inside engine.step
        self.joins = 0  # times works joined a running batch

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trace-ptune-scheduler", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def inflight(self) -> int:
        """Works submitted and not yet finished."""
        return self._inflight

    def submit(self, work: Work) -> None:
        if self._stopping.is_set():
            raise RuntimeError("the scheduler is shutting down")
        with self._inflight_lock:
            self._inflight += 1
        self._inbox.put(work)

    def cancel(self, work: Work) -> None:
        """Stop generating for ``work`` (its client disconnected): its rows leave the batch at the
        next step boundary with finish reason ``cancelled``; not yet admitted, it never runs."""
        with self._cancel_lock:
            self._to_cancel.append(work)

    def stop(self, timeout: float | None = None) -> None:
        """Finish every submitted work, then end the thread."""
        self._stopping.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            first = self._held.pop(0) if self._held else self._inbox.get()
            if first is None:
                if self._inbox.empty():
                    return
                continue  # drain what was submitted before stop()
            batch = [first, *self._collect(len(first.requests))]
            self._run_batch(batch)

    def _collect(self, rows: int) -> list[Work]:
        """More works arriving within the batch window, up to ``max_batch_size`` rows."""
        out: list[Work] = []
        deadline = time.monotonic() + self.batch_wait_s
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                work = self._inbox.get(timeout=remaining) if remaining > 0 else self._inbox.get_nowait()
            except queue.Empty:
                break
            if work is None:  # stop() while collecting: run what we have, then stop
                self._inbox.put(None)
                break
            out.append(work)
            rows += len(work.requests)
        return out

    def _run_batch(self, works: list[Work]) -> None:
        engine = self.engine
        # Text is decoded every step only while some request streams: others get it once at
        # the end. A streaming request joining later switches the batch over, which is safe:
        # the engine then decodes each row's whole text and sends what was not sent yet.
        state = engine.start(stream=any(w.stream for w in works))
        owners: dict[int, tuple[Work, int]] = {}
        remaining: dict[int, int] = {}  # id(work) -> rows not finished

        def admit(work: Work) -> None:
            if work.cancelled or self._take_cancel(work):
                self._finished()  # the client left before its rows started
                return
            if work.stream:
                state.stream = True
            try:
                ids = engine.add(state, work.requests, parent=work.parent)
            except Exception as exc:  # the engine refuses rows itself; this is a defect guard
                logger.exception("admitting a request failed")
                self._fail(work, exc)
                return
            remaining[id(work)] = len(ids)
            for index, seq_id in enumerate(ids):
                owners[seq_id] = (work, index)

        for work in works:
            admit(work)
        self.batches += 1
        while not state.done:
            t0 = time.perf_counter()
            try:
                events = engine.step(state)
                self.steps += 1
                self.step_seconds += time.perf_counter() - t0
                self.max_rows_seen = max(self.max_rows_seen, state.active)
                self._dispatch(events, owners, remaining)
                if self._to_cancel:
                    self._dispatch(self._cancel_rows(state, owners), owners, remaining)
                if self.mode == "iteration":
                    self._admit_waiting(state, admit)
            except Exception as exc:
                # A failed forward pass fails its batch, not the server: every waiting request
                # gets an error and the thread goes on with the next batch.
                logger.exception("a decode step failed; failing the batch")
                engine.abort(state, exc)  # ends the rows' spans with the error
                for work in {id(w): w for w, _ in owners.values()}.values():
                    if remaining.get(id(work)):
                        remaining[id(work)] = 0
                        self._fail(work, exc)
                return

    def _take_cancel(self, work: Work) -> bool:
        with self._cancel_lock:
            for i, w in enumerate(self._to_cancel):
                if w is work:
                    del self._to_cancel[i]
                    return True
        return False

    def _cancel_rows(self, state: Any, owners: dict[int, tuple[Work, int]]) -> list[Any]:
        """End the running rows of cancelled works; mark the others so they are never admitted."""
        with self._cancel_lock:
            works, self._to_cancel = self._to_cancel, []
        seq_ids = []
        for work in works:
            work.cancelled = True
            seq_ids += [seq for seq, (w, _) in owners.items() if w is work]
        return self.engine.cancel(state, seq_ids) if seq_ids else []

    def _admit_waiting(self, state: Any, admit: Any) -> None:
        """Iteration-level scheduling: works that arrived join the running batch.

        Every join costs a prefill forward pass and a copy of the batch's K/V cache, about as
        much as a decode step on a small model. So arrivals gather until they are at least
        ``join_fraction`` of the rows in flight, or the oldest has waited
        ``join_max_wait_steps`` decode steps, or the batch has nothing else to run (or no room
        left for more), and then join in one prefill.
        """
        while True:
            try:
                work = self._inbox.get_nowait()
            except queue.Empty:
                break
            if work is None:  # stop(): keep the marker for the outer loop
                self._inbox.put(None)
                break
            if not self._held:
                self._held_since = self.steps
            self._held.append(work)
        if not self._held:
            return
        held = sum(len(w.requests) for w in self._held)
        room = self.max_batch_size - len(state)
        if not (
            state.active == 0
            or held >= room
            or held >= self.join_fraction * (state.active + held)
            or self.steps - self._held_since >= self.join_max_wait_steps
        ):
            return
        if self._held and len(state) < self.max_batch_size:
            while self._held and len(state) < self.max_batch_size:
                admit(self._held.pop(0))
            self._held_since = self.steps  # what is left waits for room, from now
            self.joins += 1

    def _dispatch(
        self, events: list[Any], owners: dict[int, tuple[Work, int]], remaining: dict[int, int]
    ) -> None:
        per_work: dict[int, tuple[Work, list[Delta | Done]]] = {}
        for event in events:
            owner = owners.get(event.seq_id)
            if owner is None:
                continue
            work, index = owner
            items = per_work.setdefault(id(work), (work, []))[1]
            if work.stream:
                sent = self._sent.get(event.seq_id, "")
                text = event.text
                result = event.result
                if result is not None and result.error is None and result.text.startswith(sent):
                    # The final text is the authority: send whatever the deltas did not cover.
                    text = result.text[len(sent) :]
                if text:
                    items.append(Delta(index, text))
                    self._sent[event.seq_id] = sent + text
            if event.result is not None:
                items.append(Done(index, event.result))
                del owners[event.seq_id]
                self._sent.pop(event.seq_id, None)
                self.rows += 1
                remaining[id(work)] -= 1
                if remaining[id(work)] == 0:
                    self._finished()
        for work, items in per_work.values():
            work.post(items)

    def _fail(self, work: Work, exc: BaseException) -> None:
        results = []
        for index, _ in enumerate(work.requests):
            result = GenerationResult(error=f"generation failed: {exc}", error_type=type(exc).__name__)
            results.append(Done(index, result))
        work.post(list(results))
        self._finished()

    def _finished(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1
