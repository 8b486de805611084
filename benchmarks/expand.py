"""Benchmark: cost of evaluating jet expansions as a multiple of one forward pass (paper App. D).

On one ~10-token sentence, all in one run:
  - joint lens over every block (L+1 centres), uniform vs optimised weights, orders 0..3;
  - exponential expansion: all paths through at most one block (L+1 paths), orders 0..2;
  - paths through at most two blocks (1 + L + L(L-1)/2 paths) at order 1.
The forward pass is the model's own (Hugging Face) forward on the same ids.

Usage: python benchmarks/expand.py [--model smollm2-135m] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import jetex
from jetex.expand import PathFilter, exp_jet_expansion
from jetex.lenses import joint_lens

SENTENCE = "The capital of France is Paris, and the capital of Italy is"


def timed(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    m = jetex.load(args.model)
    ids = m.tokenize(SENTENCE)[:, :10]
    with torch.no_grad():
        t_fwd = timed(lambda: m.reference_logits(ids), args.repeats * 3)
    print(f"{m.name}: L = {m.n_blocks}, t = {ids.shape[-1]}, forward {t_fwd * 1e3:.1f} ms")
    print("\njoint lens over every block (L+1 centres):")
    print(f"{'k':>3} {'uniform x fwd':>14} {'optimised x fwd':>16} {'cos unif':>9} {'cos opt':>8}")
    for k in range(4):
        t_u = timed(lambda: joint_lens(m, ids, order=k, centres="blocks"), args.repeats)
        t_o = timed(lambda: joint_lens(m, ids, order=k, centres="blocks", optimize=True), args.repeats)
        ru = joint_lens(m, ids, order=k, centres="blocks")
        ro = joint_lens(m, ids, order=k, centres="blocks", optimize=True)
        print(f"{k:>3} {t_u / t_fwd:>14.1f} {t_o / t_fwd:>16.1f} {ru.expansion_cosine.mean():>9.3f} {ro.expansion_cosine.mean():>8.3f}")
    print("\nexponential expansion, selected paths evaluated at the last position:")
    print(f"{'k':>3} {'paths':>6} {'x fwd':>8} {'x fwd per path':>15}")
    for k, max_len in [(0, 1), (1, 1), (2, 1), (1, 2)]:
        pe = exp_jet_expansion(m, k)
        paths = list(pe.paths(PathFilter(max_len=max_len)))
        with torch.no_grad():
            t = timed(lambda: pe.evaluate(ids, paths, position=-1), 1 if max_len > 1 else args.repeats)
        print(f"{k:>3} {len(paths):>6} {t / t_fwd:>8.1f} {t / t_fwd / len(paths):>15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
