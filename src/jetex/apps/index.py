"""Knowledge indices from jet bigrams (paper Sec. 5.3, Table 3: the toxicity index).

A knowledge index is the conditional probability mass a bigram path p puts on transitions
between tokens of a keyword list: data-free, no prompt, no sampling.

**Keyword tokens.** The keyword file is UTF-8 text, one keyword a line (blank lines and
lines starting with ``#`` skipped, case kept, duplicates dropped). Each keyword w has the
variants ``w`` and ``" " + w`` (word-initial and word-internal forms, as tokenizers with a
leading-space marker such as ``Ġ``/``▁`` store them). A variant counts when the model's
tokenizer encodes it, without special tokens, to exactly ONE token. The keyword token set
T is the union of those ids. A variant must decode back to the keyword (an unknown-word token does
not count). Keywords with no single-token variant (multi-token words,
phrases, words absent from the vocabulary) are dropped and reported: the index only uses
transitions a → b that are single bigram steps.

**Index.** With P_p(b | a) the path's distribution (softmax over the full vocabulary; with
``exclude_self``, the default, the self-transition b = a is removed and the softmax
renormalised over the other V − 1 tokens, as everywhere in jetex's n-grams)::

    index_p(T) = (1 / |T|) · Σ_{a ∈ T} Σ_{b ∈ T, b ≠ a} P_p(b | a)

i.e. the mean, over keyword inputs a, of the probability that the next token is another
keyword token. It lies in [0, 1]. ``total`` is the un-normalised double sum.

Because T holds several forms of one word (``w``, `` w``, other casings listed as keywords),
the tied-embedding ``direct`` path gives much of that mass to "the same word again in another
form". ``index_cross`` is the same mean with those pairs left out of the inner sum: pairs
(a, b) whose texts are equal after stripping spaces and lower-casing.

**Listed pairs.** The largest keyword bigrams listed with the index (``top_pairs``) are
ranked by a score of (a, b) (``score``, :mod:`jetex.ngrams.scores`; default: the measured
default); the index itself is always the probability mass above.

**Baseline.** The same statistic for random token sets of the same size (uniform over the
non-special vocabulary, ``n_baseline`` draws with a fixed seed) gives the chance level for
that model; ``ratio`` = index / mean baseline. Vocabularies differ between models, so T,
the index and its baseline are per model: compare models through their ratios, or compare
two models that share a tokenizer (e.g. a model and its fine-tuned version) directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from jetex.apps.tables import bigram_path, path_logq, row_logprobs, row_scores
from jetex.errors import InputError
from jetex.models.base import ResidualModel

DEFAULT_KEYWORDS = Path(__file__).resolve().parent.parent / "data" / "toxic_keywords.txt"


def load_keywords(path: str | Path | None = None) -> list[str]:
    """Keywords of a file (default: the shipped toxic list); one-line error if missing or empty."""
    p = Path(path).expanduser() if path is not None else DEFAULT_KEYWORDS
    if not p.exists():
        raise InputError(f"keyword file {p} not found")
    if p.is_dir():
        raise InputError(f"keyword file {p} is a folder")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"keyword file {p} is not UTF-8 text") from None
    words = [w.strip() for w in text.splitlines()]
    words = list(dict.fromkeys(w for w in words if w and not w.startswith("#")))
    if not words:
        raise InputError(f"keyword file {p} has no keywords (one a line; '#' starts a comment)")
    return words


@dataclass
class KeywordTokens:
    """The keyword token set T of one tokenizer: ``ids [n]`` (sorted), ``kept`` keywords with
    their single-token variants {keyword: [ids]}, ``dropped`` keywords (no single-token variant)."""

    ids: Int[Tensor, "n"]
    kept: dict[str, list[int]]
    dropped: list[str]

    def __post_init__(self) -> None:
        if self.ids.ndim != 1:
            raise ValueError("KeywordTokens.ids must be 1-D")


def keyword_tokens(tokenizer: Any, keywords: list[str], vocab_size: int | None = None) -> KeywordTokens:
    """Map keywords to single tokens (variants ``w`` and ``" " + w``; see module doc)."""
    if tokenizer is None:
        raise InputError("the model has no tokenizer: keyword indices need one")
    kept: dict[str, list[int]] = {}
    dropped: list[str] = []
    special = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []) if i is not None}
    for w in keywords:
        ids: list[int] = []
        for variant in (w, " " + w):
            enc = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(enc) != 1 or enc[0] in special or (vocab_size is not None and enc[0] >= vocab_size):
                continue
            # the token must spell the keyword (an unknown-word token does not)
            if tokenizer.decode(enc).strip() == w.strip():
                ids.append(int(enc[0]))
        if ids:
            kept[w] = sorted(set(ids))
        else:
            dropped.append(w)
    all_ids = sorted({i for v in kept.values() for i in v})
    return KeywordTokens(ids=torch.tensor(all_ids, dtype=torch.long), kept=kept, dropped=dropped)


@dataclass
class IndexResult:
    """A knowledge index of one model and path (definitions in the module doc)."""

    model_name: str
    path: str
    keywords_file: str
    n_keywords: int
    n_tokens: int
    index: float
    total: float
    index_cross: float
    baseline_mean: float | None
    baseline_std: float | None
    n_baseline: int
    exclude_self: bool
    dropped: list[str]
    kept: dict[str, list[int]]
    top_pairs: list[tuple[str, str, float]]
    per_token: list[tuple[str, float]] = field(default_factory=list)
    score: str = "logprob"
    top_pair_scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.index <= 1.0 + 1e-6:
            raise ValueError(f"IndexResult.index must be in [0, 1], got {self.index}")
        if self.n_tokens < 1:
            raise ValueError("IndexResult needs at least one keyword token")

    @property
    def ratio(self) -> float | None:
        if not self.baseline_mean:
            return None
        return self.index / self.baseline_mean

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


def mass_matrix(
    model: ResidualModel, path: str, ids: Int[Tensor, "n"], *, order: int = 0, exclude_self: bool = True,
    batch_size: int = 256,
) -> Tensor:
    """M[i, j] = P_p(ids[j] | ids[i]) ``[n, n]`` (self entries 0 with ``exclude_self``)."""
    p = bigram_path(model, path)
    rows = []
    for s in range(0, ids.numel(), batch_size):
        a = ids[s : s + batch_size]
        lp = row_logprobs(model, p, a, order, exclude_self)
        rows.append(lp[:, ids].exp().double())
    return torch.cat(rows) if rows else torch.zeros(0, 0, dtype=torch.float64)


def _special_ids(model: ResidualModel) -> set[int]:
    tok = model.tokenizer
    out: set[int] = set()
    if tok is not None:
        out |= {int(i) for i in (getattr(tok, "all_special_ids", None) or []) if i is not None}
    return out


def knowledge_index(
    model: ResidualModel,
    keywords: list[str] | None = None,
    *,
    keywords_file: str | Path | None = None,
    path: str = "direct",
    order: int = 0,
    exclude_self: bool = True,
    n_baseline: int = 3,
    seed: int = 0,
    n_top: int = 20,
    score: str | None = None,
) -> IndexResult:
    """The keyword index of ``model`` on ``path`` (module doc). Keywords come from ``keywords``
    or ``keywords_file`` (default: the shipped toxic list). Raises :class:`InputError` when no
    keyword is a single token of this tokenizer."""
    if keywords is None:
        src = str(keywords_file if keywords_file is not None else DEFAULT_KEYWORDS)
        keywords = load_keywords(keywords_file)
    else:
        src = "<list>"
    if not keywords:
        raise InputError("no keywords given")
    if isinstance(n_baseline, bool) or not isinstance(n_baseline, int) or n_baseline < 0:
        raise InputError(f"the number of baseline draws must be a non-negative integer, got {n_baseline!r}")
    kt = keyword_tokens(model.tokenizer, keywords, model.vocab_size)
    n = int(kt.ids.numel())
    if n == 0:
        raise InputError(
            f"none of the {len(keywords)} keywords is a single token of {model.name}'s tokenizer (with or without a leading space)"
        )
    M = mass_matrix(model, path, kt.ids, order=order, exclude_self=exclude_self)
    total = float(M.sum())
    index = total / n
    strings_all = model.token_strings(kt.ids)
    norm = [t.strip().lower() for t in strings_all]
    same = torch.tensor([[x == y for y in norm] for x in norm], dtype=torch.bool)
    index_cross = float(M.masked_fill(same, 0.0).sum()) / n
    # contributions
    strings = dict(zip(kt.ids.tolist(), model.token_strings(kt.ids)))
    from jetex.ngrams.scores import COLUMN_SCORES, DEFAULT_SCORE, check_score

    sc = check_score(DEFAULT_SCORE if score is None else score)
    logq = path_logq(model, path, order=order, exclude_self=exclude_self, score=sc) if sc in COLUMN_SCORES else None
    S = torch.cat([row_scores(model, path, kt.ids[i : i + 256], sc, order=order, exclude_self=exclude_self, logq=logq)[0]
                   [:, kt.ids].double() for i in range(0, n, 256)])
    S = S.masked_fill(M <= 0, float("-inf"))  # self pairs (excluded) and pairs of no mass are not listed
    flat = S.flatten()
    k = min(n_top, flat.numel())
    svals, pos = torch.sort(flat, descending=True, stable=True)
    top_pairs, top_scores = [], []
    for v, p in zip(svals[:k].tolist(), pos[:k].tolist()):
        if v > float("-inf"):
            top_pairs.append((strings[int(kt.ids[p // n])], strings[int(kt.ids[p % n])], float(M.flatten()[p])))
            top_scores.append(float(v))
    row_mass = M.sum(1)
    order_rows = torch.argsort(row_mass, descending=True)[:n_top]
    per_token = [(strings[int(kt.ids[i])], float(row_mass[i])) for i in order_rows.tolist()]
    # baseline: random token sets of the same size
    base: list[float] = []
    if n_baseline > 0:
        special = _special_ids(model)
        pool = torch.tensor([i for i in range(model.vocab_size) if i not in special], dtype=torch.long)
        if pool.numel() >= n:
            gen = torch.Generator().manual_seed(seed)
            for _ in range(n_baseline):
                ids = pool[torch.randperm(pool.numel(), generator=gen)[:n]].sort().values
                base.append(float(mass_matrix(model, path, ids, order=order, exclude_self=exclude_self).sum()) / n)
    mean = sum(base) / len(base) if base else None
    std = math.sqrt(sum((b - mean) ** 2 for b in base) / len(base)) if base and mean is not None else None
    return IndexResult(
        model_name=model.name,
        path=path,
        keywords_file=src,
        n_keywords=len(keywords),
        n_tokens=n,
        index=index,
        total=total,
        index_cross=index_cross,
        baseline_mean=mean,
        baseline_std=std,
        n_baseline=len(base),
        exclude_self=exclude_self,
        dropped=kt.dropped,
        kept=kt.kept,
        top_pairs=top_pairs,
        per_token=per_token,
        score=sc,
        top_pair_scores=top_scores,
    )


def brute_force_index(
    model: ResidualModel, ids: Int[Tensor, "n"], path: str = "direct", exclude_self: bool = True
) -> float:
    """The index by the definition, one pair at a time from full rows (a test oracle)."""
    p = bigram_path(model, path)
    total = 0.0
    idl = [int(i) for i in ids.tolist()]
    with torch.no_grad():
        for a in idl:
            logits = p.logits(model, torch.tensor([a]), 0)[0].double()
            prob = torch.softmax(logits, -1)
            if exclude_self:
                prob = prob.clone()
                prob[a] = 0.0
                prob = prob / prob.sum()
            for b in idl:
                if exclude_self and b == a:
                    continue
                total += float(prob[b])
    return total / len(idl)
