"""The residual-block view of every supported architecture, on tiny random HF models.

Properties: η → blocks → υ reproduces the HF logits (both granularities); the view's
stream matches HF's own intermediate values (hidden states at layer boundaries and the
mid-layer stream after attention, hooked on the HF modules); h_l = h_{l-1} + γ_l(h_{l-1})
holds with h taken from HF's forward pass, for every block; blocks
accept any batch shape; sliding windows are active; make_fx traces every block; per-head
weights recompute the attention block's output.
"""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from jetex.errors import InputError, UnsupportedArchitectureError
from jetex.models.adapters import (
    AttentionBlock,
    ParallelBlock,
    adapter_for,
    attention_of,
    causal_mask,
    head_attention,
    supported_architectures,
)
from jetex.models.hf import HFResidualModel

from hf_reference import hf_streams
from models_tiny_hf import ARCHS, T, V, WINDOWED, WINDOW, make

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return request.param, make(request.param)


def _ids(b: int = 2, t: int = T) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, V, (b, t), generator=g)


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_view_reproduces_hf_logits(tiny, granularity):
    arch, hf = tiny
    m = HFResidualModel.from_hf(hf, granularity=granularity)
    ids = _ids()
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        view = m.decode(_run_blocks(m, m.embed(ids)))
        torch.testing.assert_close(view, ref, **TOL)
        torch.testing.assert_close(m(ids), ref, **TOL)
        torch.testing.assert_close(m.reference_logits(ids), ref, **TOL)


def _run_blocks(m, h):
    for l in range(1, m.n_blocks + 1):
        h = h + m.block(l)(h)
    return h


def test_block_structure(tiny):
    arch, hf = tiny
    N = hf.config.num_hidden_layers
    sub = HFResidualModel.from_hf(hf, granularity="sublayer")
    lay = HFResidualModel.from_hf(hf, granularity="layer")
    assert sub.n_layers == lay.n_layers == N
    assert lay.block_names == [f"layer.{i}" for i in range(N)]
    assert all(b.kind == "layer" for b in lay.blocks)
    if arch == "gpt_neox":  # parallel residual: one block per layer even in sublayer granularity
        assert sub.block_names == [f"attn+mlp.{i}" for i in range(N)]
        assert all(isinstance(b, ParallelBlock) and b.kind == "layer" for b in sub.blocks)
        assert sub.attn_blocks() == [] and sub.mlp_blocks() == []
    else:
        assert sub.block_names == [n for i in range(N) for n in (f"attn.{i}", f"mlp.{i}")]
        assert [b.kind for b in sub.blocks] == ["attn", "mlp"] * N
        assert sub.attn_blocks() == list(range(1, 2 * N, 2))
        assert sub.mlp_blocks() == list(range(2, 2 * N + 1, 2))
    assert [sub.layer_of_block(l) for l in range(1, sub.n_blocks + 1)] == [b.layer for b in sub.blocks]
    assert sub.max_length == 64
    assert sub.d_model == hf.config.hidden_size and sub.vocab_size == V


