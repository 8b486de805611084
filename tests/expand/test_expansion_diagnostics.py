"""Trust diagnostics of ``jet_expand(...).evaluate(z)`` (issue 11, item 1), checked against direct
computations on toy models and against the lens's own diagnostics on a tiny HF model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jetex.expand import Contribution, Embedding, Stream, jet_expand
from jetex.jets import jet_coefficients
from jetex.lenses import iterative_lens
from jetex.models import ToyResidualNet
from jetex.models.load import load

pytestmark = pytest.mark.filterwarnings("ignore::jetex.expand.algorithm.CentreGapWarning")


def _model():
    return ToyResidualNet(depth=3, d=8, vocab_size=13, hidden=16).double()


def _ids(model, shape=(2, 4)):
    return torch.randint(0, model.vocab_size, shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("order", [0, 1, 2])
def test_decoder_expansion_diagnostics_equal_direct_computation(order):
    model = _model()
    z = _ids(model)
    L = model.n_blocks
    centres = [Embedding()] + [Contribution(l, model.blocks[l - 1].name) for l in range(1, L + 1)]
    w = torch.linspace(1, 2, len(centres), dtype=torch.float64)
    w = (w / w.sum()).tolist()
    v = jet_expand(model, L, centres, order, weights=w).evaluate(z)
    d = v.diagnostics
    n = len(centres)
    assert d.shape == (n, z.numel()) and d.order == order  # cells: the positions of every batch item in turn
    h = model.stream(z)  # [L+1, b, t, d]
    xs = [h[0]] + [h[l] - h[l - 1] for l in range(1, L + 1)]
    U = model.unembedding_matrix.double()
    b = model.unembedding_bias
    q = model.decode(h[L]).double()
    logit_norms = []
    for i, x in enumerate(xs):
        c = jet_coefficients(model.final_norm, x, h[L], order)  # [k+1, b, t, d]
        cn = c.double().norm(dim=-1)
        if order == 0:
            assert torch.isnan(d.decay[i]).all()
        else:
            expected = (cn[1:] / cn[:-1]).max(0).values
            assert torch.allclose(d.decay[i], expected.reshape(-1), rtol=1e-10, atol=0)
        dist = (h[L] - x).norm(dim=-1) / x.norm(dim=-1)
        assert torch.allclose(d.distance[i], dist.reshape(-1), rtol=1e-10, atol=0)
        logit_norms.append(((w[i] * c.sum(0)) @ U.T).norm(dim=-1))
    delta = model.final_norm(h[L]) - sum(w[i] * jet_coefficients(model.final_norm, x, h[L], order).sum(0) for i, x in enumerate(xs))
    u_delta = delta @ U.T + (0 if b is None else b)
    rem_share = (u_delta.norm(dim=-1) / q.norm(dim=-1)).reshape(-1)
    kappa = ((torch.stack(logit_norms).sum(0) + u_delta.norm(dim=-1)) / q.norm(dim=-1)).reshape(-1)
    for i in range(n):  # one value per expansion, repeated in every term's row
        assert torch.allclose(d.remainder_share[i], rem_share, rtol=1e-9, atol=1e-12)
        assert torch.allclose(d.cancellation[i], kappa, rtol=1e-9, atol=1e-12)
    assert d.unit_roundoff == float(torch.finfo(torch.float64).eps) / 2
    # the verdict follows the criteria, cell by cell, and the [n, *b, t] view is the same grid
    bad = (d.remainder_share > 1) | (d.cancellation > 10) | (d.cancellation * d.unit_roundoff > 1e-3)
    if order >= 1:
        bad |= (d.distance >= 1) | (d.decay > 1)
    assert torch.equal(d.trusted, ~bad)
    assert torch.equal(v.trusted, (~bad).reshape(n, *z.shape))


def test_inner_block_expansion_stream_space_and_identity_terms():
    model = _model()
    z = _ids(model)
    l = 1  # expands block 2 around {η, γ_1(η)}
    v = jet_expand(model, l, [Embedding(), Contribution(1, model.blocks[0].name)], 1).evaluate(z)
    d = v.diagnostics
    assert len(v.names) == 4  # (jet, identity) per centre
    for i in (1, 3):  # identity terms have no series
        assert torch.isnan(d.decay[i]).all() and torch.isnan(d.distance[i]).all()
    target = model.stream(z)[l + 1].double()
    share = (v.remainder.double().norm(dim=-1) / target.norm(dim=-1)).reshape(-1)
    kappa = ((v.terms.double().norm(dim=-1).sum(0) + v.remainder.double().norm(dim=-1)) / target.norm(dim=-1)).reshape(-1)
    assert torch.allclose(d.remainder_share[0], share, rtol=1e-10) and torch.allclose(d.cancellation[2], kappa, rtol=1e-10)


def test_expansion_at_the_output_is_trusted_and_far_centres_are_not():
    """Expanding the decoder around h_L itself is exact (distance 0, remainder 0): trusted. Around a
    centre 100× too small the order-2 series is evaluated 100 radii out: flagged divergent, with a warning."""
    model = _model()
    z = _ids(model)
    L = model.n_blocks
    v = jet_expand(model, L, [Stream(L)], 2).evaluate(z)
    assert bool(v.trusted.all()) and float(v.diagnostics.distance.max()) == 0.0 and v.warning() is None

    from jetex.expand import Given

    small = Given(lambda ids, h: 0.01 * h[L], "h_L/100")
    v = jet_expand(model, L, [small], 2).evaluate(z)
    d = v.diagnostics
    assert torch.allclose(d.distance, torch.full_like(d.distance, 99.0), rtol=1e-9)
    assert not bool(v.trusted.any()) and "divergent" in d.reasons(0, 0)
    warn = v.warning()
    assert warn is not None and "untrusted" in warn and "try a lower order" in warn


def test_zero_weight_terms_have_no_series_diagnostics_and_dict_is_json():
    model = _model()
    z = _ids(model, (1, 5))
    L = model.n_blocks
    centres = [Embedding(), Stream(L)]
    W = torch.zeros(2, 1, 5, dtype=torch.float64)
    W[0, 0, :2] = 1.0
    W[1] = 1.0 - W[0]
    v = jet_expand(model, L, centres, 1, weights=W).evaluate(z)
    d = v.diagnostics
    assert torch.isnan(d.distance[0, 2:]).all() and torch.isfinite(d.distance[0, :2]).all()
    assert torch.isnan(d.distance[1, :2]).all() and bool((d.distance[1, 2:] == 0).all())
    out = json.loads(json.dumps(v.to_dict()))
    assert out["type"] == "ExpansionValues" and out["order"] == 1 and out["names"] == v.names
    assert [t["name"] for t in out["term_diagnostics"]] == v.names
    assert out["diagnostics"]["trusted"] == d.trusted.tolist()
    r = repr(v)
    assert r.startswith("ExpansionValues(dec, order 1, 2 terms") and "trusted" in r and len(r) < 300


def test_expansion_diagnostics_equal_the_iterative_lens_row(tiny_llama_dir):
    """jet_expand(q, L, {h_l}, k) is the iterative lens's row l: the same diagnostics."""
    m = load(tiny_llama_dir)
    text = "the cat sat on the mat"
    z = m.tokenize(text)
    lens = iterative_lens(m, text, order=1)
    for r, l in enumerate([0, 2, 4]):  # rows emb, mlp.0, mlp.1
        d = jet_expand(m, m.n_blocks, [Stream(l)], 1).evaluate(z).diagnostics
        ld = lens.diagnostics
        for f in ("decay", "distance", "remainder_share", "cancellation"):
            a, b = getattr(d, f)[0], getattr(ld, f)[r]
            ok = torch.isclose(a, b, rtol=1e-4, atol=1e-6) | (torch.isnan(a) & torch.isnan(b))
            assert bool(ok.all()), (f, r, a, b)
        assert torch.equal(d.trusted[0], ld.trusted[r])
    assert not math.isnan(float(ld.distance[0, 0]))
