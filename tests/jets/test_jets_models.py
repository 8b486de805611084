"""Jets of whole transformer blocks of tiny Hugging Face models against nested float64 JVPs."""

from __future__ import annotations

import pytest
import torch

from jet_helpers import assert_coefficients_close
from jetex.jets import jet_coefficients, jet_coefficients_nested_jvp
from jets_tiny_hf import ARCHS, build


RTOL = 1e-6


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return build(request.param, torch.float64)


def _xy(d: int, b: int = 2, t: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    y = x + 0.5 * torch.randn(b, t, d, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("block", ["attn", "mlp", "layer"])
def test_hf_block_matches_oracle(tiny, block):
    """The HF sub-layers called directly (own norms, rotary, causal mask), k = 1..4."""
    f = getattr(tiny, block)
    x, y = _xy(tiny.d)
    ref = jet_coefficients_nested_jvp(f, x, y, 4)
    got = jet_coefficients(f, x, y, 4)
    assert_coefficients_close(got, ref, RTOL, what=f"{tiny.arch}.{block}")
    # lower orders are the truncation of the same series
    assert_coefficients_close(jet_coefficients(f, x, y, 2), ref[:3], RTOL, what=f"{tiny.arch}.{block} k=2")


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_jetex_view_blocks_match_oracle(tiny, granularity):
    """The residual-block view's blocks γ_l (both granularities), k = 3."""
    hf_mod = pytest.importorskip("jetex.models.hf")
    view = hf_mod.HFResidualModel.from_hf(tiny.model, granularity=granularity)
    x, y = _xy(tiny.d, seed=1)
    for blk in view.blocks:
        ref = jet_coefficients_nested_jvp(blk, x, y, 3)
        got = jet_coefficients(blk, x, y, 3)
        assert_coefficients_close(got, ref, RTOL, what=f"{tiny.arch}.{blk.name}")


def test_block_jet_is_batched(tiny):
    """Each batch row's jet equals the jet of that row alone."""
    x, y = _xy(tiny.d, b=3)
    whole = jet_coefficients(tiny.mlp, x, y, 2)
    for i in range(3):
        one = jet_coefficients(tiny.mlp, x[i : i + 1], y[i : i + 1], 2)
        assert torch.allclose(whole[:, i : i + 1], one, rtol=1e-10, atol=1e-12)


def test_gradients_through_a_block_match_the_oracle(tiny):
    """Backward through J^2 of the attention block reaches every parameter, as the oracle's does."""
    params = [p for p in tiny.model.parameters() if p.requires_grad]
    x0, y0 = _xy(tiny.d, b=1, t=4, seed=2)
    grads = []
    for fn in (jet_coefficients, jet_coefficients_nested_jvp):
        for p in params:
            p.grad = None
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        (fn(tiny.attn, x, y, 2) ** 2).sum().backward()
        grads.append([x.grad, y.grad] + [p.grad for p in params])
    for g_engine, g_oracle in zip(*grads):
        if g_oracle is None:
            assert g_engine is None
        else:  # relative to the largest entry (RMSNorms compute in float32 inside)
            assert float((g_engine - g_oracle).abs().max()) <= 1e-6 * float(g_oracle.abs().max())


def test_softcapped_causal_attention_with_rotary():
    """A hand-written attention with rotary embedding, logit soft-capping (tanh) and a causal mask."""
    torch.manual_seed(0)
    t, d = 5, 8
    Wq, Wk, Wv = (torch.randn(d, d, dtype=torch.float64) / d**0.5 for _ in range(3))
    pos = torch.arange(t, dtype=torch.float64)[:, None] * torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64)
    cos, sin = torch.cat([pos.cos()] * 2, -1), torch.cat([pos.sin()] * 2, -1)

    def rot(q):
        q1, q2 = q[..., : d // 2], q[..., d // 2 :]
        return q * cos + torch.cat([-q2, q1], -1) * sin

    def attn(h):
        q, k, v = rot(h @ Wq), rot(h @ Wk), h @ Wv
        s = q @ k.transpose(-1, -2) / d**0.5
        s = 5.0 * torch.tanh(s / 5.0)
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        return torch.softmax(s, -1) @ v

    x, y = _xy(d, b=2, t=t, seed=3)
    assert_coefficients_close(jet_coefficients(attn, x, y, 4), jet_coefficients_nested_jvp(attn, x, y, 4), RTOL)
