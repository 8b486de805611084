"""The ablation protocol on cases with a KNOWN effect: a tiny model with an MLP built to drive
planted bigrams, a null MLP (zero output), a constant-output MLP (mean-ablation must be a
no-op), and the effect-size statistics on synthetic data with a known mean difference."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from apps_tiny import tiny
from jetex.apps.ablation import (
    Component,
    AblationResult,
    ablate,
    ablation_study,
    effect_size,
    mean_activations,
    parse_component,
    target_logprobs,
    tokenize_docs,
    Context,
)
from jetex.errors import InputError

PAIRS = [("cat", "river"), ("dog", "moon"), ("king", "fire"), ("tree", "night"),
         ("house", "water"), ("city", "sun"), ("man", "rome"), ("queen", "paris")]
FILLER = "the a of to in and is was on at for with by from as it he she they we you red blue green big small good bad new old".split()


@pytest.fixture(scope="module")
def planted():
    """4-layer tiny Llama: MLP 1 detects each a_i (hidden unit i) and writes the unembedding of
    c_i; MLP 2 outputs zero. A corpus of random filler with the planted bigrams a_i c_i."""
    torch.set_num_threads(1)
    m = tiny(n_layers=4, name="planted")
    tok = m.tokenizer
    ids = {w: tok.convert_tokens_to_ids(w) for p in PAIRS for w in p}
    hf = m.hf
    E = hf.model.embed_tokens.weight
    with torch.no_grad():
        for layer in (0, 1):  # quieter attention / MLP 0: the residual at a's position points along E[a]
            hf.model.layers[layer].self_attn.o_proj.weight.mul_(0.1)
        hf.model.layers[0].mlp.down_proj.weight.mul_(0.1)
        mlp = hf.model.layers[1].mlp
        w = hf.model.layers[1].post_attention_layernorm.weight
        mlp.gate_proj.weight.zero_()
        mlp.up_proj.weight.zero_()
        mlp.down_proj.weight.zero_()
        for i, (a, c) in enumerate(PAIRS):
            u = E[ids[a]] * w
            u = u / u.norm()
            mlp.gate_proj.weight[i] = 3.0 * u
            mlp.up_proj.weight[i] = 3.0 * u
            mlp.down_proj.weight[:, i] = 10.0 * E[ids[c]] / E[ids[c]].norm()
        hf.model.layers[2].mlp.down_proj.weight.zero_()  # the null MLP
    rng = random.Random(0)
    texts = []
    for k in range(160):
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
        a, c = PAIRS[k % len(PAIRS)]
        pos = rng.randint(2, len(words))
        words[pos:pos] = [a, c]
        texts.append(" ".join(words))
    return m, tokenize_docs(m, texts), ids


def test_planted_model_really_drives_its_bigrams(planted):
    m, docs, ids = planted
    the = m.tokenizer.convert_tokens_to_ids("the")
    ctx = [Context([1, the, ids[a]], ids[c], 0) for a, c in PAIRS]
    lp = target_logprobs(m, ctx)
    assert (lp > -4.0).all()  # the planted next token is likely (chance: log 1/79 = -4.4)
    with ablate(m, Component("mlp", 1), torch.zeros(m.d_model)):
        assert (target_logprobs(m, ctx) < lp - 1.0).all()


@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_protocol_detects_the_planted_mlp(planted, mode):
    m, docs, ids = planted
    (r,) = ablation_study(m, [Component("mlp", 1)], docs, mode=mode, n_controls=3, min_contexts=30,
                          max_contexts=32, per_pattern=4, n_boot=1000)
    assert r.n_contexts == 32
    print(r.patterns)
    # the planted bigrams are among the best-scoring patterns and supply most contexts
    planted_ctx = sum(p[4] for p in r.patterns if (p[0], p[1]) in PAIRS)
    assert planted_ctx >= 24
    assert sorted(r.controls) == ["mlp.0", "mlp.2", "mlp.3"]
    e = r.effect
    assert e.delta < -1.0 and e.ci_high < 0 and r.verdict == "lowers its targets"
    assert e.p_rank == pytest.approx(1 / 4)  # lower than every control
    assert e.cohen_d < -1.0
    # round trip
    assert AblationResult.from_dict(r.to_dict()) == r


def test_null_component_has_exactly_zero_effect(planted):
    m, docs, _ = planted
    for mode in ("mean", "zero"):
        (r,) = ablation_study(m, [Component("mlp", 2)], docs, mode=mode, n_controls=2, min_contexts=30,
                              max_contexts=32, n_boot=200)
        assert r.effect.delta == 0.0
        assert all(p[5] == 0.0 for p in r.patterns)


def test_mean_ablation_of_a_constant_output_changes_nothing():
    """GPT-2 MLP with zero weights and a bias v: output v everywhere. Mean-ablation replaces v
    by its mean (v): no change; zero-ablation removes v: a change."""
    torch.set_num_threads(1)
    g = tiny("gpt2", name="g")
    with torch.no_grad():
        mlp = g.hf.transformer.h[0].mlp
        mlp.c_proj.weight.zero_()
        mlp.c_proj.bias.copy_(torch.randn(g.d_model, generator=torch.Generator().manual_seed(3)) * 3)
    rng = random.Random(1)
    docs = tokenize_docs(g, [" ".join(rng.choice(FILLER) for _ in range(12)) for _ in range(40)])
    c = Component("mlp", 0)
    mean = mean_activations(g, [c], docs, n_docs=40)[c]
    assert torch.allclose(mean, mlp.c_proj.bias, atol=1e-5)
    ctx = [Context([1] + d[:8].tolist(), int(d[8]), 0) for d in docs[:10]]
    base = target_logprobs(g, ctx)
    with ablate(g, c, mean):
        assert torch.allclose(target_logprobs(g, ctx), base, atol=1e-4)
    with ablate(g, c, torch.zeros(g.d_model)):
        assert (target_logprobs(g, ctx) - base).abs().max() > 0.05


def test_zero_ablation_from_position_0_equals_removing_the_block(planted):
    m, _, _ = planted
    ids = torch.tensor([[1, 30, 9, 11, 42]])
    h = m.embed(ids)
    with torch.no_grad():
        for blk in m.blocks:
            if blk.name != "mlp.0":
                h = h + blk(h)
        ref = torch.log_softmax(m.decode(h)[0, -1], -1)
    with ablate(m, Component("mlp", 0), torch.zeros(m.d_model), start=0):
        got = target_logprobs(m, [Context(ids[0].tolist(), 7, 0)])
    assert got[0] == pytest.approx(float(ref[7]), abs=1e-4)


def test_head_ablation_and_too_few_contexts(planted):
    m, docs, _ = planted
    (r,) = ablation_study(m, [Component("head", 0, 1)], docs, n_controls=3, min_contexts=30, max_contexts=32, n_boot=200)
    assert r.n_contexts == 32 and len(r.controls) == 3 and "attn.0.h1" not in r.controls
    assert np.isfinite(r.effect.effect) and r.effect.ci_low <= r.effect.effect <= r.effect.ci_high
    with pytest.raises(InputError, match=r"mlp.1: the corpus .* has \d+ contexts containing its top n-grams"):
        ablation_study(m, [Component("mlp", 1)], docs[:2], min_contexts=30)
    with pytest.raises(InputError, match="out of range"):
        ablation_study(m, [Component("mlp", 9)], docs)
    assert parse_component("attn.0.h3") == Component("head", 0, 3) and parse_component("mlp.12") == Component("mlp", 12)
    with pytest.raises(InputError, match="bad component"):
        parse_component("mlp12")


def test_effect_size_statistics_on_known_effects():
    """Synthetic Δ: with no effect the 95% interval covers 0 in about 95% of draws; with a true
    effect of −1 (sd 1, 30 contexts) it excludes 0 almost always; the point estimate is the
    difference of means, the rank is counted against the controls."""
    g = torch.Generator().manual_seed(0)
    n, K, sims = 30, 6, 200
    cover, detect = 0, 0
    for s in range(sims):
        d = torch.randn(n, generator=g)
        C = torch.randn(K, n, generator=g)
        e = effect_size(d, C, n_boot=400, seed=s)
        assert e.effect == pytest.approx(float(d.mean() - C.mean()), abs=1e-6)
        cover += e.ci_low <= 0 <= e.ci_high
        e1 = effect_size(d - 1.0, C, n_boot=400, seed=s)
        detect += e1.ci_high < 0
    assert 0.88 <= cover / sims <= 0.99
    assert detect / sims >= 0.97
    d = torch.zeros(10)
    C = torch.stack([torch.full((10,), v) for v in (-1.0, 0.5, 1.0, 2.0)])
    e = effect_size(d, C)
    assert e.p_rank == pytest.approx((1 + 1) / 5)  # one control (−1) is not above the component
    assert e.effect == pytest.approx(-0.625)


@pytest.mark.parametrize("score", ["logprob", "logit", "zlogit", "pmi", "zpmi"])
def test_pattern_scores_are_the_store_scores(planted, score):
    """The ablation ranks its corpus patterns by the n-gram scores of jetex.ngrams.scores (the
    reference matrix, pmi's mean over the scored rows); the old name 'centred' is refused."""
    from jetex.apps.ablation import head_pattern_scores, mlp_pattern_scores
    from jetex.apps.tables import bigram_path
    from jetex.ngrams.paths import parse_path
    from jetex.ngrams.scores import score_matrix
    from jetex.ngrams.trigrams import ov_logprob_table

    m = planted[0]
    rows = torch.tensor([3, 7, 11, 20, 40])
    a, c = np.meshgrid(rows.numpy(), np.arange(m.vocab_size), indexing="ij")
    for fn, z, excl in [
        (mlp_pattern_scores(m, 1, rows, score), bigram_path(m, "mlp:1").logits(m, rows, 0), True),
        (head_pattern_scores(m, 0, 1, rows, score), ov_logprob_table(m, parse_path(m, "attn:0.1")[0], rows)[1], False),
    ]:
        z = z.double()
        lq = None
        if score == "pmi":
            lq = score_matrix("logprob", z, rows, exclude_self=excl).exp().mean(0).log()
        if score == "zpmi":  # the mean over the scored rows of softmax(ζ), ζ the zlogit
            lq = torch.log_softmax(score_matrix("zlogit", z, rows, exclude_self=excl), 1).exp().mean(0).log()
        want = score_matrix(score, z, rows, exclude_self=excl, logq=lq).numpy()
        got = fn(a.reshape(-1), c.reshape(-1)).reshape(a.shape)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=2e-5, atol=2e-5)
    with pytest.raises(InputError, match="score 'centred' is now called 'logit'"):
        mlp_pattern_scores(m, 1, rows, "centred")