def _hf_stream_per_block(m, ref):
    """HF's own residual stream at the view's block boundaries: h_0..h_L from hidden
    states, mid-layer streams (after attention) and the final norm's input."""
    N = m.n_layers
    if m.granularity == "layer" or ref.mid is None:  # one block per layer
        return [ref.hidden[i] for i in range(N)] + [ref.final_in]
    out = []
    for i in range(N):
        out += [ref.hidden[i], ref.mid[i]]
    return out + [ref.final_in]


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_residual_identity_on_hf_streams(tiny, granularity):
    """h_l = h_{l-1} + γ_l(h_{l-1}) for every block l, with h taken from HF's own forward
    pass (hidden_states and the mid-layer stream hooked on the HF modules), not from the view."""
    arch, hf = tiny
    m = HFResidualModel.from_hf(hf, granularity=granularity)
    ids = _ids()
    ref = hf_streams(hf, ids)
    hs = _hf_stream_per_block(m, ref)
    assert len(hs) == m.n_blocks + 1
    with torch.no_grad():
        torch.testing.assert_close(m.embed(ids), hs[0], rtol=0, atol=1e-6)
        for l in range(1, m.n_blocks + 1):
            got = hs[l - 1] + m.block(l)(hs[l - 1])
            torch.testing.assert_close(got, hs[l], rtol=0, atol=1e-5, msg=lambda e: f"{arch} {m.block(l).name}: {e}")
        torch.testing.assert_close(m.final_norm(hs[-1]), ref.hidden[-1], rtol=0, atol=1e-5)
        torch.testing.assert_close(m.decode(hs[-1]), ref.logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_stream_matches_hf_intermediates(tiny, granularity):
    """The view's stream h_0..h_L (run through the view alone) equals HF's own values."""
    arch, hf = tiny
    m = HFResidualModel.from_hf(hf, granularity=granularity)
    ids = _ids()
    hs = torch.stack(_hf_stream_per_block(m, hf_streams(hf, ids)))
    with torch.no_grad():
        s = m.stream(ids)
    assert s.shape == hs.shape
    torch.testing.assert_close(s, hs, rtol=0, atol=1e-5)
    if granularity == "sublayer":  # each block is HF's own modules on HF's own values
        torch.testing.assert_close(s, hs, rtol=0, atol=0)


def test_hf_stream_hooks_see_the_mid_layer_stream():
    """The hooked mid-layer stream is h + attention output (so the hook is not some other tensor)."""
    hf = make("llama")
    ids = _ids()
    ref = hf_streams(hf, ids)
    layer = hf.model.layers[0]
    with torch.no_grad():
        pe = hf.model.rotary_emb(ref.hidden[0], torch.arange(T)[None])
        a = layer.self_attn(layer.input_layernorm(ref.hidden[0]), position_embeddings=pe, attention_mask=causal_mask(T, None, torch.float32))[0]
    torch.testing.assert_close(ref.mid[0], ref.hidden[0] + a, **TOL)
    assert not torch.allclose(ref.mid[0], ref.hidden[0], atol=1e-3) and not torch.allclose(ref.mid[0], ref.hidden[1], atol=1e-3)


def test_layer_block_is_two_sublayers(tiny):
    """γ_layer(x) = layer(x) − x = a + m(x + a)."""
    arch, hf = tiny
    sub = HFResidualModel.from_hf(hf, granularity="sublayer")
    lay = HFResidualModel.from_hf(hf, granularity="layer")
    x = torch.randn(2, T, hf.config.hidden_size)
    with torch.no_grad():
        for i, blk in enumerate(lay.blocks):
            if arch == "gpt_neox":
                expected = sub.blocks[i](x)
                a, mm = blk.branches
                torch.testing.assert_close(a(x) + mm(x), blk(x), rtol=0, atol=0)
            else:
                a = sub.blocks[2 * i](x)
                expected = a + sub.blocks[2 * i + 1](x + a)
            torch.testing.assert_close(blk(x), expected, **TOL)


def test_parallel_block_branches():
    hf = make("gpt_neox")
    m = HFResidualModel.from_hf(hf)
    blk = m.block(1)
    assert isinstance(blk, ParallelBlock)
    attn, mlp = blk.branches
    assert (attn.kind, mlp.kind) == ("attn", "mlp")
    x = torch.randn(2, T, 32)
    with torch.no_grad():
        layer = hf.gpt_neox.layers[0]
        emb = hf.gpt_neox.rotary_emb(x, torch.arange(T)[None])
        mask = causal_mask(T, None, x.dtype)
        ref = layer(x, attention_mask=mask, position_embeddings=emb) - x  # HF's own parallel layer
        torch.testing.assert_close(blk(x), ref, **TOL)
        torch.testing.assert_close(attn(x) + mlp(x), blk(x), rtol=0, atol=0)


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_blocks_accept_batches(tiny, granularity):
    arch, hf = tiny
    m = HFResidualModel.from_hf(hf, granularity=granularity)
    d = hf.config.hidden_size
    x = torch.randn(2, 3, T, d)
    with torch.no_grad():
        for blk in m.blocks:
            y = blk(x)
            assert y.shape == x.shape
            torch.testing.assert_close(y[1, 2], blk(x[1, 2]), **TOL)  # [t, d] without batch
            torch.testing.assert_close(y[0], blk(x[0]), **TOL)  # [b, t, d]


def test_sliding_window_is_active(tiny):
    """In a windowed layer, the output at the last position ignores keys ≥ window back;
    in a full-attention layer it does not."""
    arch, hf = tiny
    m = HFResidualModel.from_hf(hf)
    d = hf.config.hidden_size
    x = torch.randn(1, T, d)
    x2 = x.clone()
    x2[:, 0] += 3.0 * torch.randn(d)  # position 0 is outside the window of position T-1 (T - 1 ≥ WINDOW)
    windows = []
    with torch.no_grad():
        for blk in m.blocks:
            att = attention_of(blk)
            if att is None or blk.kind == "mlp":
                continue
            changed = not torch.allclose(att(x)[:, -1], att(x2)[:, -1], atol=1e-6)
            windows.append(att.window)
            assert changed == (att.window is None), (blk.name, att.window)
    if arch in WINDOWED:
        assert WINDOW in windows
    else:
        assert set(windows) == {None}


def test_every_block_traces_with_make_fx(tiny):
    arch, hf = tiny
    for granularity in ("sublayer", "layer"):
        m = HFResidualModel.from_hf(hf, granularity=granularity)
        x = torch.randn(2, T, hf.config.hidden_size)
        # layer blocks reuse the sub-layer modules traced above: one of them is enough
        for blk in m.blocks if granularity == "sublayer" else m.blocks[-1:]:
            gm = make_fx(blk)(x)
            with torch.no_grad():
                torch.testing.assert_close(gm(x), blk(x), rtol=0, atol=0)
    x3 = torch.randn(5, hf.config.hidden_size)  # [t, d] with another t: a fresh trace works too
    blk = m.blocks[0]
    torch.testing.assert_close(make_fx(blk)(x3)(x3), blk(x3), rtol=0, atol=0)


def _attn_input(att: AttentionBlock, x):
    return att.in_norm(x) if att.in_norm is not None else x


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "mistral", "gpt_neo", "gpt_neox", "gpt_neox_seq", "gemma3", "olmo"])
def test_head_weights_recompute_attention(arch):
    hf = make(arch)
    m = HFResidualModel.from_hf(hf)
    x = torch.randn(2, T, hf.config.hidden_size)
    for l in range(1, m.n_blocks + 1):
        att = attention_of(m.block(l))
        if att is None or m.block(l).kind == "mlp":
            continue
        hw = m.head_weights(l)
        assert hw.n_heads == hf.config.num_attention_heads
        assert hw.rotary == (arch not in ("gpt2", "gpt_neo"))
        if arch.startswith("gpt_neox"):
            assert hw.rotary_dims == hw.W_Q.shape[-1] // 2
        h = _attn_input(att, x)
        with torch.no_grad():
            emb = att.position_embeddings(T, h)
            mask = causal_mask(T, att.window, h.dtype)
            per_head = head_attention(hw, h, mask=mask, position_embeddings=emb)
            assert per_head.shape == (2, hw.n_heads, T, hf.config.hidden_size)
            out = per_head.sum(-3) + (hw.b_O if hw.b_O is not None else 0)
            if att.out_norm is not None:
                out = att.out_norm(out)
            torch.testing.assert_close(out, att(x), **TOL)


