"""Chunked top-k and log-sum-exp over wide rows: exact against sorting and float64 logsumexp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetex.models import ToyResidualNet
from jetex.ngrams.engine import bigram_table
from jetex.ngrams.paths import parse_path
from jetex.ngrams.topk import CHUNK, RowChunks, stable_topk, sum_exp


def _reference_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest per row, ties by the lower index (a stable descending sort)."""
    return torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]


@pytest.mark.parametrize("m", [CHUNK * 40, CHUNK * 40 + 37])
@pytest.mark.parametrize("k", [1, 5, 17])
def test_chunked_topk_is_exact_with_ties(m, k):
    g = torch.Generator().manual_seed(k + m)
    x = torch.randint(-30, 30, (64, m), generator=g).float()  # many ties
    x[:8] = torch.randn(8, m, generator=g) * 50  # no ties, wide range
    x[8, :] = 3.0  # all equal
    x[9, -5:] = 1e3  # the top in the tail
    x[10, ::CHUNK] = 99.0  # one tied maximum in every chunk
    chunks = RowChunks.of(x)
    assert chunks is not None and chunks.nc == m // CHUNK
    v, i = stable_topk(x, k, chunks)
    want = _reference_topk(x, k)
    assert torch.equal(i, want)
    assert torch.equal(v, x.gather(1, want))
    v2, i2 = stable_topk(x, k)  # chunks found on its own
    assert torch.equal(i2, want)


def test_small_rows_fall_back_to_plain_topk():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    assert RowChunks.of(x) is None
    assert stable_topk(x, 10)[1].tolist() == [[1, 2, 3, 0]]


@pytest.mark.parametrize("scale, shift", [(0.5, 0.0), (25.0, -30.0), (20.0, 0.0), (400.0, 0.0)])
def test_sum_exp_matches_float64(scale, shift):
    """Narrow rows (no shift needed), rows reaching below −87 with a moderate maximum (floored,
    unshifted), large maxima (shifted) and very wide rows (chunks skipped)."""
    g = torch.Generator().manual_seed(0)
    m = CHUNK * 300 + 11
    x = torch.randn(32, m, generator=g) * scale + shift
    x[0, 5] = float("-inf")  # an excluded self-transition
    x[1, :] = x[1, :].clamp(max=0) - 500  # everything far below... but one
    x[1, 7] = 0.0
    mx = x.amax(1)
    want = torch.logsumexp(x.double(), 1)
    got = mx.double() + torch.log(sum_exp(x.clone(), mx, RowChunks.of(x)).double())
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * max(1.0, float(want.abs().max())) / 100 + 1e-6)
    plain = mx.double() + torch.log(sum_exp(x.clone(), mx, None).double())
    torch.testing.assert_close(plain, want, rtol=0, atol=1e-5)


def test_engine_on_a_wide_vocabulary_matches_sorting():
    """A toy model with 12 000 tokens and logit ranges of hundreds of nats: the chunked paths are used."""
    m = ToyResidualNet(depth=2, d=16, vocab_size=12_000, hidden=32, dtype=torch.float32)
    with torch.no_grad():
        m.U.mul_(60.0)
    for spec in ("direct", "mlp:1"):
        (p,) = parse_path(m, spec)
        t = bigram_table(m, p, top_k=7, limit_vocab=96, batch_size=32, global_top=300, exclude_self=(spec == "direct"))
        z = p.logits(m, torch.arange(96)).detach().double()
        if spec == "direct":
            z[torch.arange(96), torch.arange(96)] = float("-inf")
        lp = torch.log_softmax(z, -1)
        want = _reference_topk(z, 7)
        np.testing.assert_array_equal(t.top_ids, want.numpy())
        np.testing.assert_allclose(t.top_logprobs, lp.gather(1, want).numpy(), rtol=1e-5, atol=3e-4)
        # global top-300 (probabilities near 1 tie in float32: compare values, not the order of near-ties;
        # logits of hundreds of nats leave float32 log-probabilities ~1e-4 absolute precision)
        g = t.global_top
        np.testing.assert_allclose(g.logprobs, lp[g.input_ids, g.output_ids].numpy(), atol=3e-4)
        best = torch.sort(lp.reshape(-1), descending=True).values[:300].numpy()
        np.testing.assert_allclose(g.logprobs, best, atol=3e-4)
        assert len(set(zip(g.input_ids.tolist(), g.output_ids.tolist()))) == 300
