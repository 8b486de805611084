"""Jet lenses on toy models: agreement with jet_expand, exact weights, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from jetex.errors import InputError
from jetex.expand import Segment, Embedding, Stream, jet_expand
from jetex.lenses import (
    adam_simplex,
    iterative_lens,
    joint_centres,
    joint_lens,
    lens_cosine_curve,
    optimal_weights,
    remainder_loss,
    simplex_qp,
)
from jetex.models import LinearResidualNet, ToyResidualNet


@pytest.fixture(scope="module")
def toy():
    return ToyResidualNet(depth=4, d=12, vocab_size=17, hidden=24)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_iterative_lens_equals_decoder_expansion(toy, order):
    z = torch.randint(0, toy.vocab_size, (1, 6))
    res = iterative_lens(toy, z, order=order, top_k=5)
    assert res.row_names == ["emb"] + [b.name for b in toy.blocks]
    for r, l in enumerate(range(toy.n_blocks + 1)):
        v = jet_expand(toy, toy.n_blocks, [Stream(l)], order, weights=[1.0]).evaluate(z)
        lg = v.logits()[0, 0]
        top = lg.topk(5)
        assert torch.equal(top.indices, res.top_ids[r])
        assert torch.allclose(top.values.float(), res.top_logits[r], atol=1e-5)
    # the last row is centred at h_L itself: exact at every order, cosine 1
    assert torch.allclose(res.cosine[-1], torch.ones(6), atol=1e-6)


def test_logit_lens_order0_ignores_variate(toy):
    z = torch.randint(0, toy.vocab_size, (1, 5))
    res = iterative_lens(toy, z, order=0, layers=[1], top_k=3)
    h = toy.stream(z)
    assert torch.allclose(toy.decode(h[2])[0].topk(3).values.float(), res.top_logits[0], atol=1e-5)


def test_joint_lens_terms_sum_with_remainder(toy):
    """Joint lens rows are the decoder-expansion terms; with the remainder they give q(z)."""
    z = torch.randint(0, toy.vocab_size, (1, 5))
    segs, names = joint_centres(toy, "blocks")
    assert names == ["emb"] + [b.name for b in toy.blocks]
    centres = [Embedding()] + [Segment(a, b, n) for (a, b), n in zip(segs[1:], names[1:])]
    for k in (0, 1, 2):
        res = joint_lens(toy, z, order=k, top_k=4)
        v = jet_expand(toy, toy.n_blocks, centres, k).evaluate(z)
        lg = v.logits()[:, 0]
        assert torch.allclose(lg.topk(4).values.float(), res.top_logits, atol=1e-5)
        rem = (toy(z)[0] - lg.sum(0)).norm(dim=-1)
        assert torch.allclose(rem.float(), res.remainder_norm[0], atol=1e-5)


def test_joint_centre_groups(toy):
    segs, names = joint_centres(toy, 3)
    assert segs == [(-1, 0), (0, 2), (2, 4)]
    assert names[1] == "block.1…block.2"
    with pytest.raises(InputError):
        joint_centres(toy, 99)
    with pytest.raises(InputError):
        joint_centres(toy, [2, 3])  # does not end at L
    with pytest.raises(InputError):
        joint_centres(toy, "heads")


def _brute_simplex(Q, c):
    n = len(c)
    best = (np.inf, None)
    for r in range(1, n + 1):
        for S in itertools.combinations(range(n), r):
            S = list(S)
            m = len(S)
            K = np.zeros((m + 1, m + 1))
            K[:m, :m] = Q[np.ix_(S, S)]
            K[:m, m] = -1
            K[m, :m] = 1
            sol = np.linalg.lstsq(K, np.r_[c[S], 1.0], rcond=None)[0]
            if np.all(sol[:m] >= -1e-12):
                w = np.zeros(n)
                w[S] = sol[:m]
                f = 0.5 * w @ Q @ w - c @ w
                best = min(best, (f, tuple(w)), key=lambda x: x[0])
    return best[0]


def test_simplex_qp_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n, d = int(rng.integers(1, 7)), int(rng.integers(1, 9))
        A = rng.normal(size=(d, n))
        Q = A.T @ A + 1e-9 * np.eye(n)
        c = rng.normal(size=n) * rng.choice([0.1, 1.0, 10.0])
        w = simplex_qp(Q, c)
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
        f = 0.5 * w @ Q @ w - c @ w
        assert f <= _brute_simplex(Q, c) + 1e-9 * max(1, abs(f))


def test_optimal_weights_beat_adam_and_uniform(toy):
    z = torch.randint(0, toy.vocab_size, (1, 7))
    from jetex.jets import jet

    h = toy.stream(z)[:, 0]
    X = torch.stack([h[0]] + [h[l] - h[l - 1] for l in range(1, toy.n_blocks + 1)])
    J = jet(toy.final_norm, X, h[-1].expand_as(X), 1).detach()
    t = toy.final_norm(h[-1]).detach()
    U = toy.unembedding_matrix.detach()
    G = U.T @ U
    w_opt = optimal_weights(J, t, G)
    assert torch.allclose(w_opt.sum(0), torch.ones(7, dtype=w_opt.dtype))
    loss_opt = remainder_loss(w_opt, J, t, G)
    loss_adam = remainder_loss(adam_simplex(J, t, G, steps=100), J, t, G)
    loss_unif = remainder_loss(torch.full_like(w_opt, 1 / X.shape[0]), J, t, G)
    assert torch.all(loss_opt <= loss_adam * (1 + 1e-9) + 1e-12)
    assert torch.all(loss_opt <= loss_unif * (1 + 1e-9) + 1e-12)
    # and the lens reports exactly that remainder
    res = joint_lens(toy, z, order=1, optimize=True)
    assert torch.allclose(res.remainder_norm[0].double(), loss_opt.sqrt(), rtol=1e-4)
    assert torch.allclose(res.weights.double(), w_opt, atol=1e-6)


def test_linear_net_joint_lens_is_exact_for_every_weight():
    model = LinearResidualNet(depth=3, d=6, vocab_size=9)
    z = torch.randint(0, 9, (1, 4))
    for opt in (False, True):
        res = joint_lens(model, z, order=1, optimize=opt)
        assert res.remainder_norm.max() < 1e-9
        assert torch.allclose(res.expansion_cosine, torch.ones(4), atol=1e-6)


def test_cosine_curve_shapes_and_bad_input(toy):
    class _Tok:  # a toy "tokenizer" so lens_cosine_curve can read text
        bos_token_id = None

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(ch) % 17 for ch in text]}

    toy.tokenizer = _Tok()
    try:
        curve = lens_cosine_curve(toy, ["abc", "hello"], orders=(0, 1))
        assert curve.cosine.shape == (2, toy.n_blocks + 1)
        assert torch.allclose(curve.cosine[:, -1], torch.ones(2), atol=1e-6)
        with pytest.raises(InputError):
            lens_cosine_curve(toy, [])
    finally:
        toy.tokenizer = None
    with pytest.raises(InputError, match="order"):
        iterative_lens(toy, torch.tensor([[1, 2]]), order=-1)
    with pytest.raises(InputError, match="layer"):
        iterative_lens(toy, torch.tensor([[1, 2]]), layers=[10])
    with pytest.raises(InputError, match="non-empty"):
        iterative_lens(toy, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match="token ids"):
        joint_lens(toy, torch.tensor([[1, 99]]))


class _CharTok:
    """A toy "tokenizer" (one id per character) so lens_cosine_curve can read text."""

    bos_token_id = None

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(ch) % self.vocab_size for ch in text]}

    def decode(self, ids, **kwargs):
        return "".join(f"<{int(i)}>" for i in ids)


@pytest.mark.parametrize("optimize", [False, True])
def test_joint_cosine_curve_averages_joint_lens_over_sentences(toy, optimize):
    """kind='joint': per-centre cosines and the expansion's cosine, averaged over every position
    of every sentence, equal the position-weighted mean of joint_lens's own cosines."""
    texts = ["abc", "hello world", "jets"]
    toy.tokenizer = _CharTok(toy.vocab_size)
    try:
        curve = lens_cosine_curve(toy, texts, orders=(0, 1, 2), kind="joint", centres=3, optimize=optimize)
        segs, names = joint_centres(toy, 3)
        assert curve.kind == "joint" and curve.row_names == names and curve.n_sentences == 3
        assert curve.cosine.shape == (3, len(segs)) and curve.expansion_cosine.shape == (3,)
        assert curve.optimized is optimize
        for oi, k in enumerate((0, 1, 2)):
            rows, exp, n = torch.zeros(len(segs), dtype=torch.float64), 0.0, 0
            for text in texts:
                res = joint_lens(toy, toy.tokenize(text), order=k, centres=3, optimize=optimize)
                rows += res.cosine.double().sum(-1)
                exp += float(res.expansion_cosine.double().sum())
                n += len(res.tokens)
            assert torch.allclose(curve.cosine[oi].double(), rows / n, atol=1e-6)
            assert abs(float(curve.expansion_cosine[oi]) - exp / n) < 1e-6
        # the iterative curve is unchanged and carries no expansion cosine
        it = lens_cosine_curve(toy, texts, orders=(1,))
        assert it.kind == "iterative" and it.expansion_cosine is None
        with pytest.raises(InputError, match="layers apply to the iterative lens"):
            lens_cosine_curve(toy, texts, kind="joint", layers=[0])
        with pytest.raises(InputError, match="joint lens"):
            lens_cosine_curve(toy, texts, centres="blocks")
        with pytest.raises(InputError, match="unknown lens kind"):
            lens_cosine_curve(toy, texts, kind="logit")  # type: ignore[arg-type]
        with pytest.raises(InputError, match="centres"):
            lens_cosine_curve(toy, texts, kind="joint", centres=99)
    finally:
        toy.tokenizer = None


