"""Model diffing on tiny models: self-diff is empty, a planted change is found, ranks match brute force."""

from __future__ import annotations

import math

import pytest
import torch

from apps_tiny import PLANTED, full_logprobs, other_tokenizer, tiny
from jetex.apps.diff import diff_bigrams
from jetex.apps.tables import table_from_store, topk_table
from jetex.errors import InputError


def _global_order(lp: torch.Tensor) -> list[tuple[int, int, float]]:
    """All finite pairs sorted by (-logp, a, b)."""
    V = lp.shape[0]
    pairs = [(a, b, float(lp[a, b])) for a in range(V) for b in range(V) if lp[a, b] > float("-inf")]
    return sorted(pairs, key=lambda x: (-x[2], x[0], x[1]))


def test_diff_of_a_model_with_itself_is_empty(model_a):
    res = diff_bigrams(model_a, model_a, top=100, k=20, step=10)
    assert res.identical
    assert not (res.entered or res.left or res.gained or res.lost or res.increases or res.decreases)
    assert res.top_a == res.top_b and len(res.top_a) == 100
    assert all(x == y for _, x, y in res.side_by_side)


def test_diff_finds_a_planted_embedding_change(model_a, model_b):
    res = diff_bigrams(model_a, model_b, top=100, k=20, step=10, n_changes=10)
    assert not res.identical
    # the largest probability changes all involve the changed token (as input or output)
    assert res.increases and all(PLANTED in (d.a, d.b) for d in res.increases[:5])
    # decreases: pairs of the changed token, or pairs whose row now gives its mass to it
    lpa, lpb = full_logprobs(model_a).exp(), full_logprobs(model_b).exp()
    assert res.decreases
    for d in res.decreases:
        assert PLANTED in (d.a, d.b) or lpb[d.a, PLANTED] > lpa[d.a, PLANTED] + 0.1
    # bigrams with the changed token entered the top list and their ranks moved
    assert res.entered and any(PLANTED in (d.a, d.b) for d in res.entered)
    moved = [d for d in res.gained + res.lost if PLANTED in (d.a, d.b)]
    assert moved and all(d.rank_change != 0 for d in moved)
    # the reported probabilities are the brute-force ones
    for d in res.increases + res.decreases + res.entered:
        assert d.p_a == pytest.approx(float(lpa[d.a, d.b]), abs=1e-5)
        assert d.p_b == pytest.approx(float(lpb[d.a, d.b]), abs=1e-5)
    # the largest increase over ALL pairs is the reported first one
    delta = lpb - lpa
    assert res.increases[0].delta == pytest.approx(float(delta.max()), abs=1e-5)
    assert res.decreases[0].delta == pytest.approx(float(delta.min()), abs=1e-5)


def test_top_lists_and_ranks_match_brute_force(model_a, model_b):
    res = diff_bigrams(model_a, model_b, top=60, k=10, step=20, score="logprob")
    for top, model in ((res.top_a, model_a), (res.top_b, model_b)):
        lp = full_logprobs(model)
        oracle = _global_order(lp)
        # same values rank by rank (float32 vs float64 may order exact ties differently) ...
        assert [p for _, _, p in top] == pytest.approx([math.exp(v) for _, _, v in oracle[:60]], abs=1e-5)
        # ... and every listed pair has the listed probability
        assert all(p == pytest.approx(float(lp[a, b].exp()), abs=1e-5) for a, b, p in top)
    oracle_a = _global_order(full_logprobs(model_a))  # no near-ties in A: the exact order
    assert [(a, b) for a, b, _ in res.top_a] == [(a, b) for a, b, _ in oracle_a[:60]]
    oracle_b = _global_order(full_logprobs(model_b))
    rank_b = {(a, b): i + 1 for i, (a, b, _) in enumerate(oracle_b)}
    rank_a = {(a, b): i + 1 for i, (a, b, _) in enumerate(oracle_a)}
    for d in res.entered + res.left + res.gained + res.lost:
        if d.rank_a_exact:
            assert d.rank_a == rank_a[(d.a, d.b)]
        else:  # a lower bound
            assert d.rank_a <= rank_a[(d.a, d.b)]
        assert d.rank_b <= rank_b[(d.a, d.b)] + 60  # B has exact ties at P = 1


def test_topk_table_matches_full_rows(model_a):
    """The per-row top-5 by the default score (zpmi), its values and log-probabilities, from full rows."""
    from jetex.apps.tables import path_logits
    from jetex.ngrams.scores import DEFAULT_SCORE, score_matrix

    t = topk_table(model_a, "direct", 5)
    assert t.score == DEFAULT_SCORE == "zpmi"
    lp = full_logprobs(model_a)
    ids = torch.arange(model_a.vocab_size)
    z = path_logits(model_a, "direct", ids)
    lq = torch.log_softmax(score_matrix("zlogit", z, ids, exclude_self=True), 1).exp().mean(0).log()
    v, i = score_matrix("zpmi", z, ids, exclude_self=True, logq=lq).topk(5, dim=-1)
    assert torch.equal(t.ids.long(), i)
    assert torch.allclose(t.values.double(), v, atol=1e-5)
    assert torch.allclose(t.logp.double(), lp.gather(1, i), atol=1e-5)
    assert t.complete is False and topk_table(model_a, "direct", model_a.vocab_size - 1).complete


def test_mlp_path_diff_and_keep_self(model_a, model_b):
    res = diff_bigrams(model_a, model_b, "mlp:1", top=50, k=10, step=10, exclude_self=False, score="logprob")
    assert res.path == "mlp:1" and not res.exclude_self and not res.identical
    lp = full_logprobs(model_a, "mlp:1", exclude_self=False)
    assert [(a, b) for a, b, _ in res.top_a] == [(a, b) for a, b, _ in _global_order(lp)[:50]]


