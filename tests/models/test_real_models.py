"""The residual view of the two real models (SmolLM2-135M, Gemma 3 270M) against their HF forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from jetex.models.adapters import attention_of, causal_mask, head_attention
from jetex.models.hf import HFResidualModel

from hf_reference import hf_streams

pytestmark = pytest.mark.real

TEXT = "The capital of France is Paris. The capital of Germany is"
# The spec: view logits = HF logits to 1e-5 absolute in float32.
# - sublayer granularity calls HF's own modules and adds each residual exactly as HF does:
#   it meets 1e-5 absolute (measured: max |Δ| = 0, bit for bit, on both models).
# - layer granularity writes a layer as one block γ(h) = a + m(h + a) and the stream as
#   h + γ(h); HF computes (h + a) + m(h + a). The two differ only by float32 rounding of a
#   re-associated sum, and the residual stream carries values up to ~2.5e4 (SmolLM2) /
#   ~1e5 (Gemma 3), whose ulp alone is 2e-3 / 8e-3, so the gap is inherent in any layer-level
#   residual form. It is bounded relative to the logits: max |Δ| ≤ 1e-5 · max |logit|
#   (measured: 4.7e-5 for logits up to 30.9 on SmolLM2, 2.3e-5 for logits up to 24.0 on
#   Gemma 3, i.e. 1.5e-6 and 9.5e-7 of the logit scale).
SUBLAYER_ATOL = 1e-5
LAYER_REL = 1e-5


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


def _view(real, granularity):
    return real if granularity == "sublayer" else HFResidualModel.from_hf(real.hf, real.tokenizer, granularity, real.name)


def _assert_close_to_hf(got, ref, granularity, what=""):
    diff = float((got - ref).abs().max())
    if granularity == "sublayer":
        assert diff <= SUBLAYER_ATOL, f"{what}: max |Δ| = {diff:.3g} > {SUBLAYER_ATOL}"
    else:
        bound = LAYER_REL * float(ref.abs().max())
        assert diff <= bound, f"{what}: max |Δ| = {diff:.3g} > {LAYER_REL} · max|ref| = {bound:.3g}"
    return diff


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_view_reproduces_hf_logits(real, granularity):
    m = _view(real, granularity)
    ids = m.tokenize(TEXT)
    with torch.no_grad():
        ref = m.reference_logits(ids)
        view = m(ids)
    diff = _assert_close_to_hf(view, ref, granularity, f"{m.name} {granularity} logits")
    print(f"{m.name} {granularity}: max |view − HF| = {diff:.3g} (logit scale {ref.abs().max().item():.1f})")
    assert view[0, -1].argmax() == ref[0, -1].argmax()


def test_predicts_sensible_next_token(smollm2):
    ids = smollm2.tokenize("The capital of France is")
    with torch.no_grad():
        top = smollm2(ids)[0, -1].argmax().item()
    assert smollm2.token_strings([top]) == [" Paris"]


def _two_texts(m):
    a = m.tokenize(TEXT)
    b = torch.cat([a[:, :1], a[:, 1:].flip(-1)], dim=-1)  # same length, other order
    return torch.cat([a, b])


@pytest.mark.parametrize("granularity", ["sublayer", "layer"])
def test_residual_identity_on_hf_streams(real, granularity):
    """h_l = h_{l-1} + γ_l(h_{l-1}) for every block, with h from HF's own forward pass:
    hidden_states per layer and the mid-layer stream after attention (forward pre-hooks on
    the MLP input norms); and the view's own stream equals those values."""
    m = _view(real, granularity)
    ids = _two_texts(m)
    ref = hf_streams(m.hf, ids)
    N = m.n_layers
    if granularity == "sublayer":
        hs = [h for i in range(N) for h in (ref.hidden[i], ref.mid[i])] + [ref.final_in]
    else:
        hs = [ref.hidden[i] for i in range(N)] + [ref.final_in]
    assert len(hs) == m.n_blocks + 1
    with torch.no_grad():
        s = m.stream(ids)  # [L+1, 2, t, d]
        worst_block = worst_stream = 0.0
        for l in range(1, m.n_blocks + 1):
            got = hs[l - 1] + m.block(l)(hs[l - 1])
            worst_block = max(worst_block, _assert_close_to_hf(got, hs[l], granularity, f"{m.block(l).name} on HF's h"))
            worst_stream = max(worst_stream, _assert_close_to_hf(s[l], hs[l], granularity, f"view stream h_{l}"))
        _assert_close_to_hf(m.final_norm(hs[-1]), ref.hidden[-1], granularity, "final norm")
        _assert_close_to_hf(m.decode(s[-1]), ref.logits, granularity, "logits")
    print(f"{m.name} {granularity}: max |h_(l-1) + γ_l(h_(l-1)) − h_l| = {worst_block:.3g}, max |view h_l − HF h_l| = {worst_stream:.3g}")


