"""Component roles: characteristic bigrams against brute force, the heuristic labeller, ablation."""

from __future__ import annotations

import math

import pytest
import torch

from apps_tiny import full_logprobs, tiny
from jetex.apps.roles import (
    ablated,
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
    top, added = mlp_bigrams(model_a, 1, n_top=10, min_prob=0.0)
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


def test_mlp_roles_report(model_a):
    roles = mlp_roles(model_a, [0, 1], sentences=SENTENCES, n_top=5, n_ablate=3)
    assert [r.component for r in roles] == ["mlp.0", "mlp.1"]
    for r in roles:
        assert r.kind == "mlp" and len(r.top) == 5 and r.role
        ab = r.ablation
        assert ab is not None and ab.n_contexts > 0 and ab.control in ("mlp.0", "mlp.1") and ab.control != r.component
        assert ab.delta_logit != 0.0 and math.isfinite(ab.delta_logit)
    with pytest.raises(InputError, match="out of range"):
        mlp_roles(model_a, [7])


def test_head_roles_report(model_a):
    roles = head_roles(model_a, 0, heads=[0, 2], n_top=4, n_ablate=2)
    assert [r.component for r in roles] == ["attn.0.h0", "attn.0.h2"]
    for r in roles:
        assert len(r.top) == 4 and r.ablation is not None and r.ablation.n_contexts == 2
        assert r.ablation.delta_logit != 0.0
    with pytest.raises(InputError, match="out of range"):
        head_roles(model_a, 0, heads=[9])


def test_gpt2_mlp_and_head_ablation():
    g = tiny("gpt2", name="g")
    roles = mlp_roles(g, [0], n_top=3, n_ablate=2)
    assert roles[0].ablation is not None and roles[0].ablation.delta_logit != 0.0
    assert head_roles(g, 0, heads=[0], n_top=2, n_ablate=1)[0].ablation.delta_logit != 0.0


def test_label_role_heuristic():
    ing = [("walk", "ing"), ("talk", "ing"), ("runn", "ing"), ("sing", "ing"), (" go", " home")]
    assert label_role(ing) == ("suffix -ing", "4/5 outputs are word continuations ending in 'ing'")
    assert label_role([("walk", "ing"), ("jump", "ing"), ("mov", "ing"), ("x", "y"), ("z", "w")])[0] == "suffix -ing"
    copy = [(" The", " the"), (" Cat", " cat"), (" a", " b"), (" x", "."), ("Dog", " dog")]
    assert label_role(copy)[0] == "copy (same word, other form)"
    assert label_role([(" 1", " 2"), (" 3", " 4"), (" 5", "6"), (" a", " b")])[0] == "numbers"
    assert label_role([("a", "("), ("b", ")"), ("c", ":"), ("d", "x")])[0] == "punctuation / code symbols"
    assert label_role([])[0] == "none"
