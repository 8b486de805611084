"""Attribution methods against brute-force oracles computed from the HF model itself."""

from __future__ import annotations

import pytest
import torch

import jetex
from jetex.attribution import METHODS, Attribution, GradientUnavailableError, attribute
from jetex.errors import InputError, JetexError

TEXT = "The capital of France is"


def hf_outputs(model, ids):
    """(h_0, final-normed h_L, logits) from the HF model's own forward (output_hidden_states)."""
    with torch.no_grad():
        out = model.hf(input_ids=ids[None], output_hidden_states=True)
    return out.hidden_states[0][0], out.hidden_states[-1][0], out.logits[0]


@pytest.fixture(params=["tiny_llama", "tiny_gpt2", "tiny_gemma3"])
def tiny(request):
    return request.getfixturevalue(request.param)


def test_normxlogit_equals_brute_force_from_hf_hidden_states(tiny):
    ids = tiny.tokenize(TEXT)[0]
    h0, hL_normed, logits = hf_outputs(tiny, ids)
    target = int(logits[-1].argmax())
    # LogAt_i(t): token i's normalised final representation alone through lm_head
    logat = torch.stack([tiny.hf.lm_head(hL_normed[i]) for i in range(len(ids))])[:, target]
    expected = h0.norm(dim=-1) * logat
    a = attribute(tiny, TEXT)
    assert a.method == "normxlogit" and a.target_id == target
    assert a.tokens == tuple(tiny.token_strings(ids)) and a.bos
    torch.testing.assert_close(a.scores, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attribute(tiny, TEXT, method="logat").scores, logat, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attribute(tiny, TEXT, method="norm").scores, h0.norm(dim=-1), rtol=1e-10, atol=1e-10)


def test_layer_wise_variants(tiny_llama):
    m = tiny_llama
    L = m.n_blocks
    ids = m.tokenize(TEXT)[0]
    base = attribute(m, ids)
    for layer in (L, -1):
        torch.testing.assert_close(attribute(m, ids, layer=layer).scores, base.scores, rtol=0, atol=0)
    # layer 2 (after transformer layer 0, sublayer granularity) is HF's hidden_states[1]: the logit lens there
    with torch.no_grad():
        hs = m.hf(input_ids=ids[None], output_hidden_states=True).hidden_states
        lens = m.hf.lm_head(m.hf.model.norm(hs[1][0]))[:, base.target_id]
    a = attribute(m, ids, method="logat", layer=2)
    torch.testing.assert_close(a.scores, lens, rtol=1e-10, atol=1e-10)
    assert a.options == {"layer": 2}
    nx = attribute(m, ids, layer=2)
    torch.testing.assert_close(nx.scores, hs[0][0].norm(dim=-1) * lens, rtol=1e-10, atol=1e-10)
    nl = attribute(m, ids, layer=2, norm_of="layer")
    torch.testing.assert_close(nl.scores, hs[1][0].norm(dim=-1) * lens, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attribute(m, ids, method="norm", layer=2).scores, hs[1][0].norm(dim=-1))
    # the target given explicitly does not change the numbers
    torch.testing.assert_close(attribute(m, ids, target=base.target_id, layer=2).scores, nx.scores, rtol=0, atol=0)


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_jetxlogit_order0_is_layerwise_normxlogit_and_order_k_at_L_is_normxlogit(tiny_gemma3, layer):
    m = tiny_gemma3
    ids = m.tokenize(TEXT)[0]
    a0 = attribute(m, ids, method="jetxlogit", layer=layer, order=0)
    torch.testing.assert_close(a0.scores, attribute(m, ids, method="normxlogit", layer=layer).scores, rtol=1e-12, atol=1e-12)
    for k in (1, 2):
        aL = attribute(m, ids, method="jetxlogit", layer=m.n_blocks, order=k)
        torch.testing.assert_close(aL.scores, attribute(m, ids).scores, rtol=1e-10, atol=1e-10)
    a2 = attribute(m, ids, method="jetxlogit", layer=layer, order=2)
    assert a2.options == {"layer": layer, "order": 2, "norm_of": "input"}
    assert not torch.allclose(a2.scores, a0.scores)  # the jet terms matter


