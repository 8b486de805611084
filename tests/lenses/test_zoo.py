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
        fit_tuned_lens(tiny, win, steps=12, batch=2, lr=1e-2, checkpoint=ck, progress=die, checkpoint_every=0)
    assert TunedLens.load(ck, tiny).steps == 5
    res = fit_tuned_lens(tiny, win, steps=12, batch=2, lr=1e-2, checkpoint=ck)
    assert res.steps == 12 and torch.equal(res.A, full.A) and torch.equal(res.b, full.b)
    back = TunedLens.load(ck, tiny)
    assert torch.equal(back.A, full.A)
    # with a long checkpoint interval only the first step is on disk when the fit dies; the
    # resumed fit redoes the rest and ends where the uninterrupted one does, and writes its end
    ck2 = tmp_path / "t2.safetensors"
    with pytest.raises(Kill):
        fit_tuned_lens(tiny, win, steps=12, batch=2, lr=1e-2, checkpoint=ck2, progress=die, checkpoint_every=1e9)
    assert TunedLens.load(ck2, tiny).steps == 1
    res2 = fit_tuned_lens(tiny, win, steps=12, batch=2, lr=1e-2, checkpoint=ck2, checkpoint_every=1e9)
    assert res2.steps == 12 and torch.equal(res2.A, full.A) and torch.equal(res2.b, full.b)
    assert TunedLens.load(ck2, tiny).steps == 12 and torch.equal(TunedLens.load(ck2, tiny).A, full.A)
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


def test_fingerprint_checked_once_per_model(tiny, tmp_path, monkeypatch):
    """A fitted lens is hashed against a model once, then read without re-hashing; another
    model object (other weights) is still refused after a successful check."""
    import jetex
    from _tiny import save_tiny

    lens = TunedLens.identity(tiny)
    ids = _windows(tiny, 1)[0]
    first = zoo_lens(tiny, ids, "tuned", lens=lens, top_k=3)
    calls = []
    real = type(tiny).fingerprint
    monkeypatch.setattr(type(tiny), "fingerprint", lambda self: calls.append(1) or real(self))
    again = zoo_lens(tiny, ids, "tuned", lens=lens, top_k=3)
    assert calls == [] and torch.equal(first.top_ids, again.top_ids)
    other = jetex.load(str(save_tiny(tmp_path / "other", "llama", seed=1)), dtype=torch.float64)
    with pytest.raises(InputError, match="fitted for model"):
        zoo_lens(other, ids, "tuned", lens=lens)
    assert calls == [1]


def test_jacobian_readout_follows_sums_in_place(tiny):
    """The J-lens readout's cached cast of J_l follows in-place updates of the sums (a fit in
    progress) and of the count: translate() always equals (sums / N) h."""
    streams, _ = layer_streams(tiny)
    d = tiny.d_model
    g = torch.Generator().manual_seed(3)
    lens = JacobianLens(tiny.name, tiny.fingerprint(), streams, [str(l) for l in streams],
                        torch.randn(len(streams), d, d, generator=g, dtype=torch.float64), 2)
    h = tiny.stream(_windows(tiny, 1)[0][None])[streams]
    direct = lambda: torch.einsum("rij,rbtj->rbti", lens.sums / lens.n_sources, h.double()).to(h.dtype)
    assert torch.allclose(lens.translate(h, streams), direct())
    lens.sums += torch.randn(lens.sums.shape, generator=g, dtype=torch.float64)
    assert torch.allclose(lens.translate(h, streams), direct())
    lens.n_sources = 5
    assert torch.allclose(lens.translate(h, streams), direct())
    one = lens.translate(h[[1]], [streams[1]])
    assert torch.allclose(one, direct()[[1]])


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
    from jetex.lenses.lens import iterative_lens_terms

    def share_of(l):
        c = iterative_lens_terms(net, h, [l], 1)[:, :, 0]
        return own_output_share(net, c.sum(0), c[0], y[0], lens_logits(net, "iterative", h, [l], order=1)[:, 0])

    a = (rho[..., None] * (net.final_norm(y) @ U.T)).norm(dim=-1)
    b = ((1 - rho * cos)[..., None] * (net.final_norm(x) @ U.T)).norm(dim=-1)
    assert torch.allclose(share_of(1), a / (a + b), atol=1e-10)
    # at the final stream the lens is q(z) itself
    assert torch.allclose(share_of(3), torch.ones(1, 4, dtype=torch.float64))


