"""Which bigram score to rank n-grams by: the measurement behind ``DEFAULT_SCORE``
(``docs/ngram_scores.md``).

    .venv/bin/python benchmarks/ngram_scores.py --model smollm2-135m --paths direct,mlp:29
    .venv/bin/python benchmarks/ngram_scores.py --model gemma3-270m --paths direct,mlp:17 --limit-vocab 16384

For each path and each score of :mod:`jetex.ngrams.scores` (self-transitions excluded, as
everywhere by default), over the input tokens 0..N−1 (N = ``--limit-vocab`` or V; outputs
always over the whole vocabulary):

1. **Saturation**: the global top-1000 pairs (a, b) by the score, found exactly in one
   streamed pass (per batch the top-1000 of every score, merged; ``pmi``'s mean output
   distribution comes from a first pass): how many distinct score values the 1000 hold, how
   many distinct input tokens, and how many self-transitions (0 by construction).
2. **Agreement with the model**: on ``--sample`` evenly spaced input tokens a, the model's own
   next-token log-probabilities after [BOS, a] (self-transition removed and renormalised):
   - *pooled Spearman*: rank correlation between the score and the model's log P over the
     pooled pairs {(a, b): b in the path's top-50 of row a by the score} — do pairs the score
     ranks higher ACROSS rows have a higher model probability? (a global ranking's agreement);
   - *row Spearman*: the same within each row's top-50, averaged over rows;
   - *top-10 overlap*: |top-10 by the score ∩ top-10 of the model| / 10, averaged over rows;
   - *top-1000 of the sample*: the mean model log P of the 1000 best pairs of the sample by the
     score, and the share of them in the model's own top-10 of their row.
3. **Stability to batch order**: the top-1000 of the first ``--stability-rows`` inputs computed
   with batches of 512 in id order and with batches of 96 in reverse order (different matmul
   blocking, so different float rounding): the share of pairs the two lists have in common
   and the share at the same rank.

Ratios and counts only; the machine may be shared (times are printed for information).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

import jetex
from jetex.ngrams.engine import column_logq, compute_threads
from jetex.ngrams.paths import parse_path
from jetex.ngrams.scores import SCORES, score_rows

TOP = 1000


def _merge(best: dict, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n: int) -> None:
    """Keep the n best (value desc, a, b) of best ∪ new in place (numpy, deterministic order)."""
    if v.numel() > n:
        t = torch.topk(v, n)
        v, a, b = t.values, a[t.indices], b[t.indices]
    cat = [np.concatenate([best[k], x.cpu().numpy()]) for k, x in (("v", v.double()), ("a", a), ("b", b))]
    o = np.lexsort((cat[2], cat[1], -cat[0]))[:n]
    best["v"], best["a"], best["b"] = cat[0][o], cat[1][o], cat[2][o]


def top_pairs(m, p, rows: torch.Tensor, logq: torch.Tensor, batch: int) -> dict[str, dict]:
    """Exact global top-1000 of every score over ``rows`` (one streamed pass)."""
    V = m.vocab_size
    best = {s: {"v": np.zeros(0), "a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)} for s in SCORES}
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            ids = rows[start : start + batch]
            z = p.logits(m, ids).float()
            for s in SCORES:
                v, _ = score_rows(s, z, ids, exclude_self=True, logq=logq)
                flat = v.reshape(-1)
                k = min(TOP, flat.numel())
                t = torch.topk(flat, k)
                # ties at the cut: take every entry equal to the k-th value (exact tie-breaking by id)
                sel = (flat >= t.values[-1]).nonzero().flatten()
                _merge(best[s], flat[sel], ids[sel // V], sel % V, TOP)
    return best


def model_logprobs(m, ids: torch.Tensor) -> torch.Tensor:
    """log P_model(· | [BOS, a]) ``[n, V]``, self-transition removed and renormalised."""
    bos = getattr(m.tokenizer, "bos_token_id", None)
    seq = ids[:, None] if bos is None else torch.stack([torch.full_like(ids, bos), ids], 1)
    out = []
    with torch.inference_mode():
        for s in range(0, len(ids), 16):
            out.append(m.reference_logits(seq[s : s + 16])[:, -1].float())
    ref = torch.cat(out)
    ref[torch.arange(len(ids)), ids] = float("-inf")
    return torch.log_softmax(ref, -1)


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx = x.double().argsort().argsort().double()
    ry = y.double().argsort().argsort().double()
    rx -= rx.mean()
    ry -= ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def agreement(m, p, ids: torch.Tensor, logq: torch.Tensor, lpm: torch.Tensor) -> dict[str, dict]:
    with torch.inference_mode():
        z = torch.cat([p.logits(m, ids[s : s + 64]).float() for s in range(0, len(ids), 64)])
    V = m.vocab_size
    mtop = lpm.topk(10, 1).indices
    out = {}
    for s in SCORES:
        v, _ = score_rows(s, z, ids, exclude_self=True, logq=logq)
        t = v.topk(50, 1)
        pm = lpm.gather(1, t.indices)
        pooled = _spearman(t.values.reshape(-1), pm.reshape(-1))
        row = float(np.mean([_spearman(t.values[i], pm[i]) for i in range(len(ids))]))
        top10 = float((t.indices[:, :10, None] == mtop[:, None, :]).any(-1).float().mean())
        flat = v.reshape(-1)
        g = torch.topk(flat, TOP).indices
        a, b = g // V, g % V
        out[s] = dict(pooled=pooled, row=row, top10=top10, top_lp=float(lpm[a, b].mean()),
                      top_in10=float((mtop[a] == b[:, None]).any(-1).float().mean()))
    return out


def stability(m, p, n: int, logq: torch.Tensor) -> dict[str, tuple[float, float]]:
    rows = torch.arange(n)
    fwd = top_pairs(m, p, rows, logq, 512)
    rev_rows = torch.cat([rows[s : s + 96] for s in reversed(range(0, n, 96))])
    rev = top_pairs(m, p, rev_rows, logq, 96)
    out = {}
    for s in SCORES:
        A = list(zip(fwd[s]["a"].tolist(), fwd[s]["b"].tolist()))
        B = list(zip(rev[s]["a"].tolist(), rev[s]["b"].tolist()))
        out[s] = (len(set(A) & set(B)) / max(1, len(A)), sum(x == y for x, y in zip(A, B)) / max(1, len(A)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--paths", default="direct,mlp:29")
    ap.add_argument("--limit-vocab", type=int, default=None, help="input tokens 0..N-1 (outputs: whole vocabulary)")
    ap.add_argument("--sample", type=int, default=512, help="input tokens for the agreement with the model")
    ap.add_argument("--stability-rows", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: top,agreement,stability")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    m = jetex.load(args.model)
    V = m.vocab_size
    N = min(V, args.limit_vocab or V)
    sample = torch.div(torch.arange(args.sample) * N, args.sample, rounding_mode="floor")
    print(f"model {m.name}: V={V}, inputs 0..{N - 1}, agreement sample {args.sample}, scores {', '.join(SCORES)}", flush=True)
    lpm = model_logprobs(m, sample) if "agreement" not in skip else None
    with compute_threads():
        for spec in args.paths.split(","):
            (p,) = parse_path(m, spec)
            t0 = time.perf_counter()
            logq = column_logq(m, p, exclude_self=True, limit_vocab=N).float()
            print(f"\n== {p.name}: mean output distribution over {N} inputs in {time.perf_counter() - t0:.0f} s "
                  f"(log q from {float(logq.min()):.1f} to {float(logq.max()):.2f})", flush=True)
            if "top" not in skip:
                t0 = time.perf_counter()
                best = top_pairs(m, p, torch.arange(N), logq, args.batch)
                print(f"   global top-{TOP} of all {N}×{V} pairs per score ({time.perf_counter() - t0:.0f} s):")
                for s in SCORES:
                    b = best[s]
                    print(f"   {s:8s} distinct values {len(np.unique(b['v'].astype(np.float32))):5d}   distinct inputs "
                          f"{len(np.unique(b['a'])):5d}   self-transitions {int((b['a'] == b['b']).sum())}   "
                          f"values {b['v'][0]:.4g} … {b['v'][-1]:.4g}", flush=True)
                    strs = m.token_strings([int(x) for x in b["a"][:5]] + [int(x) for x in b["b"][:5]])
                    print("            top 5: " + ", ".join(f"{strs[i]!r}→{strs[5 + i]!r}" for i in range(5)), flush=True)
            if lpm is not None:
                t0 = time.perf_counter()
                ag = agreement(m, p, sample, logq, lpm)
                print(f"   agreement with the model after [BOS, a] on {len(sample)} inputs ({time.perf_counter() - t0:.0f} s):")
                for s in SCORES:
                    g = ag[s]
                    print(f"   {s:8s} pooled Spearman {g['pooled']:+.3f}   row Spearman {g['row']:+.3f}   top-10 overlap "
                          f"{g['top10']:.3f}   sample top-{TOP}: mean model log P {g['top_lp']:.2f}, in model top-10 "
                          f"{g['top_in10']:.3f}", flush=True)
            if "stability" not in skip:
                n = min(N, args.stability_rows)
                st = stability(m, p, n, logq)
                print(f"   stability of the top-{TOP} of inputs 0..{n - 1} (batches of 512 in order vs 96 reversed):")
                for s in SCORES:
                    print(f"   {s:8s} same pairs {st[s][0]:.3f}   same rank {st[s][1]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
