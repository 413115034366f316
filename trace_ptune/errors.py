"""One error hierarchy for everything a user can get wrong.

Every user-facing error is one sentence: what was wrong, with which value, and what to do.
The CLI turns any ``TracePtuneError`` into ``click.ClickException`` (exit 1, no traceback).
"""

from __future__ import annotations


class TracePtuneError(Exception):
    """Base class of every error trace-ptune raises on purpose."""


class ConfigError(TracePtuneError, ValueError):
    """A configuration value or option is invalid."""


class ModelLoadError(TracePtuneError):
    """A base model or tokenizer could not be loaded (missing path, unknown preset, no hub)."""


class AdapterError(TracePtuneError):
    """Base class for soft-prompt artifact problems."""


class AdapterNotFoundError(AdapterError, LookupError):
    """No adapter matches the given name, ``name@version``, deployment or hash prefix."""


class AdapterIntegrityError(AdapterError):
    """An adapter's stored tensors do not match its recorded hash, or its files are corrupt."""


class AdapterMismatchError(AdapterError):
    """An adapter does not fit the base model (other fingerprint, hidden size, layer layout)."""


class AdapterFormatError(AdapterError):
    """An adapter directory is malformed (missing manifest field, unsupported PEFT type)."""


class DataError(TracePtuneError):
    """A dataset file is malformed, empty or otherwise unusable."""


class LeakageError(DataError):
    """Train and eval sets share examples."""


class TrainingError(TracePtuneError):
    """A training run failed (for example the loss became NaN)."""


class GenerationError(TracePtuneError):
    """One generation request is invalid (prompt too long, bad sampling parameters)."""


class CollectorError(TracePtuneError):
    """The collector could not start, or a request to it failed."""


class QueryError(TracePtuneError):
    """A query was refused (not read-only, bad syntax) or its data source is unreachable."""


class EvalError(TracePtuneError):
    """An evaluation failed: a scorer raised or returned a bad value, or results do not line up."""


class DemoError(TracePtuneError):
    """The end-to-end demo could not complete a step (collector, training, serving, query)."""
