"""Benchmark: n-gram sweep throughput, local engine vs Ray workers, plus the numbers the
scaling plan (docs/scaling.md) needs, all measured in one run.

    .venv/bin/python benchmarks/ngrams_ray.py                 # SmolLM2, direct, 8192-token slice
    .venv/bin/python benchmarks/ngrams_ray.py --tokens 4096 --repeats 1 --bf16

Measured (SmolLM2-135M, path ``direct``, input tokens 0..N−1 with N = ``--tokens``, top-10
per token, global top-100, every batch committed to a DuckDB store):

1. Bare float32 matmul rate: [1024, 576] × [576, 49152] (one engine batch of logits), in
   GFLOP/s with 1 torch thread and with all threads: the CPU FLOP rate of this machine.
2. Sweep throughput in vocabulary rows (input tokens) per second, from the run's own
   compute time (engine + DuckDB writes; Ray start-up and model loading excluded, reported
   apart): local engine with all threads and with 1 thread, Ray with 1 worker and with 2
   workers (1 CPU each, a local Ray instance with 2 CPUs started here and shut down).
   Each configuration ``--repeats`` times (best kept); the local run is repeated at the end
   to show drift in the machine's load.
3. DuckDB single-writer throughput: synthetic bigram batches (1024 inputs × K=10 rows,
   the per-input stats and 100 global candidates) committed with
   :meth:`~jetex.ngrams.store.NgramStore.write_bigram_batch`, in n-gram rows per second.
4. ``--bf16``: the local engine in bfloat16 on the CPU, with its precision report.

The machine may be shared: compare numbers measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import jetex
from jetex.ngrams import NgramStore, parse_path
from jetex.ngrams.device import place_model, precision_report
from jetex.ngrams.distributed import LoadSpec, RayBackend
from jetex.ngrams.engine import BigramBatch, GlobalCandidates, compute_threads, default_batch_size
from jetex.ngrams.extract import _run_path


@contextlib.contextmanager
def threads_env(n: int | None):
    old = os.environ.get("JETEX_NUM_THREADS")
    if n is not None:
        os.environ["JETEX_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JETEX_NUM_THREADS", None)
        else:
            os.environ["JETEX_NUM_THREADS"] = old


def matmul_gflops(m, threads: int | None, reps: int = 3) -> tuple[float, float]:
    """(GFLOP per wall second, GFLOP per CPU second of this process) of one batch's logits matmul."""
    U = m.unembedding_matrix.detach()
    x = torch.randn(1024, U.shape[1])
    out = torch.empty(1024, U.shape[0])
    best = best_cpu = float("inf")
    with threads_env(threads), compute_threads():
        torch.mm(x, U.T, out=out)
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            torch.mm(x, U.T, out=out)
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    flop = 2 * x.shape[0] * x.shape[1] * U.shape[0]
    return flop / best / 1e9, flop / best_cpu / 1e9


def sweep(store, m, path, n_tokens: int, runner=None, compute_model=None) -> tuple[float, float]:
    """(seconds, CPU seconds of this process and the Ray workers) of one full run of ``path``
    over tokens 0..n−1 (recomputed from scratch)."""
    c = time.process_time() + (runner.workers_cpu_seconds() if runner else 0.0)
    s = _run_path(store, m, path, top_k=10, order=0, exclude_self=False, limit_vocab=n_tokens, n_inputs=n_tokens,
                  global_top=100, batch_size=None, progress=False, redo=True, compute_model=compute_model,
                  extra_options={"dtype": str((compute_model or m).dtype).replace("torch.", ""), "device": "cpu",
                                 "backend": "ray" if runner else "local"},
                  runner=runner)
    assert s.stats["n_rows"] == n_tokens * 10
    return s.seconds, time.process_time() + (runner.workers_cpu_seconds() if runner else 0.0) - c


