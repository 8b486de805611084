"""Jet lenses on real models (paper Sec. 4 and Fig. 3): a runnable walk-through.

For each model (SmolLM2-135M-Instruct and Gemma 3 270M by default) this script computes,
for one sample sentence,

- the logit lens (iterative jet lens of order k = 0) and the iterative jet lenses of order
  k = 1 and k = 2: for every transformer layer l, U J^k γ_{L+1}(h_l)(h_L);
- the joint jet lens of order 1 with one centre per transformer layer (plus the
  embedding), once with uniform weights 1/n and once with weights optimised per position
  (Remark 3, solved exactly);

and, over the ~20 sentences in :data:`SENTENCES`, the mean cosine similarity between the
iterative lens's logits and the model's logits per layer for k = 0, 1, 2.

It writes PNG and HTML figures to ``examples/figures/`` (hover the HTML cells for top-10
tokens, logits, cosines and weights) and prints a short summary.

Usage::

    .venv/bin/python examples/lens_walkthrough.py                  # both models
    .venv/bin/python examples/lens_walkthrough.py --models smollm2-135m --out /tmp/figs
    .venv/bin/python examples/lens_walkthrough.py --no-curve         # lens figures only (fast)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jetex
from jetex.lenses import iterative_lens, joint_lens, lens_cosine_curve
from jetex.viz.lens import plot_cosine_curve, save_lens

SAMPLE = "The capital of France is Paris, and the capital of Germany is Berlin."

SENTENCES = [
    "The cat sat on the mat and looked out of the window.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, took off her coat and sat down by the fire.",
    "The stock market fell sharply after the announcement on Tuesday.",
    "In 1969, Neil Armstrong became the first person to walk on the Moon.",
    "Please remember to bring your passport and a pen to the meeting.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "He scored the winning goal in the final minute of the match.",
    "The library closes at eight o'clock on weekdays and at noon on Saturdays.",
    "If it rains tomorrow, we will stay at home and watch a film.",
    "The committee has not yet decided who will chair the next session.",
    "A triangle has three sides, and its angles add up to 180 degrees.",
    "My grandmother grew tomatoes, beans and roses in her small garden.",
    "The new software update fixes several bugs and improves battery life.",
    "Shakespeare wrote many plays, including Hamlet, Macbeth and Othello.",
    "The train to London leaves from platform four in ten minutes.",
    "Doctors recommend drinking plenty of water and sleeping eight hours a night.",
    "The children laughed as the puppy chased its own tail around the yard.",
    "Mount Everest is the highest mountain above sea level in the world.",
]

MODELS = {"smollm2-135m": "smollm2", "gemma3-270m": "gemma3"}


def run_model(name: str, out: Path, sample: str, curve_too: bool = True) -> dict:
    """Compute and save every figure for one model; return the numbers the summary prints."""
    short = MODELS.get(name, name.replace("/", "_"))
    t0 = time.perf_counter()
    model = jetex.load(name)
    print(f"\n=== {model.name}: {model.n_blocks} blocks, vocab {model.vocab_size} (loaded in {time.perf_counter() - t0:.1f} s)")
    print(f"sample: {sample!r}")
    written: list[Path] = []

    # Iterative lenses k = 0 (logit lens), 1, 2 on the sample sentence.
    lenses = {}
    for k in (0, 1, 2):
        res = iterative_lens(model, sample, order=k)
        lenses[k] = res
        stem = f"{short}_logit_lens" if k == 0 else f"{short}_jet_lens_k{k}"
        for suffix in (".png", ".html"):
            written.append(save_lens(res, out / f"{stem}{suffix}"))
    rows = lenses[0].row_names

    # Joint lens, order 1, one centre per transformer layer: uniform and optimised weights.
    joints = {}
    for opt in (False, True):
        res = joint_lens(model, sample, order=1, centres="layers", optimize=opt)
        joints[opt] = res
        stem = f"{short}_joint_lens_k1_{'optimised' if opt else 'uniform'}"
        for suffix in (".png", ".html"):
            written.append(save_lens(res, out / f"{stem}{suffix}"))

    model_top = lenses[0].model_top_ids[:, 0]
    agree = {k: float((r.top_ids[:, :, 0] == model_top).float().mean()) for k, r in lenses.items()}
    print("\nsample sentence, iterative lens: fraction of (layer, position) cells whose top-1 is the model's top-1:  "
          + "  ".join(f"k={k}: {a:.2f}" for k, a in agree.items()))
    for opt, res in joints.items():
        ec = res.expansion_cosine
        assert ec is not None
        e_agree = float((res.expansion_top_ids[:, 0] == model_top).float().mean())  # type: ignore[index]
        print(f"joint lens k=1 ({'optimised' if opt else 'uniform'} weights, {len(res.row_names)} centres): "
              f"expansion cosine mean {float(ec.mean()):+.3f} (min {float(ec.min()):+.3f}), "
              f"expansion top-1 = model top-1 at {e_agree:.0%} of positions, "
              f"|U δ| mean {float(res.remainder_norm.mean()):.2f}")

    if not curve_too:
        print("wrote " + ", ".join(p.name for p in written))
        return {"lenses": lenses, "joints": joints}

    # Cosine vs layer over the sentence set, orders 0, 1, 2.
    t1 = time.perf_counter()
    curve = lens_cosine_curve(model, SENTENCES, orders=(0, 1, 2))
    t_curve = time.perf_counter() - t1
    plot_cosine_curve(curve, out / f"{short}_cosine_curve.png")
    written.append(out / f"{short}_cosine_curve.png")

    # ---- summary
    n = len(rows)
    picks = sorted({0, 1, n // 4, n // 2, (3 * n) // 4, n - 2, n - 1})
    print(f"\nmean cosine(lens logits, model logits) over {curve.n_sentences} sentences ({t_curve:.1f} s):")
    print(f"  {'row':<10}" + "".join(f"{'k=' + str(k):>9}" for k in curve.orders))
    for r in picks:
        print(f"  {rows[r]:<10}" + "".join(f"{float(curve.cosine[oi, r]):>+9.3f}" for oi in range(len(curve.orders))))
    inner = list(range(1, n - 1))
    print(f"  mean over rows {rows[1]}..{rows[n - 2]} (all but emb and the last layer):  "
          + "  ".join(f"k={k}: {float(curve.cosine[oi, inner].mean()):+.3f}" for oi, k in enumerate(curve.orders)))
    print("  layers with negative mean cosine:  "
          + "  ".join(f"k={k}: {int((curve.cosine[oi] < 0).sum())}/{n}" for oi, k in enumerate(curve.orders)))
    if curve.rest_cosine is not None:  # issue 11: what the lens adds beyond the model's own output
        print("  rest cosine (row minus its part along q), mean over the same rows:  "
              + "  ".join(f"k={k}: {float(curve.rest_cosine[oi, inner].mean()):+.3f}" for oi, k in enumerate(curve.orders)))
    if curve.trusted is not None:
        print("  share of trusted cells (docs/trust.md), all rows:  "
              + "  ".join(f"k={k}: {float(curve.trusted[oi].mean()):.0%}" for oi, k in enumerate(curve.orders)))
    # q share (issue 11): the part of each order-k row along the model's own logits q, mean over the
    # middle rows and all positions of all sentences (one batched iterative lens per order k >= 1)
    shares = {}
    for k in (k for k in curve.orders if k >= 1):
        items = iterative_lens(model, SENTENCES, order=k)
        num = sum(float(r.q_share[inner].double().sum()) for r in items)  # type: ignore[index]
        den = sum(r.q_share[inner].numel() for r in items)  # type: ignore[index]
        shares[k] = num / den
    if shares:
        print("  q share (part of the row along q), mean over the same rows:  "
              + "  ".join(f"k={k}: {v:.2f}" for k, v in shares.items()))

    print("wrote " + ", ".join(p.name for p in written))
    return {"curve": curve, "lenses": lenses, "joints": joints}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "figures")
    ap.add_argument("--sentence", default=SAMPLE)
    ap.add_argument("--no-curve", action="store_true", help="skip the cosine-vs-layer curve (the slow part)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        run_model(name, args.out, args.sentence, curve_too=not args.no_curve)


if __name__ == "__main__":
    main()
