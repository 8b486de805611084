"""Eq. 11 on models with attention: Σ_e U e + U δ = q(z) for tiny Hugging Face models
(Llama, Gemma 3, GPT-2; float64) and, marked ``real``, for SmolLM2-135M.

q(z) is the Hugging Face model's own forward pass (``reference_logits``), not the residual
view, so the identity also checks that the view and the expansion machinery agree with it.
Block choices cover every Algorithm-1 index l < L (then the decoder), composed expansions
and segment centres; weights are random points of the simplex, as floats and as per-position
tensors ``[N, batch, tokens]``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from jetex.expand import CentreGapWarning, Contribution, Embedding, Segment, exp_jet_expansion, jet_expand

_TESTS = Path(__file__).resolve().parents[1]
for _p in (_TESTS, _TESTS / "ngrams"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
from ngrams_tiny import _wrap  # noqa: E402  (tiny HF models as float64 residual views)

ARCHS = ["llama", "gemma3", "gpt2"]
T = 7  # > the tiny Gemma 3's sliding window (4): the window is active


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return _wrap(request.param)


def _simplex(n: int, g: torch.Generator) -> list[float]:
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.05
    return (w / w.sum()).tolist()


def _simplex_tensor(n: int, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Per-position simplex weights ``[n, *shape]`` (a Dirichlet-like draw, every entry > 0)."""
    w = torch.rand(n, *shape, generator=g, dtype=torch.float64) + 0.05
    return w / w.sum(0, keepdim=True)


def _check_eq11(model, outer, z, q, rel: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CentreGapWarning)
        v = outer.evaluate(z)
    e = v.logits()
    r = v.remainder_logits()
    total = e.sum(0) + r
    scale = max(float(e.abs().max()), float(r.abs().max()), float(q.abs().max()))
    err = float((total - q).abs().max())
    assert err <= rel * scale, (err, scale)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_eq11_every_block_random_and_tensor_weights(tiny, order):
    """Expand block l (centres: η and the contributions of blocks 1..l), then the decoder."""
    model = tiny
    g = torch.Generator().manual_seed(100 + order)
    z = torch.randint(0, model.vocab_size, (2, T), generator=g)
    q = model.reference_logits(z)
    L = model.n_blocks
    h = model.stream(z)
    for l in range(L):
        centres = [Embedding()] + [Contribution(j, model.blocks[j - 1].name) for j in range(1, l + 1)]
        for tensor_inner in (False, True):
            n = len(centres)
            w_in = _simplex_tensor(n, (2, T), g) if tensor_inner else _simplex(n, g)
            inner = jet_expand(model, l, centres, order, weights=w_in)
            iv = inner.evaluate(z)
            assert torch.allclose(iv.terms.sum(0) + iv.remainder, h[l + 1], atol=1e-12, rtol=0)
            N = len(inner.terms)
            w_out = _simplex(N, g) if tensor_inner else _simplex_tensor(N, (2, T), g)
            outer = jet_expand(model, L, inner.terms, order, weights=w_out)
            assert len(outer.terms) == N
            _check_eq11(model, outer, z, q, 1e-12)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_eq11_composed_and_segment_centres(tiny, order):
    """Two inner expansions composed (attn.0 then mlp.1, one a segment centre), then the decoder."""
    model = tiny
    g = torch.Generator().manual_seed(7 + order)
    z = torch.randint(0, model.vocab_size, (2, T), generator=g)
    q = model.reference_logits(z)
    L = model.n_blocks
    first = jet_expand(model, 0, [Embedding()], order)  # expands attn.0 around η alone
    # centres of block 3 (mlp.1): first's terms (sum + δ = h_1) and the contribution of blocks 2..3
    centres = first.terms + [Segment(1, 3, "mlp.0…attn.1")]
    second = jet_expand(model, 3, centres, order, weights=_simplex_tensor(len(centres), (2, T), g))
    outer = jet_expand(model, "dec", second.terms, order, weights=_simplex_tensor(len(second.terms), (2, T), g))
    _check_eq11(model, outer, z, q, 1e-12)
    # the decoder expanded directly around segment centres that sum to h_L (a joint lens)
    joint = jet_expand(model, L, [Embedding(), Segment(0, 2, "layer 0"), Segment(2, 4, "layer 1")], order,
                       weights=_simplex_tensor(3, (2, T), g))
    _check_eq11(model, joint, z, q, 1e-12)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_eq11_all_paths_of_algorithm_2(tiny, order):
    """Σ over all 2^L paths of Algorithm 2 plus its remainder is the HF model's logits."""
    model = tiny
    z = torch.randint(0, model.vocab_size, (1, T), generator=torch.Generator().manual_seed(3))
    pe = exp_jet_expansion(model, order)
    paths = list(pe.paths())
    lazy = pe.evaluate(z, paths).logits
    rem = pe.remainder(z)
    q = model.reference_logits(z)
    scale = max(float(lazy.abs().max()), float(rem.abs().max()))
    assert float((lazy.sum(0) + rem - q).abs().max()) <= 1e-12 * scale
    explicit = pe.materialize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CentreGapWarning)
        v = explicit.evaluate(z)
    # lazy and explicit evaluation batch the jets differently; HF's RMSNorm (Llama, Gemma)
    # computes in float32 even on float64 inputs, so the two agree to float32 noise (≤ ~1e-7 rel.)
    assert torch.allclose(v.remainder_logits(), rem, atol=1e-6 * scale, rtol=0)
    assert torch.allclose(v.logits().sum(0) + v.remainder_logits(), q, atol=1e-12 * scale, rtol=0)


