"""Jets through fused torch functions: F.rms_norm / nn.RMSNorm and F.scaled_dot_product_attention.

The engine traces them as elementary ops (jetex.jets.decompose). The references are
independent of that decomposition: torch's own rms_norm kernel under nested JVPs, and a
hand-written softmax attention (or the same HF model with eager attention) under nested JVPs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jet_helpers import assert_coefficients_close, inputs
from jetex.errors import UnsupportedOpError
from jetex.jets import jet_coefficients, jet_coefficients_nested_jvp
from jetex.jets.decompose import rms_norm_composite, sdpa_composite

RTOL = 1e-7


# ---- rms_norm ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    ["weight", "no_weight", "eps_default", "two_dims", "module"],
)
def test_rms_norm_jet_matches_oracle(case):
    x, y = inputs((2, 3, 8), seed=1)
    w = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if case == "weight":
        f = lambda h: F.rms_norm(h, (8,), w, 1e-6)
    elif case == "no_weight":
        f = lambda h: F.rms_norm(h, [8], eps=1e-5)
    elif case == "eps_default":
        f = lambda h: torch.rms_norm(h * h + 0.1, (8,), w)
    elif case == "two_dims":
        w2 = torch.randn(3, 8, dtype=torch.float64)
        f = lambda h: F.rms_norm(h, (3, 8), w2, 1e-6)
    else:
        mod = torch.nn.RMSNorm(8, eps=1e-6, dtype=torch.float64)
        with torch.no_grad():
            mod.weight.copy_(w)
        f = mod
    # the oracle nests JVPs through torch's own rms_norm kernel (no decomposition)
    ref = jet_coefficients_nested_jvp(f, x, y, 4)
    got = jet_coefficients(f, x, y, 4)
    assert_coefficients_close(got, ref, RTOL, what=f"rms_norm {case}")
    assert float(ref[3].detach().abs().max()) > 1e-6  # the high coefficients are not trivially zero


def test_rms_norm_float32_module():
    mod = torch.nn.RMSNorm(16, eps=1e-6)
    x, y = inputs((4, 16), dtype=torch.float32, seed=3)
    got = jet_coefficients(mod, x, y, 3)
    ref = jet_coefficients_nested_jvp(mod.double(), x.double(), y.double(), 3)
    assert float((got.double() - ref).detach().abs().max()) <= 1e-5 * float(ref.detach().abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rms_norm_composite_is_torchs_rms_norm(dtype):
    x = torch.randn(3, 5, 8).to(dtype)
    w = torch.randn(8).to(dtype)
    exact = dict(rtol=0, atol=0)
    for eps in (None, 1e-6, 0.5):
        torch.testing.assert_close(rms_norm_composite(x, (8,), w, eps), F.rms_norm(x, (8,), w, eps), **exact)
    torch.testing.assert_close(rms_norm_composite(x * 1e-4, (5, 8), None), F.rms_norm(x * 1e-4, (5, 8)), **exact)


# ---- scaled_dot_product_attention ------------------------------------------------------------
def _manual_attention(q, k, v, mask_add=None, scale=None):
    """softmax(q kᵀ · scale + mask) v, written out (the independent reference)."""
    s = q @ k.transpose(-1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask_add is not None:
        s = s + mask_add
    return torch.softmax(s, -1) @ v


T, E = 5, 4
CAUSAL_BOOL = torch.ones(T, T, dtype=torch.bool).tril()
CAUSAL_ADD = torch.zeros(T, T, dtype=torch.float64).masked_fill(~CAUSAL_BOOL, float("-inf"))
WINDOW_BOOL = CAUSAL_BOOL & ~torch.ones(T, T, dtype=torch.bool).tril(-3)


@pytest.mark.parametrize("case", ["plain", "causal", "bool_mask", "additive_mask", "scale", "gqa"])
def test_sdpa_matches_composite_forward_and_jet_matches_manual_attention(case):
    g = torch.Generator().manual_seed(4)
    Wq, Wk, Wv = (torch.randn(E * 4, E * 4, dtype=torch.float64, generator=g) / 4 for _ in range(3))

    def heads(z, n):  # [b, t, n·E] → [b, n, t, E]
        return z.reshape(*z.shape[:-1], n, E).transpose(-2, -3)

    kv_heads = 2 if case == "gqa" else 4
    kw, mask_add = {}, None
    if case == "causal":
        kw, mask_add = {"is_causal": True}, CAUSAL_ADD
    elif case == "bool_mask":
        kw, mask_add = {"attn_mask": WINDOW_BOOL}, torch.zeros(T, T, dtype=torch.float64).masked_fill(~WINDOW_BOOL, float("-inf"))
    elif case == "additive_mask":
        mask_add = 0.3 * torch.randn(T, T, dtype=torch.float64, generator=g) + CAUSAL_ADD
        kw = {"attn_mask": mask_add}
    elif case == "scale":
        kw, mask_add = {"scale": 0.7, "is_causal": True}, CAUSAL_ADD
    elif case == "gqa":
        kw, mask_add = {"enable_gqa": True, "is_causal": True}, CAUSAL_ADD

    def qkv(h):
        q = heads(h @ Wq, 4)
        k = heads((h @ Wk)[..., : kv_heads * E], kv_heads)
        v = heads((h @ Wv)[..., : kv_heads * E], kv_heads)
        return q, k, v

    def fused(h):
        return F.scaled_dot_product_attention(*qkv(h), **kw)

    def manual(h):
        q, k, v = qkv(h)
        if kv_heads != 4:
            k, v = k.repeat_interleave(4 // kv_heads, -3), v.repeat_interleave(4 // kv_heads, -3)
        return _manual_attention(q, k, v, mask_add, kw.get("scale"))

    x, y = inputs((2, T, 4 * E), seed=5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), manual(x), rtol=1e-12, atol=1e-12)  # torch's own kernel
        torch.testing.assert_close(sdpa_composite(*qkv(x), **kw), fused(x), rtol=1e-12, atol=1e-12)
    ref = jet_coefficients_nested_jvp(manual, x, y, 3)
    assert_coefficients_close(jet_coefficients(fused, x, y, 3), ref, RTOL, what=f"sdpa {case}")
    assert_coefficients_close(jet_coefficients_nested_jvp(fused, x, y, 3), ref, RTOL, what=f"oracle sdpa {case}")


def test_sdpa_with_dropout_is_refused():
    q = torch.randn(1, 2, T, E, dtype=torch.float64)
    with pytest.raises(UnsupportedOpError, match="dropout.*eval mode"):
        jet_coefficients(lambda h: F.scaled_dot_product_attention(h, h, h, dropout_p=0.1), q, q + 0.1, 2)


def test_fused_attention_kernel_error_says_use_eager():
    q = torch.randn(1, 2, T, E, dtype=torch.float64)
    fused = lambda h: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(h, h, h)[0]
    with pytest.raises(UnsupportedOpError, match="no Taylor rule.*attn_implementation='eager'"):
        jet_coefficients(fused, q, q + 0.1, 2)


def test_rms_norm_error_before_decomposition_is_gone():
    """The reported failure: nn.RMSNorm inside a function (torch's kernel adds eps in place)."""
    mod = torch.nn.Sequential(torch.nn.Linear(8, 8, dtype=torch.float64), torch.nn.RMSNorm(8, dtype=torch.float64))
    x, y = inputs((3, 8), seed=7)
    assert_coefficients_close(jet_coefficients(mod, x, y, 3), jet_coefficients_nested_jvp(mod, x, y, 3), RTOL)


def test_hf_sdpa_attention_block_matches_eager_oracle():
    """A tiny Llama with attn_implementation="sdpa": the jet of its attention sub-layer
    equals the nested-JVP jet of the same weights run with eager attention."""
    import transformers as tf

    from jet_helpers import KeepFloat64

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="sdpa",
    )
    model = tf.LlamaForCausalLM(cfg).double().eval()
    layer = model.model.layers[0]

    def attn(h):
        pos = torch.arange(h.shape[-2])[None]
        cs = model.model.rotary_emb(h, pos)
        mask = torch.zeros(h.shape[-2], h.shape[-2], dtype=h.dtype).masked_fill(
            ~torch.ones(h.shape[-2], h.shape[-2], dtype=torch.bool).tril(), torch.finfo(h.dtype).min
        )[None, None]
        return layer.self_attn(layer.input_layernorm(h), position_embeddings=cs, attention_mask=mask)[0]

    x, y = inputs((2, T, 32), seed=6)
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                seen.append(func)
            return func(*args, **(kwargs or {}))

    with Spy(), torch.no_grad():
        attn(x)
    assert seen, "the sdpa model did not call F.scaled_dot_product_attention"
    with KeepFloat64():
        got = jet_coefficients(attn, x, y, 3)
        model.set_attn_implementation("eager")
        try:
            ref = jet_coefficients_nested_jvp(attn, x, y, 3)
        finally:
            model.set_attn_implementation("sdpa")
    assert_coefficients_close(got, ref, 1e-7, what="llama sdpa attention")
