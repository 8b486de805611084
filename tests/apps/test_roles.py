"""Component roles: characteristic bigrams against brute force, the heuristic labeller, ablation."""

from __future__ import annotations

import math

import pytest
import torch

from apps_tiny import full_logprobs, tiny
from jetex.apps.roles import (
    ablated,
    component_roles,
    head_roles,
    label_role,
    last_logits,
    mlp_bigrams,
    mlp_module,
    mlp_roles,
    _o_proj,
)
from jetex.errors import InputError

SENTENCES = ["the cat sat on the mat .", "the dog ran to the door .", "a king and a queen said that ."]


def test_mlp_bigrams_match_brute_force(model_a):
    top, added = mlp_bigrams(model_a, 1, n_top=10, min_prob=0.0, score="logprob")  # the P-ranked oracle below
    lm, ld = full_logprobs(model_a, "mlp:1"), full_logprobs(model_a, "direct")
    V = lm.shape[0]
    best = sorted(((a, b) for a in range(V) for b in range(V) if a != b), key=lambda p: -float(lm[p]))[:10]
    assert [(a, b) for a, b, _, _ in top] == best
    for a, b, pm, pd in top + added:
        assert pm == pytest.approx(float(lm[a, b]), abs=1e-5) and pd == pytest.approx(float(ld[a, b]), abs=1e-4)
    # "added": each is its row's argmax under the MLP path, ranked by the log-prob gain over direct
    for a, b, _, _ in added:
        assert b == int(lm[a].argmax())
    gains = [pm - pd for _, _, pm, pd in added]
    assert gains == sorted(gains, reverse=True)


def test_ablation_changes_logits_and_restores(model_a):
    ctx = [[1, 30, 9], [1, 7, 11, 42]]
    base = last_logits(model_a, ctx)
    with ablated(mlp_module(model_a, 0)):
        abl = last_logits(model_a, ctx)
    after = last_logits(model_a, ctx)
    assert (abl - base).abs().max() > 1e-3
    assert torch.equal(after, base)
    # right padding never changes a context's last logits
    alone = last_logits(model_a, [ctx[0]])
    assert torch.allclose(alone, base[:1], atol=1e-5)
    # ablating through the hook = running the residual view without that block
    ids = torch.tensor([ctx[1]])
    h = model_a.embed(ids)
    with torch.no_grad():
        for blk in model_a.blocks:
            if blk.name != "mlp.0":
                h = h + blk(h)
        ref = model_a.decode(h)[0, -1]
    assert torch.allclose(abl[1], ref, atol=1e-4)


def test_head_ablation_changes_logits(model_a):
    o_proj, dh = _o_proj(model_a, 0)
    ctx = [[1, 30, 9]]
    base = last_logits(model_a, ctx)
    with ablated(o_proj, head=1, head_dim=dh):
        abl = last_logits(model_a, ctx)
    assert (abl - base).abs().max() > 1e-4
    assert torch.equal(last_logits(model_a, ctx), base)


def _corpus(path, n=120, seed=0):
    import random

    from _tiny import WORDS

    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(8, 16))) for _ in range(n)))
    return str(path)


def test_mlp_roles_report(model_a):
    roles = mlp_roles(model_a, [0, 1], n_top=5)
    assert [r.component for r in roles] == ["mlp.0", "mlp.1"]
    for r in roles:
        assert r.kind == "mlp" and len(r.top) == 5 and r.role and r.ablation is None
    with pytest.raises(InputError, match="out of range"):
        mlp_roles(model_a, [7])


def test_component_roles_with_ablation(model_a, tmp_path):
    roles = component_roles(model_a, [1], head_layer=0, heads=[0, 2], n_top=4, corpus=_corpus(tmp_path / "c.txt"),
                            ablation=dict(n_controls=2, n_boot=200))
    assert [r.component for r in roles] == ["mlp.1", "attn.0.h0", "attn.0.h2"]
    for r in roles:
        ab = r.ablation
        assert ab is not None and ab.component == r.component and ab.n_contexts >= 30
        assert len(ab.controls) == (1 if r.kind == "mlp" else 2)  # a 2-layer model has one other MLP
        assert r.component not in ab.controls and ab.mode == "mean"
        assert ab.effect.ci_low <= ab.effect.effect <= ab.effect.ci_high
        assert r.to_dict()["ablation"]["verdict"] == ab.verdict
    with pytest.raises(InputError, match="contexts containing its top n-grams"):
        component_roles(model_a, [1], corpus=_corpus(tmp_path / "small.txt", n=2))


def test_head_roles_report(model_a):
    roles = head_roles(model_a, 0, heads=[0, 2], n_top=4)
    assert [r.component for r in roles] == ["attn.0.h0", "attn.0.h2"]
    assert all(len(r.top) == 4 for r in roles)
    with pytest.raises(InputError, match="out of range"):
        head_roles(model_a, 0, heads=[9])


def test_gpt2_mlp_and_head_ablation(tmp_path):
    g = tiny("gpt2", name="g")
    roles = component_roles(g, [0], head_layer=0, heads=[0], n_top=2, corpus=_corpus(tmp_path / "c.txt"),
                            ablation=dict(n_controls=1, n_boot=100))
    assert all(r.ablation is not None and r.ablation.effect.delta != 0.0 for r in roles)


def test_label_role_heuristic():
    ing = [("walk", "ing"), ("talk", "ing"), ("runn", "ing"), ("sing", "ing"), (" go", " home")]
    assert label_role(ing) == ("suffix -ing", "4/5 outputs are word continuations ending in 'ing'")
    assert label_role([("walk", "ing"), ("jump", "ing"), ("mov", "ing"), ("x", "y"), ("z", "w")])[0] == "suffix -ing"
    copy = [(" The", " the"), (" Cat", " cat"), (" a", " b"), (" x", "."), ("Dog", " dog")]
    assert label_role(copy)[0] == "copy (same word, other form)"
    assert label_role([(" 1", " 2"), (" 3", " 4"), (" 5", "6"), (" a", " b")])[0] == "numbers"
    assert label_role([("a", "("), ("b", ")"), ("c", ":"), ("d", "x")])[0] == "punctuation / code symbols"
    assert label_role([])[0] == "none"