def test_joint_cosine_curve_linear_net_expansion_is_exact():
    model = LinearResidualNet(depth=3, d=6, vocab_size=9)
    model.tokenizer = _CharTok(9)
    curve = lens_cosine_curve(model, ["abcd", "xyz"], orders=(1, 2), kind="joint")
    assert torch.allclose(curve.expansion_cosine, torch.ones(2), atol=1e-6)  # Remark 2: δ = 0 for k >= 1


class _OnDevice(torch.Tensor):
    """Stands for a tensor on an accelerator: ``.numpy()`` fails as it does for CUDA tensors."""

    def numpy(self, *args, **kwargs):  # type: ignore[override]
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first.")

    def cpu(self, *args, **kwargs):  # type: ignore[override]
        return torch.Tensor.cpu(self).as_subclass(torch.Tensor)


def _jets(toy, dtype):
    from jetex.jets import jet

    z = torch.randint(0, toy.vocab_size, (1, 5), generator=torch.Generator().manual_seed(2))
    h = toy.stream(z)[:, 0]
    X = torch.stack([h[0]] + [h[l] - h[l - 1] for l in range(1, toy.n_blocks + 1)])
    J = jet(toy.final_norm, X, h[-1].expand_as(X), 1).detach()
    t = toy.final_norm(h[-1]).detach()
    U = toy.unembedding_matrix.detach()
    return J.to(dtype), t.to(dtype), (U.T @ U).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optimal_weights_keep_device_and_dtype(toy, dtype, monkeypatch):
    """optimal_weights moves the quadratics to the host for NumPy and the weights back to J's device."""
    import jetex.lenses.weights as wmod

    J, t, G = _jets(toy, dtype)
    ref = optimal_weights(J, t, G)
    assert ref.dtype == dtype and ref.device == J.device
    assert torch.allclose(ref.double().sum(0), torch.ones(J.shape[1], dtype=torch.float64), atol=1e-6)
    # the quadratics as an accelerator would hand them over: .numpy() fails without .cpu() first
    real = wmod.logit_remainder_quadratic
    monkeypatch.setattr(wmod, "logit_remainder_quadratic",
                        lambda J_, t_, G_: tuple(x.as_subclass(_OnDevice) for x in real(J, t, G)))
    W = wmod.optimal_weights(J.to("meta"), t.to("meta"), G.to("meta"))  # J "on a device" (meta: no data)
    assert W.device.type == "meta" and W.dtype == dtype and W.shape == ref.shape
    W_cpu = wmod.optimal_weights(J, t, G)
    assert torch.equal(W_cpu, ref) and type(W_cpu) is torch.Tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_optimal_weights_and_joint_lens_on_cuda(toy):
    J, t, G = _jets(toy, torch.float64)
    ref = optimal_weights(J, t, G)
    W = optimal_weights(J.cuda(), t.cuda(), G.cuda())
    assert W.is_cuda and W.dtype == torch.float64
    assert torch.allclose(W.cpu(), ref, atol=1e-9)
    A = adam_simplex(J.cuda(), t.cuda(), G.cuda(), steps=5)
    assert A.is_cuda
    import copy

    gpu = copy.deepcopy(toy).cuda()
    z = torch.randint(0, toy.vocab_size, (1, 6))
    a = joint_lens(toy, z, order=1, optimize=True)
    b = joint_lens(gpu, z, order=1, optimize=True)
    assert torch.allclose(a.weights, b.weights, atol=1e-5)
    assert torch.equal(a.top_ids, b.top_ids)


