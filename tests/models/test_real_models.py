"""The residual view of the two real models (SmolLM2-135M, Gemma 3 270M) against their HF forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from jetex.models.adapters import attention_of, causal_mask, head_attention
from jetex.models.hf import HFResidualModel

pytestmark = pytest.mark.real

TEXT = "The capital of France is Paris. The capital of Germany is"
# float32 through 30 (18) layers: the view sums the same terms in a different order than HF
# only in ``layer`` granularity; sublayer granularity matches HF bit for bit on these models.
TOL = dict(rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real(request):
    return request.getfixturevalue(request.param)


def test_structure_smollm2(smollm2):
    m = smollm2
    assert m.name == "smollm2-135m" and m.granularity == "sublayer"
    assert m.n_layers == 30 and m.n_blocks == 60
    assert m.block_names[:3] == ["attn.0", "mlp.0", "attn.1"] and m.block_names[-1] == "mlp.29"
    assert (m.d_model, m.vocab_size, m.max_length) == (576, 49152, 8192)
    assert type(m.hf).__name__ == "LlamaForCausalLM" and m.hf.config._attn_implementation == "eager"
    assert m.dtype == torch.float32
    assert m.tokenize("Hello")[0, 0].item() == m.tokenizer.bos_token_id


def test_structure_gemma3(gemma3):
    m = gemma3
    assert m.name == "gemma3-270m"
    assert m.n_layers == 18 and m.n_blocks == 36
    assert (m.d_model, m.vocab_size) == (640, 262144)
    windows = [attention_of(m.block(l)).window for l in m.attn_blocks()]
    assert windows == [None if (i + 1) % 6 == 0 else 512 for i in range(18)]  # 5 local : 1 global
    assert m.config.final_logit_softcapping is None
    ids = m.tokenize("Hello world")
    with torch.no_grad():  # √d embedding scale is part of η
        torch.testing.assert_close(m.embed(ids), m.hf.model.embed_tokens.weight[ids] * torch.tensor(math.sqrt(640.0)))


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_view_reproduces_hf_logits(real, granularity):
    m = real if granularity == "sublayer" else HFResidualModel.from_hf(real.hf, real.tokenizer, granularity, real.name)
    ids = m.tokenize(TEXT)
    with torch.no_grad():
        ref = m.reference_logits(ids)
        view = m(ids)
    diff = (view - ref).abs().max().item()
    print(f"{m.name} {granularity}: max |view − HF| = {diff:.3g} (logit scale {ref.abs().max().item():.1f})")
    torch.testing.assert_close(view, ref, **TOL)
    assert view[0, -1].argmax() == ref[0, -1].argmax()


def test_predicts_sensible_next_token(smollm2):
    ids = smollm2.tokenize("The capital of France is")
    with torch.no_grad():
        top = smollm2(ids)[0, -1].argmax().item()
    assert smollm2.token_strings([top]) == [" Paris"]


def test_residual_identity_and_batches(real):
    m = real
    a = m.tokenize(TEXT)
    b = torch.cat([a[:, :1], a[:, 1:].flip(-1)], dim=-1)  # same length, other order
    ids = torch.cat([a, b])
    with torch.no_grad():
        s = m.stream(ids)  # [L+1, 2, t, d]
        for l in (1, 2, m.n_blocks // 2, m.n_blocks):
            torch.testing.assert_close(s[l], s[l - 1] + m.block(l)(s[l - 1]), rtol=0, atol=0)
            torch.testing.assert_close(m.block(l)(s[l - 1][1]), m.block(l)(s[l - 1])[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.decode(s[-1]), m.reference_logits(ids), **TOL)


def test_every_block_traces_with_make_fx(real):
    m = real
    x = torch.randn(1, 5, m.d_model)
    for blk in m.blocks:
        gm = make_fx(blk)(x)
        with torch.no_grad():
            torch.testing.assert_close(gm(x), blk(x), rtol=0, atol=0)


def test_head_weights_recompute_attention(real):
    m = real
    ids = m.tokenize(TEXT)
    with torch.no_grad():
        s = m.stream(ids)
        for l in m.attn_blocks()[:2] + m.attn_blocks()[-1:]:
            att = attention_of(m.block(l))
            hw = m.head_weights(l)
            assert hw.n_heads == m.config.num_attention_heads and hw.rotary
            x = att.in_norm(s[l - 1])
            t = x.shape[-2]
            per_head = head_attention(hw, x, causal_mask(t, att.window, x.dtype), att.position_embeddings(t, x))
            out = per_head.sum(-3)
            if att.out_norm is not None:
                out = att.out_norm(out)
            torch.testing.assert_close(out, att(s[l - 1]), rtol=1e-4, atol=1e-4)