def _longest_reduction(module: torch.nn.Module) -> int:
    """The longest dot product a block computes: the largest in_features of its linear maps."""
    return max(mm.in_features for mm in module.modules() if isinstance(mm, torch.nn.Linear))


def assert_reassociation_close(actual: torch.Tensor, expected: torch.Tensor, n: int) -> None:
    """|actual − expected| ≤ 2·n·u·max_j |expected[..., j]|, elementwise, u = 2^-24 (float32).

    The two sides compute the same float32 function with the same operations but sum in
    different orders (a batched GEMM blocks its reductions differently from an unbatched
    one, and per-head einsums differently from one fused projection; by how much depends
    on the CPU's kernels). A length-n dot product summed in any order is within
    γ_n·Σ|a_i b_i| of the exact value, γ_n = n·u/(1 − n·u) (Higham, Accuracy and Stability
    of Numerical Algorithms, §3.1), so two orders differ by at most 2γ_n·Σ|a_i b_i|. We take
    n as the block's longest reduction and scale the bound by the magnitude of the position's
    output vector (Σ|a_i b_i| of the last projection is of that size; a post-norm rescales
    both together). That is a relative tolerance of 2nu ≈ 1e-4 of each row's magnitude:
    an error that mixes sequences or positions is of the row's own size and still fails.
    """
    u = torch.finfo(torch.float32).eps / 2
    bound = 2 * n * u / (1 - n * u) * expected.abs().amax(-1, keepdim=True)
    excess = (actual - expected).abs() - bound
    assert bool((excess <= 0).all()), f"max |Δ| exceeds the reassociation bound by {excess.max().item():.3g}"


def test_blocks_accept_batches(real):
    m = real
    ids = _two_texts(m)
    with torch.no_grad():
        s = m.stream(ids)
        for l in (1, 2, m.n_blocks // 2, m.n_blocks):
            blk = m.block(l)
            # float32 reassociation only (see assert_reassociation_close); not bitwise: the batched
            # GEMM may sum in another order than the single-sequence one
            assert_reassociation_close(blk(s[l - 1][1]), blk(s[l - 1])[1], _longest_reduction(blk))


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
            # the per-head recomputation sums in another order than the fused projections:
            # float32 reassociation only, bounded by the longest reduction (d or H·dh)
            assert_reassociation_close(out, att(s[l - 1]), _longest_reduction(att))


def test_reassociation_bound_fails_on_real_errors():
    """The helper refuses an error of 1e-3 of a row's size (what a batching bug gives is far larger)."""
    x = torch.randn(2, 5, 64) * torch.tensor([1.0, 1e3]).view(2, 1, 1)
    assert_reassociation_close(x, x, 576)
    with pytest.raises(AssertionError):
        assert_reassociation_close(x + 1e-3 * x.abs().amax(-1, keepdim=True), x, 576)
    with pytest.raises(AssertionError):  # one sequence's rows leaking into the other
        assert_reassociation_close(x.flip(0), x, 576)
