"""``TrainConfig``: every knob of a training run, validated when it is built.

The ``trace-ptune train`` options map one to one onto these fields (``--virtual-tokens`` is
``virtual_tokens``, ``--grad-accum`` is ``grad_accum`` and so on).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_ptune import semconv
from trace_ptune.errors import ConfigError

SCHEDULES = ("linear", "cosine", "constant")
INIT_KINDS = ("random", "vocab", "labels")  # plus "text:<words>"
ENCODERS = ("mlp", "lstm")
LONG_POLICIES = ("truncate", "error")
LEAKAGE_POLICIES = ("refuse", "drop", "ignore")
BEST_METRICS = ("loss", "exact_match")
_NAME = re.compile(r"^[A-Za-z0-9._/-]+$")

# Fields recorded on the run span as ``ptune.train.hparam.<field>``.
HPARAM_FIELDS = (
    "lr",
    "weight_decay",
    "epochs",
    "steps",
    "batch_size",
    "grad_accum",
    "max_length",
    "seed",
    "init",
    "schedule",
    "warmup_steps",
    "max_grad_norm",
    "encoder",
    "encoder_hidden_size",
    "chat_template",
    "dtype",
)


@dataclass
class TrainConfig:
    """A soft-prompt training run on a frozen base model.

    Exactly one of ``epochs`` and ``steps`` bounds the run (``steps`` wins when both are given
    on the command line's defaults). With ``resume`` set, the saved run's configuration is used
    and ``model``/``data``/``name`` may be omitted.
    """

    model: str | None = field(
        default=None, metadata={"help": "Base model: preset, local dir, .gguf or hub id."}
    )
    data: str | None = field(default=None, metadata={"help": "Training JSONL with `input` and `target`."})
    name: str | None = field(default=None, metadata={"help": "Adapter name in the store."})
    eval: str | None = field(default=None, metadata={"help": "Evaluation JSONL (same format)."})
    method: str = field(default=semconv.METHOD_PROMPT_TUNING, metadata={"help": "Soft-prompt method."})
    virtual_tokens: int = field(default=20, metadata={"help": "Number of virtual tokens."})
    init: str = field(default="random", metadata={"help": 'random | vocab | labels | text:"..."'})
    lr: float = field(default=3e-2, metadata={"help": "Peak learning rate of AdamW."})
    weight_decay: float = 0.0
    epochs: int | None = field(default=None, metadata={"help": "Passes over the training set."})
    steps: int | None = field(default=None, metadata={"help": "Optimizer steps (instead of epochs)."})
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    long_examples: str = field(default="truncate", metadata={"help": "truncate | error"})
    seed: int = 0
    schedule: str = "linear"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    encoder: str = field(default="mlp", metadata={"help": "P-tuning prompt encoder: mlp | lstm."})
    encoder_hidden_size: int | None = None
    chat_template: bool = False
    eval_every: int | None = field(
        default=None, metadata={"help": "Steps between evals (default: per epoch)."}
    )
    eval_max_new_tokens: int = 16
    eval_at_start: bool = field(
        default=False, metadata={"help": "Also evaluate the initial prompt (step 0)."}
    )
    scorers: list[str] = field(
        default_factory=list, metadata={"help": "Extra eval scorers (trace_ptune.evals specs), e.g. f1."}
    )
    best_metric: str = "loss"
    patience: int | None = field(
        default=None, metadata={"help": "Evals without improvement before stopping."}
    )
    leakage: str = field(default="refuse", metadata={"help": "Train/eval overlap: refuse | drop | ignore."})
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    step_span_every: int = field(default=1, metadata={"help": "Emit a ptune.train.step span every N steps."})
    parent: str | None = field(default=None, metadata={"help": "Adapter (store ref) to continue from."})
    allow_base_mismatch: bool = False
    resume: str | None = field(default=None, metadata={"help": "Run or checkpoint directory to resume."})
    output_dir: str | None = field(default=None, metadata={"help": "Run directory (default under home)."})
    dtype: str | None = None
    device: str = "cpu"
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.resume is None:
            for key in ("model", "data", "name"):
                if not getattr(self, key):
                    raise ConfigError(
                        f"{key} is required (got {getattr(self, key)!r}); pass --{key}, or --resume a run."
                    )
        if self.name is not None and not _NAME.match(self.name):
            raise ConfigError(
                f"Adapter name {self.name!r} is invalid; use letters, digits and . _ / - (no @ or +)."
            )
        if self.method not in semconv.METHODS:
            raise ConfigError(f"method {self.method!r} is unknown; pick one of {', '.join(semconv.METHODS)}.")
        _positive("virtual_tokens", self.virtual_tokens)
        _positive("batch_size", self.batch_size)
        _positive("grad_accum", self.grad_accum)
        _positive("max_length", self.max_length)
        _positive("eval_max_new_tokens", self.eval_max_new_tokens)
        _positive("step_span_every", self.step_span_every)
        _positive("keep_checkpoints", self.keep_checkpoints)
        for key in ("epochs", "steps", "eval_every", "checkpoint_every", "patience", "encoder_hidden_size"):
            value = getattr(self, key)
            if value is not None:
                _positive(key, value)
        if self.epochs is None and self.steps is None:
            self.epochs = 3
        if not (self.lr > 0 and self.lr == self.lr):
            raise ConfigError(f"lr must be a positive number (got {self.lr!r}).")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0 (got {self.weight_decay!r}).")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0 or None (got {self.max_grad_norm!r}).")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0 (got {self.warmup_steps!r}).")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("encoder", self.encoder, ENCODERS)
        _choice("long_examples", self.long_examples, LONG_POLICIES)
        _choice("leakage", self.leakage, LEAKAGE_POLICIES)
        self.scorers = list(self.scorers)
        if self.best_metric not in BEST_METRICS and not self.scorers:
            raise ConfigError(
                f"best_metric {self.best_metric!r} is unknown; pick loss or exact_match, or add a scorer of that name."
            )
        if not (self.init in INIT_KINDS or self.init.startswith("text:")):
            raise ConfigError(f'init {self.init!r} is unknown; use random, vocab, labels or text:"...".')
        if self.init.startswith("text:") and not self.init[5:].strip():
            raise ConfigError(
                'init "text:" needs some text after the colon, e.g. text:"Classify the review".'
            )
        if self.dtype is not None and self.dtype not in ("float32", "float64", "bfloat16", "float16"):
            raise ConfigError(f"dtype {self.dtype!r} is unknown; use float32, float64, bfloat16 or float16.")
        if self.method == semconv.METHOD_PREFIX_TUNING and self.init == "labels":
            raise ConfigError(
                "init 'labels' applies to prompt_tuning and p_tuning; use vocab or text for prefix_tuning."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def hparams(self) -> dict[str, Any]:
        """Hyper-parameters for the run span (``None`` values are left out: OTel drops them)."""
        out: dict[str, Any] = {}
        for key in HPARAM_FIELDS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def resolve_paths(self) -> None:
        """Make file paths absolute so a saved config still works from another directory."""
        for key in ("data", "eval", "output_dir"):
            value = getattr(self, key)
            if value:
                setattr(self, key, str(Path(value).expanduser().resolve()))


def _positive(key: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer (got {value!r}).")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} {value!r} is unknown; pick one of {', '.join(allowed)}.")
