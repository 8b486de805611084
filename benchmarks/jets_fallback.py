"""Benchmark: the nested-JVP fallback rule against a table rule for the same op.

For ``elu`` (and ``softplus``, ``mish``), which have table rules, the jet J^k of

- the op alone on a ``[tokens, 1536]`` float32 activation (SmolLM2's MLP width), and
- an MLP block ``down(act(up(x)))`` with SmolLM2-sized random weights (576 → 1536 → 576),

is timed with the table rule and with the op forced through the fallback
(:func:`jetex.jets.fallback.use_fallback`), for k = 1..4, in one run: medians over
interleaved repeats after warm-up, thread CPU time with one intra-op thread (``--wall``
for wall-clock). Reported: fallback/table time ratios, and the one-off first call
(tracing + specialisation) of each. The two agree to float32 precision (checked here too).

    .venv/bin/python benchmarks/jets_fallback.py [--repeats 15] [--tokens 16] [--ops elu,softplus,mish]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from jetex.jets import clear_cache, jet_coefficients
from jetex.jets.fallback import use_fallback

aten = torch.ops.aten
OPS = {"elu": (F.elu, aten.elu.default), "softplus": (F.softplus, aten.softplus.default), "mish": (F.mish, aten.mish.default)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ops", default="elu,softplus,mish")
    ap.add_argument("--wall", action="store_true", help="wall-clock instead of thread CPU time")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.thread_time
    g = torch.Generator().manual_seed(0)
    d, h = 576, 1536
    up = torch.randn(h, d, generator=g) / d**0.5
    down = torch.randn(d, h, generator=g) / h**0.5
    print(
        f"# fallback vs table rule: float32, CPU, {args.threads} thread(s), {args.tokens} tokens, "
        f"{'wall' if args.wall else 'thread-CPU'} time, medians of {args.repeats}"
    )
    print("| op | function | k | table ms | fallback ms | fallback/table | first call table s | first call fallback s | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    warnings.simplefilter("ignore")
    with torch.no_grad():  # warm-up: first-use imports of torch.func and the tracer are not charged to a row
        w = torch.randn(4, 8, generator=g)
        for k in (1, 2):
            jet_coefficients(F.elu, w, w + 1, k)
            with use_fallback(aten.elu.default):
                jet_coefficients(F.elu, w, w + 1, k)
    for name in args.ops.split(","):
        act, op = OPS[name]
        cases: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor]] = {}
        xa = torch.randn(args.tokens, h, generator=g)
        cases[f"{name}(z) [{args.tokens}×{h}]"] = (lambda z, act=act: act(z), xa, xa + 0.5 * torch.randn(args.tokens, h, generator=g))
        xm = torch.randn(args.tokens, d, generator=g)
        mlp = lambda z, act=act: act(z @ up.T) @ down.T
        cases[f"MLP {d}→{h}→{d}"] = (mlp, xm, xm + 0.5 * torch.randn(args.tokens, d, generator=g))
        for cname, (f, x, y) in cases.items():
            for k in range(1, 5):
                clear_cache()
                with torch.no_grad():
                    t0 = time.perf_counter()
                    ref = jet_coefficients(f, x, y, k)
                    first_t = time.perf_counter() - t0
                    with use_fallback(op):
                        t0 = time.perf_counter()
                        got = jet_coefficients(f, x, y, k)
                        first_f = time.perf_counter() - t0
                    diff = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                    times: dict[str, list[float]] = {"table": [], "fallback": []}
                    for _ in range(args.repeats):
                        t0 = clock()
                        jet_coefficients(f, x, y, k)
                        times["table"].append(clock() - t0)
                        with use_fallback(op):
                            t0 = clock()
                            jet_coefficients(f, x, y, k)
                            times["fallback"].append(clock() - t0)
                tt, tf = statistics.median(times["table"]), statistics.median(times["fallback"])
                print(
                    f"| {name} | {cname} | {k} | {tt * 1e3:.3f} | {tf * 1e3:.3f} | {tf / tt:.1f} | {first_t:.2f} | "
                    f"{first_f:.2f} | {diff:.1e} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
