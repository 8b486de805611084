"""Jet n-grams on the real SmolLM2-135M, on a slice of the vocabulary (first 512 tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetex.ngrams import NgramStore, bigram_table, extract_ngrams, parse_path, top_trigrams, top_trigrams_brute_force
from jetex.ngrams.trigrams import attention_logprob_table

pytestmark = pytest.mark.real
N = 512


def test_bigram_paths_match_the_hf_modules(smollm2):
    m = smollm2
    hf = m.hf
    ids = torch.arange(N)
    with torch.inference_mode():
        emb = hf.model.embed_tokens(ids)
        dec = lambda h: hf.lm_head(hf.model.norm(h))  # noqa: E731
        layer = hf.model.layers[7]
        mlp7 = layer.mlp(layer.post_attention_layernorm(emb))
        for spec, want in [("direct", dec(emb)), ("mlp:7", dec(mlp7))]:
            (p,) = parse_path(m, spec)
            t = bigram_table(m, p, top_k=10, limit_vocab=N, global_top=50)
            v, i = torch.log_softmax(want, -1).topk(10, -1)
            np.testing.assert_allclose(t.top_logprobs, v.numpy(), rtol=1e-4, atol=1e-4)
            agree = (t.top_ids == i.numpy()).mean()
            assert agree > 0.99, (spec, agree)  # float ties / rounding may swap a few neighbours
    # tied embeddings: the direct path mostly predicts its own input token
    (p,) = parse_path(m, "direct")
    t = bigram_table(m, p, top_k=5, limit_vocab=N)
    assert t.self_transition_rate > 0.5
    te = bigram_table(m, p, top_k=5, limit_vocab=N, exclude_self=True)
    assert not (te.top_ids == te.input_ids[:, None]).any()


def test_trigram_search_is_exact_on_smollm2(smollm2):
    for spec in ("attn:0.0", "attn:0.5", "attn:3.2"):
        (p,) = parse_path(smollm2, spec)
        fast = top_trigrams(smollm2, p, top_k=20, limit_vocab=40)
        brute = top_trigrams_brute_force(smollm2, p, top_k=20, limit_vocab=40)
        np.testing.assert_allclose(fast.logscore, brute.logscore, rtol=1e-4, atol=1e-5)
        same = np.mean([a == b for a, b in zip(zip(fast.context_ids, fast.input_ids, fast.output_ids),
                                                zip(brute.context_ids, brute.input_ids, brute.output_ids))])
        assert same >= 0.9, spec  # float32 near-ties may swap neighbours


def test_attention_table_reproduces_smollm2_layer0(smollm2):
    m = smollm2
    block, hw = m.block(1), m.head_weights(1)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, m.vocab_size, (8,), generator=g), torch.randint(0, m.vocab_size, (8,), generator=g)
    with torch.inference_mode():
        X = block.in_norm(m.embed(torch.stack([a, b], 1)))
        out = block.attend(X)[:, 1]
        want = torch.zeros_like(out)
        for h in range(hw.n_heads):
            (p,) = parse_path(m, f"attn:0.{h}")
            pa = attention_logprob_table(m, p, a, b)[torch.arange(8), torch.arange(8)].exp()[:, None]
            want += (pa * X[:, 0] + (1 - pa) * X[:, 1]) @ hw.W_V[h] @ hw.W_O[h]
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


def test_extract_into_a_store(smollm2, tmp_path):
    db = tmp_path / "smol.duckdb"
    res = extract_ngrams(smollm2, ["direct", "mlp:0", "attn:0.3"], db=db, top_k=10, limit_vocab=N, global_top=100,
                         fidelity_sample=32, progress=False)
    assert [r.status for r in res] == ["done"] * 3
    with NgramStore(db, read_only=True) as s:
        assert s.meta["model_fingerprint"] == smollm2.fingerprint()
        run = s.runs(path="mlp:0")[0]
        assert run["n_inputs"] == N and s._q("SELECT count(*) FROM ngrams WHERE run_id = ?", [run["run_id"]])[0][0] == N * 10
        fid = s.fidelity(run["run_id"])
        assert fid["sample_size"] == 32 and fid["mean_kl"] > 0
        assert len(s.top_pairs(run["run_id"], 100)) == 100
