"""Resumable training state on disk: safetensors for tensors, JSON for everything else.

A checkpoint directory holds::

    state.json             step counters, data position, best metric, run id, config
    trainable.safetensors  every tenant's soft-prompt module (P-tuning encoder included)
    best.safetensors       the best module state seen by evaluation (when there is one)
    optimizer.safetensors  AdamW moments and step counts; hyper-parameters live in state.json
    rng.safetensors        the CPU random generator state

No pickle anywhere: a checkpoint can be opened without running code from it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trace_ptune.errors import TrainingError

STATE_FORMAT = 1


def _flatten_modules(modules: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        f"{k}.{name}": t.detach().contiguous().clone()
        for k, sd in enumerate(modules)
        for name, t in sd.items()
    }


def _unflatten_modules(flat: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for key, t in flat.items():
        k, name = key.split(".", 1)
        out[int(k)][name] = t
    return out


def save_state(
    directory: Path,
    *,
    modules: list[dict[str, torch.Tensor]],
    best: list[dict[str, torch.Tensor]] | None,
    optimizers: list[dict[str, Any]],
    info: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically (a temporary sibling renamed into place)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_flatten_modules(modules), str(tmp / "trainable.safetensors"))
    if best is not None:
        save_file(_flatten_modules(best), str(tmp / "best.safetensors"))
    opt_tensors: dict[str, torch.Tensor] = {}
    groups: list[list[dict[str, Any]]] = []
    for k, sd in enumerate(optimizers):
        for idx, entry in sd["state"].items():
            for name, value in entry.items():
                t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                opt_tensors[f"{k}.{idx}.{name}"] = t.detach().contiguous().clone()
        groups.append(sd["param_groups"])
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file({"cpu": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    doc = {"format": STATE_FORMAT, **info, "optimizer_param_groups": groups, "has_best": best is not None}
    (tmp / "state.json").write_text(json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the latest checkpoint of a run directory."""
    p = Path(path).expanduser()
    if (p / "state.json").is_file():
        return p
    ckpts = sorted((p / "checkpoints").glob("step-*")) if (p / "checkpoints").is_dir() else []
    ckpts = [c for c in ckpts if (c / "state.json").is_file()]
    if not ckpts:
        raise TrainingError(
            f"No training state in {str(p)!r}; pass a run directory (with checkpoints/) or a checkpoint directory."
        )
    return ckpts[-1]


def load_state(directory: Path) -> dict[str, Any]:
    """Read a checkpoint: ``info`` (JSON), ``modules``, ``best``, ``optimizers`` and ``rng``."""
    try:
        info = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(
            f"Training state in {str(directory)!r} is unreadable ({exc}); resume from another checkpoint."
        ) from None
    if info.get("format") != STATE_FORMAT:
        raise TrainingError(
            f"Training state format {info.get('format')!r} in {str(directory)!r} is not supported."
        )
    count = int(info["num_modules"])
    modules = _unflatten_modules(load_file(str(directory / "trainable.safetensors")), count)
    best = (
        _unflatten_modules(load_file(str(directory / "best.safetensors")), count)
        if info.get("has_best")
        else None
    )
    flat = load_file(str(directory / "optimizer.safetensors"))
    optimizers: list[dict[str, Any]] = []
    for k, groups in enumerate(info["optimizer_param_groups"]):
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in flat.items():
            kk, idx, name = key.split(".", 2)
            if int(kk) == k:
                state.setdefault(int(idx), {})[name] = t
        optimizers.append({"state": state, "param_groups": groups})
    rng = load_file(str(directory / "rng.safetensors"))["cpu"]
    return {"info": info, "modules": modules, "best": best, "optimizers": optimizers, "rng": rng}


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` step checkpoints of a run."""
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
