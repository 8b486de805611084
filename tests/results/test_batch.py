"""Batches: lists of texts and padded id batches give, item by item, the single-input results.

On tiny float64 models every value of a padded batch equals the single-sequence run up to
the reassociation of sums over a different number of keys / rows: for GPT-2 (all float64)
1e-12 relative to the magnitudes compared; Llama and Gemma 3 compute their attention
softmax in float32 even for a float64 model (transformers' eager attention upcasts to
float32), whose sum over T keys is reassociated when T changes: 1e-6 relative (T·eps32 with
T ≤ 10, eps32 = 1.2e-7). A padding position leaking into a real one changes values at
O(1e-2..1). The float32 real-model check is in test_batch_real.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jetex  # noqa: E402
from _tiny import make_hf, make_tokenizer  # noqa: E402
from jetex.errors import InputError  # noqa: E402
from jetex.models.hf import HFResidualModel  # noqa: E402
from jetex.results import ResultList  # noqa: E402

TEXTS = ["the cat sat on the mat by the door", "a dog", "the king of france said"]
#: relative tolerances (see the module docstring): float64 throughout / float32 softmax
TOL = {"gpt2": 1e-12, "llama": 1e-6, "gemma3": 1e-6}


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3"])
def model(request):
    """float64 tiny models: rotary + GQA (llama), absolute positions (gpt2), sliding window 4 (gemma3)."""
    m = HFResidualModel.from_hf(make_hf(request.param).double(), make_tokenizer())
    m.tol = TOL[request.param]
    return m


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale


def _left_padded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, m = torch.full_like(ids, 3), torch.zeros_like(mask)
    T = ids.shape[1]
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        out[i, T - n :], m[i, T - n :] = ids[i, :n], 1
    return out, m


def test_stream_of_a_padded_batch_equals_each_row_alone(model):
    ids, mask = model.tokenize_batch(TEXTS)
    assert mask.sum(1).tolist() == [model.tokenize(t).shape[-1] for t in TEXTS]
    right = model.stream(ids, mask)
    lids, lmask = _left_padded(ids, mask)
    left = model.stream(lids, lmask)
    T = ids.shape[1]
    for i, text in enumerate(TEXTS):
        alone = model.stream(model.tokenize(text))[:, 0]
        n = alone.shape[1]
        _close(right[:, i, :n], alone, model.tol)
        _close(left[:, i, T - n :], alone, model.tol)
        assert not right[:, i, n:].any() and not left[:, i, : T - n].any()  # padding positions are 0


def test_padding_tokens_do_not_matter(model):
    """Whatever id fills the padding, the real positions are the same (it is never read)."""
    ids, mask = model.tokenize_batch(TEXTS)
    other = torch.where(mask.bool(), ids, torch.full_like(ids, 7))
    assert torch.equal(model.stream(ids, mask), model.stream(other, mask))


def test_lenses_of_a_batch_equal_one_by_one(model):
    tol = max(model.tol, 2.0**-23)  # lens values are stored as float32: one float32 rounding more
    ids, mask = model.tokenize_batch(TEXTS)
    lids, lmask = _left_padded(ids, mask)
    singles = [jetex.iterative_lens(model, t, order=1, top_k=4) for t in TEXTS]
    for batch in (jetex.iterative_lens(model, TEXTS, order=1, top_k=4),
                  jetex.iterative_lens(model, lids, order=1, top_k=4, attention_mask=lmask)):
        assert isinstance(batch, ResultList) and len(batch) == len(TEXTS)
        for r, s in zip(batch, singles):
            assert r.tokens == s.tokens and r.input_ids.tolist() == s.input_ids.tolist()
            for f in ("top_logits", "cosine", "remainder_norm", "model_top_logits"):
                _close(getattr(r, f), getattr(s, f), tol)
    for text, j in zip(TEXTS, jetex.joint_lens(model, TEXTS, order=1, optimize=True, top_k=4)):
        sj = jetex.joint_lens(model, text, order=1, optimize=True, top_k=4)
        for f in ("top_logits", "cosine", "weights", "expansion_top_logits", "expansion_cosine"):
            _close(getattr(j, f), getattr(sj, f), tol)


def test_attribution_and_paths_of_a_batch_equal_one_by_one(model):
    if model.config.model_type != "gemma3_text":
        pytest.skip("one architecture suffices: attribution and paths run item by item on the batch's rows")
    attrs = jetex.attribute(model, TEXTS, method="jetxlogit", layer=2, order=1)
    pe = jetex.exp_jet_expansion(model, 1)
    paths = list(pe.paths(jetex.PathFilter(max_len=1)))
    ids, mask = model.tokenize_batch(TEXTS)
    ranks = pe.rank(ids, paths, top=5, attention_mask=mask)
    for text, a, r in zip(TEXTS, attrs, ranks):
        sa = jetex.attribute(model, text, method="jetxlogit", layer=2, order=1)
        assert a.target_id == sa.target_id and a.tokens == sa.tokens
        _close(a.scores, sa.scores, model.tol)
        sr = pe.rank(model.tokenize(text), paths, top=5)
        assert [p.path for p in r] == [p.path for p in sr] and r.position == sr.position == len(sa.tokens) - 1
        _close(torch.tensor([p.logit for p in r]), torch.tensor([p.logit for p in sr]), model.tol)
    targets = jetex.attribute(model, TEXTS, target=["cat", 5, None])
    assert [a.target_id for a in targets][:2] == [model.tokenizer.convert_tokens_to_ids("cat"), 5]


@pytest.fixture(scope="module")
def m():
    return HFResidualModel.from_hf(make_hf("llama"), make_tokenizer())


def test_return_type_follows_the_input_kind(m):
    ids = m.tokenize("the cat")
    assert isinstance(jetex.iterative_lens(m, "the cat", top_k=2), jetex.LensResult)
    assert isinstance(jetex.iterative_lens(m, ids, top_k=2), jetex.LensResult)  # [1, t]: one sequence
    assert isinstance(jetex.iterative_lens(m, ids[0], top_k=2), jetex.LensResult)
    one = jetex.iterative_lens(m, ["the cat"], top_k=2)
    assert isinstance(one, ResultList) and len(one) == 1
    assert isinstance(jetex.iterative_lens(m, ids, top_k=2, attention_mask=torch.ones_like(ids)), ResultList)
    assert isinstance(jetex.iterative_lens(m, ids.repeat(2, 1), top_k=2), ResultList)
    assert isinstance(jetex.attribute(m, [1, 4, 29]), jetex.Attribution)  # a list of ints is one sequence
    assert isinstance(jetex.attribute(m, [[1, 4, 29]]), ResultList)


@pytest.mark.parametrize(
    "inputs, mask, message",
    [
        (["the cat", [1, 4]], None, r"mixes texts \(item 0\) and token ids \(item 1\)"),
        ([[1, 4, 29], [1, 4]], None, r"different lengths \(3, 2\) and no attention_mask"),
        (torch.tensor([[1, 4, 29], [1, 4, 0]]), torch.tensor([[1, 0, 1], [1, 1, 0]]), "row 0 has padding between tokens"),
        (torch.tensor([[1, 4, 29], [1, 4, 0]]), torch.tensor([[1, 1, 1]]), r"attention_mask has shape \(1, 3\)"),
        (torch.tensor([[1, 4, 29], [1, 4, 0]]), torch.tensor([[1, 1, 1], [0, 0, 0]]), "row 1 has no token"),
        (torch.tensor([[1, 4, 29], [1, 4, 0]]), torch.tensor([[1, 1, 1], [1, 2, 0]]), "only 0 .padding. and 1"),
        (["the cat", "a dog"], torch.ones(2, 3), "attention_mask applies to token ids"),
        ([], None, "empty"),
        (["the cat", 3], None, "batch item 1 is a int"),
        ([[1, 4, 999]], None, "must lie in 0..76"),
    ],
)
def test_bad_batches_are_one_line_errors(m, inputs, mask, message):
    for call in (
        lambda: jetex.iterative_lens(m, inputs, attention_mask=mask),
        lambda: jetex.attribute(m, inputs, attention_mask=mask),
    ):
        with pytest.raises(InputError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


def test_target_count_must_match_the_batch(m):
    with pytest.raises(InputError, match="2 targets for a batch of 3"):
        jetex.attribute(m, TEXTS, target=[1, 2])
