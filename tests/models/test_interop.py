"""jetex.from_hf on models held by TransformerLens (TransformerBridge) and nnsight (LanguageModel),
with the real packages on a tiny saved model: the view is the checkpoint's own (same lens
values, same fingerprint, same weights, shared not copied), the holder is left unchanged,
and what holds no Hugging Face model is refused in one line."""

from __future__ import annotations

import warnings

import pytest
import torch

import jetex
from jetex.errors import UnsupportedArchitectureError

TEXT = "the cat sat on the mat"


def _load(folder: str):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def plain(tiny_llama_dir):
    return jetex.from_hf(*_load(tiny_llama_dir))


def _same_view(m, plain) -> None:
    assert m.fingerprint() == plain.fingerprint()
    a, b = jetex.iterative_lens(m, TEXT, order=2), jetex.iterative_lens(plain, TEXT, order=2)
    assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.top_logits, b.top_logits)
    assert torch.equal(m.head_weights(1).W_Q, plain.head_weights(1).W_Q)
    assert m.block_names == plain.block_names


def test_transformer_bridge(tiny_llama_dir, plain):
    tl = pytest.importorskip("transformer_lens.model_bridge", reason="transformer-lens (the jetex[interop] extra) is not installed")
    hf, tok = _load(tiny_llama_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = tl.TransformerBridge.boot_transformers(tiny_llama_dir, hf_model=hf, tokenizer=tok)
    wrapped = type(bridge.original_model.model.layers[0].self_attn)
    ids = plain.tokenize(TEXT)
    before = bridge(ids).detach()
    m = jetex.from_hf(bridge)
    _same_view(m, plain)
    assert type(m.hf.model.layers[0].self_attn).__name__ == "LlamaAttention"  # the checkpoint's modules
    ptrs = {p.data_ptr() for p in bridge.parameters()}
    assert all(p.data_ptr() in ptrs for p in m.parameters())  # shared, not copied
    assert type(bridge.original_model.model.layers[0].self_attn) is wrapped  # the bridge is unchanged
    assert torch.equal(bridge(ids), before)
    assert jetex.from_hf(bridge, tok).tokenizer is tok


def test_refused_bridges(tiny_llama_dir):
    tl = pytest.importorskip("transformer_lens.model_bridge", reason="transformer-lens (the jetex[interop] extra) is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = tl.TransformerBridge.boot_native(
            {"d_model": 16, "n_layers": 1, "n_ctx": 8, "d_vocab": 20, "n_heads": 2, "d_head": 8, "d_mlp": 32, "act_fn": "gelu"}
        )
        hf, tok = _load(tiny_llama_dir)
        processed = tl.TransformerBridge.boot_transformers(tiny_llama_dir, hf_model=hf, tokenizer=tok)
        processed.enable_compatibility_mode()
    for bridge, message in ((native, "TransformerLens-native NativeModel, not a Hugging Face model"),
                            (processed, "processed weights")):
        with pytest.raises(UnsupportedArchitectureError, match=message) as e:
            jetex.from_hf(bridge)
        assert "\n" not in str(e.value)


def test_nnsight_language_model(tiny_llama_dir, plain):
    nnsight = pytest.importorskip("nnsight", reason="nnsight (the jetex[interop] extra) is not installed")
    hf, tok = _load(tiny_llama_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = nnsight.LanguageModel(hf, tokenizer=tok)
        lazy = nnsight.LanguageModel(tiny_llama_dir, tokenizer=tok)  # not dispatched: meta weights
    m = jetex.from_hf(lm)
    _same_view(m, plain)
    assert m.hf is hf and m.tokenizer is tok
    for obj, message in ((lazy, "not loaded yet .* meta device"),
                         (nnsight.NNsight(torch.nn.Linear(2, 2)), "wraps a Linear, not a Hugging Face causal LM"),
                         (torch.nn.Linear(2, 2), "Linear is not a Hugging Face causal LM")):
        with pytest.raises(UnsupportedArchitectureError, match=message) as e:
            jetex.from_hf(obj)
        assert "\n" not in str(e.value)


def test_from_hf_plain_model_is_the_loader_view(tiny_llama_dir, plain):
    assert jetex.from_hf(jetex.load(tiny_llama_dir)).fingerprint() == plain.fingerprint()  # a jetex view unwraps too
    assert jetex.from_hf(*_load(tiny_llama_dir), granularity="layer").n_blocks == 2