@pytest.mark.parametrize("order", [1, 2])
def test_lens_eval_share_is_lens_result_q_share(tiny, order):
    """lens-eval's own_share of the iterative jet lens is LensResult.q_share (one definition),
    per row and position, with the norm's ε in place; for the joint lens it is |w ρ|‖q̃‖ /
    (|w ρ|‖q̃‖ + ‖row − w ρ q̃‖) up to ε."""
    from jetex.apps.lens_eval import LensSpec, _rows_logits

    ids = _windows(tiny, 1, t=6)[0]
    streams, _ = layer_streams(tiny)
    h = tiny.stream(ids[None])
    _, share = _rows_logits(tiny, LensSpec("jet", "iterative", None, order), h, streams)
    res = iterative_lens(tiny, ids, order=order)
    assert share.shape == res.q_share.shape
    assert torch.allclose(share.float(), res.q_share, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(share, torch.ones_like(share))  # not trivially 1
    if order == 1:
        lg, js = _rows_logits(tiny, LensSpec("joint", "joint", None, 1), h, streams)
        from jetex.lenses.lens import joint_centres

        segs, _ = joint_centres(tiny, "layers")
        hs = h[:, 0]
        X = torch.stack([hs[0] if a < 0 else hs[b] - hs[a] for a, b in segs])
        rms = lambda v: v.pow(2).mean(-1).sqrt()
        own = (rms(hs[-1]) / rms(X) / len(segs))[..., None] * (tiny.final_norm(hs[-1]) @ tiny.unembedding_matrix.T)
        a = own.norm(dim=-1)
        expect = a / (a + (lg - own).norm(dim=-1))
        assert torch.allclose(js, expect, rtol=1e-3, atol=1e-4)


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


def test_heldout_eval_rows_in_chunks_equal_direct(tiny):
    """eval_heldout gives the same table whatever its row chunk, and its KL / top-1 / rank of
    the logit lens equal a direct computation over all rows at once."""
    import torch.nn.functional as F

    from jetex.apps.lens_eval import LensSpec, eval_heldout

    win = _windows(tiny, 2, t=5, seed=4)
    specs = [LensSpec("logit", "logit"), LensSpec("jet-1", "iterative", None, 1)]
    a = eval_heldout(tiny, win, specs, row_chunk=1)
    b = eval_heldout(tiny, win, specs, row_chunk=64)
    assert a.table == b.table
    streams, names = layer_streams(tiny)
    kl, top1, ranks = torch.zeros(len(streams), dtype=torch.float64), torch.zeros(len(streams), dtype=torch.float64), []
    for w in win:
        h = tiny.stream(w[None])
        logp = F.log_softmax(tiny.decode(h[-1][0]).double(), -1)[1:]
        lg = torch.stack([tiny.decode(h[l][0]).double() for l in streams])[:, 1:]
        kl += (logp.exp() * (logp - F.log_softmax(lg, -1))).sum(-1).sum(-1)
        top1 += (lg.argmax(-1) == logp.argmax(-1)).double().sum(-1)
        ranks.append((lg > lg.gather(-1, logp.argmax(-1)[None, :, None].expand(len(streams), -1, 1))).sum(-1) + 1)
    n = 2 * 4
    rows = {r["row"]: r for r in a.table if r["lens"] == "logit"}
    ranks = torch.cat(ranks, 1).double()
    for i, name in enumerate(names):
        assert rows[name]["kl"] == pytest.approx(float(kl[i] / n), abs=1e-5)
        assert rows[name]["top1"] == pytest.approx(float(top1[i] / n), abs=1e-5)
        assert rows[name]["rank_mean"] == pytest.approx(float(ranks[i].mean()), abs=0.01)


def test_concept_eval_equals_brute_force(tiny):
    """pass@k of eval_concepts (which decodes the prompt's last position only) equals ranks
    read from each lens's full readout over every position (zoo_lens / iterative_lens)."""
    from jetex.apps.lens_eval import ConceptItem, LensSpec, eval_concepts

    items = [ConceptItem("the capital of the country of paris is", "france", "paris", "s"),
             ConceptItem("the capital of italy is", "italy", "rome", "s")]
    lens = TunedLens.identity(tiny)
    lens.A.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    specs = [LensSpec("logit", "logit"), LensSpec("tuned", "tuned", lens), LensSpec("jet-1", "iterative", None, 1)]
    res = eval_concepts(tiny, items, specs)
    assert res.n_items == 2 and not res.dropped
    streams, names = layer_streams(tiny)
    from jetex.lenses.zoo import lens_logits

    for s in specs:
        hits = torch.zeros(2, 3, len(streams))
        for it in items:
            h = tiny.stream(tiny.tokenize(it.prompt))
            lg = lens_logits(tiny, s.kind, h, streams, lens=s.lens, order=s.order)[:, 0, -1]  # all positions, then the last
            for c, w in enumerate((it.intermediate, it.target)):
                tok = tiny.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0]
                rank = (lg > lg[:, tok : tok + 1]).sum(-1)
                for ki, k in enumerate((1, 5, 10)):
                    hits[c, ki] += (rank < k).float()
        rows = {r["row"]: r for r in res.table if r["lens"] == s.name}
        for i, name in enumerate(names):
            for c, tag in enumerate(("int", "tgt")):
                for ki, k in enumerate((1, 5, 10)):
                    assert rows[name][f"{tag}@{k}"] == pytest.approx(float(hits[c, ki, i] / 2)), (s.name, name, tag, k)
