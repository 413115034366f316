"""Online evaluation of production traffic: score a sample of generations now, or when labels arrive.

``OnlineEvaluator`` hooks into a runtime ``Engine``: for a deterministic sample of finished
generations it runs reference-free scorers and emits one child span per score, named
``evaluation {metric}``, under the generation span, carrying ``gen_ai.evaluation.*``,
``gen_ai.response.id`` and copies of the scored span's ``ptune.adapter.hash``, ``ptune.tenant``,
``ptune.deployment``, ``ptune.base_model.fingerprint`` and ``ptune.traffic``. The collector
stores these in ``evaluations`` like inline events, so `trace-ptune query regressions` sees them.

``LabelJoiner`` remembers recent generations (bounded, in memory only) and, when a label arrives
later (a human rating, a resolved ticket, a ground-truth class) by response id or request id,
scores the remembered output against it and emits the same child span, parented on the
original span context even though that span has long ended.

Example::

    from trace_ptune.evals import LabelJoiner, OnlineEvaluator

    online = OnlineEvaluator("json_valid,regex(pattern='^[A-Z]')", sample_rate=0.1, seed=7)
    joiner = LabelJoiner("label_accuracy(labels=pos|neg)")
    online.attach(engine)
    joiner.attach(engine)
    results = engine.generate(requests)
    ...
    joiner.label(results[0].response_id, "pos")      # hours later
    joiner.feedback(results[1].response_id, "thumbs_up", 1.0)

Sampling is a hash of ``seed`` and the request id (or response id when a request has none), so
the same request is sampled the same way in every process and on every retry. Scorer failures
are logged once and never reach the caller.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from trace_ptune import semconv
from trace_ptune.errors import ConfigError, EvalError
from trace_ptune.evals.datasets import Example
from trace_ptune.evals.scorers import Scorer, ScoreResult, apply_scorer, coerce_result, get_scorers
from trace_ptune.instrumentation._warn import warn_once
from trace_ptune.telemetry import get_tracer

logger = logging.getLogger(__name__)


def _warn_once(what: str, exc: BaseException) -> None:
    warn_once(
        logger,
        f"online evaluation: {what}",
        "trace-ptune online evaluation: %s failed (%s); generation continues.",
        what,
        exc,
    )


def sampled(key: str, rate: float, seed: int = 0) -> bool:
    """Deterministic Bernoulli(rate) draw for ``key``: the same answer in every process."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < rate * 2**64


@dataclass(frozen=True)
class ScoredGeneration:
    """What a score needs to know about the generation it scores (kept after its span ended)."""

    span_context: SpanContext
    response_id: str | None
    request_id: str | None
    prompt: str | list[dict[str, Any]]
    output: str
    attributes: dict[str, Any]  # copied onto every evaluation span

    @classmethod
    def from_pair(cls, request: Any, result: Any, base: Any | None) -> ScoredGeneration:
        attributes: dict[str, Any] = {}
        deployment = request.deployment or result.adapter_name
        for key, value in (
            (semconv.PTUNE_ADAPTER_HASH, result.adapter_hash),
            (semconv.PTUNE_TENANT, request.tenant),
            (semconv.PTUNE_DEPLOYMENT, deployment),
            (semconv.PTUNE_BASE_MODEL_FINGERPRINT, getattr(base, "fingerprint", None)),
            (semconv.PTUNE_TRAFFIC, request.traffic or semconv.TRAFFIC_PRODUCTION),
        ):
            if value is not None:
                attributes[key] = value
        return cls(
            span_context=_span_context(result.trace_id, result.span_id),
            response_id=result.response_id,
            request_id=request.request_id,
            prompt=request.prompt,
            output=result.text,
            attributes=attributes,
        )

    def example(self, expected: Any = None) -> Example:
        return Example(id=self.response_id or self.request_id or "", input=self.prompt, expected=expected)


