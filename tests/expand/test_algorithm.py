"""jet_expand (Algorithm 1) and exp_jet_expansion (Algorithm 2) on toy models.

The first test of any implementation: Σ terms + remainder = model logits, exactly,
for every model, block choice, order and weights (Eq. 11).
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from jetex.errors import InputError
from jetex.expand import (
    CentreGapWarning,
    Contribution,
    Embedding,
    PathFilter,
    Segment,
    Stream,
    exp_jet_expansion,
    jet_expand,
    logit_lens_expansion,
)
from jetex.models import LinearResidualNet, ToyResidualNet


def _models():
    return [LinearResidualNet(depth=3, d=6, vocab_size=9), ToyResidualNet(depth=3, d=8, vocab_size=13, hidden=16)]


def _random_simplex(n: int, g: torch.Generator) -> list[float]:
    w = torch.rand(n, generator=g, dtype=torch.float64)
    return (w / w.sum()).tolist()


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.name)
@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_decoder_identity_every_block_and_weights(model, order):
    """Expanding any block and then the decoder: Σ U e + U δ = q(z) to float precision."""
    g = torch.Generator().manual_seed(order)
    z = torch.randint(0, model.vocab_size, (2, 5), generator=g)
    q = model.reference_logits(z)
    L = model.n_blocks
    for l in range(0, L):
        centres = [Embedding()] + [Contribution(j, model.blocks[j - 1].name) for j in range(1, l + 1)]
        inner = jet_expand(model, l, centres, order, weights=_random_simplex(len(centres), g))
        outer = jet_expand(model, L, inner.terms, order, weights=_random_simplex(len(inner.terms), g))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CentreGapWarning)
            v = outer.evaluate(z)
        total = v.logits().sum(0) + v.remainder_logits()
        assert torch.allclose(total, q, atol=1e-10, rtol=0), (l, (total - q).abs().max())
        inner_v = inner.evaluate(z)
        assert torch.allclose(inner_v.terms.sum(0) + inner_v.remainder, model.stream(z)[l + 1], atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 4])
def test_linear_net_remainder_is_zero(order):
    """Remark 2: for a linear residual net, δ = 0 for every k >= 1 and every weight vector."""
    model = LinearResidualNet(depth=4, d=5, vocab_size=7)
    g = torch.Generator().manual_seed(1)
    z = torch.randint(0, 7, (3, 4), generator=g)
    xi = [Embedding(), Contribution(1, "block.1")]
    for l in range(1, model.n_blocks + 1):
        exp = jet_expand(model, l, xi, order, weights=_random_simplex(len(xi), g))
        v = exp.evaluate(z)
        assert v.remainder.abs().max() < 1e-12
        xi = exp.terms


def test_linear_net_order0_remainder_nonzero():
    """At k = 0 the jets drop the variate, so even a linear net leaves a remainder (guards Remark 2's test)."""
    model = LinearResidualNet(depth=2, d=5, vocab_size=7)
    z = torch.randint(0, 7, (1, 4))
    exp = jet_expand(model, 1, [Embedding(), Contribution(1, "block.1")], 0)
    assert exp.evaluate(z).remainder.abs().max() > 1e-3


def test_logit_lens_is_order0_decoder_expansion():
    model = ToyResidualNet(depth=3)
    z = torch.randint(0, model.vocab_size, (1, 6))
    h = model.stream(z)
    for l in range(model.n_blocks + 1):
        v = logit_lens_expansion(model, l).evaluate(z)
        assert torch.allclose(v.logits()[0], model.decode(h[l]), atol=1e-12)


def test_term_names_read_as_paths():
    model = ToyResidualNet(depth=2)
    inner = jet_expand(model, 1, [Embedding(), Contribution(1, "block.1", path=("emb", "block.1"))], 1)
    outer = jet_expand(model, "dec", inner.terms, 1)
    assert sorted(outer.names) == sorted(
        ["emb → block.2 → dec", "emb → dec", "emb → block.1 → block.2 → dec", "emb → block.1 → dec"]
    )


def test_two_block_walkthrough_four_paths():
    """The paper's Sec. 3 walk-through: a two-block net carved into 4 input-to-output paths."""
    from jetex import toy_two_block

    lm = toy_two_block(d=16, vocab_size=20)
    x0, x1 = Embedding(), Contribution(1, "block.1", path=("emb", "block.1"))
    inner = jet_expand(lm, 1, [x0, x1], order=1)
    outer = jet_expand(lm, lm.n_blocks, inner.terms, order=1)
    assert len(outer.terms) == 4
    z = torch.randint(0, 20, (1, 8))
    v = outer.evaluate(z)
    assert v.logits().shape == (4, 1, 8, 20)
    assert torch.allclose(v.logits().sum(0) + v.remainder_logits(), lm(z), atol=1e-10)


def test_lazy_paths_equal_algorithm_2():
    for model in _models():
        z = torch.randint(0, model.vocab_size, (2, 4))
        for k in (0, 1, 2):
            pe = exp_jet_expansion(model, k)
            v = pe.materialize().evaluate(z)
            explicit = dict(zip(v.names, v.logits()))
            lazy = pe.evaluate(z, list(pe.paths()))
            assert len(lazy.names) == len(explicit) == 2**model.n_blocks
            for n, lg in zip(lazy.names, lazy.logits):
                assert torch.allclose(explicit[n], lg, atol=1e-12), n


def test_super_exponential_degrees_sum_to_exponential_paths():
    """Splitting a path's jets into Taylor degrees and summing the degree-paths recovers... the
    same first-step value; here we check the count and that degree terms sum to the jet at a step."""
    model = ToyResidualNet(depth=2, d=6, vocab_size=7, hidden=8)
    k = 2
    pe = exp_jet_expansion(model, k, split_degrees=True)
    assert pe.n_paths == len(list(pe.paths())) == pe.count()
    assert pe.n_paths == 2 * (k + 2) * (k + 1)
    z = torch.randint(0, 7, (1, 3))
    # paths that share blocks and differ only in the decoder degree sum to the whole decoder jet
    # of the same (unsplit) centre weighted by the split expansion's decoder weight
    paths = [p for p in pe.paths() if p.blocks == (1,)]
    vals = pe.evaluate(z, paths)
    total = vals.logits.sum(0)
    from jetex.jets import jet

    h = model.stream(z)
    expected = pe.weight(model.n_blocks + 1) * model.unembed(jet(model.final_norm, model.blocks[0](h[0]), h[-1], k))
    assert torch.allclose(total, expected, atol=1e-10)


def test_path_filters_select_without_enumerating_all():
    model = ToyResidualNet(depth=6, d=4, vocab_size=5, hidden=4)
    pe = exp_jet_expansion(model, 1)
    assert pe.count() == 64
    flt = PathFilter(must_use=("block.2",), avoid=(5,), max_len=3)
    got = list(pe.paths(flt))
    brute = [S for r in range(0, 7) for S in itertools.combinations(range(1, 7), r) if 2 in S and 5 not in S and len(S) <= 3]
    assert sorted(p.blocks for p in got) == sorted(brute)
    assert pe.count(flt) == len(brute)
    big = ToyResidualNet(depth=40, d=4, vocab_size=5, hidden=4)
    pe_big = exp_jet_expansion(big, 1)
    assert pe_big.n_paths == 2**40
    first = next(iter(pe_big.paths(PathFilter(min_len=2, max_len=2))))
    assert len(first) == 2
    assert pe_big.count(PathFilter(max_len=1)) == 41


def test_split_count_matches_enumeration_under_filters():
    model = ToyResidualNet(depth=4, d=4, vocab_size=5, hidden=4)
    pe = exp_jet_expansion(model, 2, split_degrees=True)
    for flt in [PathFilter(), PathFilter(must_use=(1,)), PathFilter(avoid=(1,)), PathFilter(max_len=2, degrees=(0, 2))]:
        assert pe.count(flt) == len(list(pe.paths(flt)))


def test_rank_orders_by_target_logit():
    model = ToyResidualNet(depth=3)
    z = torch.randint(0, model.vocab_size, (1, 5))
    pe = exp_jet_expansion(model, 1)
    ranked = pe.rank(z, list(pe.paths()), token=3, top=8)
    logits = [r.logit for r in ranked]
    assert logits == sorted(logits, reverse=True)
    vals = pe.evaluate(z, [r.path for r in ranked], position=-1, weighted=False)
    assert torch.allclose(vals.logits[:, 0, 3].float(), torch.tensor(logits).float(), atol=1e-5)
    # on Algorithm 2's weighted scale the same ranking machinery gives the Eq. 11 summands
    ranked_w = pe.rank(z, list(pe.paths()), token=3, top=8, weighted=True)
    vals_w = pe.evaluate(z, [r.path for r in ranked_w], position=-1)
    assert torch.allclose(vals_w.logits[:, 0, 3].float(), torch.tensor([r.logit for r in ranked_w]).float(), atol=1e-5)
    assert all(r.weighted for r in ranked_w) and not any(r.weighted for r in ranked)
    q = model(z)[0, -1].detach()
    assert ranked[0].token == 3 and abs(ranked[0].share - ranked[0].logit / float(q[3])) < 1e-6


@pytest.mark.parametrize("order", [0, 1])
def test_unweighted_path_is_the_paths_own_jet_composition(order):
    """Unweighted path emb → block.2 → dec = U J^k γ_{L+1}(J^k γ_2(η)(h_1))(h_L): every Algorithm-2
    weight set to 1 (k = 0: the bigram-style path U γ_{L+1}(γ_2(η))); weighted differs by the weights."""
    from jetex.jets import jet

    model = ToyResidualNet(depth=3, d=6, vocab_size=7, hidden=8)
    z = torch.randint(0, model.vocab_size, (1, 5), generator=torch.Generator().manual_seed(2))
    h = model.stream(z)
    pe = exp_jet_expansion(model, order)
    p = pe.path("block.2")
    x = jet(model.blocks[1], h[0], h[1], order)
    expected = model.unembed(jet(model.final_norm, x, h[-1], order))
    got = pe.evaluate(z, [p], weighted=False).logits[0]
    assert torch.allclose(got, expected, atol=1e-10)
    weighted = pe.evaluate(z, [p]).logits[0]
    assert not torch.allclose(weighted, expected, atol=1e-3)
    r = pe.rank(z, [p], token=0, top=1)[0]
    assert r.token_str == model.token_strings([0])[0] and r.top_str == model.token_strings([r.top_token])[0]


def test_centre_gap_warning_and_bad_input():
    model = ToyResidualNet(depth=2)
    z = torch.randint(0, model.vocab_size, (1, 4))
    with pytest.warns(CentreGapWarning, match="relative gap"):
        jet_expand(model, 2, [Embedding()], 1).evaluate(z)  # η alone does not sum to h_2
    with warnings.catch_warnings():
        warnings.simplefilter("error", CentreGapWarning)
        jet_expand(model, 2, [Embedding(), Segment(0, 2, "all")], 1).evaluate(z)  # sums exactly
    with pytest.raises(InputError, match="order"):
        jet_expand(model, 1, [Embedding()], -1)
    with pytest.raises(InputError, match="order"):
        jet_expand(model, 1, [Embedding()], 1.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown block"):
        jet_expand(model, "mlp.99", [Embedding()], 1)
    with pytest.raises(InputError, match="out of range"):
        jet_expand(model, 7, [Embedding()], 1)
    with pytest.raises(InputError, match="simplex"):
        jet_expand(model, 1, [Embedding(), Stream(1)], 1, weights=[0.7, 0.7])
    with pytest.raises(InputError, match="at least one centre"):
        jet_expand(model, 1, [], 1)


def test_tensor_weights_must_lie_in_the_simplex():
    """Tensor weights are checked like float weights: non-negative, summing to 1 along dim 0."""
    model = ToyResidualNet(depth=2, d=6, vocab_size=7, hidden=8)
    centres = [Embedding(), Contribution(1, "block.1")]
    for bad in (torch.tensor([3.0, -2.0]), torch.tensor([0.7, 0.7]), torch.tensor([float("nan"), 1.0])):
        with pytest.raises(InputError, match="simplex"):
            jet_expand(model, 1, centres, 1, weights=bad)
    per_pos = torch.full((2, 3, 4), 0.5, dtype=torch.float64)
    per_pos[0, 1, 2], per_pos[1, 1, 2] = 1.2, -0.2  # sums to 1 but one weight is negative
    with pytest.raises(InputError, match="non-negative"):
        jet_expand(model, 1, centres, 1, weights=per_pos)
    per_pos = torch.full((2, 3, 4), 0.5, dtype=torch.float64)
    per_pos[0, 2, 0] = 0.6  # one position sums to 1.1
    with pytest.raises(InputError, match="sum is off by up to 0.1"):
        jet_expand(model, 1, centres, 1, weights=per_pos)
    with pytest.raises(InputError, match="floating point"):
        jet_expand(model, 1, centres, 1, weights=torch.tensor([1, 0]))
    with pytest.raises(InputError, match="leading centre dimension"):
        jet_expand(model, 1, [Embedding()], 1, weights=torch.tensor(1.0))
    # accepted: exact simplex points, and float32 weights normalised in float32 (rounding within tolerance)
    w32 = torch.rand(2, 3, 4)
    w32 = w32 / w32.sum(0)
    jet_expand(model, 1, centres, 1, weights=w32)
    jet_expand(model, 1, centres, 1, weights=torch.tensor([1.0, 0.0], dtype=torch.float64))
    jet_expand(model, 1, centres, 1, weights=torch.tensor([1.0 + 1e-12, -1e-12], dtype=torch.float64))


def _split_models():
    return [ToyResidualNet(depth=3, d=6, vocab_size=7, hidden=8), LinearResidualNet(depth=3, d=5, vocab_size=6)]


@pytest.mark.parametrize("model", _split_models(), ids=lambda m: m.name)
@pytest.mark.parametrize("order", [1, 2])
def test_super_exponential_lazy_equals_explicit_split_build(model, order):
    """Every degree-split path of the lazy super-exponential expansion equals the matching term of
    Algorithm 2 built explicitly with jet_expand(split_degrees=True) at every step."""
    z = torch.randint(0, model.vocab_size, (2, 4), generator=torch.Generator().manual_seed(order))
    pe = exp_jet_expansion(model, order, split_degrees=True)
    exp = pe.materialize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CentreGapWarning)
        v = exp.evaluate(z)
    explicit = dict(zip(v.names, v.logits()))
    paths = list(pe.paths())
    assert len(explicit) == len(v.names) == len(paths) == pe.n_paths  # names are unique
    lazy = pe.evaluate(z, paths)
    assert sorted(lazy.names) == sorted(explicit)
    for n, lg in zip(lazy.names, lazy.logits):
        assert torch.allclose(explicit[n], lg, atol=1e-12, rtol=0), n
    # and the split terms sum (with the remainder) to the model
    assert torch.allclose(v.logits().sum(0) + v.remainder_logits(), model.reference_logits(z), atol=1e-10)


@pytest.mark.parametrize("order", [1, 2])
def test_super_exponential_path_through_middle_block_by_hand(order):
    """emb → block.1 → block.2[j] → dec[i], written out with jet_coefficients, for every j, i."""
    from jetex.jets import jet_coefficients

    model = ToyResidualNet(depth=3, d=6, vocab_size=7, hidden=8)
    z = torch.randint(0, model.vocab_size, (1, 5), generator=torch.Generator().manual_seed(11))
    pe = exp_jet_expansion(model, order, split_degrees=True)
    h = model.stream(z)
    g1 = model.blocks[0](h[0])
    c_mid = jet_coefficients(model.blocks[1], g1, h[1], order)  # block 2 around γ_1(η), variate h_1
    w2, w_dec = 1 / 2, 1 / (2 * (order + 2) ** 2)  # uniform weights 1/|ξ|: 2 centres, then 2(k+2)^2 at the decoder
    assert (pe.weight(2), pe.weight(model.n_blocks + 1)) == (w2, w_dec)
    from jetex.expand import Path

    seen = []
    for j in range(order + 1):
        x = w2 * c_mid[j]
        c_dec = jet_coefficients(model.final_norm, x, h[-1], order)
        for i in range(order + 1):
            expected = w_dec * model.unembed(c_dec[i])
            p = Path((1, 2), (None, j), i)
            got = pe.evaluate(z, [p]).logits[0]
            assert p.name(model) == f"emb → block.1 → block.2[{j}] → dec[{i}]"
            assert torch.allclose(got, expected, atol=1e-12), (j, i)
            seen.append(got)
    # the degree paths are genuinely different from one another
    assert all(not torch.allclose(a, b) for a, b in itertools.combinations(seen, 2))


@pytest.mark.parametrize("split, order", [(False, 0), (False, 1), (False, 2), (True, 1), (True, 2)])
def test_path_expansion_remainder_identity(split, order):
    """remainder(z) = q(z) − Σ all paths, and it is Algorithm 2's own U δ_L (explicit build)."""
    for model in _split_models():
        z = torch.randint(0, model.vocab_size, (2, 4), generator=torch.Generator().manual_seed(5))
        pe = exp_jet_expansion(model, order, split_degrees=split)
        rem = pe.remainder(z, batch_size=7)  # several chunks
        lazy = pe.evaluate(z, list(pe.paths())).logits.sum(0)
        q = model.reference_logits(z)
        assert torch.allclose(lazy + rem, q, atol=1e-10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CentreGapWarning)
            v = pe.materialize().evaluate(z)
        assert torch.allclose(rem, v.remainder_logits(), atol=1e-10)
        if isinstance(model, LinearResidualNet) and order >= 1:
            assert rem.abs().max() < 1e-10  # Remark 2, with or without splitting degrees
        elif isinstance(model, ToyResidualNet):
            assert rem.abs().max() > 1e-6  # a non-linear net leaves a remainder: the check is not vacuous


def test_path_expansion_remainder_refuses_many_paths():
    model = ToyResidualNet(depth=13, d=4, vocab_size=5, hidden=4)
    z = torch.randint(0, 5, (1, 3))
    with pytest.raises(InputError, match="remainder needs all 8192 paths"):
        exp_jet_expansion(model, 1).remainder(z)
    split = exp_jet_expansion(ToyResidualNet(depth=6, d=4, vocab_size=5, hidden=4), 2, split_degrees=True)
    assert split.n_paths == 2 * 4**5 * 3
    with pytest.raises(InputError, match="super-exponential"):
        split.remainder(z)
    with pytest.raises(InputError, match="eagerly"):
        split.materialize()
    small = exp_jet_expansion(ToyResidualNet(depth=3, d=4, vocab_size=5, hidden=4), 1)
    with pytest.raises(InputError, match="at most 4 paths"):
        small.remainder(z, max_paths=4)
    with pytest.raises(InputError, match="needs order k >= 1"):
        jet_expand(model, 1, [Embedding()], 0, split_degrees=True)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_algorithm1_term_values_follow_the_conventions(order):
    """Eq. 9 and footnote 2, value by value: block term i = w_i·J^k γ_{l+1}(x_i)(h_l) (at k = 0,
    w_i·γ_{l+1}(x_i)); identity term i = x_i for k >= 1 and w_i·x_i for k = 0."""
    from jetex.jets import jet

    model = ToyResidualNet(depth=3, d=8, vocab_size=13, hidden=16).double()
    z = torch.randint(0, model.vocab_size, (2, 4), generator=torch.Generator().manual_seed(5))
    l = 1
    centres = [Embedding(), Contribution(1, model.blocks[0].name)]
    w = [0.3, 0.7]
    v = jet_expand(model, l, centres, order, weights=w).evaluate(z)
    h = model.stream(z)  # [L+1, b, t, d]
    x = [h[0], h[1] - h[0]]  # the centres' values: η and γ_1(η)
    gamma = model.blocks[l]
    assert v.terms.shape[0] == 4  # (jet, identity) per centre
    for i in range(2):
        expected_jet = gamma(x[i]) if order == 0 else jet(gamma, x[i], h[l], order)
        assert torch.allclose(v.terms[2 * i], w[i] * expected_jet, atol=1e-12, rtol=0)
        expected_id = w[i] * x[i] if order == 0 else x[i]
        assert torch.allclose(v.terms[2 * i + 1], expected_id, atol=1e-12, rtol=0)
