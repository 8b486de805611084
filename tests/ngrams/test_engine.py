"""The exhaustive bigram engine against a brute-force V × V oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetex.errors import InputError
from jetex.ngrams.engine import GlobalCandidates, bigram_table, default_batch_size, iter_bigram_batches
from jetex.ngrams.fidelity import fidelity_sample, path_fidelity
from jetex.ngrams.paths import parse_path
from jetex.ngrams.trigrams import stable_topk


def _oracle(model, path, K, G, exclude_self, n=None):
    """Full [N, V] log-probabilities, then sorts with explicit (value desc, id asc) tie-breaking."""
    N = n or model.vocab_size
    ids = torch.arange(N)
    z = path.logits(model, ids).double()
    self_logit = z[ids, ids].clone()
    full = torch.log_softmax(z, -1)
    if exclude_self:
        z[ids, ids] = float("-inf")
    lp = torch.log_softmax(z, -1)
    top = []
    for r in range(N):
        order = sorted(range(z.shape[1]), key=lambda c: (-float(z[r, c]), c))[:K]
        top.append(order)
    top = np.array(top)
    pairs = sorted(((-float(lp[r, c]), r, c) for r in range(N) for c in range(z.shape[1]) if np.isfinite(float(lp[r, c]))))[:G]
    return dict(top=top, lp=lp.numpy(), logits=z.numpy(), full=full.numpy(), self_logit=self_logit.numpy(),
                pairs=[(r, c) for _, r, c in pairs], pair_lp=np.array([-v for v, _, _ in pairs]))


@pytest.mark.parametrize(
    "spec, exclude_self, K, G, B",
    [
        ("direct", False, 5, 3, 7),  # global top within the per-token top-K
        ("direct", True, 3, 40, 16),  # deeper global top: threshold pruning
        ("mlp:0", False, 1, 200, 1),  # one token per batch
        ("mlp:0", True, 10, 0, 128),  # no global ranking, one batch
        ("mlps", True, 5, 3, 7),
        ("attn-free", False, 3, 40, 16),
        ("mlp:0,1", True, 2, 500, 32),
    ],
)
def test_engine_matches_bruteforce(tiny_llama, spec, exclude_self, K, G, B):
    m = tiny_llama
    (p,) = parse_path(m, spec)
    t = bigram_table(m, p, top_k=K, global_top=G, batch_size=B, exclude_self=exclude_self)
    o = _oracle(m, p, K, G, exclude_self)
    V = m.vocab_size
    assert t.top_ids.shape == (V, K)
    np.testing.assert_array_equal(t.top_ids, o["top"])
    rows = np.arange(V)[:, None]
    np.testing.assert_allclose(t.top_logits, o["logits"][rows, o["top"]], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(t.top_logprobs, o["lp"][rows, o["top"]], rtol=1e-6, atol=1e-9)
    # log-sum-exp of the ranking softmax: logit − logprob
    np.testing.assert_allclose(t.lse, t.top_logits[:, 0] - o["lp"][np.arange(V), o["top"][:, 0]], rtol=1e-6, atol=1e-9)
    # self transitions, always in the full softmax
    np.testing.assert_allclose(t.self_logprob, o["full"][np.arange(V), np.arange(V)], rtol=1e-6, atol=1e-9)
    full_argmax = np.array([sorted(range(V), key=lambda c: (-o["full"][r, c], c))[0] for r in range(V)])
    np.testing.assert_array_equal(t.self_top1, full_argmax == np.arange(V))
    if exclude_self:
        assert not (t.top_ids == np.arange(V)[:, None]).any()
    # global top-G pairs
    assert len(t.global_top) == G
    assert list(zip(t.global_top.input_ids.tolist(), t.global_top.output_ids.tolist())) == o["pairs"]
    np.testing.assert_allclose(t.global_top.logprobs, o["pair_lp"], rtol=1e-6, atol=1e-9)


def test_limit_vocab_and_batches_cover_inputs_once(tiny_llama):
    (p,) = parse_path(tiny_llama, "mlp:1")
    batches = list(iter_bigram_batches(tiny_llama, p, top_k=4, limit_vocab=30, batch_size=8, global_top=10))
    assert [b.batch_index for b in batches] == [0, 1, 2, 3]
    ids = np.concatenate([b.input_ids for b in batches])
    np.testing.assert_array_equal(ids, np.arange(30))
    # outputs range over the whole vocabulary even when inputs are limited
    full = bigram_table(tiny_llama, p, top_k=4, global_top=0)
    np.testing.assert_array_equal(np.concatenate([b.top_ids for b in batches]), full.top_ids[:30])
    # skipping batches (resume) leaves the others unchanged
    again = list(iter_bigram_batches(tiny_llama, p, top_k=4, limit_vocab=30, batch_size=8, global_top=10, skip={0, 2}))
    assert [b.batch_index for b in again] == [1, 3]
    np.testing.assert_array_equal(again[1].top_logits, batches[3].top_logits)


def test_direct_path_of_tied_embeddings_predicts_itself(tiny_llama):
    """Tied embeddings: U γ(E_t) has its largest logit at t for most tokens; exclude_self removes it."""
    (p,) = parse_path(tiny_llama, "direct")
    t = bigram_table(tiny_llama, p, top_k=3, global_top=5)
    assert t.self_transition_rate > 0.9
    te = bigram_table(tiny_llama, p, top_k=3, global_top=5, exclude_self=True)
    assert te.self_transition_rate == t.self_transition_rate  # reported on the full softmax either way
    assert not (te.top_ids == te.input_ids[:, None]).any()


def test_deterministic_and_batch_size_independent(tiny_llama):
    (p,) = parse_path(tiny_llama, "mlp:1")
    a = bigram_table(tiny_llama, p, top_k=6, global_top=50, batch_size=9)
    b = bigram_table(tiny_llama, p, top_k=6, global_top=50, batch_size=9)
    c = bigram_table(tiny_llama, p, top_k=6, global_top=50, batch_size=64)
    for f in ("top_ids", "top_logits", "top_logprobs", "lse"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        np.testing.assert_allclose(getattr(a, f), getattr(c, f), rtol=1e-12)
    np.testing.assert_array_equal(a.global_top.input_ids, c.global_top.input_ids)


def test_stable_topk_breaks_ties_by_lower_index():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    v, i = stable_topk(x, 2)
    assert i.tolist() == [[1, 2], [0, 1]] and v.tolist() == [[3.0, 3.0], [5.0, 5.0]]
    v, i = stable_topk(x, 4)
    assert i.tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    # the padding token of the tiny model has a zero embedding: all its logits tie
    assert stable_topk(torch.zeros(1, 9), 3)[1].tolist() == [[0, 1, 2]]


def test_global_candidates_merge_order():
    a = GlobalCandidates(np.array([3, 1]), np.array([0, 0]), np.array([1.0, 1.0], np.float32), np.array([-1.0, -1.0], np.float32))
    b = GlobalCandidates(np.array([2]), np.array([5]), np.array([2.0], np.float32), np.array([-0.5], np.float32))
    m = a.merged(b, 2)
    assert m.input_ids.tolist() == [2, 1] and m.threshold(2) == -1.0 and m.threshold(3) == float("-inf")


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(top_k=0), "top K must be a positive integer"),
        (dict(top_k=78), "top K = 78 is larger than the 77 possible next tokens"),
        (dict(top_k=77, exclude_self=True), "larger than the 76 possible"),
        (dict(global_top=77 * 77 + 1), "global top N"),
        (dict(limit_vocab=0), "limit-vocab"),
        (dict(batch_size=0), "batch size"),
    ],
)
def test_engine_errors(tiny_llama, kw, msg):
    (p,) = parse_path(tiny_llama, "direct")
    with pytest.raises(InputError, match=msg):
        next(iter_bigram_batches(tiny_llama, p, **kw))


def test_default_batch_size_bounds_the_buffer(tiny_llama):
    B = default_batch_size(tiny_llama)
    assert 1 <= B <= 2048 and B & (B - 1) == 0


def test_fidelity_against_direct_computation(tiny_llama):
    m = tiny_llama
    paths = [parse_path(m, s)[0] for s in ("direct", "mlp:1")]
    fids = path_fidelity(m, paths, sample=None)
    ids = torch.arange(m.vocab_size)
    seq = torch.stack([torch.full_like(ids, m.tokenizer.bos_token_id), ids], 1)
    lp_m = torch.log_softmax(m.reference_logits(seq)[:, -1], -1)
    for p in paths:
        lp_p = torch.log_softmax(p.logits(m, ids), -1)
        kl = (lp_m.exp() * (lp_m - lp_p)).sum(-1).mean()
        f = fids[p.name]
        assert f.sample_size == m.vocab_size and f.context == "[BOS, t]"
        assert f.mean_kl == pytest.approx(float(kl), rel=1e-9)
        assert f.top1_agreement == pytest.approx(float((lp_m.argmax(-1) == lp_p.argmax(-1)).double().mean()))
        t10m, t10p = lp_m.topk(10).indices, lp_p.topk(10).indices
        overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(t10m, t10p)])
        assert f.top10_agreement == pytest.approx(overlap)
    # the sample is deterministic and evenly spaced
    assert fidelity_sample(100, 4).tolist() == [0, 25, 50, 75]
    assert path_fidelity(m, paths[:1], sample=8)["direct"].sample_size == 8


def test_generators_leave_no_grad_mode_behind(tiny_llama):
    """A consumer of the batch / chunk generators runs outside inference mode between items, so
    one that stops early (an interrupted extraction) leaves no inference mode behind, whenever
    the suspended generator is collected."""
    from jetex.ngrams.paths import parse_path
    from jetex.ngrams.trigrams import iter_trigram_chunks

    (p,) = parse_path(tiny_llama, "direct")
    (t,) = parse_path(tiny_llama, "attn:0.1")
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    for it in (iter_bigram_batches(tiny_llama, p, top_k=2, batch_size=8, global_top=5),
               iter_bigram_batches(tiny_llama, p, top_k=2, batch_size=8, order=1),
               iter_trigram_chunks(tiny_llama, t, top_k=3, chunk_size=16)):
        next(it)
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
        next(it)
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
