"""Benchmark: cost of the non-finite weight check at load (``jetex.load``) on the cached SmolLM2.

Interleaved in one run (medians of ``--repeats``): ``jetex.load('smollm2-135m')`` + one forward
pass, with the check (the default) and without (``allow_nonfinite=True``); and the check alone
on the loaded model's weights (one ``sum`` per tensor). The forward pass is included because
loading maps the safetensors lazily: whichever touches the weights first pays for reading them.

    .venv/bin/python benchmarks/nonfinite_check.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import jetex
from jetex.finite import check_finite_weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    m = jetex.load("smollm2-135m")
    ids = m.tokenize("The capital of France is")
    off, on, alone = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        m = jetex.load("smollm2-135m", allow_nonfinite=True)
        with torch.no_grad():
            m(ids)
        off.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = jetex.load("smollm2-135m")
        with torch.no_grad():
            m(ids)
        on.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        check_finite_weights(m.hf, allow=False)
        alone.append(time.perf_counter() - t0)
    a, b, c = statistics.median(off), statistics.median(on), statistics.median(alone)
    print(f"# non-finite weight check, smollm2-135m, {torch.get_num_threads()} threads, medians of {args.repeats}")
    print(f"load + forward without check: {a:.3f} s; with check: {b:.3f} s; ratio {b / a:.3f}")
    print(f"check alone (weights just used): {c * 1e3:.1f} ms = {c / a * 100:.1f}% of load + forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
