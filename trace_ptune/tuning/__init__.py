"""Soft-prompt training on a frozen base model: prompt, prefix and P-tuning, traced end to end.

    from trace_ptune.tuning import TrainConfig, train

    result = train(TrainConfig(model="tiny-random", data="train.jsonl", name="demo", steps=50))
    print(result.adapter_hash, result.name, result.version)

``train_multitenant`` trains one soft prompt per tenant in one job. The data helpers
(:mod:`trace_ptune.tuning.data`: ``load_jsonl``, ``dataset_hash``, ``find_overlap``) import
without torch. Names are re-exported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trace_ptune._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "trace_ptune.tuning.config",
    "TrainResult": "trace_ptune.tuning.trainer",
    "train": "trace_ptune.tuning.trainer",
    "train_multitenant": "trace_ptune.tuning.multitenant",
    "load_jsonl": "trace_ptune.tuning.data",
    "dataset_hash": "trace_ptune.tuning.data",
    "find_overlap": "trace_ptune.tuning.data",
    "OverlapReport": "trace_ptune.tuning.data",
}

__all__ = [
    "OverlapReport",
    "TrainConfig",
    "TrainResult",
    "dataset_hash",
    "find_overlap",
    "load_jsonl",
    "train",
    "train_multitenant",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from trace_ptune.tuning.config import TrainConfig
    from trace_ptune.tuning.data import OverlapReport, dataset_hash, find_overlap, load_jsonl
    from trace_ptune.tuning.multitenant import train_multitenant
    from trace_ptune.tuning.trainer import TrainResult, train