def test_head_weights_gqa_repeats_kv_heads():
    hf = make("llama")  # 4 query heads, 2 key/value heads
    hw = HFResidualModel.from_hf(hf).head_weights(1)
    torch.testing.assert_close(hw.W_K[0], hw.W_K[1])
    torch.testing.assert_close(hw.W_V[2], hw.W_V[3])
    assert not torch.equal(hw.W_K[1], hw.W_K[2])
    assert hw.scale == pytest.approx(8**-0.5)


def test_head_weights_of_mlp_block_is_an_error():
    m = HFResidualModel.from_hf(make("llama"))
    with pytest.raises(InputError, match="no attention heads"):
        m.head_weights(2)


def test_causal_mask_matches_transformers():
    from transformers.masking_utils import causal_mask_function, eager_mask, sliding_window_causal_mask_function

    for window, fn in [(None, causal_mask_function), (3, sliding_window_causal_mask_function(3))]:
        ref = eager_mask(batch_size=1, q_length=7, kv_length=7, mask_function=fn, dtype=torch.float32)
        torch.testing.assert_close(causal_mask(7, window, torch.float32), ref, rtol=0, atol=0)


# ---- refusals -------------------------------------------------------------------------
def test_unsupported_architecture_names_supported_ones():
    from transformers import OPTConfig, OPTForCausalLM

    hf = OPTForCausalLM(OPTConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16))
    with pytest.raises(UnsupportedArchitectureError) as e:
        HFResidualModel.from_hf(hf)
    msg = str(e.value)
    assert "OPTForCausalLM" in msg and "LlamaForCausalLM" in msg and "Gemma3ForCausalLM" in msg and "\n" not in msg


