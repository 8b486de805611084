"""Skip-trigrams: the factored top-K search is exact (brute force over all N³ triples), and its
query–key and OV tables are the real attention head's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetex.errors import InputError
from jetex.ngrams.paths import parse_path
from jetex.ngrams.trigrams import (
    attention_logprob_table,
    head_summaries,
    iter_trigram_chunks,
    ov_logprob_table,
    top_trigrams,
    top_trigrams_brute_force,
)


def _same(a, b):
    np.testing.assert_allclose(a.logscore, b.logscore, rtol=1e-10, atol=1e-10)
    triples = lambda t: list(zip(t.context_ids.tolist(), t.input_ids.tolist(), t.output_ids.tolist()))  # noqa: E731
    assert triples(a) == triples(b)
    np.testing.assert_allclose(a.attn_logprob, b.attn_logprob, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.ov_logprob, b.ov_logprob, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.ov_logit, b.ov_logit, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma", "tiny_gpt2"])
@pytest.mark.parametrize("spec, K, limit, chunk", [("attn:0.0", 1, None, None), ("attn:0.1", 7, None, 10),
                                                   ("attn:1.3", 60, None, 33), ("attn:0.2", 25, 20, 3)])
def test_factored_search_is_exact(arch, spec, K, limit, chunk, request):
    m = request.getfixturevalue(arch)
    (p,) = parse_path(m, spec)
    fast = top_trigrams(m, p, top_k=K, limit_vocab=limit, chunk_size=chunk)
    brute = top_trigrams_brute_force(m, p, top_k=K, limit_vocab=limit)
    assert len(fast) == K
    _same(fast, brute)
    if limit:
        assert max(fast.context_ids.max(), fast.input_ids.max(), fast.output_ids.max()) < limit


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma", "tiny_gpt2"])
def test_tables_reproduce_the_attention_block(arch, request):
    """On the context [a, b], the block's attention output at b equals
    Σ_h p_h(a|b) o_h(a) + (1 − p_h(a|b)) o_h(b) + b_O with our p table and OV vectors."""
    m = request.getfixturevalue(arch)
    block = m.block(1)
    hw = m.head_weights(1)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, m.vocab_size, (12,), generator=g)
    b = torch.randint(0, m.vocab_size, (12,), generator=g)
    with torch.no_grad():
        X = block.in_norm(m.embed(torch.stack([a, b], 1)))  # [n, 2, d]
        out = block.attend(X)[:, 1]
        want = torch.zeros_like(out) + (0 if hw.b_O is None else hw.b_O)
        for h in range(hw.n_heads):
            (p,) = parse_path(m, f"attn:0.{h}")
            T = attention_logprob_table(m, p, a, b)  # [b, a]
            pa = T[torch.arange(12), torch.arange(12)].exp()[:, None]

            def o(x):
                v = x @ hw.W_V[h] + (0 if hw.b_V is None else hw.b_V[h])
                return v @ hw.W_O[h]

            want = want + pa * o(X[:, 0]) + (1 - pa) * o(X[:, 1])
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_ov_table_is_the_decoded_head_term(tiny_llama):
    m = tiny_llama
    (p,) = parse_path(m, "attn:0.3")
    ids = torch.arange(m.vocab_size)
    O, z = ov_logprob_table(m, p, ids)
    hw = m.head_weights(1)
    with torch.no_grad():
        x = m.block(1).in_norm(m.embed(ids[:, None]))
        o = x @ hw.W_V[3] @ hw.W_O[3]
        want = m.unembed(m.final_norm(o))[:, 0]
    torch.testing.assert_close(z, want)
    torch.testing.assert_close(O, torch.log_softmax(want, -1))


def test_chunks_resume_and_summaries(tiny_llama):
    m = tiny_llama
    (p,) = parse_path(m, "attn:1.1")
    chunks = list(iter_trigram_chunks(m, p, top_k=5, chunk_size=20))
    assert [c.batch_index for c in chunks] == [0, 1, 2, 3]
    assert all(np.all((c.table.context_ids >= 20 * c.batch_index) & (c.table.context_ids < 20 * (c.batch_index + 1))) for c in chunks)
    rest = list(iter_trigram_chunks(m, p, top_k=5, chunk_size=20, skip={0, 3}))
    assert [c.batch_index for c in rest] == [1, 2]
    np.testing.assert_array_equal(rest[0].table.logscore, chunks[1].table.logscore)
    tables = head_summaries(m, 1, top_k=3)
    assert [t.path for t in tables] == [f"attn:1.{h}" for h in range(4)]
    row = tables[0].rows(m)[0]
    assert set(row) >= {"context", "input", "output", "score", "attn_prob", "ov_prob"}
    assert row["score"] == pytest.approx(row["attn_prob"] * row["ov_prob"], rel=1e-6)


def test_trigram_errors(tiny_llama):
    (p,) = parse_path(tiny_llama, "attn:0.0")
    with pytest.raises(InputError, match="top K = 9 is larger than the 8 possible trigrams"):
        top_trigrams(tiny_llama, p, top_k=9, limit_vocab=2)
    with pytest.raises(InputError, match="positive integer"):
        top_trigrams(tiny_llama, p, top_k=0)
