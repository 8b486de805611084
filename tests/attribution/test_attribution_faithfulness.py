"""Erasure metrics (comprehensiveness, sufficiency, AOPC) on cases whose answer is known."""

from __future__ import annotations

import pytest
import torch

from jetex.attribution import DEFAULT_RATIOS, MethodSpec, attribute, erasure_curve, evaluate_faithfulness, faithfulness, load_prompts
from jetex.attribution.faithfulness import n_selected, target_prob_fn
from jetex.errors import InputError

BOS, KEY = 1, 7


def key_decides(ids: list[int]) -> float:
    """A fake scorer: the target is likely iff token KEY is present; BOS must stay first."""
    assert ids[0] == BOS, "BOS must never be removed"
    return 0.9 if KEY in ids else 0.1


IDS = [BOS, 20, 21, KEY, 22, 23, 24, 25, 26, 27, 28]  # BOS + 10 rankable tokens


def test_n_selected():
    assert [n_selected(r, 10) for r in DEFAULT_RATIOS] == [1, 1, 1, 2, 5]
    assert [n_selected(r, 3) for r in DEFAULT_RATIOS] == [1, 1, 1, 1, 2]
    assert [n_selected(r, 200) for r in DEFAULT_RATIOS] == [2, 10, 20, 40, 100]


def test_key_token_ranked_first_is_perfectly_faithful():
    ranking = [3] + [i for i in range(1, 11) if i != 3]
    c = erasure_curve(IDS, ranking, key_decides, keep=[0])
    assert c.full_prob == 0.9 and c.k == (1, 1, 1, 2, 5)
    assert c.comprehensiveness == pytest.approx((0.8,) * 5)
    assert c.sufficiency == pytest.approx((0.0,) * 5)
    assert c.aopc_comprehensiveness == pytest.approx(0.8) and c.aopc_sufficiency == pytest.approx(0.0)


def test_key_token_ranked_last_is_unfaithful():
    ranking = [i for i in range(1, 11) if i != 3] + [3]
    c = erasure_curve(IDS, ranking, key_decides, keep=[0])
    assert c.comprehensiveness == pytest.approx((0.0,) * 5)
    assert c.sufficiency == pytest.approx((0.8,) * 5)


def test_key_token_ranked_fourth_enters_at_50_percent():
    ranking = [1, 2, 4, 3, 5, 6, 7, 8, 9, 10]  # KEY (position 3) is 4th: inside top-5 only
    c = erasure_curve(IDS, ranking, key_decides, keep=[0])
    assert c.comprehensiveness == pytest.approx((0, 0, 0, 0, 0.8))
    assert c.sufficiency == pytest.approx((0.8, 0.8, 0.8, 0.8, 0))
    assert c.aopc_comprehensiveness == pytest.approx(0.16) and c.aopc_sufficiency == pytest.approx(0.64)


def test_erased_sequences_are_scored_once_and_keep_order():
    seen: list[list[int]] = []

    def prob(ids):
        seen.append(ids)
        return key_decides(ids)

    erasure_curve(IDS, list(range(1, 11)), prob, keep=[0])
    assert len(seen) == len({tuple(s) for s in seen}) == 1 + 3 + 3  # full + 3 distinct k each way
    assert [BOS, 20] in seen  # sufficiency at k = 1 keeps BOS and the top token, in order
    assert all(s == sorted(s, key=IDS.index) for s in seen)


def test_no_bos_keeps_at_least_one_token():
    seen = []
    c = erasure_curve([5, 6], [1, 0], lambda ids: seen.append(ids) or 0.5, ratios=(1.0,))
    assert c.k == (2,) and [5] in seen and [] not in seen
    with pytest.raises(InputError, match="at least 2 tokens"):
        erasure_curve([5], [0], lambda ids: 0.5)
    with pytest.raises(InputError, match="no token besides BOS"):
        erasure_curve([BOS], [], lambda ids: 0.5, keep=[0])
    with pytest.raises(InputError, match="cover every position"):
        erasure_curve(IDS, [1, 2], key_decides, keep=[0])
    with pytest.raises(InputError, match="ratios"):
        erasure_curve(IDS, list(range(1, 11)), key_decides, ratios=(0.0,), keep=[0])


