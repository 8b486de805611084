"""Key-specific skip-trigrams in the head's real context [BOS, a, b]: factored search vs brute
force, and the attention against the Hugging Face model's own attention weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetex.ngrams.paths import parse_path
from jetex.ngrams.trigrams import (
    _Head,
    keyed_attention_logprob_table,
    top_keyed_trigrams,
    top_keyed_trigrams_brute_force,
)


@pytest.mark.parametrize("fixture, spec, bos", [("tiny_llama", "attn:0.1", 1), ("tiny_llama", "attn:1.3", None),
                                                ("tiny_gemma", "attn:0.0", 2)])
def test_keyed_search_matches_brute_force(request, fixture, spec, bos):
    m = request.getfixturevalue(fixture)
    (p,) = parse_path(m, spec)
    fast = top_keyed_trigrams(m, p, top_k=25, limit_vocab=30, chunk_size=7, bos=bos)
    slow = top_keyed_trigrams_brute_force(m, p, top_k=25, limit_vocab=30, bos=bos)
    assert fast.context == ("[BOS, a, b]" if bos is not None else "[a, b]")
    assert (fast.score > 0).all()
    np.testing.assert_allclose(fast.score, slow.score, rtol=1e-9, atol=1e-12)
    assert list(zip(fast.context_ids, fast.input_ids, fast.output_ids)) == list(
        zip(slow.context_ids, slow.input_ids, slow.output_ids))
    np.testing.assert_allclose(fast.attn_prob * fast.ov_centred, fast.score, rtol=1e-12)
    np.testing.assert_allclose(fast.ov_centred, slow.ov_centred, rtol=1e-9, atol=1e-12)


def test_keyed_attention_is_the_models_own_first_layer_attention(tiny_llama):
    """p(a | b) in [BOS, a, b] equals the weight the HF model's layer-0 head puts on a."""
    m = tiny_llama
    bos, H = 1, 4
    a_ids, b_ids = torch.arange(3, 12), torch.arange(5, 14)
    seq = torch.stack([torch.full((len(a_ids) * len(b_ids),), bos), a_ids.repeat_interleave(len(b_ids)),
                       b_ids.repeat(len(a_ids))], dim=1)
    with torch.no_grad():
        att = m.hf(input_ids=seq, output_attentions=True, use_cache=False).attentions[0]  # [n, H, 3, 3]
    for h in range(H):
        (p,) = parse_path(m, f"attn:0.{h}")
        got = keyed_attention_logprob_table(m, p, a_ids, b_ids, bos=bos).exp()  # [b, a]
        want = att[:, h, 2, 1].reshape(len(a_ids), len(b_ids)).T.double()
        # HF's eager attention takes its softmax in float32: agreement to float32 precision
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        # the paper's two-key context [a, b] is NOT what the head sees
        two = keyed_attention_logprob_table(m, p, a_ids, b_ids, bos=None).exp()
        assert float((two - want).abs().max()) > 1e-3


def test_centring_removes_the_default_output(tiny_llama):
    """Adding the same vector to every key's OV output (a default output) leaves K unchanged."""
    m = tiny_llama
    (p,) = parse_path(m, "attn:0.2")
    head = _Head(m, p)
    z = head.ov_logits(torch.arange(20)).double()[:, :20]
    dO = z - z.mean(0, keepdim=True)
    assert torch.allclose(dO.mean(0), torch.zeros(20, dtype=torch.float64), atol=1e-12)
    t = top_keyed_trigrams(m, p, top_k=5, limit_vocab=20, bos=1)
    np.testing.assert_allclose(t.ov_centred, dO.numpy()[t.context_ids, t.output_ids], rtol=1e-9, atol=1e-12)
