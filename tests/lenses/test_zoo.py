"""Tuned lens, Jacobian lens and lens-eval on tiny models: exact identities, brute force, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from jetex.errors import InputError
from jetex.lenses import iterative_lens, layer_streams
from jetex.lenses.jacobian import JacobianLens, fit_jacobian_lens, jacobian_sums
from jetex.lenses.tuned import TunedLens, fit_tuned_lens
from jetex.lenses.zoo import own_output_share, zoo_lens
from jetex.models import LinearResidualNet, ToyResidualNet

sys.path.insert(0, str(Path(__file__).parents[1]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import jetex
    from _tiny import save_tiny

    return jetex.load(str(save_tiny(tmp_path_factory.mktemp("zoo-llama"), "llama")), dtype=torch.float64)


def _windows(model, n=6, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(4, model.vocab_size, (n, t), generator=g)
    w[:, 0] = 1
    return w


def test_tuned_identity_is_logit_lens(tiny):
    ids = _windows(tiny, 1)[0]
    lens = TunedLens.identity(tiny)
    a = zoo_lens(tiny, ids, "tuned", lens=lens, top_k=5)
    b = iterative_lens(tiny, ids, order=0, top_k=5)
    assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.top_logits, b.top_logits) and torch.equal(a.cosine, b.cosine)


def test_jacobian_lens_of_linear_net_is_its_jacobian():
    net = LinearResidualNet(depth=3, d=6, vocab_size=9)
    z = torch.randint(0, 9, (2, 5))
    streams = [0, 1, 2, 3]
    lens = fit_jacobian_lens(net, z, streams=streams)
    eye = torch.eye(6, dtype=torch.float64)
    for r, l in enumerate(streams):
        P = eye.clone()
        for blk in net.blocks[l:]:
            P = (eye + blk.A.detach()) @ P
        assert torch.allclose(lens.matrices[r], P, atol=1e-12), l
    # readout: U (J_l h_l) equals the model's logits exactly for a linear net (no norm)
    h = net.stream(z)
    out = net.decode(lens.translate(h[[1]], [1]))[0]
    assert torch.allclose(out, net.decode(h[-1]), atol=1e-10)


def test_jacobian_fit_matches_brute_force_average(tiny):
    win = _windows(tiny, 2, 5)
    streams, _ = layer_streams(tiny)
    lens = fit_jacobian_lens(tiny, win, chunk=5)
    total = torch.zeros_like(lens.sums)
    for w in win:
        h = tiny.stream(w[None])
        t = w.shape[0]
        for r, l in enumerate(streams):
            def f(x, l=l):
                for blk in tiny.blocks[l:]:
                    x = x + blk(x)
                return x

            Jf = torch.autograd.functional.jacobian(f, h[l], vectorize=True)[0, :, :, 0]  # [t, d, t, d]
            total[r] += sum(Jf[j, :, s, :] for s in range(1, t) for j in range(s, t))
    assert lens.n_sources == 2 * 4
    assert torch.allclose(lens.matrices, total / 8, rtol=1e-5, atol=1e-6)
    assert torch.allclose(lens.matrices[-1], torch.eye(tiny.d_model, dtype=torch.float64))  # J_L = I


def test_jacobian_merge_and_resume(tiny, tmp_path):
    win = _windows(tiny, 4, 6)
    full = fit_jacobian_lens(tiny, win, settings={"corpus": "x"})
    a = fit_jacobian_lens(tiny, win[:2], indices=[0, 1], settings={"corpus": "x"})
    b = fit_jacobian_lens(tiny, win[2:], indices=[2, 3], settings={"corpus": "x"})
    m = a.merge(b)
    assert torch.allclose(m.sums, full.sums, atol=1e-12) and m.n_sources == full.n_sources and m.prompts == [0, 1, 2, 3]
    with pytest.raises(InputError, match="share"):
        a.merge(a)
    # a fit killed half-way resumes from its checkpoint and ends where an uninterrupted fit ends
    ck = tmp_path / "j.safetensors"

    class Kill(Exception):
        pass

    def die(i, n, dt):
        if i == 2:
            raise Kill

    with pytest.raises(Kill):
        fit_jacobian_lens(tiny, win, settings={"corpus": "x"}, checkpoint=ck, progress=die)
    half = JacobianLens.load(ck, tiny)
    assert half.prompts == [0, 1]
    done = fit_jacobian_lens(tiny, win, settings={"corpus": "x"}, checkpoint=ck)
    assert torch.allclose(done.sums, full.sums, atol=1e-12) and JacobianLens.load(ck).prompts == [0, 1, 2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(InputError, match="other settings"):
        fit_jacobian_lens(tiny, win, settings={"corpus": "y"}, checkpoint=ck)


def test_tuned_lens_trains_and_resumes(tiny, tmp_path):
    win = _windows(tiny, 8, 6)
    full = fit_tuned_lens(tiny, win, steps=12, batch=2, lr=1e-2)
    assert full.losses[-1] < full.losses[0]
    ck = tmp_path / "t.safetensors"

    class Kill(Exception):
        pass

    def die(i, n, dt):
        if i == 5:
            raise Kill

    with pytest.raises(Kill):
        fit_tuned_lens(tiny, win, steps=12, batch=2, lr=1e-2, checkpoint=ck, progress=die)
    assert TunedLens.load(ck, tiny).steps == 5
    res = fit_tuned_lens(tiny, win, steps=12, batch=2, lr=1e-2, checkpoint=ck)
    assert res.steps == 12 and torch.equal(res.A, full.A) and torch.equal(res.b, full.b)
    back = TunedLens.load(ck, tiny)
    assert torch.equal(back.A, full.A)
    with pytest.raises(InputError, match="batch needs"):
        fit_tuned_lens(tiny, win[:1], steps=2, batch=2)


def test_fingerprint_mismatch_refused(tiny, tmp_path):
    other = ToyResidualNet(depth=2, d=32, vocab_size=tiny.vocab_size)
    lens = TunedLens.identity(other)
    p = lens.save(tmp_path / "t.safetensors")
    with pytest.raises(InputError, match="fitted for model"):
        TunedLens.load(p, tiny)
    with pytest.raises(InputError, match="fitted for model"):
        zoo_lens(tiny, _windows(tiny, 1)[0], "tuned", lens=lens)
    with pytest.raises(InputError, match="not a 'jacobian' lens"):
        JacobianLens.load(p)
    (tmp_path / "junk.safetensors").write_bytes(b"not a lens")
    with pytest.raises(InputError, match="not a readable"):
        TunedLens.load(tmp_path / "junk.safetensors")


def test_own_output_share_order1_decomposition():
    """Order-1 iterative lens = ρ q(z) + (1 − ρ cos θ) logit lens (RMS norm, ε → 0)."""
    net = ToyResidualNet(depth=3, d=8, vocab_size=11)
    net._final.eps = 0.0
    z = torch.randint(0, 11, (1, 4))
    h = net.stream(z)
    from jetex.lenses.zoo import lens_logits

    lg = lens_logits(net, "iterative", h, [1], order=1)
    x, y = h[1], h[-1]
    rho = y.pow(2).mean(-1).sqrt() / x.pow(2).mean(-1).sqrt()
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
    U = net.unembedding_matrix
    expect = rho[..., None] * (net.final_norm(y) @ U.T) + (1 - rho * cos)[..., None] * (net.final_norm(x) @ U.T)
    assert torch.allclose(lg[0], expect, atol=1e-10)
    share = own_output_share(net, h[[1]], y, lg)
    a = (rho[..., None] * (net.final_norm(y) @ U.T)).norm(dim=-1)
    b = ((1 - rho * cos)[..., None] * (net.final_norm(x) @ U.T)).norm(dim=-1)
    assert torch.allclose(share[0], a / (a + b), atol=1e-10)
    # at the final stream the lens is q(z) itself
    assert torch.allclose(own_output_share(net, h[[-1]], y, lens_logits(net, "iterative", h, [3], order=1)), torch.ones(1, 1, 4, dtype=torch.float64))


@pytest.mark.real
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_fitted_lens_readouts_on_real_models(name, request):
    """On both real models: identity translators give the logit lens exactly; a J-lens with
    J_l = I (sums = N·I) reads the same; the readouts carry the fitted lens's kind."""
    model = request.getfixturevalue(name)
    text = "The capital of France is"
    logit = zoo_lens(model, text, "logit", top_k=3)
    tuned = zoo_lens(model, text, "tuned", lens=TunedLens.identity(model), top_k=3)
    streams, names = layer_streams(model)
    d = model.d_model
    eye = JacobianLens(model.name, model.fingerprint(), streams, names, 2.0 * torch.eye(d, dtype=torch.float64).repeat(len(streams), 1, 1), 2)
    jac = zoo_lens(model, text, "jacobian", lens=eye, top_k=3)
    assert tuned.kind == "tuned" and jac.kind == "jacobian" and logit.kind == "logit"
    assert torch.equal(tuned.top_ids, logit.top_ids) and torch.equal(jac.top_ids, logit.top_ids)
    assert torch.allclose(jac.top_logits, logit.top_logits, atol=1e-4)
