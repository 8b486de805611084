"""Load times of the real models: first load (GGUF dequantised and cached) vs cached load.

Each model is loaded twice into a fresh temporary ``JETEX_CACHE`` (so the first load really
dequantises), after ``transformers`` is imported, so the times are the loading work only.
Also prints a cold start (a new Python process: imports + cached load) and the largest
|logit difference| between the residual view and the Hugging Face forward pass.

    .venv/bin/python benchmarks/load.py [--models smollm2-135m gemma3-270m]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    args = ap.parse_args()

    import torch
    import transformers  # noqa: F401  (import cost kept out of the timings)
    from transformers import AutoModelForCausalLM  # noqa: F401

    import jetex
    from jetex.models.hf import HFResidualModel

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPUs")
    print(f"{'model':<14} {'first (s)':>10} {'cached (s)':>11} {'first/cached':>13} {'cold start (s)':>15} {'max|view-HF| sub':>17} {'layer':>9}")
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="jetex-bench-") as cache:
            os.environ["JETEX_CACHE"] = cache
            t0 = time.perf_counter()
            m = jetex.load(name)
            first = time.perf_counter() - t0
            del m
            gc.collect()
            t0 = time.perf_counter()
            m = jetex.load(name)
            cached = time.perf_counter() - t0
            code = f"import jetex; jetex.load({name!r})"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JETEX_CACHE": cache})
            cold = time.perf_counter() - t0
            ids = m.tokenize("The capital of France is Paris. The capital of Germany is")
            with torch.no_grad():
                ref = m.reference_logits(ids)
                d_sub = (m(ids) - ref).abs().max().item()
                lay = HFResidualModel.from_hf(m.hf, m.tokenizer, "layer", m.name)
                d_lay = (lay(ids) - ref).abs().max().item()
            del m, lay
            gc.collect()
        os.environ.pop("JETEX_CACHE", None)
        print(
            f"{name:<14} {first:>10.1f} {cached:>11.2f} {first / cached:>13.1f} {cold:>15.1f} {d_sub:>17.3g} {d_lay:>9.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
