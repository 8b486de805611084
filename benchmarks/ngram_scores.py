"""Which bigram score to rank n-grams by: the measurement behind ``DEFAULT_SCORE``
(``docs/ngram_scores.md``).

    .venv/bin/python benchmarks/ngram_scores.py --model smollm2-135m --paths direct,mlp:29 --inputs 1024 --sample 256
    .venv/bin/python benchmarks/ngram_scores.py --model gemma3-270m --paths direct,mlp:17 --inputs 256 --sample 64 --batch 32

The input tokens are ``--inputs`` N ids evenly spaced over the whole vocabulary (all V
when N ≥ V; the low ids of a vocabulary are special, byte and unused tokens, so a prefix
0..N−1 would not be representative); outputs are always the whole vocabulary, and the
mean output distribution q of ``pmi`` is the mean over those N inputs (log N bounds pmi).
Self-transitions are excluded, as everywhere by default. Scores: those of
:mod:`jetex.ngrams.scores` plus, for the diagnosis, ``pmi64`` (pmi with log P and log q in
float64 instead of the engine's float32) and ``zpmi`` (pmi of the z-scored logits taken as
logits: log softmax(zlogit(a,·))(b) − log mean_a' softmax(zlogit(a',·))(b)).

1. **Saturation**: the exact global top-1000 pairs (a, b) by each score over all N × V pairs
   (a streamed pass, per batch the top-1000 merged; ties at the cut kept whole): distinct
   values (float64, and after rounding to float32 as the engine ranks), distinct inputs, and
   the pairs within 1e-3 of the top value ("at the top": for pmi, its bound log N).
2. **Agreement with the model**: on ``--sample`` of the inputs (evenly spaced), the model's
   own next-token log-probabilities after [BOS, a] (self-transition removed, renormalised):
   - *pooled Spearman (path top-50)*: rank correlation of the score with the model's log P
     over the pairs {(a, b): b in the path's top-50 of row a by the score} — the measure of
     the earlier runs; the pair set depends on the score's row order (the same set for
     logprob / logit / zlogit);
   - its *between-row* part: Spearman over rows of the row's mean score vs the row's mean
     model log P over the same pairs (what separates logprob / logit / zlogit, which share
     their within-row order);
   - *pooled Spearman (model top-50)*: the same correlation over a set that does not depend
     on the score: {(a, b): b in the MODEL's top-50 after [BOS, a]}. Does the score rank the
     pairs the model finds likely, across rows, like the model does?
   - each with a 95 % bootstrap interval over the sampled rows (200 resamples);
   - *sample top-1000*: the mean model log P of the 1000 best pairs of the sample by the
     score, and their share in the model's own top-10 of their row.
3. **Stability to batch order** (``--stability N``, 0 = skip): the top-1000 of the first N
   inputs computed with batches of 256 in order and of 96 in reverse order: the share of
   common pairs and of pairs at the same rank.

Counts and correlations only; the machine may be shared (times are printed for information).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

import jetex
from jetex.ngrams.engine import compute_threads
from jetex.ngrams.paths import parse_path
from jetex.ngrams.scores import SCORES, ColumnLSE, score_rows

TOP = 1000
ALL = [*dict.fromkeys([*SCORES, "pmi64", "zpmi"])]  # zpmi is an engine score since 2026-12-02 (computed here from its definition)


def zscored(z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """zlogit rows ``[B, V]`` (float32, self −inf)."""
    return score_rows("zlogit", z, ids, exclude_self=True)[0]


def column_stats(m, p, ids: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q, log q_z) ``[V]`` float64 over the given inputs: the mean of P(·|a) and of softmax(zlogit(a,·))."""
    acc, accz = ColumnLSE.empty(m.vocab_size), ColumnLSE.empty(m.vocab_size)
    with torch.inference_mode():
        for s in range(0, len(ids), batch):
            i = ids[s : s + batch]
            z = p.logits(m, i).float()
            acc.add_logprobs(score_rows("logprob", z, i, exclude_self=True)[0].double())
            accz.add_logprobs(torch.log_softmax(zscored(z, i).double(), -1))
    return acc.logq(), accz.logq()


