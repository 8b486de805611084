"""Training dynamics: hit ratio, pseudo-joint masses, trajectories against brute force; refusals."""

from __future__ import annotations

import math

import pytest
import torch

from apps_tiny import full_logprobs, other_tokenizer, tiny
from jetex.apps.dynamics import bigram_dynamics, corpus_bigrams, dynamics_markdown
from jetex.errors import InputError

TEXT = "the cat sat on the mat .\n\nthe dog sat on the mat .\n\na king and a queen ."


@pytest.fixture(scope="module")
def series():
    return [tiny(seed=s, name=f"ckpt-{s}") for s in (1, 2, 0)]


def test_hit_ratio_of_the_last_checkpoint_is_one(series, model_a):
    res = bigram_dynamics(series + [model_a], steps=[1, 2, 3, 4], top=50, k=20)
    assert res.hit_ratio[-1] == 1.0
    assert res.hit_ratio[2] == 1.0  # ckpt-0 has the same weights as model_a
    assert all(0.0 <= h < 1.0 for h in res.hit_ratio[:2])


def test_hit_ratio_and_masses_match_brute_force(series):
    from jetex.apps.corpus import unigram_probs

    tok = series[0].tokenizer
    uni = unigram_probs(tok, TEXT, series[0].vocab_size)
    res = bigram_dynamics(series, top=40, k=40, unigram=uni, corpus_text=TEXT, score="logprob")
    tops = []
    for m in series:
        lp = full_logprobs(m)
        V = lp.shape[0]
        pairs = sorted(((a, b) for a in range(V) for b in range(V) if a != b), key=lambda p: (-float(lp[p]), p))[:40]
        tops.append((lp, pairs))
    final = set(tops[-1][1])
    for i, (lp, pairs) in enumerate(tops):
        assert res.hit_ratio[i] == pytest.approx(len(set(pairs) & final) / 40)
        own = sum(float(uni[a]) * math.exp(float(lp[a, b])) for a, b in pairs)
        assert res.mass_own[i] == pytest.approx(own, rel=1e-4)
        cb = corpus_bigrams(tok, TEXT, 40)
        corp = sum(float(uni[a]) * math.exp(float(lp[a, b])) for a, b, _ in cb)
        assert res.mass_corpus[i] == pytest.approx(corp, rel=1e-4)
    # unigram frequencies are counts over the corpus
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert float(uni[ids[0]]) == pytest.approx(ids.count(ids[0]) / len(ids))


def test_trajectories_are_the_exact_logprobs(series):
    pairs = [(30, 31), (7, 10)]
    res = bigram_dynamics(series, top=20, k=10, bigrams=pairs)
    assert len(res.trajectories) == 2
    for (key, vals), (a, b) in zip(res.trajectories.items(), pairs):
        for v, m in zip(vals, series):
            assert v == pytest.approx(float(full_logprobs(m)[a, b]), abs=1e-5)
    md = dynamics_markdown(res)
    assert "| rank |" in md and "hit ratio" in md


def test_automatic_trajectories_and_figures(series, tmp_path):
    from jetex.viz.apps import save_dynamics_figures

    res = bigram_dynamics(series, steps=[10, 20, 30], top=20, k=10, losses=[3.0, 2.0, 1.5])
    assert 3 <= len(res.trajectories) <= 7
    paths = save_dynamics_figures(res, tmp_path / "dyn")
    assert [p.name for p in paths] == ["dyn_hit.png", "dyn_mass.png", "dyn_trajectories.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_refuses_mixed_series(model_a):
    with pytest.raises(InputError, match="different architectures"):
        bigram_dynamics([model_a, tiny("gpt2", name="g")], top=5, k=5)
    with pytest.raises(InputError, match="different architectures"):
        bigram_dynamics([model_a, tiny(n_layers=3, name="deeper")], top=5, k=5)
    with pytest.raises(InputError, match="different tokenizers"):
        bigram_dynamics([model_a, tiny(tokenizer=other_tokenizer(), name="o")], top=5, k=5)
    with pytest.raises(InputError, match="at least two"):
        bigram_dynamics([model_a], top=5, k=5)
    with pytest.raises(InputError, match="unigram"):
        bigram_dynamics([model_a, model_a], top=5, k=5, unigram=torch.ones(3))
