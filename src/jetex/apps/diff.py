"""Model diffing with jet bigrams (paper Sec. 5.3, Table 5): what changed between two models
that share a vocabulary, read as bigram statistics rather than weights.

Both sides are evaluated on one bigram path p (default ``direct``, η → υ) over the whole
vocabulary (:mod:`jetex.apps.tables`), giving P_A(b | a) and P_B(b | a). The diff reports:

- **top lists**: the global top-N bigrams of each side, ranked by a score of (a, b)
  (``score``, :mod:`jetex.ngrams.scores`; default :data:`~jetex.ngrams.scores.DEFAULT_SCORE`,
  chosen by measurement in ``docs/ngram_scores.md``; ``logprob`` ranks by P(b | a)), rank 1
  the best; self-transitions excluded by default. Each side is scored against its own
  statistics (for ``pmi``: its own mean output distribution);
- **side by side** (Table 5): every ``step``-th rank of the two top-N lists;
- **entered / left**: bigrams in B's top-N but not A's, and in A's top-N but not B's;
- **ranks gained / lost**: for every bigram of either top-N list, its global rank in A and in
  B (1 + the number of bigrams of that side with a larger score); sorted by
  rank_A − rank_B (largest gain first) and the reverse. A rank is exact when the probability
  is above every row's K-th kept value, else it is a lower bound (shown ``≥``);
  probabilities P are shown next to scores;
- **largest probability changes**: the pairs with the largest increase P_B − P_A and the
  largest decrease. With two models this is exact over all V² pairs (both models are
  evaluated on the same rows in one pass); with stored tables it is over pairs both tables
  keep.

The two sides must share one tokenizer (checked by tokenizer fingerprint and vocabulary
size; :class:`~jetex.errors.InputError` otherwise). A model diffed with itself gives empty
entered/left/gained/lost/changes lists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from jetex.apps.tables import (
    TopKTable,
    bigram_path,
    check_same_tokenizer,
    iter_scores,
    path_logq,
    row_scores,
    row_topk,
    token_texts,
)
from jetex.errors import InputError
from jetex.models.base import ResidualModel

#: probability changes smaller than this are not reported (identical models give exactly 0)
CHANGE_TOL = 1e-7


@dataclass
class BigramDelta:
    """One bigram (a, b) seen from both sides: probabilities (None: not known from stored
    tables), global ranks with exactness flags (False: a lower bound)."""

    a: int
    b: int
    a_text: str
    b_text: str
    p_a: float | None
    p_b: float | None
    rank_a: int | None
    rank_b: int | None
    rank_a_exact: bool = True
    rank_b_exact: bool = True
    s_a: float | None = None
    s_b: float | None = None

    @property
    def delta(self) -> float | None:
        return None if self.p_a is None or self.p_b is None else self.p_b - self.p_a

    @property
    def rank_change(self) -> int | None:
        """rank_A − rank_B: positive when B ranks the bigram higher (a gain)."""
        return None if self.rank_a is None or self.rank_b is None else self.rank_a - self.rank_b

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta"] = self.delta
        d["rank_change"] = self.rank_change
        return d


@dataclass
class DiffResult:
    """The diff of two bigram tables of one path (see module doc). ``top_a`` / ``top_b`` hold
    (a, b, P(b|a)) of each side's global top-``top_n`` by ``score`` (``top_a_scores`` /
    ``top_b_scores``: the score values); ``side_by_side`` rows are (rank, bigram of A, bigram
    of B) with bigrams as (a_text, b_text, p, score)."""

    name_a: str
    name_b: str
    path: str
    top_n: int
    k: int
    step: int
    exclude_self: bool
    tokenizer_fp: str
    top_a: list[tuple[int, int, float]]
    top_b: list[tuple[int, int, float]]
    top_a_exact: bool
    top_b_exact: bool
    side_by_side: list[tuple[int, tuple[str, str, float, float] | None, tuple[str, str, float, float] | None]]
    entered: list[BigramDelta]
    left: list[BigramDelta]
    gained: list[BigramDelta]
    lost: list[BigramDelta]
    increases: list[BigramDelta]
    decreases: list[BigramDelta]
    changes_exhaustive: bool
    strings: dict[int, str] = field(default_factory=dict, repr=False)
    score: str = "logprob"
    top_a_scores: list[float] = field(default_factory=list)
    top_b_scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.top_a) > self.top_n or len(self.top_b) > self.top_n:
            raise ValueError("DiffResult: a top list is longer than top_n")
        if self.step < 1:
            raise ValueError("DiffResult: step must be >= 1")

    @property
    def identical(self) -> bool:
        """True when nothing moved: no bigram entered, left, changed rank or probability."""
        return not (self.entered or self.left or self.gained or self.lost or self.increases or self.decreases)

    def to_dict(self) -> dict[str, Any]:
        def top(rows: list[tuple[int, int, float]], vals: list[float]) -> list[dict[str, Any]]:
            return [
                {"rank": i + 1, "a": a, "b": b, "a_text": self.strings.get(a, ""), "b_text": self.strings.get(b, ""), "p": p,
                 "score": vals[i] if i < len(vals) else None}
                for i, (a, b, p) in enumerate(rows)
            ]

        return {
            "model_a": self.name_a,
            "model_b": self.name_b,
            "path": self.path,
            "score": self.score,
            "top_n": self.top_n,
            "k": self.k,
            "step": self.step,
            "exclude_self": self.exclude_self,
            "tokenizer_fingerprint": self.tokenizer_fp,
            "identical": self.identical,
            "top_a_exact": self.top_a_exact,
            "top_b_exact": self.top_b_exact,
            "changes_exhaustive": self.changes_exhaustive,
            "side_by_side": [
                {"rank": r, "a": list(x) if x else None, "b": list(y) if y else None} for r, x, y in self.side_by_side
            ],
            "entered": [d.to_dict() for d in self.entered],
            "left": [d.to_dict() for d in self.left],
            "gained": [d.to_dict() for d in self.gained],
            "lost": [d.to_dict() for d in self.lost],
            "increases": [d.to_dict() for d in self.increases],
            "decreases": [d.to_dict() for d in self.decreases],
            "top_a": top(self.top_a, self.top_a_scores),
            "top_b": top(self.top_b, self.top_b_scores),
        }


# --------------------------------------------------------------------------- evaluation
def _merge_top(
    best: tuple[Tensor, Tensor, Tensor] | None, vals: Tensor, a: Tensor, b: Tensor, m: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``m`` largest of (best ∪ new) values with their (a, b)."""
    if best is not None:
        vals = torch.cat([best[0], vals])
        a = torch.cat([best[1], a])
        b = torch.cat([best[2], b])
    if vals.numel() > m:
        v, i = torch.topk(vals, m)
        return v, a[i], b[i]
    return vals, a, b


