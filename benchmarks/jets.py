"""Benchmark: Taylor-mode jets J^k γ(x)(y) of real SmolLM2 blocks vs nested first-order JVPs.

For one attention block and one MLP block of SmolLM2-135M (``jetex.load('smollm2-135m')``)
on a 16-token input (float32, CPU), measured in one run:

- time of ``jet_coefficients`` for k = 0..4 as a multiple of one forward pass of the block,
  side by side with nested first-order JVPs (``jet_coefficients_nested_jvp``, the oracle);
- the one-off cost of the first call per order (tracing + specialisation), reported apart;
- peak memory per k: the peak of the bytes held by tensors created during the call
  (counted exactly by a dispatch mode that tracks every op output's storage until it is
  freed; inputs and weights that exist before the call are not counted).

Timings are medians over interleaved repeats (forward, J^0..J^4, nested JVPs in turn),
after warm-up. By default they use the thread's CPU time with one intra-op thread, which
is stable on a shared machine; ``--wall`` uses wall-clock time instead.

Targets (PASS/FAIL): J^k ≤ (k+2)× forward for k ≤ 4; nested/Taylor ≥ 4 at k = 3 and ≥ 8
at k = 4; peak memory at most linear in k: peak(k) ≤ k · peak(1) for k = 2..4.

    .venv/bin/python benchmarks/jets.py [--repeats 30] [--layer 1] [--tokens 16] [--wall]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import jetex
from jetex.jets import jet_coefficients, jet_coefficients_nested_jvp

TEXT_A = "The quick brown fox jumps over the lazy dog while the farmer watches from the old barn."
TEXT_B = "In the beginning the universe was created, which made a lot of people very angry indeed."


class PeakTensorMemory(TorchDispatchMode):
    """Tracks the bytes of storages created by ops inside the mode; ``peak`` is their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, number of live tensors]
        self.current = 0
        self.peak = 0
        self.preexisting: set[int] = set()

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            try:
                st = t.untyped_storage()
                ptr = st.data_ptr()
            except RuntimeError:  # functorch wrappers: their real tensors are counted when created
                continue
            if ptr in self.preexisting or ptr == 0:
                continue
            entry = self.live.get(ptr)
            if entry is None:
                self.live[ptr] = entry = [st.nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def peak_bytes(fn: Callable[[], object], preexisting: list[torch.Tensor]) -> int:
    mode = PeakTensorMemory()
    mode.preexisting = {t.untyped_storage().data_ptr() for t in preexisting}
    with mode:
        out = fn()
    del out
    return mode.peak


def stream_input(model, text: str, tokens: int, l: int) -> torch.Tensor:
    ids = model.tokenize(text)[:, :tokens]
    if ids.shape[1] < tokens:
        raise SystemExit(f"text too short for {tokens} tokens")
    with torch.no_grad():
        return model.stream(ids)[l - 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--nested-repeats", type=int, default=5)
    ap.add_argument("--layer", type=int, default=1, help="transformer layer (1-based): blocks attn.(L-1) and mlp.(L-1)")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall-clock instead of thread CPU time")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.thread_time
    model = jetex.load("smollm2-135m")
    ks = range(5)
    all_pass = True
    print(
        f"# jets benchmark: smollm2-135m, {args.tokens} tokens, float32, CPU, {args.threads} thread(s), "
        f"{'wall' if args.wall else 'thread-CPU'} time, medians of {args.repeats} (nested: {args.nested_repeats})"
    )
    for l in (2 * args.layer - 1, 2 * args.layer):
        blk = model.block(l)
        x = stream_input(model, TEXT_A, args.tokens, l)
        y = stream_input(model, TEXT_B, args.tokens, l)
        weights = [p for p in blk.parameters()] + [b for b in blk.buffers()]

        with torch.no_grad():
            first = {}
            for k in ks:  # first call per order: tracing + specialisation (+ one evaluation)
                t0 = time.perf_counter()
                jet_coefficients(blk, x, y, k)
                first[k] = time.perf_counter() - t0
            fns: dict[str, Callable[[], object]] = {"fwd": lambda: blk(x)}
            for k in ks:
                fns[f"J{k}"] = lambda k=k: jet_coefficients(blk, x, y, k)
            for k in ks:
                fns[f"N{k}"] = lambda k=k: jet_coefficients_nested_jvp(blk, x, y, k)
            for fn in fns.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {n: [] for n in fns}
            for r in range(args.repeats):
                for n, fn in fns.items():
                    if n.startswith("N") and r >= args.nested_repeats:
                        continue
                    t0 = clock()
                    fn()
                    times[n].append(clock() - t0)
            med = {n: statistics.median(v) for n, v in times.items()}
            mem = {n: peak_bytes(fn, weights + [x, y]) for n, fn in fns.items()}

        fwd = med["fwd"]
        print(f"\n## {blk.name}: forward {fwd * 1e3:.3f} ms, peak {mem['fwd'] / 2**20:.2f} MiB")
        print("| k | Taylor ms | ×fwd | target | nested ms | ×fwd | nested/Taylor | peak MiB Taylor | peak MiB nested | first call s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for k in ks:
            tj, tn = med[f"J{k}"], med[f"N{k}"]
            print(
                f"| {k} | {tj * 1e3:.3f} | {tj / fwd:.2f} | ≤ {k + 2} | {tn * 1e3:.3f} | {tn / fwd:.2f} | "
                f"{tn / tj:.1f} | {mem[f'J{k}'] / 2**20:.2f} | {mem[f'N{k}'] / 2**20:.2f} | {first[k]:.2f} |"
            )
        checks = []
        for k in ks:
            checks.append((f"J^{k} ≤ {k + 2}× forward", med[f"J{k}"] / fwd <= k + 2, f"{med[f'J{k}'] / fwd:.2f}×"))
        for k, need in ((3, 4.0), (4, 8.0)):
            ratio = med[f"N{k}"] / med[f"J{k}"]
            checks.append((f"nested JVP / Taylor at k={k} ≥ {need:g}", ratio >= need, f"{ratio:.1f}"))
        p1 = mem["J1"]
        for k in (2, 3, 4):
            checks.append((f"peak(J^{k}) ≤ {k}·peak(J^1)", mem[f"J{k}"] <= k * p1, f"{mem[f'J{k}'] / max(p1, 1):.2f}·peak(J^1)"))
        for name, ok, value in checks:
            all_pass &= ok
            print(f"{'PASS' if ok else 'FAIL'}  {blk.name}: {name} ({value})")
    print("\nALL PASS" if all_pass else "\nSOME TARGETS FAILED")
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
