"""The J-lens saturation curve: how a Jacobian lens's evaluation changes with the number of fit windows.

Each argument is a J-lens file, or several joined with '+' (fits of disjoint corpus slices,
merged exactly as `jetex lens-merge` does). Every lens is evaluated on the same held-out
windows and two-hop prompt sets (`jetex.apps.lens_eval`, deterministic), beside the logit
lens as the data-free baseline. Printed: per lens, windows and source positions fitted,
KL(model ‖ lens) averaged over layers and at a few layers, top-1 agreement, and the best
layer's pass@10 of the intermediate and of the target.

Usage:
  python benchmarks/lens_saturation.py --model smollm2-135m --windows 2 \
      a.n1 a.n2 a.n4 a.n4+b.n4 --out curve.json
"""

from __future__ import annotations

import argparse
import json
import time

import jetex
from jetex.apps.lens_eval import LensSpec, corpus_windows, eval_concepts, eval_heldout, load_concepts
from jetex.lenses.jacobian import JacobianLens
from jetex.results import write_atomic


def load_merged(spec: str, model) -> JacobianLens:
    parts = spec.split("+")
    lens = JacobianLens.load(parts[0], model)
    for p in parts[1:]:
        lens = lens.merge(JacobianLens.load(p, model))
    return lens


def summary(held, conc, name: str, rows: list[str]) -> dict:
    t = {r["row"]: r for r in held.table if r["lens"] == name}
    best = {r["metric"]: r for r in conc.best if r["lens"] == name}
    return {
        "kl_mean": round(sum(r["kl"] for r in t.values()) / len(t), 4),
        "top1_mean": round(sum(r["top1"] for r in t.values()) / len(t), 4),
        "kl": {row: t[row]["kl"] for row in rows},
        "top1": {row: t[row]["top1"] for row in rows},
        **{m: [best[m]["value"], best[m]["layer"]] for m in ("int@1", "int@10", "tgt@1", "tgt@10")},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lenses", nargs="+", help="J-lens files; a+b merges disjoint fits")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=2, help="held-out windows (of the corpus's eval split)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--corpus", default="stdlib-docs")
    ap.add_argument("--sets", default=None, help="prompt sets, comma-separated (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = jetex.load(args.model)
    win, settings = corpus_windows(model, args.corpus, args.tokens, split="eval")
    win = win[: args.windows]
    items = load_concepts(None, args.sets.split(",") if args.sets else None)
    held0 = eval_heldout(model, win, [LensSpec("logit", "logit")], settings)
    rows = held0.rows
    pick = [rows[0]] + [rows[i] for i in (len(rows) // 3, 2 * len(rows) // 3, len(rows) - 3, len(rows) - 2)]
    conc0 = eval_concepts(model, items, [LensSpec("logit", "logit")])
    out = {"model": model.name, "held_out_windows": int(win.shape[0]), "held_out_tokens": held0.n_tokens,
           "items": conc0.n_items, "dropped": len(conc0.dropped), "rows": pick, "logit": summary(held0, conc0, "logit", pick), "curve": []}
    print(f"{model.name}: {held0.n_tokens} held-out positions ({win.shape[0]} windows of {args.tokens} tokens), "
          f"{conc0.n_items} two-hop items ({len(conc0.dropped)} dropped), layers shown {pick}")
    head = f"{'lens':>24} {'windows':>7} {'sources':>7} {'KL mean':>8} " + " ".join(f"{'KL ' + r:>9}" for r in pick) + \
        f" {'top1':>5} {'int@10 (layer)':>16} {'tgt@10 (layer)':>16}"
    print(head)

    def line(name, n, src, s):
        print(f"{name:>24} {n:>7} {src:>7} {s['kl_mean']:>8.3f} " + " ".join(f"{s['kl'][r]:>9.3f}" for r in pick) +
              f" {s['top1_mean']:>5.2f} {s['int@10'][0]:>7.2f} ({s['int@10'][1]:>6}) {s['tgt@10'][0]:>7.2f} ({s['tgt@10'][1]:>6})")

    line("logit lens", 0, 0, out["logit"])
    for spec in args.lenses:
        lens = load_merged(spec, model)
        t0 = time.process_time()
        sp = [LensSpec("jacobian", "jacobian", lens)]
        held = eval_heldout(model, win, sp, settings)
        conc = eval_concepts(model, items, sp)
        s = summary(held, conc, "jacobian", pick)
        s |= {"lens": spec, "windows": len(lens.prompts), "sources": lens.n_sources, "fit_seconds": round(lens.seconds, 1),
              "eval_cpu_seconds": round(time.process_time() - t0, 1)}
        out["curve"].append(s)
        line(spec.split("/")[-1][:24], len(lens.prompts), lens.n_sources, s)
    if args.out:
        write_atomic(args.out, json.dumps(out, indent=1).encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