def _span_context(trace_id: str | None, span_id: str | None) -> SpanContext:
    try:
        tid, sid = int(trace_id or "0", 16), int(span_id or "0", 16)
    except ValueError:
        tid = sid = 0
    # The runtime reports ids, not flags: a span with valid ids was recorded, so treat it as sampled.
    return SpanContext(tid, sid, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


ENCODINGS = ("span", "log")


@dataclass(frozen=True)
class _LateTarget:
    """A generation as ``trace_ptune.score()`` takes it: ids plus the attributes to copy."""

    response_id: str | None
    trace_id: str
    span_id: str
    adapter_hash: str | None
    tenant: str | None
    deployment: str | None
    base_fingerprint: str | None

    @classmethod
    def of(cls, gen: ScoredGeneration) -> _LateTarget:
        a = gen.attributes
        return cls(
            response_id=gen.response_id,
            trace_id=format(gen.span_context.trace_id, "032x"),
            span_id=format(gen.span_context.span_id, "016x"),
            adapter_hash=a.get(semconv.PTUNE_ADAPTER_HASH),
            tenant=a.get(semconv.PTUNE_TENANT),
            deployment=a.get(semconv.PTUNE_DEPLOYMENT),
            base_fingerprint=a.get(semconv.PTUNE_BASE_MODEL_FINGERPRINT),
        )


class _Emitter:
    """Emits a score as an ``evaluation {metric}`` child span, or as a log event in the scored
    span's context (``trace_ptune.score()``'s encoding for generations that already ended)."""

    def __init__(
        self, tracer_provider: Any | None, encoding: str = "span", logger_provider: Any = None
    ) -> None:
        if encoding not in ENCODINGS:
            raise ConfigError(
                f"encoding {encoding!r} is unknown; use 'span' (child spans) or 'log' (log events)."
            )
        self.tracer = get_tracer(tracer_provider)
        self.encoding = encoding
        self.logger_provider = logger_provider

    def emit(self, gen: ScoredGeneration, name: str, result: ScoreResult) -> None:
        if self.encoding == "log":
            from trace_ptune.instrumentation.scoring import score

            score(
                _LateTarget.of(gen) if gen.response_id else gen.span_context,
                name,
                result.value,
                result.label,
                result.explanation,
                logger_provider=self.logger_provider,
            )
            return
        attributes: dict[str, Any] = {
            semconv.GEN_AI_EVALUATION_NAME: name,
            semconv.GEN_AI_EVALUATION_SCORE_VALUE: float(result.value),
            **gen.attributes,
        }
        if result.label is not None:
            attributes[semconv.GEN_AI_EVALUATION_SCORE_LABEL] = result.label
        if result.explanation is not None:
            attributes[semconv.GEN_AI_EVALUATION_EXPLANATION] = result.explanation
        if gen.response_id:
            attributes[semconv.GEN_AI_RESPONSE_ID] = gen.response_id
        parent = (
            trace.set_span_in_context(NonRecordingSpan(gen.span_context))
            if gen.span_context.is_valid
            else None
        )
        span = self.tracer.start_span(
            semconv.evaluation_span_name(name), context=parent, kind=SpanKind.INTERNAL, attributes=attributes
        )
        span.end()


class _EngineHook:
    """Runs on every generation an engine finishes, as one of its ``scorers``."""

    base: Any | None = None

    def attach(self, engine: Any) -> Self:
        """Run on every generation ``engine`` finishes (after its own scorers)."""
        self.base = engine.base
        engine.scorers.append(self)
        return self

    def detach(self, engine: Any) -> None:
        engine.scorers[:] = [s for s in engine.scorers if s is not self]


class OnlineEvaluator(_EngineHook):
    """Score a deterministic sample of an engine's generations with reference-free scorers."""

    def __init__(
        self,
        scorers: str | Sequence[str | Scorer],
        sample_rate: float = 0.1,
        seed: int = 0,
        *,
        traffic: Sequence[str] | None = (semconv.TRAFFIC_PRODUCTION,),
        tracer_provider: Any | None = None,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be between 0 and 1, got {sample_rate}.")
        self.scorers = get_scorers(scorers)
        needs_reference = [s.name for s in self.scorers if not s.reference_free]
        if needs_reference:
            raise ConfigError(
                f"scorer {needs_reference[0]!r} needs an expected answer, which production traffic lacks; "
                "use a reference-free scorer here and LabelJoiner for labels that arrive later."
            )
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.traffic = tuple(traffic) if traffic is not None else None
        self.base: Any | None = None
        self._emitter = _Emitter(tracer_provider)
        self._lock = threading.Lock()
        self.seen = 0
        self.scored = 0

    def should_sample(self, request: Any, result: Any) -> bool:
        if self.traffic is not None and (request.traffic or semconv.TRAFFIC_PRODUCTION) not in self.traffic:
            return False
        key = request.request_id or result.response_id or ""
        return sampled(key, self.sample_rate, self.seed)

    def __call__(self, request: Any, result: Any) -> None:
        """The runtime hook: returns no inline scores; emits child spans for sampled rows."""
        try:
            if getattr(result, "error", None) is not None or not self.should_sample(request, result):
                with self._lock:
                    self.seen += 1
                return None
            gen = ScoredGeneration.from_pair(request, result, self.base)
            self.evaluate(gen)
            with self._lock:
                self.seen += 1
                self.scored += 1
        except Exception as exc:  # never break the user's generation
            _warn_once("scoring a generation", exc)
        return None

    def evaluate(self, gen: ScoredGeneration) -> list[tuple[str, ScoreResult]]:
        """Score one generation with every scorer and emit the spans; failures skip that scorer."""
        out = []
        example = gen.example()
        for sc in self.scorers:
            try:
                result = apply_scorer(sc, gen.output, example)
            except EvalError as exc:
                _warn_once(f"scorer {sc.name!r}", exc)
                continue
            self._emitter.emit(gen, sc.name, result)
            out.append((sc.name, result))
        return out


class LabelJoiner(_EngineHook):
    """Join late labels to remembered generations by response or request id, and emit the scores.

    ``encoding="span"`` (default) emits ``evaluation {metric}`` child spans; ``"log"`` emits
    ``gen_ai.evaluation.result`` log events in the scored span's context instead (the
    OpenTelemetry GenAI convention for late scores, via ``trace_ptune.score``).
    """

    def __init__(
        self,
        scorers: str | Sequence[str | Scorer] = (),
        *,
        max_entries: int = 100_000,
        encoding: str = "span",
        tracer_provider: Any | None = None,
        logger_provider: Any | None = None,
    ) -> None:
        if max_entries < 1:
            raise ConfigError(f"max_entries must be at least 1, got {max_entries}.")
        self.scorers = get_scorers(scorers) if scorers else []
        self.max_entries = max_entries
        self.base: Any | None = None
        self._emitter = _Emitter(tracer_provider, encoding, logger_provider)
        self._entries: OrderedDict[str, ScoredGeneration] = OrderedDict()
        self._aliases: dict[str, str] = {}  # request id -> response id
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, request: Any, result: Any) -> None:
        """The runtime hook: remember the generation; emits nothing now."""
        try:
            if getattr(result, "error", None) is None:
                self.remember(ScoredGeneration.from_pair(request, result, self.base))
        except Exception as exc:
            _warn_once("remembering a generation", exc)
        return None

    def remember(self, gen: ScoredGeneration) -> None:
        key = gen.response_id or gen.request_id
        if not key:
            return
        with self._lock:
            self._entries[key] = gen
            self._entries.move_to_end(key)
            if gen.request_id and gen.request_id != key:
                self._aliases[gen.request_id] = key
            while len(self._entries) > self.max_entries:
                old_key, old = self._entries.popitem(last=False)
                if old.request_id and self._aliases.get(old.request_id) == old_key:
                    del self._aliases[old.request_id]

    def lookup(self, id: str) -> ScoredGeneration:
        """The remembered generation with this response id (or request id)."""
        with self._lock:
            key = id if id in self._entries else self._aliases.get(id)
            gen = self._entries.get(key) if key is not None else None
        if gen is None:
            raise EvalError(
                f"no remembered generation has the id {id!r}; it was never seen by this joiner "
                f"or fell out of its last {self.max_entries} entries."
            )
        return gen

    def label(self, id: str, expected: Any) -> list[tuple[str, ScoreResult]]:
        """Score the remembered output of ``id`` against ``expected`` with every scorer; emit each."""
        if not self.scorers:
            raise ConfigError("this LabelJoiner has no scorers; give some, or record scores with feedback().")
        gen = self.lookup(id)
        example = gen.example(expected)
        out = []
        for sc in self.scorers:
            result = apply_scorer(sc, gen.output, example)
            self._emitter.emit(gen, sc.name, result)
            out.append((sc.name, result))
        return out

    def feedback(
        self, id: str, name: str, value: float, label: str | None = None, explanation: str | None = None
    ) -> ScoreResult:
        """Record a score decided elsewhere (a user's rating, a resolved ticket) for ``id``."""
        value = float(value) if isinstance(value, bool) else value
        result = coerce_result(ScoreResult(value, label, explanation), name)
        self._emitter.emit(self.lookup(id), name, result)
        return result