def scores_of(name: str, z: torch.Tensor, ids: torch.Tensor, logq: torch.Tensor, logqz: torch.Tensor) -> torch.Tensor:
    """The score ``name`` of every (a, b) of the rows z (float64; self −inf)."""
    if name == "zpmi":  # from the definition, independently of the engine's implementation
        return torch.log_softmax(zscored(z, ids).double(), -1) - logqz[None, :]
    if name in SCORES:
        return score_rows(name, z, ids, exclude_self=True, logq=logq)[0].double()
    if name == "pmi64":
        zc = z.double().clone()
        zc[torch.arange(len(ids)), ids] = float("-inf")
        return torch.log_softmax(zc, -1) - logq[None, :]
    raise ValueError(name)


def _merge(best: dict, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n: int) -> None:
    """Keep the n best (value desc, a, b) of best ∪ new in place (numpy, deterministic order)."""
    cat = [np.concatenate([best[k], x.cpu().numpy()]) for k, x in (("v", v.double()), ("a", a), ("b", b))]
    o = np.lexsort((cat[2], cat[1], -cat[0]))[:n]
    best["v"], best["a"], best["b"] = cat[0][o], cat[1][o], cat[2][o]


def top_pairs(m, p, rows: torch.Tensor, logq, logqz, batch: int, names=ALL) -> dict[str, dict]:
    """Exact global top-1000 of every score over ``rows`` (one streamed pass)."""
    V = m.vocab_size
    best = {s: {"v": np.zeros(0), "a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)} for s in names}
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            ids = rows[start : start + batch]
            z = p.logits(m, ids).float()
            for s in names:
                flat = scores_of(s, z, ids, logq, logqz).reshape(-1)
                t = torch.topk(flat, min(TOP, flat.numel()))
                sel = (flat >= t.values[-1]).nonzero().flatten()  # ties at the cut kept whole
                _merge(best[s], flat[sel], ids[sel // V], sel % V, TOP)
                del flat
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


def _pooled(vals: torch.Tensor, lp: torch.Tensor, gen: torch.Generator, reps: int = 200) -> tuple[float, float, float]:
    """Pooled Spearman of vals vs lp ``[n, k]`` and a 95 % bootstrap interval over rows."""
    est = _spearman(vals.reshape(-1), lp.reshape(-1))
    n = vals.shape[0]
    boots = []
    for _ in range(reps):
        r = torch.randint(0, n, (n,), generator=gen)
        boots.append(_spearman(vals[r].reshape(-1), lp[r].reshape(-1)))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return est, float(lo), float(hi)


def agreement(m, p, ids: torch.Tensor, logq, logqz, lpm: torch.Tensor) -> dict[str, dict]:
    V = m.vocab_size
    with torch.inference_mode():
        z = torch.cat([p.logits(m, ids[s : s + 32]).float() for s in range(0, len(ids), 32)])
    mt = lpm.topk(50, 1)
    mtop10 = mt.indices[:, :10]
    out = {}
    for s in ALL:
        v = scores_of(s, z, ids, logq, logqz)
        t = v.topk(50, 1)
        pm = lpm.gather(1, t.indices).double()
        gen = torch.Generator().manual_seed(0)
        pooled = _pooled(t.values, pm, gen)
        between = _spearman(t.values.mean(1), pm.mean(1))
        gen = torch.Generator().manual_seed(0)
        on_model = _pooled(v.gather(1, mt.indices), mt.values.double(), gen)
        flat = v.reshape(-1)
        g = torch.topk(flat, TOP).indices
        a, b = g // V, g % V
        out[s] = dict(pooled=pooled, between=between, on_model=on_model, top_lp=float(lpm[a, b].mean()),
                      top_in10=float((mtop10[a] == b[:, None]).any(-1).float().mean()),
                      top10=float((t.indices[:, :10, None] == mtop10[:, None, :]).any(-1).float().mean()))
        del v
    return out


def stability(m, p, rows: torch.Tensor, logq, logqz) -> dict[str, tuple[float, float]]:
    fwd = top_pairs(m, p, rows, logq, logqz, 256)
    rev_rows = torch.cat([rows[s : s + 96] for s in reversed(range(0, len(rows), 96))])
    rev = top_pairs(m, p, rev_rows, logq, logqz, 96)
    out = {}
    for s in ALL:
        A = list(zip(fwd[s]["a"].tolist(), fwd[s]["b"].tolist()))
        B = list(zip(rev[s]["a"].tolist(), rev[s]["b"].tolist()))
        out[s] = (len(set(A) & set(B)) / max(1, len(A)), sum(x == y for x, y in zip(A, B)) / max(1, len(A)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--paths", default="direct,mlp:29")
    ap.add_argument("--inputs", type=int, default=None, help="N input tokens evenly spaced over the vocabulary (default: all)")
    ap.add_argument("--sample", type=int, default=512, help="inputs (of those) for the agreement with the model")
    ap.add_argument("--stability", type=int, default=0, help="inputs for the batch-order stability check (0: skip)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: top,agreement")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    m = jetex.load(args.model)
    V = m.vocab_size
    N = min(V, args.inputs or V)
    rows = torch.div(torch.arange(N) * V, N, rounding_mode="floor")
    sample = rows[torch.div(torch.arange(min(args.sample, N)) * N, min(args.sample, N), rounding_mode="floor")]
    print(f"model {m.name}: V={V}, {N} inputs evenly spaced over the vocabulary (stride {V / N:.2f}), agreement "
          f"sample {len(sample)}, scores {', '.join(ALL)}; log N = {math.log(N):.4f}", flush=True)
    lpm = model_logprobs(m, sample) if "agreement" not in skip else None
    with compute_threads():
        for spec in args.paths.split(","):
            (p,) = parse_path(m, spec)
            t0 = time.perf_counter()
            logq, logqz = column_stats(m, p, rows, args.batch)
            print(f"\n== {p.name}: mean output distributions over {N} inputs in {time.perf_counter() - t0:.0f} s "
                  f"(log q from {float(logq.min()):.1f} to {float(logq.max()):.2f}; log q_z from {float(logqz.min()):.1f} "
                  f"to {float(logqz.max()):.2f})", flush=True)
            if "top" not in skip:
                t0 = time.perf_counter()
                best = top_pairs(m, p, rows, logq, logqz, args.batch)
                print(f"   global top-{TOP} of all {N}x{V} pairs per score ({time.perf_counter() - t0:.0f} s):")
                for s in ALL:
                    b = best[s]
                    v = b["v"]
                    print(f"   {s:8s} distinct values {len(np.unique(v)):5d} (float32: {len(np.unique(v.astype(np.float32))):5d})"
                          f"   distinct inputs {len(np.unique(b['a'])):5d}   within 1e-3 of the top {int((v >= v[0] - 1e-3).sum()):5d}"
                          f"   self {int((b['a'] == b['b']).sum())}   values {v[0]:.6g} … {v[-1]:.6g}", flush=True)
                    strs = m.token_strings([int(x) for x in b["a"][:5]] + [int(x) for x in b["b"][:5]])
                    print("            top 5: " + ", ".join(f"{strs[i]!r}→{strs[5 + i]!r}" for i in range(5)), flush=True)
            if lpm is not None:
                t0 = time.perf_counter()
                ag = agreement(m, p, sample, logq, logqz, lpm)
                print(f"   agreement with the model after [BOS, a] on {len(sample)} inputs ({time.perf_counter() - t0:.0f} s):")
                for s in ALL:
                    g = ag[s]
                    pl, om = g["pooled"], g["on_model"]
                    print(f"   {s:8s} pooled Spearman (path top-50) {pl[0]:+.3f} [{pl[1]:+.3f}, {pl[2]:+.3f}]  between-row "
                          f"{g['between']:+.3f}   (model top-50) {om[0]:+.3f} [{om[1]:+.3f}, {om[2]:+.3f}]   top-10 overlap "
                          f"{g['top10']:.3f}   sample top-{TOP}: mean model log P {g['top_lp']:.2f}, in model top-10 "
                          f"{g['top_in10']:.3f}", flush=True)
            if args.stability:
                st = stability(m, p, rows[: args.stability], logq, logqz)
                print(f"   stability of the top-{TOP} of the first {min(N, args.stability)} inputs "
                      f"(batches of 256 in order vs 96 reversed):")
                for s in ALL:
                    print(f"   {s:8s} same pairs {st[s][0]:.3f}   same rank {st[s][1]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
