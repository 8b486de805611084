#!/usr/bin/env bash
# Set everything up, then run the main job on the default model (SmolLM2-135M-Instruct):
# the order-1 iterative jet lens next to the logit lens, with figures written to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
TEXT=${1:-"The capital of France is Paris, and the capital of Italy is"}
.venv/bin/jetex lens "$TEXT" --order 0 --out out/logit_lens.png
.venv/bin/jetex lens "$TEXT" --order 1 --out out/jet_lens_order1.html
.venv/bin/jetex lens "$TEXT" --order 1 --out out/jet_lens_order1.png
echo "figures: out/logit_lens.png out/jet_lens_order1.png out/jet_lens_order1.html"
