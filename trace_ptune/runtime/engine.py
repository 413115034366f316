"""The generation engine: many soft prompts on one base model, mixed in one batch.

Usage::

    from trace_ptune.models import load_model
    from trace_ptune.runtime import Engine, GenerationRequest

    engine = Engine(load_model("smollm2-135m"))
    engine.register("support-bot")                 # from the adapter store (or SoftPrompt / directory)
    results = engine.generate([
        GenerationRequest("How do I reset my password?", adapter="support-bot", tenant="acme"),
        GenerationRequest("Write a haiku", temperature=0.8, seed=7),          # base model alone
    ])

Every row decodes from its own key/value prefix (see :mod:`trace_ptune.runtime.batching`), so
requests for different adapters, methods and prompt lengths share every forward pass. The loop
is our own over the model's ``forward()``; ``generate()`` is never called.

Step-by-step (iteration-level scheduling, for servers)::

    state = engine.start(first_requests)          # nothing runs yet
    while not state.done:
        for event in engine.step(state):          # one token for every running row
            ...                                   # event.text (delta), event.result when finished
        engine.add(state, more_requests)          # joins at the next step boundary

All public methods take one engine-wide lock, so the engine may be called from any thread; calls
run one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from opentelemetry import context as otel_context

from trace_ptune.errors import GenerationError, TracePtuneError
from trace_ptune.models.attention import check_attention
from trace_ptune.runtime import batching
from trace_ptune.runtime.registry import AdapterEntry, AdapterRegistry
from trace_ptune.runtime.requests import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationRequest,
    GenerationResult,
    Scorer,
    time_ordered_id,
)
from trace_ptune.runtime.sampling import RowSampler, select_tokens
from trace_ptune.runtime.spans import RuntimeTelemetry, response_model


@dataclass
class TokenEvent:
    """What one step produced for one sequence.

    ``text`` is the new text since the previous event (held back while it could still become a
    stop string or an incomplete character); ``result`` is set on the sequence's last event.
    """

    seq_id: int
    request: GenerationRequest
    token_id: int | None = None
    text: str = ""
    result: GenerationResult | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None


@dataclass
class _Row:
    seq_id: int
    request: GenerationRequest
    response_id: str
    started: float
    start_ns: int = 0
    parent: Any = None
    entry: AdapterEntry | None = None
    deployment: str | None = None
    prompt_ids: list[int] = field(default_factory=list)
    prefix: torch.Tensor | None = None
    sampler: RowSampler | None = None
    max_new_tokens: int = 0
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    first_token_at: float | None = None
    batch_size: int = 0
    finish_reason: str | None = None

    @property
    def virtual_tokens(self) -> int:
        return self.entry.num_virtual_tokens if self.entry is not None else 0


class BatchState:
    """The sequences of one running batch: live rows, rows waiting to join, refused rows."""

    def __init__(self, *, stream: bool = True) -> None:
        self.stream = stream
        self.rows: list[_Row] = []  # aligned with the rows of ``kv``
        self.kv: batching.KVBatch | None = None
        self.pending: list[_Row] = []
        self.refused: list[tuple[_Row, GenerationResult]] = []
        self.steps = 0

    @property
    def done(self) -> bool:
        return not (self.rows or self.pending or self.refused)

    @property
    def active(self) -> int:
        """Rows decoding now."""
        return len(self.rows)

    def __len__(self) -> int:
        return len(self.rows) + len(self.pending)


class Engine:
    """Batched generation with per-row soft prompts on one frozen base model.

    ``store`` is the adapter store that names resolve against (default: the store under
    ``TRACE_PTUNE_HOME``, opened on first use). ``memory_budget_mb`` bounds loaded adapters plus
    their cached prefixes (LRU eviction of unpinned ones; None: unbounded). ``max_batch_size``
    bounds rows decoding together; more wait for a free slot. ``scorers`` (and ``on_result``) run
    on every finished row while its span is open and their scores become span events.
    """

    def __init__(
        self,
        base: Any,
        *,
        store: Any | None = None,
        memory_budget_mb: float | None = 1024.0,
        max_batch_size: int = 64,
        allow_base_mismatch: bool = False,
        tracer_provider: Any | None = None,
        capture_content: bool | None = None,
        scorers: Sequence[Scorer] = (),
        on_result: Scorer | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise GenerationError(f"max_batch_size={max_batch_size} must be >= 1.")
        self.base = base
        self.model = base.model
        self.tokenizer = base.tokenizer
        self.registry = AdapterRegistry(
            base, store=store, memory_budget_mb=memory_budget_mb, allow_base_mismatch=allow_base_mismatch
        )
        self.max_batch_size = max_batch_size
        self.telemetry = RuntimeTelemetry(
            base, tracer_provider=tracer_provider, capture_content=capture_content
        )
        self.scorers: list[Scorer] = list(scorers)
        if on_result is not None:
            self.scorers.append(on_result)
        self._layout = base.kv_layout
        config = self.model.config
        check_attention(config)  # before any request: a clear error instead of wrong rows
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2**31)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos_token_ids = _eos_ids(self.tokenizer, self.model)
        self._next_seq = 0
        self._lock = threading.RLock()
        self._prefix_blocks = batching.PrefixBlocks()

    # ------------------------------------------------------------------ adapters
    def register(self, adapter: Any, *, name: str | None = None, pin: bool = False) -> Any:
        """Load a SoftPrompt, a store reference (name, ``name@version``, hash, deployment) or a
        directory; returns the SoftPrompt. Its prefix K/V is computed now, so the first request
        pays no prefill for it."""
        with self._lock:
            entry = self.registry.register(adapter, name=name, pin=pin)
            self.registry.prefix_kv(entry)
            return entry.adapter

    def unregister(self, ref: str) -> None:
        with self._lock:
            self.registry.unregister(ref)
            self._prefix_blocks.clear()

    # ------------------------------------------------------------------ one call
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Run every request to completion in shared batches; results in request order."""
        requests = list(requests)
        with self._lock:
            call_span, ctx = self.telemetry.start_call(len(requests))
            state = BatchState(stream=False)
            try:
                seq_ids = self.add(state, requests, parent=ctx)
                results: dict[int, GenerationResult] = {}
                while not state.done:
                    for event in self.step(state):
                        if event.result is not None:
                            results[event.seq_id] = event.result
            except BaseException as exc:
                self.abort(state, exc)
                self.telemetry.end_call(call_span, exc)
                raise
            self.telemetry.end_call(call_span)
            return [results[s] for s in seq_ids]

    # ------------------------------------------------------------------ step by step
    def start(
        self, requests: Iterable[GenerationRequest] = (), *, parent: Any | None = None, stream: bool = True
    ) -> BatchState:
        """A new batch holding ``requests``; they prefill at the first :meth:`step`."""
        state = BatchState(stream=stream)
        self.add(state, requests, parent=parent)
        return state

    def add(
        self, state: BatchState, requests: Iterable[GenerationRequest], *, parent: Any | None = None
    ) -> list[int]:
        """Queue requests to join ``state`` at the next step; returns their sequence ids.

        A request that cannot run (unknown adapter, bad parameters, prompt too long) is refused
        here; its result arrives as an event of the next step. ``parent`` is the OpenTelemetry
        context the rows' spans are children of (default: the current context).
        """
        ids = []
        with self._lock:
            for request in requests:
                row = _Row(
                    seq_id=self._next_seq,
                    request=request,
                    response_id=time_ordered_id("gen-"),
                    started=time.perf_counter(),
                )
                self._next_seq += 1
                ids.append(row.seq_id)
                row.start_ns = time.time_ns()
                row.parent = parent if parent is not None else otel_context.get_current()
                try:
                    self._prepare(row)
                except TracePtuneError as exc:
                    state.refused.append((row, self._refusal(row, exc)))
                    continue
                state.pending.append(row)
        return ids

    def step(self, state: BatchState) -> list[TokenEvent]:
        """Decode one token for every running row, then prefill rows waiting to join."""
        with self._lock:
            events = [
                TokenEvent(row.seq_id, row.request, result=self._finish(row, result))
                for row, result in state.refused
            ]
            state.refused.clear()
            if state.kv is not None and state.rows:
                logits = batching.decode(self.model, state.kv)
                events += self._advance(state.rows, state.kv, logits, state.stream)
                # rows that finished leave before any merge, so their cache is copied once
                self._drop_finished(state)
            room = self.max_batch_size - len(state.rows)
            if state.pending and room > 0:
                joining, state.pending = state.pending[:room], state.pending[room:]
                fresh = state.kv is None or not state.rows
                new_kv, logits = batching.prefill(
                    self.model,
                    [row.prefix for row in joining],
                    [row.prompt_ids for row in joining],
                    layout=self._layout,
                    pad_token_id=self.pad_token_id,
                    blocks=self._prefix_blocks,
                    # a batch of its own gets its decoding room now; one merged in is copied
                    reserve=max(row.max_new_tokens for row in joining) if fresh else 0,
                )
                events += self._advance(joining, new_kv, logits, state.stream)
                state.kv = new_kv if fresh else batching.merge(state.kv, new_kv)
                state.rows = state.rows + joining
                self._drop_finished(state)  # rows done at their first token
            if state.kv is not None and state.rows:
                # spare cache columns for the tokens still to come: no cache copy per step
                state.kv.reserve = max(row.max_new_tokens - len(row.generated) for row in state.rows)
            state.steps += 1
            return events

    @staticmethod
    def _drop_finished(state: BatchState) -> None:
        keep = [i for i, row in enumerate(state.rows) if row.finish_reason is None]
        if len(keep) < len(state.rows):
            state.rows = [state.rows[i] for i in keep]
            state.kv = batching.select_rows(state.kv, keep) if keep else None

    def cancel(self, state: BatchState, seq_ids: Iterable[int]) -> list[TokenEvent]:
        """End the given sequences now (their caller is gone): they leave the batch before the
        next step, and their spans end with finish reason ``cancelled`` and the tokens so far.
        Unknown or already finished ids are ignored; returns the final events."""
        wanted = set(seq_ids)
        with self._lock:
            events = []
            for row in [r for r in state.rows + state.pending if r.seq_id in wanted]:
                if row.finish_reason is not None:
                    continue
                row.finish_reason = FINISH_CANCELLED
                if row.generated and not row.text:
                    row.text = self._decode(row.generated)
                events.append(
                    TokenEvent(row.seq_id, row.request, result=self._finish(row, self._result(row)))
                )
            state.pending = [r for r in state.pending if r.finish_reason is None]
            self._drop_finished(state)
            return events

    def abort(self, state: BatchState, error: BaseException) -> list[GenerationResult]:
        """End every sequence of ``state`` with ``error`` (after a failed forward pass)."""
        with self._lock:
            results = []
            for row, result in state.refused:
                results.append(self._finish(row, result))
            for row in state.rows + state.pending:
                if row.finish_reason is not None:  # finished (and reported) before the failure
                    continue
                result = self._result(row)
                result.finish_reason = FINISH_ERROR
                result.error = f"generation failed: {error}"
                result.error_type = type(error).__name__
                results.append(self._finish(row, result))
            state.rows, state.pending, state.refused, state.kv = [], [], [], None
            return results

    # ------------------------------------------------------------------ tokens
    def encode(self, prompt: str | list[dict[str, Any]] | list[int]) -> list[int]:
        """Token ids of a prompt: plain text, chat messages through the chat template, or ids."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt)["input_ids"])
        if prompt and not isinstance(prompt[0], dict):
            vocab = self.model.get_input_embeddings().num_embeddings
            bad = [t for t in prompt if t >= vocab]
            if bad:
                raise GenerationError(f"token id {bad[0]} is outside the vocabulary of {vocab}.")
            return list(prompt)
        if not getattr(self.tokenizer, "chat_template", None):
            raise GenerationError(
                f"base {self.base.name!r} has no chat template; send the prompt as plain text."
            )
        text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ internals
    def _prepare(self, row: _Row) -> None:
        request = row.request
        request.validate()
        ref = request.adapter
        if ref is None and request.deployment:
            ref = self.registry.deployment_target(request.deployment, request.request_id or row.response_id)
        if ref is not None:
            row.entry = self.registry.resolve(ref)
        row.deployment = request.deployment or (row.entry.name if row.entry is not None else None)
        row.prompt_ids = self.encode(request.prompt)
        if not row.prompt_ids:
            raise GenerationError("the prompt is empty after tokenization; send at least one token.")
        used = len(row.prompt_ids) + row.virtual_tokens
        if used > self.context_length:
            raise GenerationError(
                f"the prompt has {len(row.prompt_ids)} tokens and the adapter {row.virtual_tokens} virtual "
                f"tokens, more than the context of {self.context_length}; shorten the prompt to at most "
                f"{self.context_length - row.virtual_tokens} tokens."
            )
        # Every generated token but the last is fed back at the next position.
        row.max_new_tokens = min(request.max_new_tokens, self.context_length - used + 1)
        device = next(self.model.parameters()).device
        row.sampler = RowSampler.create(
            request.temperature, request.top_p, request.top_k, request.seed, device
        )
        row.prefix = self.registry.prefix_kv(row.entry) if row.entry is not None else None

    def _advance(
        self, rows: list[_Row], kv: batching.KVBatch, logits: torch.Tensor, stream: bool
    ) -> list[TokenEvent]:
        """Pick each row's next token, record it, and finish rows that are done."""
        tokens = select_tokens(logits, [row.sampler for row in rows])
        kv.last_tokens = tokens
        now = time.perf_counter()
        events = []
        for row, token in zip(rows, tokens.tolist(), strict=True):
            row.batch_size = max(row.batch_size, kv.size)  # rows sharing this forward pass
            if row.first_token_at is None:
                row.first_token_at = now
            row.generated.append(token)
            delta = self._update_text(row, token, stream)
            if row.finish_reason is None and len(row.generated) >= row.max_new_tokens:
                row.finish_reason = FINISH_LENGTH
            result = None
            if row.finish_reason is not None:
                if not stream and not row.request.stop:
                    row.text = self._decode(row.generated)
                delta += row.text[row.emitted :]  # this step's piece, then any tail held back
                row.emitted = len(row.text)
                result = self._finish(row, self._result(row))
            events.append(TokenEvent(row.seq_id, row.request, token_id=token, text=delta, result=result))
        return events

    def _update_text(self, row: _Row, token: int, stream: bool) -> str:
        if token in self.eos_token_ids:
            row.finish_reason = FINISH_STOP
            return ""
        stops = row.request.stop
        if not stream and not stops:
            return ""  # decoded once at the end
        text = self._decode(row.generated)
        if stops:
            horizon = max(0, len(row.text) - max(len(s) for s in stops))
            hits = [i for i in (text.find(s, horizon) for s in stops) if i >= 0]
            if hits:
                row.text = text[: min(hits)]
                row.finish_reason = FINISH_STOP
                return ""
        row.text = text
        safe = len(text.rstrip("\ufffd"))  # an incomplete multi-byte character
        for s in stops:  # hold back a tail that may still grow into a stop string
            for k in range(min(len(s) - 1, safe), 0, -1):
                if text[safe - k : safe] == s[:k]:
                    safe -= k
                    break
        safe = max(safe, row.emitted)
        delta, row.emitted = text[row.emitted : safe], safe
        return delta

    def _decode(self, ids: list[int]) -> str:
        ids = [t for t in ids if t not in self.eos_token_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _result(self, row: _Row) -> GenerationResult:
        entry = row.entry
        ttft = None if row.first_token_at is None else row.first_token_at - row.started
        return GenerationResult(
            text=row.text,
            token_ids=list(row.generated),
            finish_reason=row.finish_reason or FINISH_LENGTH,
            input_tokens=len(row.prompt_ids),
            output_tokens=len(row.generated),
            virtual_tokens=row.virtual_tokens,
            adapter_hash=entry.hash if entry else None,
            adapter_name=entry.name if entry else None,
            adapter_version=entry.version if entry else None,
            method=entry.method if entry else None,
            model=response_model(self.base.name, entry.hash.removeprefix("sha256:")[:12] if entry else None),
            response_id=row.response_id,
            request_id=row.request.request_id,
            time_to_first_token=ttft,
        )

    def _refusal(self, row: _Row, exc: TracePtuneError) -> GenerationResult:
        result = self._result(row)
        result.finish_reason = FINISH_ERROR
        result.error = str(exc)
        result.error_type = type(exc).__name__
        return result

    def _finish(self, row: _Row, result: GenerationResult) -> GenerationResult:
        hooks: list[Callable[..., Any]] = [*row.request.scorers, *self.scorers]
        self.telemetry.finish_row(
            row.request,
            result,
            parent=row.parent,
            start_time_ns=row.start_ns,
            adapter=row.entry,
            deployment=row.deployment,
            batch_size=row.batch_size,
            hooks=hooks,
        )
        return result


def _eos_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)