@pytest.mark.parametrize("order", [0, 1, 2])
def test_jetxlogit_equals_iterative_lens_times_input_norms(tiny_llama, order):
    from jetex.lenses import iterative_lens_logits

    m = tiny_llama
    ids = m.tokenize(TEXT)[0]
    target = attribute(m, ids).target_id
    with torch.no_grad():
        h = m.stream(ids[None])
        lens = iterative_lens_logits(m, h, [1], order)[0, 0, :, target]
    a = attribute(m, ids, target=target, method="jetxlogit", layer=1, order=order)
    torch.testing.assert_close(a.scores, h[0, 0].norm(dim=-1) * lens, rtol=1e-10, atol=1e-10)


def _hf_target_logit(model, inputs_embeds, target):
    return model.hf(inputs_embeds=inputs_embeds, use_cache=False).logits[:, -1, target]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "tiny_gemma3"])
def test_saliency_and_input_x_gradient_equal_manual_autograd_through_hf(request, fixture):
    m = request.getfixturevalue(fixture)
    ids = m.tokenize(TEXT)[0]
    target = attribute(m, ids).target_id
    tok = m.hf.get_input_embeddings()(ids[None]).detach().requires_grad_(True)  # HF's inputs_embeds
    (grad,) = torch.autograd.grad(_hf_target_logit(m, tok, target).sum(), tok)
    sal = attribute(m, ids, method="saliency")
    assert sal.target_id == target
    torch.testing.assert_close(sal.scores, grad[0].norm(dim=-1), rtol=1e-8, atol=1e-10)
    # input × gradient on h_0 = η(z): HF's inputs_embeds plus the position embedding (GPT-2)
    h0 = m.embed(ids)
    ixg = attribute(m, ids, method="input_x_gradient")
    torch.testing.assert_close(ixg.scores, (h0 * grad[0]).sum(-1), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_integrated_gradients_completeness(tiny_llama, baseline):
    m = tiny_llama
    ids = m.tokenize(TEXT)[0]
    a = attribute(m, ids, method="integrated_gradients", baseline=baseline, n_steps=64)
    with torch.no_grad():
        f_x = float(m.reference_logits(ids[None])[0, -1, a.target_id])
    assert a.extras["f_input"] == pytest.approx(f_x, abs=1e-9)
    gap = f_x - a.extras["f_baseline"]
    delta = a.extras["convergence_delta"]
    assert float(a.scores.sum()) - gap == pytest.approx(delta, abs=1e-9)  # Captum's delta is exactly that
    if baseline == "pad":
        assert abs(delta) < 0.02 * max(1.0, abs(gap))  # completeness holds approximately
        assert a.scores[0] == 0  # BOS keeps its own embedding in the baseline
    # (the zero baseline sits on the first RMS norm's singular point x = 0, where f jumps:
    # its delta is large, which is why "pad" is the default)
    assert a.options == {"baseline": baseline, "n_steps": 64, "internal_batch_size": 10}


def test_target_resolution(tiny_llama):
    m = tiny_llama
    paris = m.tokenizer.convert_tokens_to_ids("Paris")
    a = attribute(m, TEXT, target="Paris")
    assert a.target_id == paris and a.target == "Paris"
    assert attribute(m, TEXT, target=paris).scores.equal(a.scores)
    with pytest.warns(UserWarning, match="first token 'red'"):
        b = attribute(m, TEXT, target="red door")
    assert b.target_id == m.tokenizer.convert_tokens_to_ids("red")
    with pytest.raises(InputError, match="out of range"):
        attribute(m, TEXT, target=m.vocab_size)
    with pytest.raises(InputError, match="empty target"):
        attribute(m, TEXT, target="")


def test_default_target_is_hf_argmax(tiny_gpt2):
    ids = tiny_gpt2.tokenize(TEXT)[0]
    _, _, logits = hf_outputs(tiny_gpt2, ids)
    for method in METHODS:
        kw = {"layer": 1} if method == "jetxlogit" else {"n_steps": 4} if method == "integrated_gradients" else {}
        assert attribute(tiny_gpt2, ids, method=method, **kw).target_id == int(logits[-1].argmax())


def test_random_is_seeded(tiny_llama):
    a = attribute(tiny_llama, TEXT, method="random")
    assert a.scores.equal(attribute(tiny_llama, TEXT, method="random", seed=0).scores)
    assert not a.scores.equal(attribute(tiny_llama, TEXT, method="random", seed=1).scores)
    assert a.options == {"seed": 0}


def test_bad_input_raises_one_line_errors(tiny_llama):
    m = tiny_llama
    L = m.n_blocks
    cases = [
        (dict(text_or_ids=""), "empty text"),
        (dict(text_or_ids="   "), "empty text"),
        (dict(text_or_ids=[]), "empty input"),
        (dict(text_or_ids=" ".join(["the"] * 80)), "context window"),
        (dict(text_or_ids=[1] * 65), "context window"),
        (dict(text_or_ids=[1, m.vocab_size]), "out of range"),
        (dict(text_or_ids=TEXT, method="shap"), "unknown attribution method"),
        (dict(text_or_ids=TEXT, layer=L + 1), f"layers 0..{L}"),
        (dict(text_or_ids=TEXT, layer=-(L + 2)), f"layers 0..{L}"),
        (dict(text_or_ids=TEXT, method="saliency", layer=1), "takes no layer"),
        (dict(text_or_ids=TEXT, method="jetxlogit"), "needs a layer"),
        (dict(text_or_ids=TEXT, method="jetxlogit", layer=1, order=-1), "order"),
        (dict(text_or_ids=TEXT, bogus=1), "unknown option"),
        (dict(text_or_ids=TEXT, method="saliency", n_steps=3), "integrated_gradients only"),
        (dict(text_or_ids=TEXT, method="integrated_gradients", baseline="mean"), "baseline"),
        (dict(text_or_ids=TEXT, method="integrated_gradients", n_steps=0), "n_steps"),
        (dict(text_or_ids=TEXT, norm_of="both"), "norm_of"),
    ]
    for kw, msg in cases:
        with pytest.raises(JetexError, match=msg) as e:
            attribute(m, **kw)
        assert "\n" not in str(e.value)


def test_gradient_methods_on_model_loaded_under_inference_mode(word_tokenizer):
    from attr_tiny_models import make_hf, wrap

    with torch.inference_mode():  # how a user gets inference-tensor weights: loading inside inference mode
        hf = make_hf("llama", len(word_tokenizer), seed=3)
        m = wrap(hf, word_tokenizer, "tiny-llama-inference")
        assert attribute(m, TEXT).scores.shape == (6,)  # forward-only methods still work
    for method in ("saliency", "input_x_gradient", "integrated_gradients"):
        with pytest.raises(GradientUnavailableError, match="inference tensors.*reload it outside inference mode"):
            attribute(m, TEXT, method=method)
    assert attribute(m, TEXT, method="normxlogit").scores.shape == (6,)


def test_gradient_methods_inside_inference_mode_and_no_grad(tiny_llama):
    ref = attribute(tiny_llama, TEXT, method="saliency")
    assert not torch.is_inference_mode_enabled()
    with torch.inference_mode():
        inside = attribute(tiny_llama, TEXT, method="saliency")
    with torch.no_grad():
        inside2 = attribute(tiny_llama, TEXT, method="input_x_gradient")
    torch.testing.assert_close(inside.scores, ref.scores)
    torch.testing.assert_close(inside2.scores, attribute(tiny_llama, TEXT, method="input_x_gradient").scores)


def test_toy_model_without_tokenizer():
    m = jetex.ToyResidualNet(depth=2, d=8, vocab_size=13)
    a = attribute(m, [3, 4, 5])
    assert not a.bos and a.tokens == ("<3>", "<4>", "<5>")
    # position-wise toy: gradients reach only the last position
    sal = attribute(m, [3, 4, 5], method="saliency")
    assert sal.scores[:2].abs().max() == 0 and sal.scores[2] > 0
    with pytest.raises(InputError, match="no tokenizer"):
        attribute(m, [3, 4, 5], target="x")


def test_attribution_dataclass_validates_and_ranks():
    ids = torch.tensor([1, 5, 6, 7])
    a = Attribution(("<s>", "a", "b", "c"), ids, torch.tensor([9.0, 0.5, -1.0, 0.5]), 3, "c", "normxlogit", bos=True)
    assert a.ranking() == [1, 3, 2]  # BOS never ranked; ties: earlier first
    assert a.to_dict()["scores"] == [9.0, 0.5, -1.0, 0.5]
    with pytest.raises(ValueError):
        Attribution(("a",), ids, torch.zeros(4), 0, "a", "normxlogit")
    with pytest.raises(ValueError):
        Attribution(("a", "b", "c", "d"), ids, torch.zeros(4), 0, "a", "lime")
