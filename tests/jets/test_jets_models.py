"""Jets of whole transformer blocks of tiny Hugging Face models against nested float64 JVPs.

Every test runs under :class:`jet_helpers.KeepFloat64` (HF RMSNorms, rotary modules and
eager attention otherwise compute in float32 inside a float64 model), with the jet cache
cleared so that no trace recorded outside the mode is reused.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from jet_helpers import KeepFloat64, assert_coefficients_close, float32_ops
from jetex.jets import clear_cache, jet_coefficients, jet_coefficients_nested_jvp
from jets_tiny_hf import ARCHS, WINDOW, build


RTOL = 1e-6


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return build(request.param, torch.float64)


@pytest.fixture(autouse=True)
def _float64_inside(request):
    clear_cache()
    with KeepFloat64() if "without_keep_float64" not in request.node.name else contextlib.nullcontext():
        yield
    clear_cache()


@pytest.mark.parametrize("block", ["attn", "mlp", "layer"])
def test_blocks_compute_in_float64(tiny, block):
    """No float32 value inside the block, nor inside the jet the engine computes of it."""
    f = getattr(tiny, block)
    x, y = _xy(tiny.d)
    assert float32_ops(f, x) == []
    assert float32_ops(lambda x_: jet_coefficients(f, x_, y, 2), x) == []


@pytest.mark.parametrize("block", ["attn", "mlp", "layer"])
def test_blocks_partly_float32_without_keep_float64(tiny, block):
    """Without the mode, blocks with RMSNorms / eager-softmax casts compute partly in
    float32 even in a float64 model (so the mode above matters)."""
    f = getattr(tiny, block)
    x, _ = _xy(tiny.d)
    casts = float32_ops(f, x, keep_float64=False)
    float64_anyway = tiny.arch == "gpt2" or (block == "mlp" and tiny.arch in ("gpt_neo", "gpt_neox", "gpt_neox_seq"))
    assert (casts == []) == float64_anyway, (tiny.arch, block, casts[:3])


def test_tiny_variants_are_what_they_claim(tiny):
    """Sliding windows are active in the tested layer, Qwen2 has q/k/v biases, the
    sequential GPT-NeoX is not the parallel formula."""
    x, y = _xy(tiny.d, b=1, t=WINDOW + 2)
    x2, y2 = x.clone(), y.clone()
    x2[:, 0] += torch.randn(tiny.d, dtype=x.dtype)  # not constant: LayerNorm removes constant shifts
    y2[:, 0] -= torch.randn(tiny.d, dtype=x.dtype)
    c, c2 = jet_coefficients(tiny.layer, x, y, 2), jet_coefficients(tiny.layer, x2, y2, 2)
    same_last = torch.allclose(c[:, :, -1], c2[:, :, -1], rtol=0, atol=1e-12)
    assert same_last == (tiny.arch in ("mistral", "gemma3", "gpt_neo")), tiny.arch
    if tiny.arch == "qwen2":
        attn = tiny.model.model.layers[0].self_attn
        assert all(getattr(attn, p).bias is not None and getattr(attn, p).bias.abs().max() > 0 for p in ("q_proj", "k_proj", "v_proj"))
    if tiny.arch.startswith("gpt_neox"):
        parallel = tiny.attn(x) + tiny.mlp(x)
        assert torch.allclose(tiny.layer(x), parallel, atol=1e-10) == (tiny.arch == "gpt_neox")


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
        else:  # relative to the largest entry
            assert float((g_engine - g_oracle).abs().max()) <= 1e-9 * float(g_oracle.abs().max())


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
