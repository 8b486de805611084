"""Bigram scores (logprob, centred logit, z-scored logit, PMI, PMI of z-scored logits) against
brute force on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jetex.errors import InputError
from jetex.ngrams.engine import bigram_table, column_logq, iter_bigram_batches
from jetex.ngrams.paths import parse_path
from jetex.ngrams.scores import (
    COLUMN_SCORES,
    SCORES,
    check_score,
    column_logprobs,
    row_family,
    row_moments,
    score_matrix,
    score_rows,
    score_values,
)


def _softmax(vals: dict) -> dict:
    m = max(vals.values())
    tot = sum(math.exp(v - m) for v in vals.values())
    return {b: math.exp(v - m) / tot for b, v in vals.items()}


def _brute(model, path, score, exclude_self, n=None, z=None):
    """Every score of every (a, b), one row and one pair at a time, in float64 from the definition;
    and the log column distribution of the score (q_ζ for zpmi, q otherwise)."""
    V = model.vocab_size
    N = n or V
    z = path.logits(model, torch.arange(N)).double() if z is None else z.double()
    probs, zeta = [], []
    for a in range(N):
        cand = [b for b in range(V) if not (exclude_self and b == a)]
        probs.append(_softmax({b: float(z[a, b]) for b in cand}))
        vals = [float(z[a, b]) for b in cand]
        mu = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
        zeta.append({b: (float(z[a, b]) - mu) / sd if sd > 1e-12 * (1 + abs(mu)) else 0.0 for b in cand})
    pz = [_softmax(r) for r in zeta]
    q = [sum(probs[a].get(b, 0.0) for a in range(N)) / N for b in range(V)]
    qz = [sum(pz[a].get(b, 0.0) for a in range(N)) / N for b in range(V)]
    out = np.full((N, V), -np.inf)
    for a in range(N):
        cand = list(probs[a])
        mu = sum(float(z[a, b]) for b in cand) / len(cand)
        for b in cand:
            lp = math.log(probs[a][b])
            out[a, b] = {"logprob": lp, "logit": float(z[a, b]) - mu, "zlogit": zeta[a][b],
                         "pmi": lp - math.log(q[b]), "zpmi": math.log(pz[a][b]) - math.log(qz[b])}[score]
    return out, np.log(np.array(qz if score == "zpmi" else q))


@pytest.mark.parametrize("score", list(SCORES))
@pytest.mark.parametrize("spec, exclude_self, K, G, B", [("direct", True, 3, 40, 16), ("mlp:1", False, 2, 5, 7)])
def test_scores_match_bruteforce(tiny_llama, score, spec, exclude_self, K, G, B):
    m = tiny_llama
    (p,) = parse_path(m, spec)
    V = m.vocab_size
    want, logq = _brute(m, p, score, exclude_self)
    t = bigram_table(m, p, top_k=K, global_top=G, batch_size=B, exclude_self=exclude_self, score=score, column_stats=True)
    # the mean output distribution, accumulated in the pass (or by the extra pass for pmi / zpmi:
    # for zpmi the mean z-scored distribution q_ζ)
    np.testing.assert_allclose(t.logq, logq, rtol=1e-9, atol=1e-9)
    # without column_stats only pmi and zpmi compute it (their first pass); the ranking is the same
    t2 = bigram_table(m, p, top_k=K, global_top=G, batch_size=B, exclude_self=exclude_self, score=score)
    assert (t2.logq is None) == (score not in COLUMN_SCORES)
    assert (t2.lse_z is None) == (score != "zpmi")
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
    got = score_values(score, t.top_logits, t.lse[:, None], t.mean_logit[:, None], t.std_logit[:, None], t.logq[t.top_ids],
                       None if t.lse_z is None else t.lse_z[:, None])
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
    with pytest.raises(InputError, match="unknown score 'bogus'; use one of: logprob, logit, zlogit, pmi, zpmi"):
        check_score("bogus")
    with pytest.raises(InputError, match="unknown score"):
        next(iter_bigram_batches(tiny_llama, p, score="PMI2"))
    with pytest.raises(InputError, match="needs the path's mean output distribution"):
        next(iter_bigram_batches(tiny_llama, p, score="pmi"))
    with pytest.raises(InputError, match="needs the per-input logit mean"):
        score_values("zlogit", np.zeros(2), np.zeros(2))
    with pytest.raises(InputError, match="score 'zpmi' needs the path's mean z-scored output distribution"):
        next(iter_bigram_batches(tiny_llama, p, score="zpmi"))
    with pytest.raises(InputError, match="score 'zpmi' needs the path's mean z-scored output distribution"):
        score_values("zpmi", np.zeros(2), np.zeros(2), np.zeros(2), np.ones(2))
    with pytest.raises(InputError, match="z-scored log-sum-exp"):
        score_values("zpmi", np.zeros(2), np.zeros(2), np.zeros(2), np.ones(2), np.zeros(2))
    assert check_score(" ZPMI ") == "zpmi"


def test_row_families():
    """pmi and zpmi each re-rank rows in their own order: neither is re-scorable from the other."""
    assert {row_family(s) for s in ("logprob", "logit", "zlogit")} == {"z"}
    assert row_family("pmi") == "pmi" and row_family("zpmi") == "zpmi"


def _flat_model(tiny_llama):
    """The tiny Llama with input token 5's embedding zeroed: its ``direct`` row is constant (flat)."""
    import copy

    m = copy.deepcopy(tiny_llama)
    (p,) = parse_path(m, "direct")
    with torch.no_grad():
        m._embed_tokens.weight[5].zero_()
    z = p.logits(m, torch.arange(m.vocab_size))
    assert float(z[5].max() - z[5].min()) == 0.0  # the row is flat
    return m, p