def test_final_logit_softcapping_is_refused():
    hf = make("gemma3")
    hf.config.final_logit_softcapping = 30.0
    with pytest.raises(UnsupportedArchitectureError, match="final_logit_softcapping"):
        HFResidualModel.from_hf(hf)
    hf.config.final_logit_softcapping = None


def test_attention_softcapping_is_inside_gamma():
    """attn_logit_softcapping lives inside the attention block: the view still reproduces HF."""
    hf = make("gemma3")
    hf.config.attn_logit_softcapping = 5.0
    try:
        m = HFResidualModel.from_hf(hf)
        ids = _ids()
        with torch.no_grad():
            torch.testing.assert_close(m(ids), hf(input_ids=ids).logits, **TOL)
    finally:
        hf.config.attn_logit_softcapping = None


def test_cross_attention_and_dynamic_rope_are_refused():
    from transformers import GPT2Config

    cfg = GPT2Config(add_cross_attention=True)
    with pytest.raises(UnsupportedArchitectureError, match="cross attention"):
        adapter_for("GPT2LMHeadModel", cfg)
    hf = make("llama")
    cfg = hf.config
    old = cfg.rope_parameters
    cfg.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    try:
        with pytest.raises(UnsupportedArchitectureError, match="dynamic"):
            adapter_for("LlamaForCausalLM", cfg)
    finally:
        cfg.rope_parameters = old


def test_bad_granularity():
    with pytest.raises(InputError, match="granularity"):
        HFResidualModel.from_hf(make("llama"), granularity="head")


def test_supported_architectures_listed():
    assert set(supported_architectures()) == {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Gemma3ForCausalLM",
        "GPT2LMHeadModel",
        "GPTNeoForCausalLM",
        "GPTNeoXForCausalLM",
        "OlmoForCausalLM",
    }


def test_from_hf_switches_to_eager_and_eval():
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    hf.train()
    m = HFResidualModel.from_hf(hf)
    assert hf.config._attn_implementation == "eager" and not hf.training
    assert not any(p.requires_grad for p in m.parameters())
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(m(ids), hf(input_ids=ids).logits, **TOL)


def test_olmo_clip_qkv_is_reproduced_but_has_no_head_weights():
    hf = make("olmo")
    hf.config.clip_qkv = 0.05  # small enough to clamp many q/k/v entries
    try:
        m = HFResidualModel.from_hf(hf)
        ids = _ids()
        x = torch.randn(2, T, hf.config.hidden_size)
        with torch.no_grad():
            torch.testing.assert_close(m(ids), hf(input_ids=ids).logits, **TOL)
            torch.testing.assert_close(make_fx(m.block(1))(x)(x), m.block(1)(x), rtol=0, atol=0)
        with pytest.raises(InputError, match="clip_qkv"):
            m.head_weights(1)
    finally:
        hf.config.clip_qkv = None
