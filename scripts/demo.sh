#!/usr/bin/env bash
# Set everything up, then run the main job on the default model (SmolLM2-135M-Instruct):
# the order-1 iterative jet lens next to the logit lens, with figures written to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
TEXT=${1:-"The capital of France is Paris, and the capital of Italy is"}
# one process, one model load, each lens computed once (the CLI equivalent is
# `jetex lens "$TEXT" --order 1 --out FILE`, one file per call); both figures are coloured by
# P(top-1) on the same fixed 0..1 scale, so they compare
.venv/bin/python - "$TEXT" <<'PY'
import sys

import jetex
from jetex.viz.lens import save_lens

m = jetex.load("smollm2-135m")
text = sys.argv[1]
save_lens(jetex.iterative_lens(m, text, order=0), "out/logit_lens.png")
lens = jetex.iterative_lens(m, text, order=1)
save_lens(lens, "out/jet_lens_order1.png")
save_lens(lens, "out/jet_lens_order1.html")
PY
echo "figures: out/logit_lens.png out/jet_lens_order1.png out/jet_lens_order1.html"
