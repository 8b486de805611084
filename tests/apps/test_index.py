"""Knowledge index: equals the brute-force double sum; keyword handling and bad input."""

from __future__ import annotations

import pytest

from jetex.apps.index import DEFAULT_KEYWORDS, brute_force_index, keyword_tokens, knowledge_index, load_keywords
from jetex.errors import InputError

KEYWORDS = ["cat", "dog", "king", "queen", "fire", "zebra", "big cat"]


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("path", ["direct", "mlp:0"])
def test_index_equals_brute_force_sum(model_a, path, exclude_self):
    res = knowledge_index(model_a, KEYWORDS, path=path, exclude_self=exclude_self, n_baseline=2)
    ids = keyword_tokens(model_a.tokenizer, KEYWORDS).ids
    assert res.n_tokens == 5 and ids.tolist() == sorted(ids.tolist())
    assert res.index == pytest.approx(brute_force_index(model_a, ids, path, exclude_self), abs=1e-6)
    assert res.total == pytest.approx(res.index * res.n_tokens)
    assert res.baseline_mean is not None and res.n_baseline == 2 and res.ratio == pytest.approx(res.index / res.baseline_mean)


def test_index_of_the_whole_vocabulary(model_a):
    """Every ordinary token a keyword: the index is the mean row mass outside the special tokens."""
    words = [w for w in model_a.tokenizer.get_vocab() if w not in ("<pad>", "<s>", "</s>", "<unk>")]
    res = knowledge_index(model_a, words, n_baseline=0)
    assert res.n_tokens == model_a.vocab_size - 4
    # Σ over keyword b of P(b|a) = 1 − the mass on the 4 special tokens, exactly
    from apps_tiny import full_logprobs

    P = full_logprobs(model_a).exp()
    ids = keyword_tokens(model_a.tokenizer, words).ids
    expected = float(P[ids][:, ids].sum() / len(ids))
    assert res.index == pytest.approx(expected, abs=1e-6) and 0.5 < res.index <= 1.0


def test_dropped_keywords_are_reported(model_a):
    kt = keyword_tokens(model_a.tokenizer, KEYWORDS)
    assert kt.dropped == ["zebra", "big cat"]  # unknown word (would be <unk>) and a phrase
    assert set(kt.kept) == {"cat", "dog", "king", "queen", "fire"}
    with pytest.raises(InputError, match="none of the 2 keywords"):
        knowledge_index(model_a, ["zebra", "big cat"])


def test_keyword_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_keywords(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n   \n")
    with pytest.raises(InputError, match="no keywords"):
        load_keywords(empty)
    f = tmp_path / "k.txt"
    f.write_text("# c\ncat\ndog\ncat\n")
    assert load_keywords(f) == ["cat", "dog"]
    shipped = load_keywords()
    assert len(shipped) == 916 and DEFAULT_KEYWORDS.name == "toxic_keywords.txt"
    assert "better-profanity 0.7.0" in DEFAULT_KEYWORDS.read_text()


@pytest.mark.real
def test_toxic_index_on_smollm2(smollm2):
    res = knowledge_index(smollm2, n_baseline=1)
    assert res.n_tokens > 50 and len(res.dropped) > 0 and 0.0 < res.index < 1.0
