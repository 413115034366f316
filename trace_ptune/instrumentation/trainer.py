"""Training, eval and checkpoint spans from the Hugging Face ``Trainer``.

Usage, automatic::

    trace_ptune.instrument()            # or HFTrainerInstrumentor().instrument()
    trainer = Trainer(model=peft_model, ...)   # the callback is added for you
    trainer.train()

or by hand::

    from trace_ptune.instrumentation.trainer import TracePtuneCallback

    trainer = Trainer(..., callbacks=[TracePtuneCallback()])

Spans, from the Trainer's own events and logs (names and attributes from the span contract):

- ``ptune.train`` around the whole run (``on_train_begin`` .. ``on_train_end``): run id, rank,
  world size, hyper-parameters as ``ptune.train.hparam.*``, base model, and for a PEFT
  prompt-learning model the adapter method, name and virtual tokens; on end ``ptune.adapter.hash``.
- ``ptune.train.step`` per optimizer step (every ``step_every``-th): step, loss, learning rate,
  grad norm (when the step was logged), tokens and tokens per second (when the Trainer counts
  input tokens, ``include_num_input_tokens_seen``).
- ``ptune.eval`` per evaluation, with one ``ptune.eval.metric`` event per metric.
- ``ptune.checkpoint`` per save, with the adapter hash of the saved tensors and its parent (the
  previous checkpoint's hash).

When added by the instrumentor, the ``ptune.train`` span is also made current for the run, so
generation spans inside it (e.g. in an eval callback) nest under it, and a run that raises ends it
with an error status.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.trace import Status, StatusCode
from transformers import TrainerCallback

from trace_ptune import semconv
from trace_ptune.instrumentation import peft_hash
from trace_ptune.instrumentation._warn import warn_once

_log = logging.getLogger(__name__)

_INSTRUMENTS = ("transformers >= 4.40",)
_HPARAMS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "optim",
    "seed",
    "max_grad_norm",
)
# Trainer metrics that describe the eval loop, not the model.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time")


class TracePtuneCallback(TrainerCallback):
    """A ``TrainerCallback`` emitting the contract's training spans (see the module docstring).

    Args:
        tracer_provider: where spans go (default: the global provider).
        step_every: emit one ``ptune.train.step`` span every this many optimizer steps.
        dataset_hash: ``ptune.train.dataset.hash`` for the run, when you know it.
        adapter_name: ``ptune.adapter.name`` (default: the PEFT adapter's name).
    """

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        step_every: int = 1,
        dataset_hash: str | None = None,
        adapter_name: str | None = None,
    ) -> None:
        from trace_ptune.telemetry import get_tracer

        if step_every < 1:
            from trace_ptune.errors import ConfigError

            raise ConfigError(f"step_every must be at least 1, got {step_every}; use 1 to trace every step.")
        self._tracer = get_tracer(tracer_provider)
        self.step_every = step_every
        self.dataset_hash = dataset_hash
        self.adapter_name = adapter_name
        self.run_id: str | None = None
        self._set_current = False  # the instrumentor sets this: it guarantees the detach
        self._train_span: Any = None
        self._train_ctx: Any = None
        self._token: Any = None
        self._step_start: int | None = None
        self._pending: dict[str, Any] | None = None
        self._tokens_seen = 0
        self._last_hash: str | None = None
        self._rank = 0

    # ---------------------------------------------------------------- Trainer events

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._guard(self._begin, args, state, model)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._guard(self._flush_step)
        self._step_start = time.time_ns()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._guard(self._step_end, state)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self._guard(self._log, logs or {})

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self._guard(self._evaluate, state, metrics or {}, kwargs)

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._guard(self._save, args, state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._guard(self._end, model, None)

    # ---------------------------------------------------------------- implementation

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # telemetry must never stop a training run
            warn_once(
                _log,
                f"trainer-{fn.__name__}",
                "trace-ptune trainer callback failed in %s: %r",
                fn.__name__,
                exc,
            )

    def _begin(self, args: Any, state: Any, model: Any) -> None:
        if self._train_span is not None:  # a second train() on the same trainer: close the first
            self._end(model, None)
        self.run_id = uuid.uuid4().hex
        self._rank = int(getattr(args, "process_index", 0) or 0)
        attrs: dict[str, Any] = {
            semconv.PTUNE_TRAIN_RUN_ID: self.run_id,
            semconv.PTUNE_TRAIN_RANK: self._rank,
            semconv.PTUNE_TRAIN_WORLD_SIZE: int(getattr(args, "world_size", 1) or 1),
            semconv.PTUNE_TRAFFIC: semconv.TRAFFIC_TRAIN,
        }
        for name in _HPARAMS:
            value = getattr(args, name, None)
            value = getattr(value, "value", value)  # enums
            if isinstance(value, (bool, int, float, str)):
                attrs[semconv.train_hparam(name)] = value
        if self.dataset_hash:
            attrs[semconv.PTUNE_TRAIN_DATASET_HASH] = self.dataset_hash
        attrs.update(_base_attributes(model))
        identity = _identity(model)
        if identity is not None:
            attrs[semconv.PTUNE_ADAPTER_METHOD] = identity.method
            attrs[semconv.PTUNE_ADAPTER_NUM_VIRTUAL_TOKENS] = identity.num_virtual_tokens
            attrs[semconv.PTUNE_ADAPTER_NAME] = self.adapter_name or identity.name or "default"
        self._last_hash = None
        self._tokens_seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        self._train_span = self._tracer.start_span(semconv.SPAN_TRAIN, attributes=attrs)
        self._train_ctx = trace.set_span_in_context(self._train_span)
        if self._set_current:
            self._token = otel_context.attach(self._train_ctx)

    def _step_end(self, state: Any) -> None:
        step = int(state.global_step)
        end = time.time_ns()
        start = self._step_start or end
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        tokens = seen - self._tokens_seen if seen else 0
        self._tokens_seen = seen
        self._step_start = None
        if step % self.step_every:
            return
        self._flush_step()
        attrs: dict[str, Any] = {
            semconv.PTUNE_TRAIN_RUN_ID: self.run_id or "",
            semconv.PTUNE_TRAIN_RANK: self._rank,
            semconv.PTUNE_TRAIN_STEP: step,
        }
        if tokens > 0:
            attrs[semconv.PTUNE_TRAIN_TOKENS] = tokens
            attrs[semconv.PTUNE_TRAIN_TOKENS_PER_SECOND] = tokens / max((end - start) / 1e9, 1e-9)
        self._pending = {"attrs": attrs, "start": start, "end": end}

    def _log(self, logs: dict[str, Any]) -> None:
        pending = self._pending
        if pending is None or "loss" not in logs:
            return
        for key, attr in (
            ("loss", semconv.PTUNE_TRAIN_LOSS),
            ("learning_rate", semconv.PTUNE_TRAIN_LEARNING_RATE),
            ("grad_norm", semconv.PTUNE_TRAIN_GRAD_NORM),
        ):
            value = _number(logs.get(key))
            if value is not None:
                pending["attrs"][attr] = value
        self._flush_step()

    def _flush_step(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        span = self._tracer.start_span(
            semconv.SPAN_TRAIN_STEP,
            context=self._train_ctx,
            attributes=pending["attrs"],
            start_time=pending["start"],
        )
        span.end(end_time=pending["end"])

    def _evaluate(self, state: Any, metrics: dict[str, Any], kwargs: dict[str, Any]) -> None:
        now = time.time_ns()
        runtime = _number(metrics.get("eval_runtime"))
        start = now - int(runtime * 1e9) if runtime else now
        attrs: dict[str, Any] = {
            semconv.PTUNE_EVAL_RUN_ID: uuid.uuid4().hex,
            semconv.PTUNE_TRAFFIC: semconv.TRAFFIC_EVAL,
        }
        if self.run_id:
            attrs[semconv.PTUNE_TRAIN_RUN_ID] = self.run_id
            attrs[semconv.PTUNE_TRAIN_STEP] = int(state.global_step)
        model = kwargs.get("model")
        identity = _identity(model)
        if identity is not None:
            attrs.update(identity.attributes)
        attrs.update(_base_attributes(model))
        n = _dataset_size(kwargs.get("eval_dataloader"))
        span = self._tracer.start_span(
            semconv.SPAN_EVAL, context=self._train_ctx, attributes=attrs, start_time=start
        )
        for key, value in metrics.items():
            number = _number(value)
            name = key.removeprefix("eval_")
            if number is None or name in _NOT_METRICS:
                continue
            event = {semconv.GEN_AI_EVALUATION_NAME: name, semconv.PTUNE_EVAL_MEAN: number}
            if n is not None:
                event[semconv.PTUNE_EVAL_N] = n
            span.add_event(semconv.EVENT_EVAL_METRIC, attributes=event, timestamp=now)
        span.end(end_time=now)

    def _save(self, args: Any, state: Any, model: Any) -> None:
        identity = _identity(model)
        attrs: dict[str, Any] = {
            semconv.PTUNE_TRAIN_STEP: int(state.global_step),
        }
        if self.run_id:
            attrs[semconv.PTUNE_TRAIN_RUN_ID] = self.run_id
        if identity is not None:
            attrs[semconv.PTUNE_ADAPTER_HASH] = identity.hash
            attrs[semconv.PTUNE_ADAPTER_NAME] = self.adapter_name or identity.name or "default"
            attrs[semconv.PTUNE_ADAPTER_METHOD] = identity.method
            if self._last_hash and self._last_hash != identity.hash:
                attrs[semconv.PTUNE_ADAPTER_PARENT_HASH] = self._last_hash
            self._last_hash = identity.hash
        span = self._tracer.start_span(semconv.SPAN_CHECKPOINT, context=self._train_ctx, attributes=attrs)
        span.end()

    def _end(self, model: Any, exc: BaseException | None) -> None:
        span = self._train_span
        if span is None:
            return
        self._flush_step()
        try:
            identity = _identity(model)
            if identity is not None:
                span.set_attribute(semconv.PTUNE_ADAPTER_HASH, identity.hash)
        finally:
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))
                span.set_attribute(semconv.ERROR_TYPE, type(exc).__qualname__)
            span.end()
            self._train_span = None
            if self._token is not None:
                token, self._token = self._token, None
                otel_context.detach(token)

    def _abort(self, exc: BaseException, model: Any) -> None:
        """End a run that raised (called by the instrumentor's ``Trainer.train`` wrapper)."""
        self._guard(self._end, model, exc)


# ---------------------------------------------------------------- helpers


def _identity(model: Any) -> peft_hash.AdapterIdentity | None:
    if model is None:
        return None
    target = getattr(model, "module", model)  # DDP / accelerate wrappers
    return peft_hash.adapter_identity(target) if hasattr(target, "peft_config") else None


def _base_attributes(model: Any) -> dict[str, Any]:
    if model is None:
        return {}
    from trace_ptune.instrumentation.transformers import _model_info

    target = getattr(model, "module", model)
    base = target.get_base_model() if hasattr(target, "get_base_model") else target
    info = _model_info(base)
    attrs = {semconv.PTUNE_BASE_MODEL_NAME: info.name}
    if info.fingerprint:
        attrs[semconv.PTUNE_BASE_MODEL_FINGERPRINT] = info.fingerprint
    return attrs


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        value = getattr(value, "item", lambda: None)() if hasattr(value, "item") else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _dataset_size(dataloader: Any) -> int | None:
    try:
        return len(dataloader.dataset) if dataloader is not None else None
    except TypeError:
        return None


# ---------------------------------------------------------------- the instrumentor


class HFTrainerInstrumentor(BaseInstrumentor):
    """Add :class:`TracePtuneCallback` to every ``Trainer`` created while instrumented."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.get("tracer_provider")

        def init_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            result = wrapped(*args, **kw)
            try:
                handler = instance.callback_handler
                if not any(isinstance(cb, TracePtuneCallback) for cb in handler.callbacks):
                    callback = TracePtuneCallback(tracer_provider=tracer_provider)
                    callback._set_current = True
                    instance.add_callback(callback)
            except Exception as exc:
                warn_once(_log, "trainer-init", "trace-ptune could not add its Trainer callback: %r", exc)
            return result

        wrapt.wrap_function_wrapper("transformers.trainer", "Trainer.__init__", init_wrapper)
        wrapt.wrap_function_wrapper("transformers.trainer", "Trainer.train", _train_wrapper)

    def _uninstrument(self, **kwargs: Any) -> None:
        from transformers.trainer import Trainer

        unwrap(Trainer, "__init__")
        unwrap(Trainer, "train")


def _train_wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return wrapped(*args, **kwargs)
    except BaseException as exc:
        for callback in getattr(getattr(instance, "callback_handler", None), "callbacks", ()):
            if isinstance(callback, TracePtuneCallback):
                callback._abort(exc, getattr(instance, "model", None))
        raise
