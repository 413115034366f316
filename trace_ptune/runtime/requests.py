"""What a caller asks the engine for, and what it gets back.

A :class:`GenerationRequest` is validated by the engine, not at construction, so one bad request
in a batch becomes an ``error`` on its own :class:`GenerationResult` while the others complete.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trace_ptune import semconv
from trace_ptune.errors import GenerationError

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ERROR = "error"
FINISH_CANCELLED = "cancelled"  # the caller went away (e.g. an HTTP client disconnected)

ChatMessages = list[dict[str, Any]]
TokenIds = list[int]


@dataclass(frozen=True)
class Score:
    """One evaluation of a generation, recorded as a ``gen_ai.evaluation.result`` span event."""

    name: str
    value: float | None = None
    label: str | None = None
    explanation: str | None = None


def time_ordered_id(prefix: str, unix_ms: int | None = None) -> str:
    """``prefix`` + 32 hex digits of a version-7 UUID (RFC 9562): 48 bits of Unix milliseconds,
    then 74 random bits.

    Response and request ids sort by creation time, and a column store keeps the shared time
    prefix almost for free: in the collector's benchmark ~10 bytes per span less than fully
    random ids, which land in three columns.
    """
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10))
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 62 & 0xFFF) << 64
        | 0b10 << 62
        | rand & 0x3FFF_FFFF_FFFF_FFFF
    )
    return f"{prefix}{value:032x}"


# A scorer looks at the finished request/result pair and returns zero or more scores.
Scorer = Callable[["GenerationRequest", "GenerationResult"], "Score | Iterable[Score] | None"]


@dataclass
class GenerationRequest:
    """One sequence to generate.

    ``prompt`` is plain text (a ``text_completion``), a list of chat messages
    (``[{"role": "user", "content": "..."}]``, a ``chat``: the tokenizer's chat template is applied),
    or a list of token ids (a ``text_completion`` of exactly those tokens).
    ``adapter`` is anything the engine's registry resolves: a registered name, ``name@version``,
    a hash or ≥12-hex prefix, or a deployment in the adapter store; ``None`` with a
    ``deployment`` the store knows routes through that deployment; ``None`` otherwise is the
    base model alone. ``temperature == 0`` is greedy decoding. ``attributes`` are extra span
    attributes for this row's generation span (e.g. ``ptune.eval.example_id`` from an eval run);
    they never override the contract's own attributes.
    """

    prompt: str | ChatMessages | TokenIds
    adapter: str | None = None
    tenant: str | None = None
    deployment: str | None = None
    traffic: str | None = None
    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()
    request_id: str | None = None
    scorers: Sequence[Scorer] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list) and bool(self.prompt) and isinstance(self.prompt[0], dict)

    @property
    def is_token_ids(self) -> bool:
        return isinstance(self.prompt, list) and bool(self.prompt) and not isinstance(self.prompt[0], dict)

    @property
    def operation(self) -> str:
        return semconv.GEN_AI_OPERATION_CHAT if self.is_chat else semconv.GEN_AI_OPERATION_TEXT_COMPLETION

    def validate(self) -> None:
        """Raise :class:`GenerationError` naming the first bad field."""
        if isinstance(self.prompt, str):
            pass
        elif self.is_token_ids:
            if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.prompt):
                raise GenerationError("a token-id prompt must be a list of non-negative integers.")
        elif self.is_chat:
            for message in self.prompt:
                if not isinstance(message, dict) or "role" not in message or "content" not in message:
                    raise GenerationError(
                        f"chat message {message!r} is malformed; each message needs 'role' and 'content'."
                    )
        else:
            raise GenerationError(
                f"prompt {self.prompt!r} is not text, chat messages or token ids; send one of those."
            )
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise GenerationError(f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 1.")
        if self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if not _finite(self.temperature) or self.temperature < 0:
            raise GenerationError(
                f"temperature={self.temperature!r} must be a finite number >= 0 (0 is greedy)."
            )
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p={self.top_p!r} must be in (0, 1].")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise GenerationError(f"top_k={self.top_k!r} must be an integer >= 0 (0 disables it).")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise GenerationError(f"seed={self.seed!r} must be an integer or None.")
        if isinstance(self.stop, str):
            raise GenerationError(f"stop={self.stop!r} must be a list of strings, not one string.")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise GenerationError(f"stop sequence {s!r} must be a non-empty string.")
        if self.traffic is not None and self.traffic not in semconv.TRAFFIC_KINDS:
            raise GenerationError(
                f"traffic={self.traffic!r} is not one of {', '.join(semconv.TRAFFIC_KINDS)}."
            )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class GenerationResult:
    """The outcome of one request. ``error`` is set (and ``finish_reason == "error"``) when the
    request was refused; the other fields then describe as much as was known."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = FINISH_ERROR
    input_tokens: int = 0
    output_tokens: int = 0
    virtual_tokens: int = 0
    adapter_hash: str | None = None
    adapter_name: str | None = None
    adapter_version: int | None = None
    method: str | None = None
    model: str | None = None  # gen_ai.response.model: "<base>+ptune:<hash12>" or the base name
    response_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    time_to_first_token: float | None = None
    error: str | None = None
    error_type: str | None = None  # the error's class name, e.g. "AdapterNotFoundError"
    scores: list[Score] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready row (the ``--json`` output of ``trace-ptune generate``)."""
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "virtual_tokens": self.virtual_tokens,
            "adapter_hash": self.adapter_hash,
            "adapter_name": self.adapter_name,
            "adapter_version": self.adapter_version,
            "method": self.method,
            "model": self.model,
            "response_id": self.response_id,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "time_to_first_token": self.time_to_first_token,
            "token_ids": list(self.token_ids),
            "error": self.error,
            "error_type": self.error_type,
            "scores": [
                {"name": s.name, "value": s.value, "label": s.label, "explanation": s.explanation}
                for s in self.scores
            ],
        }
