"""The one-pass lens readout (jetex.lenses.lens._row_stats) against direct float64 computations,
and the floored log-sum-exp against torch's."""

import pytest
import torch
import torch.nn.functional as F

from jetex.expand.numerics import logsumexp
from jetex.lenses.lens import _row_stats


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_row_stats_match_direct(with_bias, chunk):
    g = torch.Generator().manual_seed(0)
    R, t, V = 7, 4, 301
    logits = torch.randn(R, t, V, generator=g) * torch.tensor([1.0, 30.0, 300.0, 3.0, 0.1, 50.0, 1.0])[:, None, None]
    model = torch.randn(t, V, generator=g) * 5
    logits[-1] = model  # a row that is the model itself
    alpha = torch.randn(R, t, generator=g, dtype=torch.float64)
    bias = torch.randn(V, generator=g) if with_bias else None
    st = _row_stats(logits, model, 6, alpha=alpha, bias=bias, chunk=chunk)
    x, q = logits.double(), model.double()[None]
    assert torch.allclose(st["lse"].double(), torch.logsumexp(x, -1), rtol=1e-6)
    v, i = logits.topk(6, dim=-1)
    assert torch.equal(st["top_ids"], i) and torch.equal(st["top_logits"], v)
    own = logits.gather(-1, model.argmax(-1)[None, :, None].expand(R, -1, 1))
    assert torch.equal(st["rank"], (logits > own).sum(-1))
    assert torch.equal(st["own"], own[..., 0])
    assert torch.allclose(st["cosine"].double(), F.cosine_similarity(x, q, dim=-1), atol=1e-6)
    assert torch.allclose(st["norm"].double(), x.norm(dim=-1), rtol=1e-6)
    assert torch.allclose(st["rem"].double(), (q - x).norm(dim=-1), rtol=1e-5, atol=1e-4)
    assert float(st["rem"][-1].abs().max()) == 0.0
    qt = q - (0 if bias is None else bias.double())
    rest = x - alpha.float().double()[..., None] * qt
    assert torch.allclose(st["rest_norm"].double(), rest.norm(dim=-1), rtol=1e-5)
    assert torch.allclose(st["rest_cosine"].double(), F.cosine_similarity(rest, q.expand_as(rest), dim=-1), atol=1e-5)


def test_logsumexp_matches_torch_and_keeps_infinities():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5000, generator=g) * 200  # most shifted terms are subnormal after exp
    x[1] = float("-inf")
    x[2, 7] = float("inf")
    x[3, 9] = float("nan")
    x[4, 1:] = float("-inf")
    ref = torch.logsumexp(x.double(), -1)
    got = logsumexp(x, -1)
    fin = torch.isfinite(ref)
    assert torch.allclose(got[fin].double(), ref[fin], rtol=1e-6)
    assert got[1] == float("-inf") and got[2] == float("inf") and torch.isnan(got[3])
    assert logsumexp(x, 0, keepdim=True).shape == (1, 5000)
    d = torch.randn(3, 40, dtype=torch.float64, generator=g)
    assert torch.allclose(logsumexp(d, 0), torch.logsumexp(d, 0), rtol=1e-15)


@pytest.mark.parametrize("pattern", ["sparse", "dense", "all_zero"])
def test_term_row_stats_skip_zero_cells(pattern):
    """The joint lens unembeds only cells whose term is non-zero (optimised weights are mostly
    0); the statistics must equal those of the full [n, t, V] logits, zero rows included."""
    from jetex.expand.numerics import unembed
    from jetex.lenses.lens import _term_row_stats
    from jetex.models.toy import ToyResidualNet

    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    n, t, d, V = 6, 5, 8, 203
    model = ToyResidualNet(depth=1, d=d, vocab_size=V)
    terms = torch.randn(n, t, d, generator=g, dtype=torch.float64) * 3
    if pattern == "sparse":
        keep = torch.rand(n, t, generator=g) < 0.3
        keep[:, 2] = False  # a position with no active cell
        keep[1] = False  # a row with no active cell
        keep[0, 0] = True
        terms = terms * keep[..., None]
    elif pattern == "all_zero":
        terms = torch.zeros_like(terms)
    q = (torch.randn(t, V, generator=g) * 4).to(model.dtype)
    with torch.no_grad():  # as in joint_lens (the toy's weights require grad)
        got = _term_row_stats(model, terms, q, 7)
        ref = _row_stats(unembed(model, terms.to(model.dtype)), q, 7)
    for key in ref:
        assert got[key].shape == ref[key].shape and got[key].dtype == ref[key].dtype, key
        if ref[key].dtype.is_floating_point:
            # the non-zero rows come from a matmul with fewer rows, which may sum U·x in
            # another order: float32 rounding of ‖x‖‖U_row‖ ≈ 1e2 at most, so 1e-5 relative
            torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-4, msg=key)
        elif key != "top_ids":
            assert torch.equal(got[key], ref[key]), key
    nz = (terms != 0).any(-1)
    assert torch.equal(got["top_ids"][nz], ref["top_ids"][nz])
    # zero cells: the row is exactly 0, so its lse is log V and its norm 0
    zc = ~nz
    if zc.any():
        assert torch.allclose(got["lse"][zc].double(), torch.full_like(got["lse"][zc].double(), float(torch.log(torch.tensor(float(V))))))
        assert float(got["norm"][zc].abs().max()) == 0.0
