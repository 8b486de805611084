"""Benchmark: jet lenses on SmolLM2 (issue 4 targets), all ratios measured in this one run.

Targets:
  1. joint lens, optimised weights, ~10-token sentence, 5 centres, k = 1: <= 2 s end to end,
     with a logit-space remainder no larger than 100 Adam steps on the same objective.
  2. iterative lens over all 30 layers (+ embedding) at k = 1 costs <= 2x the k = 0 (logit) lens.
  3. (issue 11) trust diagnostics add <= 5 % to the iterative and joint lenses (k = 1), and float64
     accumulation of the jet sums adds <= 30 % at k = 2 (against the same lens summed in float32).
  4. readout over all layers of the fitted lenses (tuned, Jacobian) <= 1.5x the logit lens's
     readout, reported together with a forward pass of the model (same run). A readout's cost
     depends on shapes only, so identity translators / a J-lens summed from one window are timed.
     (Issue 15 asked for <= 1.5x a forward pass over all layers: every row is a full-vocabulary
     unembedding, so the part prints the multiply-add floor, forward + R unembeddings, and the
     measured floor beside it, and the cost of a single row.)

Usage: python benchmarks/lenses.py [--model smollm2-135m] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import jetex
from jetex.jets import jet
from jetex.lenses import adam_simplex, iterative_lens, joint_centres, joint_lens, optimal_weights, remainder_loss

SENTENCE = "The capital of France is Paris, and the capital of Italy is"


CLOCK = time.perf_counter


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median time of ``fn`` after a warm-up call (tracing caches, allocator)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        out = fn()
        times.append(CLOCK() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time and one torch thread (robust on a shared machine; wall time otherwise)",
    )
    ap.add_argument("--parts", default="1,2,3,4", help="which targets to measure, e.g. 3")
    args = ap.parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    global CLOCK
    if args.cpu_time:
        torch.set_num_threads(1)
        CLOCK = time.process_time
    torch.manual_seed(0)
    model = jetex.load(args.model)
    ids = model.tokenize(SENTENCE)[:, :10]
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(f"model {model.name}: L = {model.n_blocks} blocks, {ids.shape[-1]} tokens, threads = {torch.get_num_threads()}, {clock}")
    ok = True

    if parts & {1, 2}:
        ok &= _targets_1_2(model, ids, args)
    if 3 in parts:
        ok &= _target_3(model, ids, args)
    if 4 in parts:
        ok &= _target_4(model, ids, args)
    print("\nALL PASS" if ok else "\nSOME TARGETS FAILED")
    return 0 if ok else 1


def _targets_1_2(model, ids, args) -> bool:
    ok = True
    # 1. joint lens with optimised weights, 5 centres, k = 1
    t_joint, res = timed(lambda: joint_lens(model, ids, order=1, centres=5, optimize=True), args.repeats)
    t_unif, _ = timed(lambda: joint_lens(model, ids, order=1, centres=5, optimize=False), args.repeats)
    with torch.no_grad():
        h = model.stream(ids)[:, 0]
        segs, _ = joint_centres(model, 5)
        X = torch.stack([h[0] if a < 0 else h[b] - h[a] for a, b in segs])
        J = jet(model.final_norm, X, h[-1].expand_as(X), 1)
        t = model.final_norm(h[-1])
        U = model.unembedding_matrix
        G = U.T.double() @ U.double()
    t0 = CLOCK()
    w_exact = optimal_weights(J, t, G)
    t_qp = CLOCK() - t0
    t0 = CLOCK()
    w_adam = adam_simplex(J, t, G, steps=100)
    t_adam = CLOCK() - t0
    loss_exact = remainder_loss(w_exact, J.double(), t.double(), G).sum().item()
    loss_adam = remainder_loss(w_adam, J.double(), t.double(), G).sum().item()
    loss_unif = remainder_loss(torch.full_like(w_exact, 1 / X.shape[0]), J.double(), t.double(), G).sum().item()
    p1 = t_joint <= 2.0 and loss_exact <= loss_adam * (1 + 1e-9)
    ok &= p1
    print("\n[1] joint lens, 5 centres, k=1, optimised weights")
    print(f"    end to end (median of {args.repeats}): {t_joint:.3f} s   (uniform weights: {t_unif:.3f} s)")
    print(f"    weight solve: exact active-set {t_qp * 1e3:.1f} ms vs 100 Adam steps {t_adam * 1e3:.1f} ms  ({t_adam / t_qp:.1f}x)")
    print(f"    ||U δ||² summed over positions: exact {loss_exact:.4f}  adam-100 {loss_adam:.4f}  uniform {loss_unif:.4f}")
    print(f"    expansion cosine to model logits: {res.expansion_cosine.mean():.4f}")
    print(f"    target <= 2 s and loss <= Adam's: {'PASS' if p1 else 'FAIL'}")

    # 2. iterative lens over all layers: k = 1 vs k = 0
    t0_lens, r0 = timed(lambda: iterative_lens(model, ids, order=0), args.repeats)
    t1_lens, r1 = timed(lambda: iterative_lens(model, ids, order=1), args.repeats)
    ratio = t1_lens / t0_lens
    p2 = ratio <= 2.0
    ok &= p2
    print(f"\n[2] iterative lens over {len(r0.row_names)} rows (embedding + every layer)")
    print(f"    k=0 (logit lens) {t0_lens:.3f} s   k=1 {t1_lens:.3f} s   ratio {ratio:.2f}x  target <= 2x: {'PASS' if p2 else 'FAIL'}")
    mid = len(r0.row_names) // 2
    print(f"    mean cosine at row {r0.row_names[mid]}: logit lens {r0.cosine[mid].mean():+.3f}, order-1 jet lens {r1.cosine[mid].mean():+.3f}")
    return ok


def _target_3(model, ids, args) -> bool:
    ok = True
    # 3. issue 11: diagnostics and float64 accumulation, ratios measured here (interleaved repeats)
    from jetex.expand import numerics
    from jetex.lenses.lens import _iterative_core, _joint_core, layer_streams

    with torch.no_grad():
        hs = model.stream(ids)
        streams, _ = layer_streams(model)
        segs_l, _ = joint_centres(model, "layers")

    def pair(fa, fb, repeats):
        """Median times of fa and fb, alternated call by call (shared-machine noise hits both)."""
        fa(), fb()
        ta, tb = [], []
        for _ in range(repeats):
            t0 = CLOCK(); fa(); ta.append(CLOCK() - t0)
            t0 = CLOCK(); fb(); tb.append(CLOCK() - t0)
        return statistics.median(ta), statistics.median(tb)

    reps = max(args.repeats, 7)
    with torch.no_grad():
        it_on, it_off = pair(lambda: _iterative_core(model, hs, streams, 1), lambda: _iterative_core(model, hs, streams, 1, diagnose=False), reps)
        jt_on, jt_off = pair(lambda: _joint_core(model, hs[:, 0], segs_l, 1, False), lambda: _joint_core(model, hs[:, 0], segs_l, 1, False, diagnose=False), reps)
        saved = numerics.FLOAT64_FROM_ORDER

        def f32(fn):
            def run():
                numerics.FLOAT64_FROM_ORDER = 99
                try:
                    fn()
                finally:
                    numerics.FLOAT64_FROM_ORDER = saved
            return run

        it64 = lambda: _iterative_core(model, hs, streams, 2)  # noqa: E731
        jt64 = lambda: _joint_core(model, hs[:, 0], segs_l, 2, False)  # noqa: E731
        i64, i32 = pair(it64, f32(it64), reps)
        j64, j32 = pair(jt64, f32(jt64), reps)
    r_it, r_jt = it_on / it_off - 1, jt_on / jt_off - 1
    r_i64, r_j64 = i64 / i32 - 1, j64 / j32 - 1
    p3 = max(r_it, r_jt) <= 0.05 and max(r_i64, r_j64) <= 0.30
    ok &= p3
    print(f"\n[3] trust (issue 11), {len(streams)} iterative rows / {len(segs_l)} joint centres, medians of {reps} alternated calls")
    print(f"    diagnostics overhead, k=1: iterative {r_it:+.1%} ({it_on:.3f} vs {it_off:.3f} s), joint {r_jt:+.1%} ({jt_on:.3f} vs {jt_off:.3f} s)  target <= +5%")
    print(f"    float64 accumulation, k=2: iterative {r_i64:+.1%} ({i64:.3f} vs {i32:.3f} s), joint {r_j64:+.1%} ({j64:.3f} vs {j32:.3f} s)  target <= +30%")
    print(f"    {'PASS' if p3 else 'FAIL'}")
    return ok


def _target_4(model, ids, args) -> bool:
    ok = True
    t1_lens, _ = timed(lambda: iterative_lens(model, ids, order=1), args.repeats)
    # 4. fitted lenses: readout over all layers vs the logit lens and vs a forward pass
    from jetex.lenses.jacobian import JacobianLens
    from jetex.lenses.tuned import TunedLens
    from jetex.lenses.zoo import zoo_lens

    tuned = TunedLens.identity(model)
    tuned.A.normal_(0, 0.01)
    d = model.d_model
    jac = JacobianLens(model.name, tuned.fingerprint, list(tuned.streams), list(tuned.row_names),
                       torch.eye(d, dtype=torch.float64).expand(len(tuned.streams), d, d) + 0.01 * torch.randn(len(tuned.streams), d, d, dtype=torch.float64), 1)
    with torch.no_grad():
        t_fwd, _ = timed(lambda: model(ids), args.repeats)
    t_logit, _ = timed(lambda: zoo_lens(model, ids, "logit"), args.repeats)
    t_tuned, _ = timed(lambda: zoo_lens(model, ids, "tuned", lens=tuned), args.repeats)
    t_jac, _ = timed(lambda: zoo_lens(model, ids, "jacobian", lens=jac), args.repeats)
    r_t, r_j = t_tuned / t_logit, t_jac / t_logit
    p4 = r_t <= 1.5 and r_j <= 1.5
    ok &= p4
    # the floor of any lens that decodes R full-vocabulary rows: the forward pass (for h) plus R
    # unembedding products [t, d] x [d, V], against the one unembedding inside the forward pass
    R, t, V = len(tuned.streams), ids.shape[-1], model.vocab_size
    U = model.unembedding_matrix
    X = torch.randn(R * t, d, dtype=U.dtype)
    mid = (R - 1) // 2  # a middle transformer layer
    with torch.no_grad():
        t_unemb, _ = timed(lambda: X @ U.T, args.repeats)
        t_one_row, _ = timed(lambda: zoo_lens(model, ids, "jacobian", lens=jac, layers=[mid]), args.repeats)
    body = sum(p.numel() for blk in model.blocks for p in blk.parameters())
    fwd_macs = body + V * d  # per token: the blocks' weights (attention over 10 tokens is negligible) + one unembedding
    floor_macs = fwd_macs + R * V * d
    print(f"\n[4] fitted lenses, readout over {len(tuned.streams)} rows (embedding + every layer), {ids.shape[-1]} tokens")
    print(f"    forward pass {t_fwd:.3f} s   logit lens {t_logit:.3f} s ({t_logit / t_fwd:.2f}x forward)")
    print(f"    tuned lens {t_tuned:.3f} s ({r_t:.2f}x logit lens, {t_tuned / t_fwd:.2f}x forward)")
    print(f"    Jacobian lens {t_jac:.3f} s ({r_j:.2f}x logit lens, {t_jac / t_fwd:.2f}x forward)")
    print(f"    order-1 jet lens {t1_lens:.3f} s ({t1_lens / t_fwd:.2f}x forward)   [lens times include the forward pass]")
    print(f"    target fitted readout <= 1.5x the logit lens: {'PASS' if p4 else 'FAIL'}")
    print(f"    arithmetic per token: forward ~{fwd_macs / 1e6:.0f} M multiply-adds ({body / 1e6:.0f} M in the blocks + "
          f"{V * d / 1e6:.1f} M for its one unembedding, V = {V}, d = {d}); {R} lens rows add {R} unembeddings = "
          f"{R * V * d / 1e6:.0f} M, so any lens decoding all rows costs >= {floor_macs / fwd_macs:.1f}x a forward pass in multiply-adds")
    print(f"    measured: the {R} bare unembedding products alone {t_unemb:.3f} s ({t_unemb / t_fwd:.2f}x forward); "
          f"forward + them = {(t_fwd + t_unemb) / t_fwd:.2f}x forward (the floor); fitted lenses at "
          f"{max(t_tuned, t_jac) / (t_fwd + t_unemb):.2f}x that floor")
    one = t_one_row / t_fwd
    print(f"    Jacobian lens, one row (layer {mid}): {t_one_row:.3f} s ({one:.2f}x forward)")
    print(f"    target readout over all rows <= 1.5x a forward pass: {'PASS' if max(t_tuned, t_jac) <= 1.5 * t_fwd else 'FAIL'}"
          f" (not reachable with full-vocabulary rows: the floor above); one row <= 1.5x forward: {'PASS' if one <= 1.5 else 'FAIL'}")
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