def test_faithfulness_on_a_model_equals_direct_forward_passes(tiny_llama):
    m = tiny_llama
    a = attribute(m, "The cat sat on the")
    c = faithfulness(m, a, ratios=(0.2, 0.5))
    ids = a.token_ids.tolist()
    top = a.ranking()

    def p(seq):
        with torch.no_grad():
            return float(m.hf(input_ids=torch.tensor([seq])).logits[0, -1].double().softmax(-1)[a.target_id])

    n = len(ids) - 1  # 5 rankable tokens: k = 1 and 3
    assert c.k == (1, 3) and n == 5
    assert c.full_prob == pytest.approx(p(ids), abs=1e-12)
    for j, k in enumerate(c.k):
        drop = set(top[:k])
        assert c.removed_prob[j] == pytest.approx(p([t for i, t in enumerate(ids) if i not in drop]), abs=1e-12)
        assert c.kept_prob[j] == pytest.approx(p([ids[0]] + [ids[i] for i in sorted(top[:k])]), abs=1e-12)


def test_evaluate_faithfulness_over_shipped_prompts(tiny_llama):
    prompts = load_prompts()
    assert 40 <= len(prompts) <= 60 and all(p.strip() for p in prompts)
    report = evaluate_faithfulness(
        tiny_llama,
        prompts[:4],
        ["normxlogit", "random", "saliency", "logat@2", "jetxlogit@2:1"],
    )
    assert [s.label for s in report.summaries] == ["normxlogit", "random", "saliency", "logat@2", "jetxlogit@2:1"]
    for s in report.summaries:
        assert s.n_prompts == 4 and len(report.curves[s.label]) == 4
        assert s.aopc_comprehensiveness == pytest.approx(sum(c.aopc_comprehensiveness for c in report.curves[s.label]) / 4)
        assert s.aopc_comprehensiveness == pytest.approx(sum(s.comprehensiveness) / len(DEFAULT_RATIOS))
        assert s.seconds_per_prompt > 0
    # every method explains the same target, so p(z) agrees across methods
    fulls = {s.label: [c.full_prob for c in report.curves[s.label]] for s in report.summaries}
    assert len({tuple(v) for v in fulls.values()}) == 1
    assert report.to_dict()["n_prompts"] == 4


def test_an_oracle_ranking_beats_its_reverse(tiny_llama):
    """Ranking by the leave-one-out drop is (nearly by construction) more comprehensive than its reverse."""
    m = tiny_llama
    ids = m.tokenize("The doctor told him to drink more water and get plenty of")[0].tolist()
    a = attribute(m, ids)
    prob = target_prob_fn(m, a.target_id)
    full = prob(ids)
    loo = {i: full - prob(ids[:i] + ids[i + 1 :]) for i in range(1, len(ids))}
    best = sorted(loo, key=lambda i: -loo[i])
    good = erasure_curve(ids, best, prob, ratios=(0.01,), keep=[0])
    bad = erasure_curve(ids, best[::-1], prob, ratios=(0.01,), keep=[0])
    assert good.comprehensiveness[0] == pytest.approx(max(loo.values()))
    assert good.aopc_comprehensiveness > bad.aopc_comprehensiveness


def test_method_spec_and_prompt_files(tmp_path):
    assert MethodSpec.parse("jetxlogit@30:2") == MethodSpec("jetxlogit", 30, 2)
    assert MethodSpec.parse("normxlogit", layer=4).label == "normxlogit@4"
    assert MethodSpec.parse("saliency", layer=4) == MethodSpec("saliency", None, 1)
    with pytest.raises(InputError, match="unknown attribution method"):
        MethodSpec.parse("lime")
    with pytest.raises(InputError, match="bad method spec"):
        MethodSpec.parse("logat@x")
    f = tmp_path / "p.txt"
    f.write_text("# comment\n\nfirst prompt\n  \nsecond prompt\n")
    assert load_prompts(f) == ["first prompt", "second prompt"]
    with pytest.raises(InputError, match="not found"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