def _joint_pass(
    model_a: ResidualModel, model_b: ResidualModel, path: str, k: int, n_changes: int, exclude_self: bool,
    order: int, batch_size: int | None, score: str = "logprob", logqs: tuple[Tensor | None, Tensor | None] = (None, None),
) -> tuple[TopKTable, TopKTable, tuple[Tensor, Tensor, Tensor] | None, tuple[Tensor, Tensor, Tensor] | None]:
    """One streamed pass over the vocabulary evaluating both models on the same rows: each
    side's per-row top-k by ``score``, and the ``n_changes`` largest increases / decreases of P over all pairs."""
    V = model_a.vocab_size
    tables: list[dict[str, list[Tensor]]] = [{"in": [], "ids": [], "lp": [], "v": []} for _ in range(2)]
    inc = dec = None
    it_b = iter_scores(model_b, path, score=score, order=order, exclude_self=exclude_self, logq=logqs[1],
                       batch_size=batch_size, desc=f"{model_b.name} {path}")
    for ids, v_a, lp_a in iter_scores(model_a, path, score=score, order=order, exclude_self=exclude_self, logq=logqs[0],
                                      batch_size=batch_size, desc=f"{model_a.name} {path}"):
        ids_b, v_b, lp_b = next(it_b)
        assert torch.equal(ids, ids_b)
        for t, v_all, lp in zip(tables, (v_a, v_b), (lp_a, lp_b)):
            v, i = row_topk(v_all, k)
            t["in"].append(ids)
            t["ids"].append(i.to(torch.int32))
            t["lp"].append(lp.gather(1, i))
            t["v"].append(v)
        if n_changes > 0:
            delta = (lp_b.exp() - lp_a.exp()).flatten()
            m = min(n_changes, delta.numel())
            v, i = torch.topk(delta, m)
            inc = _merge_top(inc, v, ids[i // V], i % V, n_changes)
            v, i = torch.topk(-delta, m)
            dec = _merge_top(dec, v, ids[i // V], i % V, n_changes)
    out = []
    for t, model in zip(tables, (model_a, model_b)):
        out.append(
            TopKTable(
                inputs=torch.cat(t["in"]),
                ids=torch.cat(t["ids"]),
                logp=torch.cat(t["lp"]),
                vocab_size=V,
                path=path,
                model_name=model.name,
                model_fp=model.fingerprint(),
                tokenizer_fp=model.tokenizer_fingerprint(),
                exclude_self=exclude_self,
                order=order,
                score=score,
                values=torch.cat(t["v"]),
            )
        )
    return out[0], out[1], inc, dec


def _exact_values(
    model: ResidualModel, path: str, pairs: list[tuple[int, int]], order: int, exclude_self: bool,
    score: str = "logprob", logq: Tensor | None = None,
) -> dict[tuple[int, int], tuple[float, float]]:
    """(score, log P(b|a)) for the given pairs, evaluating only the rows a they need."""
    rows = sorted({a for a, _ in pairs})
    out: dict[tuple[int, int], tuple[float, float]] = {}
    if not rows:
        return out
    p = bigram_path(model, path)
    bs = 256
    for s in range(0, len(rows), bs):
        ids = torch.tensor(rows[s : s + bs])
        v, lp = row_scores(model, p, ids, score, order=order, exclude_self=exclude_self, logq=logq)
        pos = {a: i for i, a in enumerate(ids.tolist())}
        for a, b in pairs:
            if a in pos:
                out[(a, b)] = (float(v[pos[a], b]), float(lp[pos[a], b]))
    return out


# --------------------------------------------------------------------------- the diff
def diff_bigrams(
    a: ResidualModel | TopKTable,
    b: ResidualModel | TopKTable,
    path: str = "direct",
    *,
    top: int = 1000,
    k: int = 128,
    step: int = 50,
    n_changes: int = 20,
    n_moves: int = 20,
    exclude_self: bool = True,
    order: int = 0,
    batch_size: int | None = None,
    score: str | None = None,
) -> DiffResult:
    """Diff the bigram tables of ``path`` of two models (or two stored :class:`TopKTable`).

    ``top``: N of the global top lists; ``k``: outputs kept per input token (ranks are exact
    above every row's K-th value); ``step``: rank stride of the side-by-side table;
    ``n_changes`` / ``n_moves``: how many probability changes / rank moves to report;
    ``score``: what ranks the bigrams (default: the measured default; stored tables carry
    their own and must agree).
    """
    from jetex.ngrams.scores import COLUMN_SCORES, DEFAULT_SCORE, check_score

    sc = check_score(DEFAULT_SCORE if score is None else score)
    for name, v in (("top", top), ("k", k), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    check_same_tokenizer(a, b, "diff")
    models = isinstance(a, ResidualModel) and isinstance(b, ResidualModel)
    if isinstance(a, ResidualModel) != isinstance(b, ResidualModel):
        raise InputError("diff two models or two stored tables, not one of each")
    inc = dec = None
    logqs: tuple[Tensor | None, Tensor | None] = (None, None)
    if models:
        assert isinstance(a, ResidualModel) and isinstance(b, ResidualModel)
        V = a.vocab_size
        if k > V - int(exclude_self):
            raise InputError(f"k = {k} is larger than the vocabulary ({V} tokens)")
        if sc in COLUMN_SCORES:
            la = path_logq(a, path, order=order, exclude_self=exclude_self, batch_size=batch_size, score=sc)
            logqs = (la, la if b is a else path_logq(b, path, order=order, exclude_self=exclude_self, batch_size=batch_size,
                                                     score=sc))
        ta, tb, inc, dec = _joint_pass(a, b, path, k, n_changes, exclude_self, order, batch_size, sc, logqs)
    else:
        assert isinstance(a, TopKTable) and isinstance(b, TopKTable)
        if a.path != b.path:
            raise InputError(f"the stored tables hold different paths ({a.path} vs {b.path})")
        if a.score != b.score:
            raise InputError(f"the stored tables are ranked by different scores ({a.score} vs {b.score})")
        ta, tb = a, b
        path = a.path
        sc = a.score
    top_a, exact_a = ta.global_top(top)
    top_b, exact_b = tb.global_top(top)
    set_a = {(x, y) for x, y, _ in top_a}
    set_b = {(x, y) for x, y, _ in top_b}
    union = list(dict.fromkeys([(x, y) for x, y, _ in top_a] + [(x, y) for x, y, _ in top_b]))

    # (score, log P) of the union on both sides: kept entries, else exact rows for models
    def values(t: TopKTable, model: Any, logq: Tensor | None) -> dict[tuple[int, int], tuple[float, float] | None]:
        got: dict[tuple[int, int], tuple[float, float] | None] = {}
        for pq in union:
            v = t.lookup(*pq, what="value")
            got[pq] = None if v is None else (v, t.lookup(*pq))  # type: ignore[assignment]
        missing = [pq for pq, v in got.items() if v is None]
        if missing and isinstance(model, ResidualModel):
            got.update(_exact_values(model, path, missing, order, ta.exclude_self, sc, logq))
        return got

    vals_a, vals_b = values(ta, a, logqs[0]), values(tb, b, logqs[1])

    ids_needed = {x for pq in union for x in pq}
    for best in (inc, dec):
        if best is not None:
            ids_needed |= set(best[1].tolist()) | set(best[2].tolist())
    if models:
        strings = token_texts(a, sorted(ids_needed))  # type: ignore[arg-type]
    else:
        strings = {i: ta.strings.get(i) or tb.strings.get(i) or f"<{i}>" for i in ids_needed}

    def delta(pq: tuple[int, int], va: tuple[float, float] | None = None, vb: tuple[float, float] | None = None) -> BigramDelta:
        x, y = pq
        va = vals_a.get(pq) if va is None else va
        vb = vals_b.get(pq) if vb is None else vb
        ra, ea = ta.rank_of(va[0]) if va is not None else (None, False)
        rb, eb = tb.rank_of(vb[0]) if vb is not None else (None, False)
        return BigramDelta(
            a=x, b=y, a_text=strings.get(x, f"<{x}>"), b_text=strings.get(y, f"<{y}>"),
            p_a=None if va is None else math.exp(va[1]), p_b=None if vb is None else math.exp(vb[1]),
            rank_a=ra, rank_b=rb, rank_a_exact=ea, rank_b_exact=eb,
            s_a=None if va is None else va[0], s_b=None if vb is None else vb[0],
        )

    union_d = {pq: delta(pq) for pq in union}
    entered = [union_d[(x, y)] for x, y, _ in top_b if (x, y) not in set_a]
    left = [union_d[(x, y)] for x, y, _ in top_a if (x, y) not in set_b]
    moved = [d for d in union_d.values() if d.rank_change not in (None, 0)]
    gained = sorted((d for d in moved if d.rank_change > 0), key=lambda d: (-d.rank_change, d.a, d.b))[:n_moves]  # type: ignore[operator]
    lost = sorted((d for d in moved if d.rank_change < 0), key=lambda d: (d.rank_change, d.a, d.b))[:n_moves]  # type: ignore[operator]

    if models:
        changes_exhaustive = True
        extra: list[tuple[int, int]] = []
        for best in (inc, dec):
            if best is not None:
                extra += list(zip(best[1].tolist(), best[2].tolist()))
        ex_a = _exact_values(a, path, extra, order, exclude_self, sc, logqs[0])  # type: ignore[arg-type]
        ex_b = _exact_values(b, path, extra, order, exclude_self, sc, logqs[1])  # type: ignore[arg-type]

        def listed(best: tuple[Tensor, Tensor, Tensor] | None) -> list[BigramDelta]:
            if best is None:
                return []
            out = []
            for v, x, y in zip(*(t.tolist() for t in best)):
                if v > CHANGE_TOL:
                    out.append(delta((x, y), ex_a[(x, y)], ex_b[(x, y)]))
            return out[:n_changes]

        increases, decreases = listed(inc), listed(dec)
    else:
        changes_exhaustive = False
        both: list[BigramDelta] = []
        for i, x in enumerate(ta.inputs.tolist()):
            for j, y in enumerate(ta.ids[i].tolist()):
                lb = tb.lookup(x, y)
                if lb is not None:
                    la = float(ta.logp[i, j])
                    if abs(math.exp(lb) - math.exp(la)) > CHANGE_TOL:
                        both.append(delta((x, y), (float(ta.values[i, j]), la), (float(tb.lookup(x, y, what="value")), lb)))
        both.sort(key=lambda d: (-(d.delta or 0.0), d.a, d.b))
        increases = [d for d in both if (d.delta or 0) > 0][:n_changes]
        decreases = sorted((d for d in both if (d.delta or 0) < 0), key=lambda d: (d.delta, d.a, d.b))[:n_changes]

    def prob(t: TopKTable, vals: dict, x: int, y: int) -> float:
        lp = t.lookup(x, y)
        if lp is None:
            got = vals.get((x, y))
            lp = got[1] if got is not None else float("nan")
        return math.exp(lp)

    pa = [prob(ta, vals_a, x, y) for x, y, _ in top_a]
    pb = [prob(tb, vals_b, x, y) for x, y, _ in top_b]
    side: list[tuple[int, tuple | None, tuple | None]] = []
    for r in range(0, top, step):
        ea = top_a[r] if r < len(top_a) else None
        eb = top_b[r] if r < len(top_b) else None
        side.append(
            (
                r,
                (strings[ea[0]], strings[ea[1]], pa[r], ea[2]) if ea else None,
                (strings[eb[0]], strings[eb[1]], pb[r], eb[2]) if eb else None,
            )
        )
    return DiffResult(
        name_a=ta.model_name,
        name_b=tb.model_name,
        path=path,
        top_n=top,
        k=ta.k,
        step=step,
        exclude_self=ta.exclude_self,
        tokenizer_fp=ta.tokenizer_fp,
        top_a=[(x, y, p) for (x, y, _), p in zip(top_a, pa)],
        top_b=[(x, y, p) for (x, y, _), p in zip(top_b, pb)],
        top_a_exact=exact_a,
        top_b_exact=exact_b,
        side_by_side=side,
        entered=entered,
        left=left,
        gained=gained,
        lost=lost,
        increases=increases,
        decreases=decreases,
        changes_exhaustive=changes_exhaustive,
        strings=strings,
        score=sc,
        top_a_scores=[v for _, _, v in top_a],
        top_b_scores=[v for _, _, v in top_b],
    )