def duckdb_rows_per_s(m, folder: Path, n_batches: int = 20, B: int = 1024, K: int = 10) -> tuple[float, float]:
    """n-gram rows committed per wall second and per CPU second of this process."""
    rng = np.random.default_rng(0)
    V = m.vocab_size
    with NgramStore(folder / "insert.duckdb", model=m) as store:
        run = store.start_run(description="synthetic", batch_size=B, n_batches=n_batches, options={}, model=m,
                              kind="bigram", path="synthetic", order=0, top_k=K, global_top=100, exclude_self=False,
                              n_inputs=B * n_batches)
        batches = []
        for i in range(n_batches):
            ids = np.arange(i * B, (i + 1) * B) % V
            lp = -np.sort(rng.random((B, K)).astype(np.float32), axis=1)
            cand = GlobalCandidates(ids[:100].astype(np.int64), rng.integers(0, V, 100), lp[:100, 0].copy(), lp[:100, 0].copy())
            batches.append(BigramBatch(i, ids.astype(np.int64), rng.integers(0, V, (B, K)), lp + 3, lp, rng.random(B).astype(np.float32),
                                       rng.random(B).astype(np.float32), -rng.random(B).astype(np.float32),
                                       np.zeros(B, bool), cand))
        t, c = time.perf_counter(), time.process_time()
        for b in batches:
            store.write_bigram_batch(run, b)
        dt, dc = time.perf_counter() - t, time.process_time() - c
    return n_batches * B * K / dt, n_batches * B * K / dc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=8192, help="vocabulary slice: input ids 0..N-1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also time the local engine in bfloat16 on the CPU")
    args = ap.parse_args()

    m = jetex.load(args.model)
    (p,) = parse_path(m, "direct")
    N = args.tokens
    B = default_batch_size(m)
    flop_per_row = 2 * m.d_model * m.vocab_size
    print(f"{m.name}: d={m.d_model}, V={m.vocab_size}; path direct over tokens 0..{N - 1} ({(N + B - 1) // B} batches of {B}), "
          f"{flop_per_row / 1e6:.1f} MFLOP per row; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    (g1, g1c), (gall, gallc) = matmul_gflops(m, 1), matmul_gflops(m, None)
    print(f"bare float32 matmul [1024,{m.d_model}]x[{m.d_model},{m.vocab_size}]: {g1:.1f} GFLOP/s (1 thread; {g1c:.1f} per CPU-second), "
          f"{gall:.1f} GFLOP/s (all threads; {gallc:.1f} per CPU-second)")

    rows: list[tuple[str, float, float, float]] = []  # (config, best seconds, CPU seconds here, startup)
    tmp = Path(tempfile.mkdtemp(prefix="jetex-ray-bench-"))
    ray = None
    try:
        with NgramStore(tmp / "bench.duckdb", model=m) as store:
            def local(label: str, threads: int | None, model=None) -> None:
                with threads_env(threads), compute_threads():
                    best = min(sweep(store, m, p, N, compute_model=model) for _ in range(args.repeats))
                rows.append((label, *best, 0.0))

            local("local engine, all threads", None)
            local("local engine, 1 thread", 1)
            import ray as ray_mod

            ray = ray_mod
            t = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
            init_s = time.perf_counter() - t
            spec = LoadSpec(args.model, m.granularity, "float32", "cpu")
            for w in (1, 2):
                with RayBackend(spec, workers=w, expect_fingerprint=m.fingerprint()) as backend:
                    backend.start()
                    best = min(sweep(store, m, p, N, runner=backend) for _ in range(args.repeats))
                    rows.append((f"ray, {w} worker{'s' if w > 1 else ''} × 1 CPU", *best, init_s + backend.startup_s))
                init_s = 0.0
            ray.shutdown()
            ray = None
            local("local engine, all threads (again)", None)
            if args.bf16:
                mb = place_model(m, "cpu", "bfloat16")
                rep = precision_report(m, mb, [p], n_inputs=N, sample=256, top_k=10)["direct"]
                local("local engine, bfloat16, all threads", None, model=mb)
        rps, rps_cpu = duckdb_rows_per_s(m, tmp)
    finally:
        if ray is not None:
            ray.shutdown()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    base = rows[0][1]
    print(f"\n{'configuration':38s} {'seconds':>8s} {'rows/s':>7s} {'GFLOP/s':>8s} {'vs local':>9s} {'CPU s':>7s} "
          f"{'rows/CPU-s':>10s} {'start-up s':>10s}")
    for label, s, cpu, st in rows:
        print(f"{label:38s} {s:8.2f} {N / s:7.0f} {N * flop_per_row / s / 1e9:8.1f} {base / s:8.2f}x {cpu:7.2f} "
              f"{N / cpu:10.0f} {st:10.1f}")
    print("(seconds: the run's wall time, engine + DuckDB writes; CPU s: CPU time of this process and the Ray workers;\n"
          " on a shared, oversubscribed machine more processes get a larger share of the CPUs, so compare rows/CPU-s)")
    print(f"\nDuckDB single writer: {rps:,.0f} n-gram rows/s ({rps / 10:,.0f} vocabulary rows/s at K=10; "
          f"{rps_cpu:,.0f} rows per CPU-second), write_bigram_batch of 1024x10-row batches")
    if args.bf16:
        print("precision: " + rep.line())


if __name__ == "__main__":
    sys.exit(main())
