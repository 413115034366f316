"""Two ranks under torchrun (CPU, gloo) give the single-process result for the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from trace_ptune.adapters.store import AdapterStore
from trace_ptune.tuning import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_rank_ddp_equals_one_process_with_the_global_batch(tiny64, toy_data, tmp_path) -> None:
    train_path, _ = toy_data
    common = ["--model", "tiny-random", "--data", str(train_path), "--virtual-tokens", "4", "--steps", "3",
              "--dtype", "float64", "--lr", "0.05", "--quiet", "--json"]  # fmt: skip
    ddp_home = tmp_path / "ddp-home"
    env = {
        **os.environ,
        "TRACE_PTUNE_HOME": str(ddp_home),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "trace_ptune.cli.main", "train", *common, "--name", "ddp", "--batch-size", "4"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])  # only rank 0 prints
    assert summary["ref"] == "ddp@1"
    ddp = AdapterStore(ddp_home / "adapters").resolve("ddp@1")

    single = train(
        TrainConfig(
            model="tiny-random",
            data=str(train_path),
            name="single",
            virtual_tokens=4,
            steps=3,
            dtype="float64",
            lr=0.05,
            quiet=True,
            batch_size=8,
        ),
        tiny64,
    )
    assert torch.allclose(ddp.embeddings, single.soft_prompt.embeddings, atol=1e-10)
