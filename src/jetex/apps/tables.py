"""Bigram tables of a jet path, evaluated exhaustively over the vocabulary (METHODS.md §4).

A bigram path p (``direct``: η → υ, ``mlp:N``: η → MLP_N → υ, …, parsed by
:func:`jetex.ngrams.paths.parse_path`) is a function of one input token a, so its logits
ℓ_p(· | a) = U e_p(a) ``[V]`` and its conditional distribution

    P_p(b | a) = softmax_b ℓ_p(b | a)        (softmax over the FULL vocabulary)

are evaluated for every token a of the vocabulary, in streamed row batches: no V×V matrix
is ever held. This module keeps, per input token, the K most probable outputs
(:class:`TopKTable`), from which the applications read global rankings:

- the global ranking of bigrams (a, b) is by P_p(b | a), largest first; rank 1 is the most
  probable transition of the whole table. Ties keep input-id order (then the row's order),
  so the ranking is deterministic;
- self-transitions (b = a) are excluded by default (``exclude_self``): tied-embedding models
  (both real defaults) make the ``direct`` path predict the input token itself
  (U η(a) = E E_a), which would fill every global top list with (a, a). As in
  :mod:`jetex.ngrams.engine` (and so in the n-gram database), the self-transition is then
  removed and the softmax renormalised over the other V − 1 outputs:
  P(b | a, b ≠ a) = P(b | a) / (1 − P(a | a)).

Scores (:mod:`jetex.ngrams.scores`): every ranking here is by a score of (a, b), ``score``:
``logprob`` (log P_p(b | a)), ``logit`` (the logit centred per input row), ``zlogit`` (the
centred logit over the row's spread), ``pmi`` (log P_p(b | a) − log q_p(b), q_p the path's
mean output distribution over all input tokens, :func:`path_logq`: one more pass over the
vocabulary) or ``zpmi`` (pmi of the z-scored logits, against their mean softmax q_ζ, also
:func:`path_logq`). The default is :data:`~jetex.ngrams.scores.DEFAULT_SCORE`, chosen by measurement
(``docs/ngram_scores.md``). :class:`TopKTable` keeps both the score (``values``) and log P
(``logp``) of its kept entries.

Exactness: the top-N of the whole V×V table is read from the per-row top-K; it is exact
when no output outside a row's kept K could enter it, i.e. when the N-th value is ≥ the
largest K-th value over rows (:meth:`TopKTable.global_top` checks and says so). The rank of
any probability s (1 + the number of kept entries larger than s) is exact under the same
condition s ≥ max-row K-th value, else it is a lower bound (:meth:`TopKTable.rank_of`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.models.base import ResidualModel
from jetex.expand.numerics import logsumexp

#: elements (rows × V) of one streamed batch of logits: 2^25 floats = 128 MiB
BATCH_ELEMENTS = 1 << 25


def bigram_path(model: ResidualModel, path: str):
    """The single bigram path named ``path`` (``direct``, ``mlp:N``, ``mlp:N,M``, ``mlps``, ``attn-free``)."""
    from jetex.ngrams.paths import parse_path

    paths = parse_path(model, path)
    if len(paths) != 1 or paths[0].is_trigram:
        raise InputError(f"path {path!r} is not a single bigram path; use direct, mlp:N, mlp:N,M, mlps or attn-free")
    return paths[0]


def default_batch(vocab_size: int) -> int:
    """Rows per streamed batch so that one ``[rows, V]`` logits block is ~128 MiB."""
    return max(8, min(4096, BATCH_ELEMENTS // max(1, vocab_size)))


def path_logits(model: ResidualModel, path: str | Any, ids: Int[Tensor, "b"], order: int = 0) -> Float[Tensor, "b v"]:
    """ℓ_p(· | a) ``[B, V]`` for the input tokens ``ids`` (each a one-token input at position 0)."""
    p = bigram_path(model, path) if isinstance(path, str) else path
    with torch.no_grad():
        return p.logits(model, ids.to(model.device), order).float()


def path_logq(
    model: ResidualModel, path: str | Any, *, order: int = 0, exclude_self: bool = True, batch_size: int | None = None,
    score: str = "pmi",
) -> Float[Tensor, "v"]:
    """log q_p(b) ``[V]`` (float64): the path's mean output distribution over every input token,
    q_p(b) = (1/V) Σ_a P_p(b | a) (self-transitions excluded and renormalised with
    ``exclude_self``), one streamed pass (:func:`jetex.ngrams.engine.column_logq`); with
    ``score="zpmi"`` the mean z-scored distribution q_ζ(b) = (1/V) Σ_a softmax(ζ(a, ·))(b) that
    zpmi needs."""
    from jetex.ngrams.engine import column_logq

    p = bigram_path(model, path) if isinstance(path, str) else path
    return column_logq(model, p, order=order, exclude_self=exclude_self, batch_size=batch_size, score=score).cpu()


def row_scores(
    model: ResidualModel,
    path: str | Any,
    ids: Int[Tensor, "b"],
    score: str | None = None,
    *,
    order: int = 0,
    exclude_self: bool = True,
    logq: Float[Tensor, "v"] | None = None,
) -> tuple[Float[Tensor, "b v"], Float[Tensor, "b v"]]:
    """(score ``[B, V]``, log P_p(· | a) ``[B, V]``) for input tokens ``ids``, on the CPU; an
    excluded self-transition is −inf in both. ``pmi`` and ``zpmi`` need ``logq``
    (:func:`path_logq` with that score)."""
    from jetex.ngrams.scores import DEFAULT_SCORE, check_score, score_rows

    sc = check_score(DEFAULT_SCORE if score is None else score)
    ids = ids.reshape(-1).long().cpu()
    z = path_logits(model, path, ids, order).cpu()
    return score_rows(sc, z, ids, exclude_self=exclude_self, logq=logq)


def row_logprobs(
    model: ResidualModel, path: str | Any, ids: Int[Tensor, "b"], order: int = 0, exclude_self: bool = True
) -> Float[Tensor, "b v"]:
    """log P_p(· | a) ``[B, V]`` for the input tokens ``ids`` (self-transition removed and
    renormalised with ``exclude_self``), on the CPU."""
    ids = ids.reshape(-1).long().cpu()
    lp = torch.log_softmax(path_logits(model, path, ids, order), dim=-1).cpu()
    return mask_self(lp, ids) if exclude_self else lp


def iter_scores(
    model: ResidualModel,
    path: str,
    rows: Int[Tensor, "n"] | None = None,
    *,
    score: str | None = None,
    order: int = 0,
    exclude_self: bool = True,
    logq: Float[Tensor, "v"] | None = None,
    batch_size: int | None = None,
    desc: str | None = None,
) -> Iterator[tuple[Int[Tensor, "b"], Float[Tensor, "b v"], Float[Tensor, "b v"]]]:
    """Stream (input ids ``[B]``, score ``[B, V]``, log P ``[B, V]``) over ``rows`` (default:
    the whole vocabulary); self-transitions −inf with ``exclude_self``."""
    from jetex.ngrams.scores import COLUMN_SCORES, DEFAULT_SCORE, check_score, missing_columns, score_rows

    sc = check_score(DEFAULT_SCORE if score is None else score)
    V = model.vocab_size
    p = bigram_path(model, path)
    if sc in COLUMN_SCORES and logq is None:
        raise InputError(f"score {sc!r} needs {missing_columns(sc)} (path_logq)")
    rows = torch.arange(V) if rows is None else rows.reshape(-1).long().cpu()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= V):
        raise InputError(f"token ids must be in 0..{V - 1}")
    bs = batch_size or default_batch(V)
    bar = _progress(rows.numel(), desc or f"{model.name} {path}")
    try:
        for s in range(0, rows.numel(), bs):
            ids = rows[s : s + bs]
            z = path_logits(model, p, ids, order).cpu()
            v, lp = score_rows(sc, z, ids, exclude_self=exclude_self, logq=logq)
            yield ids, v, lp
            if bar is not None:
                bar.update(ids.numel())
    finally:
        if bar is not None:
            bar.close()


def _progress(total: int, desc: str):
    """A tqdm bar on stderr (rate and time left) on a terminal, else None."""
    if total < 2048 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, leave=False)


def mask_self(logp: Float[Tensor, "b v"], ids: Int[Tensor, "b"]) -> Float[Tensor, "b v"]:
    """log P(b | a, b ≠ a): the self-transition removed (−inf) and the softmax renormalised
    over the other V − 1 outputs (the convention of :mod:`jetex.ngrams.engine`)."""
    out = logp.clone()
    out[torch.arange(len(ids)), ids.long()] = float("-inf")
    return out - logsumexp(out, dim=-1, keepdim=True)


def row_topk(logp: Float[Tensor, "b v"], k: int) -> tuple[Float[Tensor, "b k"], Int[Tensor, "b k"]]:
    """Row-wise top-k, largest first, ties broken by the lower token id."""
    from jetex.ngrams.trigrams import stable_topk

    return stable_topk(logp, k)


@dataclass
class TopKTable:
    """Per-input top-K of a bigram path: ``ids[i, j]`` is the j-th most probable output b after
    input ``inputs[i]`` = a, with ``logp[i, j]`` = log P_p(b | a) (rows sorted, largest first).

    Shapes: ``inputs [n]``, ``ids [n, k]``, ``logp [n, k]``. ``vocab_size`` is V (the
    softmax is over all V outputs). Metadata: ``path``, ``model_name``, ``model_fp``,
    ``tokenizer_fp``, ``exclude_self``, ``order``; ``strings`` (optional) maps ids to text;
    ``known_top`` (optional) is an exact global top list (a, b, score) from a database.
    ``score`` names the ranking score and ``values [n, k]`` holds it (None: ``logp``, the
    ``logprob`` score); rows are sorted by it. Ranks, global lists and the exactness floor
    are all by ``values``.
    """

    inputs: Int[Tensor, "n"]
    ids: Int[Tensor, "n k"]
    logp: Float[Tensor, "n k"]
    vocab_size: int
    path: str
    model_name: str = "model"
    model_fp: str = ""
    tokenizer_fp: str = ""
    exclude_self: bool = True
    order: int = 0
    strings: dict[int, str] = field(default_factory=dict, repr=False)
    known_top: list[tuple[int, int, float]] | None = field(default=None, repr=False)
    score: str = "logprob"
    values: Float[Tensor, "n k"] | None = None

    def __post_init__(self) -> None:
        n = self.inputs.shape[0]
        if self.ids.ndim != 2 or self.ids.shape != self.logp.shape or self.ids.shape[0] != n:
            raise ValueError(f"TopKTable: ids {tuple(self.ids.shape)} and logp {tuple(self.logp.shape)} must be [{n}, k]")
        if self.values is None:
            self.values = self.logp
        if self.values.shape != self.logp.shape:
            raise ValueError(f"TopKTable: values {tuple(self.values.shape)} must have the shape of logp")

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @property
    def floor(self) -> float:
        """The largest K-th kept score over rows: values above it are all kept."""
        if self.values.numel() == 0:
            return float("-inf")
        return float(self.values[:, -1].max())

    def global_top(self, n: int) -> tuple[list[tuple[int, int, float]], bool]:
        """The top-``n`` bigrams (a, b, score) of the table and whether that list is exact."""
        if self.known_top is not None and len(self.known_top) >= n:
            return list(self.known_top[:n]), True
        flat = self.values.flatten()
        n_eff = min(n, flat.numel())
        # order by (-logp, a, b): stable sort on logp after sorting by position
        vals, pos = torch.sort(flat, descending=True, stable=True)
        vals, pos = vals[:n_eff], pos[:n_eff]
        rows, cols = pos // self.k, pos % self.k
        out = [
            (int(self.inputs[r]), int(self.ids[r, c]), float(v))
            for r, c, v in zip(rows.tolist(), cols.tolist(), vals.tolist())
            if v > float("-inf")
        ]
        return out, self.complete or (len(out) == n and out[-1][2] >= self.floor)

    @property
    def complete(self) -> bool:
        """True when every row keeps all its outputs (K = V, or V − 1 without self-transitions)."""
        return self.k >= self.vocab_size - int(self.exclude_self) and self.inputs.numel() == self.vocab_size

    def sorted_values(self) -> Float[Tensor, "m"]:
        """All kept scores, ascending (for ranks)."""
        if not hasattr(self, "_sorted"):
            v = self.values.flatten()
            self._sorted = torch.sort(v[v > float("-inf")]).values
        return self._sorted

    def rank_of(self, value: float) -> tuple[int, bool]:
        """1 + the number of kept bigrams with a larger score than ``value``, and whether that is exact."""
        s = self.sorted_values()
        above = int(s.numel() - torch.searchsorted(s, torch.tensor([value], dtype=s.dtype), right=True))
        return above + 1, self.complete or value >= self.floor

    def lookup(self, a: int, b: int, what: str = "logp") -> float | None:
        """log P(b|a) (``what="value"``: its score) if (a, b) is kept in the table, else None."""
        if not hasattr(self, "_row"):
            self._row = {int(x): i for i, x in enumerate(self.inputs.tolist())}
        i = self._row.get(int(a))
        if i is None:
            return None
        hit = (self.ids[i] == int(b)).nonzero()
        src = self.logp if what == "logp" else self.values
        return float(src[i, int(hit[0, 0])]) if hit.numel() else None

    def text(self, token: int) -> str:
        return self.strings.get(int(token), f"<{int(token)}>")


def topk_table(
    model: ResidualModel,
    path: str = "direct",
    k: int = 100,
    *,
    exclude_self: bool = True,
    order: int = 0,
    rows: Int[Tensor, "n"] | None = None,
    batch_size: int | None = None,
    score: str | None = None,
    logq: Float[Tensor, "v"] | None = None,
) -> TopKTable:
    """The per-input top-``k`` of ``path`` by ``score`` over all input tokens (or ``rows``),
    streamed (``pmi`` / ``zpmi`` compute the path's mean (z-scored) output distribution first
    unless ``logq`` is given)."""
    from jetex.ngrams.scores import COLUMN_SCORES, DEFAULT_SCORE, check_score

    sc = check_score(DEFAULT_SCORE if score is None else score)
    V = model.vocab_size
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if k > V - int(exclude_self):
        raise InputError(f"k = {k} is larger than the vocabulary ({V} tokens)")
    if sc in COLUMN_SCORES and logq is None:
        logq = path_logq(model, path, order=order, exclude_self=exclude_self, score=sc)
    ins, outs, vals, lps = [], [], [], []
    for ids, v_all, lp_all in iter_scores(model, path, rows, score=sc, order=order, exclude_self=exclude_self, logq=logq,
                                          batch_size=batch_size):
        v, i = row_topk(v_all, k)
        ins.append(ids)
        outs.append(i.to(torch.int32))
        vals.append(v)
        lps.append(lp_all.gather(1, i))
    table = TopKTable(
        inputs=torch.cat(ins),
        ids=torch.cat(outs),
        logp=torch.cat(lps),
        vocab_size=V,
        path=path,
        model_name=model.name,
        model_fp=model.fingerprint(),
        tokenizer_fp=model.tokenizer_fingerprint(),
        exclude_self=exclude_self,
        order=order,
        score=sc,
        values=torch.cat(vals),
    )
    return table


def token_texts(model: ResidualModel, ids: Sequence[int]) -> dict[int, str]:
    """{id: decoded string} for the given ids (deduplicated)."""
    uniq = sorted({int(i) for i in ids})
    return dict(zip(uniq, model.token_strings(uniq)))


def check_same_tokenizer(a: ResidualModel | TopKTable, b: ResidualModel | TopKTable, what: str = "diff") -> None:
    """Refuse (one-line :class:`InputError`) when the two sides do not share one tokenizer."""
    fa = a.tokenizer_fp if isinstance(a, TopKTable) else a.tokenizer_fingerprint()
    fb = b.tokenizer_fp if isinstance(b, TopKTable) else b.tokenizer_fingerprint()
    va = a.vocab_size
    vb = b.vocab_size
    na = a.model_name if isinstance(a, TopKTable) else a.name
    nb = b.model_name if isinstance(b, TopKTable) else b.name
    if fa != fb or va != vb:
        raise InputError(
            f"cannot {what} {na} and {nb}: their tokenizers differ (fingerprints {fa} vs {fb}, "
            f"vocabularies {va} vs {vb}); bigram tables are only comparable over one vocabulary"
        )


def table_from_store(db: str | Path, path: str = "direct", order: int = 0, score: str | None = None) -> TopKTable:
    """The per-input top-K of ``path`` read from an n-gram database (:mod:`jetex.ngrams.store`),
    ranked by ``score`` (default: :data:`~jetex.ngrams.scores.DEFAULT_SCORE`).

    Uses the latest finished bigram run of that path and order over the whole vocabulary,
    preferring a run ranked by ``score``: its exact global top-N (``top_pairs``) is kept as
    :attr:`TopKTable.known_top`. A run ranked by another score of the same row order is
    re-scored from the stored statistics (no model); a store that cannot give ``score`` is
    refused with one line (:class:`~jetex.errors.StoreError`). With ``score=None``, a run that
    cannot give the default (one ranked in another row order, e.g. made under an earlier
    default) is read under its own score instead.
    """
    from jetex.errors import StoreError
    from jetex.ngrams.scores import DEFAULT_SCORE, check_score, row_family
    from jetex.ngrams.store import NgramStore

    sc = check_score(DEFAULT_SCORE if score is None else score)
    with NgramStore(db, read_only=True) as store:
        V = int(store.meta.get("vocab_size", 0))
        runs = [r for r in store.runs(path=path, status="done") if r["kind"] == "bigram" and int(r["order"]) == order]
        runs = [r for r in runs if int(r["n_inputs"]) == V] or runs
        if not runs:
            done = sorted({f"{r['path']} (order {r['order']})" for r in store.runs(status="done") if r["kind"] == "bigram"})
            raise InputError(
                f"{db} has no finished bigram run of path {path!r} at order {order}; it has: {', '.join(done) or 'none'}"
            )
        same = [r for r in runs if store.run_score(r) == sc]
        run = same[-1] if same else runs[-1]
        if score is None and not same and row_family(store.run_score(run)) != row_family(sc):
            sc, same = store.run_score(run), [run]  # no score asked: the run's own
        store.check_rescorable(run, sc)
        rid, K = int(run["run_id"]), int(run["top_k"])
        try:
            cols = store.con.execute(
                "SELECT input_id, output_id, logit, logprob FROM ngrams WHERE run_id = ? ORDER BY input_id, rank", [rid]
            ).fetchnumpy()
            top = store.con.execute(
                "SELECT input_id, output_id, logprob FROM top_pairs WHERE run_id = ? AND rank IS NOT NULL ORDER BY rank",
                [rid],
            ).fetchall() if same else []
            if same and store._has_column("top_pairs", "score"):
                top = store.con.execute(
                    "SELECT input_id, output_id, coalesce(score, logprob) FROM top_pairs WHERE run_id = ? AND rank IS NOT NULL "
                    "ORDER BY rank", [rid]).fetchall()
            strings = dict(store.con.execute("SELECT token_id, token FROM tokens").fetchall())
        except Exception as e:  # duckdb errors
            raise StoreError(f"cannot read {db}: {' '.join(str(e).split())[:200]}") from None
        n = len(cols["input_id"]) // K
        if n * K != len(cols["input_id"]):
            raise StoreError(f"{db}: run {rid} of {path} is incomplete (rows are not a whole top-{K} per input)")
        vals = store.entry_scores(run, sc, cols["input_id"], cols["output_id"], cols["logit"])
        inputs = torch.as_tensor(cols["input_id"].reshape(n, K)[:, 0].astype("int64"))
        return TopKTable(
            inputs=inputs,
            ids=torch.as_tensor(cols["output_id"].reshape(n, K).astype("int32")),
            logp=torch.as_tensor(cols["logprob"].reshape(n, K).astype("float32")),
            vocab_size=V,
            path=path,
            model_name=store.meta.get("model_name", str(db)),
            model_fp=store.meta.get("model_fingerprint", ""),
            tokenizer_fp=store.meta.get("tokenizer_fingerprint", ""),
            exclude_self=bool(run["exclude_self"]),
            order=order,
            strings={int(k): str(v) for k, v in strings.items()},
            known_top=[(int(a), int(b), float(v)) for a, b, v in top] or None,
            score=sc,
            values=torch.as_tensor(vals.reshape(n, K).astype("float32")),
        )
