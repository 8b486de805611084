"""Bigram scores (logprob, centred logit, z-scored logit, PMI) against brute force on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jetex.errors import InputError
from jetex.ngrams.engine import bigram_table, column_logq, iter_bigram_batches
from jetex.ngrams.paths import parse_path
from jetex.ngrams.scores import SCORES, check_score, row_moments, score_matrix, score_values


def _brute(model, path, score, exclude_self, n=None):
    """Every score of every (a, b), one row and one pair at a time, in float64 from the definition."""
    V = model.vocab_size
    N = n or V
    z = path.logits(model, torch.arange(N)).double()
    probs = []
    for a in range(N):
        cand = [b for b in range(V) if not (exclude_self and b == a)]
        m = max(float(z[a, b]) for b in cand)
        tot = sum(math.exp(float(z[a, b]) - m) for b in cand)
        probs.append({b: math.exp(float(z[a, b]) - m) / tot for b in cand})
    q = [sum(probs[a].get(b, 0.0) for a in range(N)) / N for b in range(V)]
    out = np.full((N, V), -np.inf)
    for a in range(N):
        cand = list(probs[a])
        vals = [float(z[a, b]) for b in cand]
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
        for b in cand:
            lp = math.log(probs[a][b])
            out[a, b] = {"logprob": lp, "logit": float(z[a, b]) - mu, "zlogit": (float(z[a, b]) - mu) / sd if sd > 1e-12 * (1 + abs(mu)) else 0.0,
                         "pmi": lp - math.log(q[b])}[score]
    return out, np.log(np.array(q))


@pytest.mark.parametrize("score", list(SCORES))
@pytest.mark.parametrize("spec, exclude_self, K, G, B", [("direct", True, 3, 40, 16), ("mlp:1", False, 2, 5, 7)])
def test_scores_match_bruteforce(tiny_llama, score, spec, exclude_self, K, G, B):
    m = tiny_llama
    (p,) = parse_path(m, spec)
    V = m.vocab_size
    want, logq = _brute(m, p, score, exclude_self)
    t = bigram_table(m, p, top_k=K, global_top=G, batch_size=B, exclude_self=exclude_self, score=score, column_stats=True)
    # the mean output distribution, accumulated in the pass (or by the extra pass for pmi)
    np.testing.assert_allclose(t.logq, logq, rtol=1e-9, atol=1e-9)
    # without column_stats only pmi computes it (its first pass); the ranking is the same
    t2 = bigram_table(m, p, top_k=K, global_top=G, batch_size=B, exclude_self=exclude_self, score=score)
    assert (t2.logq is None) == (score != "pmi")
    np.testing.assert_array_equal(t2.top_ids, t.top_ids)
    np.testing.assert_array_equal(t2.top_scores, t.top_scores)
    # per-row top-K by the score (ties: lower id), with the score values
    for a in range(V):
        order = sorted((b for b in range(V) if np.isfinite(want[a, b])), key=lambda b: (-want[a, b], b))[:K]
        assert t.top_ids[a].tolist() == order, (a, score)
        np.testing.assert_allclose(t.top_scores[a], want[a, order], rtol=1e-7, atol=1e-7)
    # global top-G by the score (ties: lower input, then output)
    pairs = sorted((-want[a, b], a, b) for a in range(V) for b in range(V) if np.isfinite(want[a, b]))[:G]
    assert list(zip(t.global_top.input_ids.tolist(), t.global_top.output_ids.tolist())) == [(a, b) for _, a, b in pairs]
    np.testing.assert_allclose(t.global_top.scores, [-v for v, _, _ in pairs], rtol=1e-7, atol=1e-7)
    # re-scoring from the stored statistics gives the same values as the definition
    rows = np.arange(V)[:, None]
    got = score_values(score, t.top_logits, t.lse[:, None], t.mean_logit[:, None], t.std_logit[:, None], t.logq[t.top_ids])
    np.testing.assert_allclose(got, want[rows, t.top_ids], rtol=1e-7, atol=1e-7)
    # the reference matrix agrees too
    sm = score_matrix(score, p.logits(m, torch.arange(V)), torch.arange(V), exclude_self=exclude_self,
                      logq=torch.as_tensor(logq)).numpy()
    fin = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(sm), fin)
    np.testing.assert_allclose(sm[fin], want[fin], rtol=1e-9, atol=1e-9)


def test_logq_independent_of_batching_and_limit(tiny_llama):
    (p,) = parse_path(tiny_llama, "direct")
    a = column_logq(tiny_llama, p, batch_size=5, exclude_self=True)
    b = column_logq(tiny_llama, p, batch_size=64, exclude_self=True)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    _, want = _brute(tiny_llama, p, "pmi", True, n=20)
    np.testing.assert_allclose(column_logq(tiny_llama, p, limit_vocab=20, exclude_self=True, batch_size=6).numpy(), want,
                               rtol=1e-9, atol=1e-9)
    # q is a distribution over the outputs
    assert abs(float(torch.logsumexp(a, 0))) < 1e-9


def test_row_moments_exclusion():
    z = torch.randn(4, 50, dtype=torch.float64) * 30 + 100
    s = z[torch.arange(4), torch.arange(4)]
    mu, sd = row_moments(z, s)
    for r in range(4):
        keep = torch.cat([z[r, :r], z[r, r + 1:]])
        assert abs(float(mu[r] - keep.mean())) < 1e-10
        assert abs(float(sd[r] - keep.std(correction=0))) < 1e-10


def test_unknown_score_and_missing_stats(tiny_llama):
    (p,) = parse_path(tiny_llama, "direct")
    with pytest.raises(InputError, match="unknown score 'bogus'; use one of: logprob, logit, zlogit, pmi"):
        check_score("bogus")
    with pytest.raises(InputError, match="unknown score"):
        next(iter_bigram_batches(tiny_llama, p, score="PMI2"))
    with pytest.raises(InputError, match="needs the path's mean output distribution"):
        next(iter_bigram_batches(tiny_llama, p, score="pmi"))
    with pytest.raises(InputError, match="needs the per-input logit mean"):
        score_values("zlogit", np.zeros(2), np.zeros(2))