# ---- the real SmolLM2-135M ------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_f64():
    import jetex

    return jetex.load("smollm2-135m", dtype=torch.float64)


TEXT = "The capital of France is Paris, and the capital of Italy is"


@pytest.mark.real
@torch.no_grad()
def test_eq11_smollm2_few_blocks_order1(smollm2_f64):
    """SmolLM2 (float64): expand blocks attn.0, attn.15, mlp.29 (the last) at k = 1, then the decoder."""
    m = smollm2_f64
    z = m.tokenize(TEXT)
    t = z.shape[-1]
    q = m.reference_logits(z)
    L = m.n_blocks
    g = torch.Generator().manual_seed(0)
    for l in (0, m.block_index("attn.15") - 1, L - 1):
        centres = [Embedding()] + ([Segment(0, l, "h_l − η")] if l > 0 else [])
        inner = jet_expand(m, l, centres, 1, weights=_simplex(len(centres), g))
        outer = jet_expand(m, L, inner.terms, 1, weights=_simplex_tensor(len(inner.terms), (1, t), g))
        _check_eq11(m, outer, z, q, 1e-12)


@pytest.mark.real
@torch.no_grad()
def test_joint_lens_identity_smollm2(smollm2):
    """The joint lens on SmolLM2 (float32, as users run it) is the decoder expansion around η and the
    layer contributions: its rows are those terms, its remainder is q − Σ rows, and Σ rows + U δ = q."""
    from jetex.lenses import joint_centres, joint_lens

    m = smollm2
    z = m.tokenize(TEXT)
    q = m.reference_logits(z)
    segs, names = joint_centres(m, "layers")
    centres = [Embedding()] + [Segment(a, b, n) for (a, b), n in zip(segs[1:], names[1:])]
    for optimize in (False, True):
        res = joint_lens(m, z, order=1, centres="layers", optimize=optimize, top_k=5)
        W = res.weights[:, None, :]  # [n, 1, t] per-position weights
        exp = jet_expand(m, m.n_blocks, centres, 1, weights=W)
        v = exp.evaluate(z)
        e = v.logits()[:, 0]  # [n, t, V]; float64 at k >= 1 (exact sums, jetex.expand.numerics)
        r = v.remainder_logits()[0]
        scale = max(float(e.abs().max()), float(r.abs().max()))
        assert float((e.sum(0) + r - q[0]).abs().max()) <= 1e-5 * scale  # float32 precision
        top = e.topk(5, dim=-1)
        assert torch.allclose(top.values.float(), res.top_logits, rtol=1e-4, atol=1e-4 * float(e.abs().max()))
        agree = (top.indices == res.top_ids).float().mean()
        assert agree > 0.99  # ties in float32 may swap a few
        rem = (q[0] - e.sum(0)).norm(dim=-1)
        assert torch.allclose(rem.float(), res.remainder_norm[0], rtol=1e-3)
        # the cosine each row shows is the cosine of that term's logits with q
        cos = torch.nn.functional.cosine_similarity(e, q[0].unsqueeze(0), dim=-1)
        assert torch.allclose(cos.float(), res.cosine, atol=1e-4)
