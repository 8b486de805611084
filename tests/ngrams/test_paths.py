"""Bigram paths: parsing, and their logits against naive formulas, Eq. 5 and jet_expand."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from jetex.errors import InputError
from jetex.models import LinearResidualNet, ToyResidualNet
from jetex.ngrams.paths import BigramPath, TrigramPath, available_paths, parse_path, parse_paths


def _one(model, spec) -> BigramPath:
    (p,) = parse_path(model, spec)
    return p


# ---- parsing --------------------------------------------------------------------------
def test_parse_names_and_expansion(tiny_llama):
    names = [p.name for p in parse_paths(tiny_llama, ["direct", "MLP:1", "mlp:0,1", "mlps", "attn-free", "attn:1.2"])]
    assert names == ["direct", "mlp:1", "mlp:0,1", "mlps", "attn-free", "attn:1.2"]
    assert [p.name for p in parse_path(tiny_llama, "mlp:all")] == ["mlp:0", "mlp:1"]
    heads = parse_path(tiny_llama, "attn:0")
    assert [p.name for p in heads] == [f"attn:0.{h}" for h in range(4)] and all(isinstance(p, TrigramPath) for p in heads)
    assert heads[0].block == 1 and parse_path(tiny_llama, "attn:1.0")[0].block == 3
    # duplicates collapse, order kept
    assert [p.name for p in parse_paths(tiny_llama, ["mlp:1", "mlp:all"])] == ["mlp:1", "mlp:0"]
    assert any(s.startswith("attn:L.H") for s in available_paths(tiny_llama))


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("foo", "unknown path 'foo'"),
        ("", "empty path name"),
        ("mlp:2", "MLP layer 2 out of range; this model's MLP layers are 0..1"),
        ("mlp:1,0", "strictly increasing"),
        ("mlp:x", "unknown path"),
        ("attn:5.0", "attention layer 5 out of range"),
        ("attn:0.4", "head 4 out of range; layer 0 has heads 0..3"),
    ],
)
def test_parse_errors_are_one_line(tiny_llama, spec, msg):
    with pytest.raises(InputError, match=msg) as e:
        parse_path(tiny_llama, spec)
    assert "\n" not in str(e.value)


def test_attention_free_toy_has_no_trigrams():
    toy = ToyResidualNet(depth=2)
    assert [p.name for p in parse_path(toy, "mlp:all")] == ["mlp:0", "mlp:1"]
    with pytest.raises(InputError, match="attention layer 0 out of range"):
        parse_path(toy, "attn:0.0")


# ---- linear residual net: exact formulas (Eq. 5) ---------------------------------------
def test_linear_net_paths_are_the_eq5_products():
    m = LinearResidualNet(depth=3, d=6, vocab_size=9)
    E, U = m.E.detach(), m.U.detach()
    A = [b.A.detach() for b in m.blocks]
    ids = torch.arange(9)
    lg = lambda spec, k=0: _one(m, spec).logits(m, ids, k)  # noqa: E731
    torch.testing.assert_close(lg("direct"), E @ U.T)
    for n in range(3):
        torch.testing.assert_close(lg(f"mlp:{n}"), E @ A[n].T @ U.T)
    torch.testing.assert_close(lg("mlp:0,2"), E @ A[0].T @ A[2].T @ U.T)
    torch.testing.assert_close(lg("mlps"), sum(E @ a.T @ U.T for a in A) / 3)
    # the attention-free sub-network of an attention-free linear net is the whole model:
    # the sum of all 2^L paths U W_S E
    all_paths = torch.zeros(9, 9, dtype=E.dtype)
    for r in range(4):
        for S in itertools.combinations(range(3), r):
            W = E
            for j in S:
                W = W @ A[j].T
            all_paths += W @ U.T
    torch.testing.assert_close(lg("attn-free"), all_paths)
    torch.testing.assert_close(lg("attn-free"), m(ids[:, None])[:, 0])
    # order k >= 1: a jet of a linear block is exact, J^k A(x)(y) = A y, so every path's
    # decoded term is the decoder jet at the full stream: the model's logits
    for spec in ("direct", "mlp:1", "mlp:0,2", "mlps"):
        torch.testing.assert_close(lg(spec, 1), m(ids[:, None])[:, 0])


def test_toy_nonlinear_order0_composes_gammas():
    m = ToyResidualNet(depth=3, d=8, vocab_size=13, hidden=16)
    ids = torch.arange(13)
    x = m.embed(ids[:, None])
    g = [b for b in m.blocks]
    dec = lambda h: m.unembed(m.final_norm(h))[:, 0]  # noqa: E731
    torch.testing.assert_close(_one(m, "mlp:1").logits(m, ids), dec(g[1](x)))
    torch.testing.assert_close(_one(m, "mlp:0,2").logits(m, ids), dec(g[2](g[0](x))))
    h = x
    for b in g:
        h = h + b(h)
    torch.testing.assert_close(_one(m, "attn-free").logits(m, ids), dec(h))


# ---- tiny Hugging Face models: against the HF modules themselves -------------------------
def _hf_mlp(hf, n):
    layer = hf.model.layers[n]
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma 3 sandwich norms
        return lambda x: layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
    return lambda x: layer.mlp(layer.post_attention_layernorm(x))


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma"])
def test_order0_paths_match_hf_modules(arch, request):
    m = request.getfixturevalue(arch)
    hf = m.hf
    V = m.vocab_size
    ids = torch.arange(V)
    with torch.no_grad():
        emb = hf.model.embed_tokens(ids)
        dec = lambda h: hf.lm_head(hf.model.norm(h))  # noqa: E731
        mlp = [_hf_mlp(hf, n) for n in range(2)]
        expect = {
            "direct": dec(emb),
            "mlp:0": dec(mlp[0](emb)),
            "mlp:1": dec(mlp[1](emb)),
            "mlp:0,1": dec(mlp[1](mlp[0](emb))),
            "mlps": (dec(mlp[0](emb)) + dec(mlp[1](emb))) / 2,
            "attn-free": dec(emb + mlp[0](emb) + mlp[1](emb + mlp[0](emb))),
        }
        for spec, want in expect.items():
            torch.testing.assert_close(_one(m, spec).logits(m, ids), want, msg=spec)


@pytest.fixture
def oracle_jets(monkeypatch):
    """Route jets through the nested-JVP reference, so composition is tested apart from the Taylor engine."""
    import jetex.jets as jets

    monkeypatch.setattr(jets, "jet", jets.jet_nested_jvp)
    monkeypatch.setattr(jets, "jet_coefficients", jets.jet_coefficients_nested_jvp)


def test_order1_paths_match_first_order_jets(tiny_llama, oracle_jets):
    """J^1 f(x)(y) = f(x) + Df(x)[y − x], computed here with torch.func.jvp, composed by hand."""
    m = tiny_llama
    ids = torch.arange(m.vocab_size)
    seq = ids[:, None]
    h = m.stream(seq).detach()  # single-token stream, attention included

    def j1(f, x, y):
        fx, df = torch.func.jvp(f, (x,), (y - x,))
        return fx + df

    mlp0, mlp1 = m.blocks[1], m.blocks[3]
    L = m.n_blocks
    x0 = m.embed(seq).detach()
    want_direct = m.unembed(j1(m.final_norm, x0, h[L]))[:, 0]
    want_mlp1 = m.unembed(j1(m.final_norm, j1(mlp1, x0, h[3]), h[L]))[:, 0]
    c = j1(mlp0, x0, h[1])
    want_chain = m.unembed(j1(m.final_norm, j1(mlp1, c, h[3]), h[L]))[:, 0]
    # HF's RMSNorm computes in float32 even for a float64 model: compare at float32 precision
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_one(m, "direct").logits(m, ids, 1), want_direct, **tol)
    torch.testing.assert_close(_one(m, "mlp:1").logits(m, ids, 1), want_mlp1, **tol)
    torch.testing.assert_close(_one(m, "mlp:0,1").logits(m, ids, 1), want_chain, **tol)
    # order 1 differs from order 0 (the stream carries attention)
    assert not torch.allclose(_one(m, "mlp:1").logits(m, ids, 1), _one(m, "mlp:1").logits(m, ids, 0))


@pytest.mark.parametrize("order", [0, 1, 2])
def test_fast_paths_equal_jet_expand_composition(tiny_llama, order, oracle_jets):
    """direct = jet_expand(q, L, {η}, k); mlp:N = Algorithm 1 on mlp.N at centre η, then on the decoder."""
    from jetex.expand import Embedding, jet_expand

    m = tiny_llama
    ids = torch.arange(m.vocab_size)
    seq = ids[:, None]
    L = m.n_blocks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = jet_expand(m, L, [Embedding()], order).evaluate(seq).logits()[0][:, 0]
        torch.testing.assert_close(_one(m, "direct").logits(m, ids, order), direct)
        for n in range(2):
            e1 = jet_expand(m, f"mlp.{n}", [Embedding()], order)
            assert e1.terms[0].name == f"emb → mlp.{n}"
            e2 = jet_expand(m, L, [e1.terms[0]], order)
            got = e2.evaluate(seq).logits()[0][:, 0]
            torch.testing.assert_close(_one(m, f"mlp:{n}").logits(m, ids, order), got)


@pytest.mark.parametrize("spec", ["direct", "mlp:1", "attn-free"])
def test_order2_with_the_taylor_engine_matches_the_oracle(tiny_llama, spec, monkeypatch):
    """The paths run on jetex.jets.jet (Taylor mode); it must agree with the nested-JVP reference."""
    import jetex.jets as jets

    m = tiny_llama
    ids = torch.arange(m.vocab_size)
    got = _one(m, spec).logits(m, ids, 2)
    monkeypatch.setattr(jets, "jet", jets.jet_nested_jvp)
    want = _one(m, spec).logits(m, ids, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_order(tiny_llama):
    with pytest.raises(InputError, match="order"):
        _one(tiny_llama, "direct").logits(tiny_llama, torch.arange(3), -1)