@pytest.mark.parametrize("exclude_self", [True, False])
def test_zpmi_flat_row_and_definition(tiny_llama, exclude_self):
    """zpmi of every (a, b) of a model with a flat row equals the float64 brute force: the flat
    row's ζ is 0, its softmax uniform over its candidates; exact per-row and global top-K."""
    m, p = _flat_model(tiny_llama)
    V = m.vocab_size
    want, logqz = _brute(m, p, "zpmi", exclude_self)
    n_cand = V - int(exclude_self)
    # the flat row: uniform softmax over C(5), so zpmi(5, b) = −log n_cand − log q_ζ(b)
    fin = np.isfinite(want[5])
    np.testing.assert_allclose(want[5][fin], -math.log(n_cand) - logqz[fin], rtol=1e-12)
    K, G = 4, 60
    t = bigram_table(m, p, top_k=K, global_top=G, batch_size=7, exclude_self=exclude_self, score="zpmi")
    np.testing.assert_allclose(t.logq, logqz, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(t.lse_z[5], math.log(n_cand), rtol=1e-6)
    for a in range(V):
        order = sorted((b for b in range(V) if np.isfinite(want[a, b])), key=lambda b: (-want[a, b], b))[:K]
        assert t.top_ids[a].tolist() == order, a
        np.testing.assert_allclose(t.top_scores[a], want[a, order], rtol=1e-6, atol=1e-6)
    pairs = sorted((-want[a, b], a, b) for a in range(V) for b in range(V) if np.isfinite(want[a, b]))[:G]
    assert list(zip(t.global_top.input_ids.tolist(), t.global_top.output_ids.tolist())) == [(a, b) for _, a, b in pairs]
    np.testing.assert_allclose(t.global_top.scores, [-v for v, _, _ in pairs], rtol=1e-6, atol=1e-6)
    if exclude_self:
        assert all(a != b for a, b in zip(t.global_top.input_ids, t.global_top.output_ids))
    # the reference forms agree with the brute force, the flat row included
    ids = torch.arange(V)
    z = p.logits(m, ids)
    sm = score_matrix("zpmi", z, ids, exclude_self=exclude_self, logq=torch.as_tensor(logqz)).numpy()
    fin = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(sm), fin)
    np.testing.assert_allclose(sm[fin], want[fin], rtol=1e-9, atol=1e-9)
    sr = score_rows("zpmi", z, ids, exclude_self=exclude_self, logq=torch.as_tensor(logqz))[0].double().numpy()
    np.testing.assert_array_equal(np.isfinite(sr), fin)
    np.testing.assert_allclose(sr[fin], want[fin], rtol=1e-5, atol=1e-5)
    # the column distribution: the mean over inputs of column_logprobs, and a distribution
    cl = column_logprobs("zpmi", z, ids, exclude_self=exclude_self).double().exp().mean(0).log().numpy()
    np.testing.assert_allclose(cl, logqz, rtol=1e-6, atol=1e-6)
    assert abs(float(torch.logsumexp(torch.as_tensor(logqz), 0))) < 1e-9


def test_zpmi_differs_from_pmi_and_zlogit(tiny_llama):
    """zpmi is a score of its own: its per-row order differs from zlogit's and pmi's somewhere."""
    (p,) = parse_path(tiny_llama, "direct")
    tz = bigram_table(tiny_llama, p, top_k=3, global_top=10, batch_size=16, exclude_self=True, score="zpmi")
    tp = bigram_table(tiny_llama, p, top_k=3, global_top=10, batch_size=16, exclude_self=True, score="pmi")
    tl = bigram_table(tiny_llama, p, top_k=3, global_top=10, batch_size=16, exclude_self=True, score="zlogit")
    assert not np.array_equal(tz.top_ids, tl.top_ids)
    assert not np.array_equal(tz.top_ids, tp.top_ids)
    qz = column_logq(tiny_llama, p, batch_size=5, exclude_self=True, score="zpmi")
    q = column_logq(tiny_llama, p, batch_size=5, exclude_self=True)
    np.testing.assert_allclose(qz.numpy(), tz.logq, rtol=1e-12, atol=1e-12)  # independent of batching
    assert not np.allclose(qz.numpy(), q.numpy())