def test_diff_refuses_different_tokenizers(model_a):
    other = tiny(name="other", tokenizer=other_tokenizer())
    with pytest.raises(InputError, match="tokenizers differ"):
        diff_bigrams(model_a, other, top=10, k=5)


def test_diff_of_stored_tables_agrees_with_models(model_a, model_b, tmp_path):
    from jetex.ngrams import extract_ngrams

    for m, name in ((model_a, "a"), (model_b, "b")):
        extract_ngrams(m, ["direct"], db=tmp_path / f"{name}.duckdb", top_k=20, exclude_self=True, global_top=100,
                       progress=False, fidelity_sample=None)
    ta, tb = table_from_store(tmp_path / "a.duckdb"), table_from_store(tmp_path / "b.duckdb")
    stored = diff_bigrams(ta, tb, top=100, step=10)
    live = diff_bigrams(model_a, model_b, top=100, k=20, step=10)
    assert [(a, b) for a, b, _ in stored.top_a] == [(a, b) for a, b, _ in live.top_a]
    assert [(a, b) for a, b, _ in stored.top_b] == [(a, b) for a, b, _ in live.top_b]
    assert {(d.a, d.b) for d in stored.entered} == {(d.a, d.b) for d in live.entered}
    assert not stored.changes_exhaustive and stored.increases
    for d in stored.increases:
        assert d.delta > 0 and math.isfinite(d.delta)
    with pytest.raises(InputError, match="no finished bigram run"):
        table_from_store(tmp_path / "a.duckdb", "mlp:0")


def test_bad_arguments(model_a):
    with pytest.raises(InputError):
        diff_bigrams(model_a, model_a, top=0)
    with pytest.raises(InputError, match="larger than the vocabulary"):
        diff_bigrams(model_a, model_a, k=10_000)
    with pytest.raises(InputError, match="unknown path"):
        diff_bigrams(model_a, model_a, "nope", top=5, k=5)


@pytest.mark.parametrize("top, step", [(1000, 50), (100, 10), (60, 7)])
def test_side_by_side_rows_are_every_step_th_rank(model_a, model_b, top, step):
    """Table 5 of the paper: every 50th rank of the top 1000, A and B side by side. Row j holds
    rank r = j·step (0-based) of each side's global top list: top_a[r] and top_b[r]."""
    res = diff_bigrams(model_a, model_b, top=top, k=20 if top <= 100 else 40, step=step)
    assert len(res.top_a) == len(res.top_b) == top  # V·k ≥ top kept entries on both sides
    assert [r for r, _, _ in res.side_by_side] == list(range(0, top, step))
    assert len(res.side_by_side) == -(-top // step)  # ⌈top / step⌉ rows: 20 for the paper's 1000 / 50
    for r, x, y in res.side_by_side:
        for row, top_list, vals in ((x, res.top_a, res.top_a_scores), (y, res.top_b, res.top_b_scores)):
            a, b, p = top_list[r]
            assert row == (res.strings[a], res.strings[b], p, vals[r])
    d = res.to_dict()
    assert [row["rank"] for row in d["side_by_side"]] == list(range(0, top, step))
    assert all(row["a"] == list(x) for row, (_, x, _) in zip(d["side_by_side"], res.side_by_side) if x)


@pytest.mark.parametrize("score", ["logit", "zlogit", "pmi", "zpmi"])
def test_top_lists_by_score_match_brute_force(model_a, model_b, score):
    """Each side's top list by a score, the listed values and exact ranks, from full V × V rows."""
    from jetex.apps.tables import path_logits, path_logq
    from jetex.ngrams.scores import score_matrix

    res = diff_bigrams(model_a, model_b, top=40, k=10, step=10, score=score)
    assert res.score == score
    for top, vals, model in ((res.top_a, res.top_a_scores, model_a), (res.top_b, res.top_b_scores, model_b)):
        V = model.vocab_size
        ids = torch.arange(V)
        z = path_logits(model, "direct", ids)
        lq = path_logq(model, "direct") if score == "pmi" else None
        if score == "zpmi":  # the mean z-scored output distribution, from the reference zlogit matrix
            lq = torch.log_softmax(score_matrix("zlogit", z, ids, exclude_self=True), 1).exp().mean(0).log()
        S = score_matrix(score, z, ids, exclude_self=True, logq=lq)
        oracle = _global_order(S)
        assert vals == pytest.approx([v for _, _, v in oracle[:40]], abs=1e-4)
        lp = full_logprobs(model)
        assert all(p == pytest.approx(float(lp[a, b].exp()), abs=1e-5) for a, b, p in top)
        rank = {(a, b): i + 1 for i, (a, b, _) in enumerate(oracle)}
        for d in res.entered + res.left + res.gained + res.lost:
            side_rank, exact = (d.rank_a, d.rank_a_exact) if model is model_a else (d.rank_b, d.rank_b_exact)
            if exact:
                assert side_rank == rank[(d.a, d.b)]


def test_cli_diff_of_stores_with_different_tokenizers_is_one_line(model_a, tmp_path, capsys):
    from jetex.cli.main import main
    from jetex.ngrams import extract_ngrams

    other = tiny(name="other", tokenizer=other_tokenizer())
    for m, name in ((model_a, "a"), (other, "b")):
        extract_ngrams(m, ["direct"], db=tmp_path / f"{name}.duckdb", top_k=5, global_top=10, progress=False,
                       fidelity_sample=0)
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "a.duckdb"), str(tmp_path / "b.duckdb")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "their tokenizers differ" in err[0]
    assert main(["diff", str(tmp_path / "a.duckdb"), str(tmp_path / "a.duckdb"), "--score", "bogus"]) != 0
    assert "unknown score 'bogus'" in capsys.readouterr().err