def test_unembedding_gram_disk_cache(toy, tmp_path, monkeypatch):
    """G = UᵀU is read back from <cache>/grams/ by a fresh process (simulated: the in-memory
    cache cleared), recomputed when the file is corrupt, and never served for changed weights."""
    from jetex.lenses import weights as W

    monkeypatch.setenv("JETEX_CACHE", str(tmp_path))
    monkeypatch.setattr(W, "GRAM_DISK_MIN", 0)
    U = toy.unembedding_matrix.detach()
    exact = U.T.double() @ U.double()
    W._GRAMS.clear()
    assert torch.equal(W.unembedding_gram(toy), exact)
    files = list((tmp_path / "grams").iterdir())
    assert len(files) == 1
    # a fresh process reads the file (checked by poisoning it with a recognisable value)
    from safetensors.torch import save

    files[0].write_bytes(save({"gram": torch.full_like(exact, 7.0)}))
    W._GRAMS.clear()
    assert float(W.unembedding_gram(toy)[0, 0]) == 7.0
    # a truncated file is recomputed and rewritten
    files[0].write_bytes(b"\x00\x01")
    W._GRAMS.clear()
    assert torch.equal(W.unembedding_gram(toy), exact)
    W._GRAMS.clear()
    assert torch.equal(W.unembedding_gram(toy), exact)
    # changed weights: another digest, another file, the right value
    with torch.no_grad():
        toy.unembedding_matrix.mul_(2.0)
    try:
        W._GRAMS.clear()
        assert torch.equal(W.unembedding_gram(toy), 4.0 * exact)
        assert len(list((tmp_path / "grams").iterdir())) == 2
    finally:
        with torch.no_grad():
            toy.unembedding_matrix.mul_(0.5)
        W._GRAMS.clear()
