"""N-gram query results as a result object (:class:`NgramTable`).

:func:`ngram_table` reads, from an n-gram database, what ``jetex ngrams top`` shows for one
run: the global top bigrams of a bigram run, one input token's next tokens, or the top
skip-trigrams of a head; the rows come back as an :class:`NgramTable` with the methods of
:class:`~jetex.results.Result` (``to_dataframe``, ``to_parquet``, ``save``/``load``,
``plot``, ``to_html``).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from jetex.errors import InputError
from jetex.ngrams.store import NgramStore
from jetex.results import Result

#: columns of a bigram table (global top pairs or one input token's top-K)
BIGRAM_COLUMNS = ("run_id", "path", "rank", "input_id", "input", "output_id", "output", "logit", "logprob", "prob")
#: columns of a trigram table (a … b → c)
TRIGRAM_COLUMNS = ("run_id", "path", "rank", "context_id", "context", "input_id", "input", "output_id", "output",
                   "logit", "logprob", "prob", "attn_prob")


def _plain(v: Any) -> Any:
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    return v


@dataclass(repr=False)
class NgramTable(Result):
    """Rows of one n-gram run of one model.

    ``kind``: ``bigram`` or ``trigram``; ``path`` the n-gram path (``direct``, ``mlp:3``,
    ``attn:0.1``, …); ``run_id``; ``model_name``; ``section`` what the rows are (e.g.
    ``global top 20 bigrams by P(next | token)``); ``columns`` and ``rows`` (one tuple per
    n-gram, in rank order).

    Table columns (bigrams): ``run_id``, ``path``, ``rank``, ``input_id``, ``input`` (the
    token t), ``output_id``, ``output`` (the next token), ``logit`` (the path's logit),
    ``logprob`` / ``prob`` (log P(next | t) and P). Trigrams (a … b → c) add ``context_id``
    / ``context`` (a) and ``attn_prob`` (p(a | b)); their ``logit`` is the OV logit and
    ``prob`` the score S = p(a|b)·P_OV(c|a).
    """

    _renderer_module = "jetex.viz.tables"

    kind: str
    path: str
    run_id: int
    model_name: str
    section: str
    columns: list[str]
    rows: list[tuple]

    def __post_init__(self) -> None:
        if self.kind not in ("bigram", "trigram"):
            raise ValueError(f"NgramTable.kind must be 'bigram' or 'trigram', got {self.kind!r}")
        self.rows = [tuple(r) for r in self.rows]
        if any(len(r) != len(self.columns) for r in self.rows):
            raise ValueError("NgramTable: every row has one value per column")

    def __len__(self) -> int:
        return len(self.rows)

    def _summary(self) -> str:
        return f"kind={self.kind!r}, path={self.path!r}, run={self.run_id}, rows={len(self.rows)}, model={self.model_name!r}, section={self.section!r}"

    def _columns(self) -> dict[str, list]:
        return {c: [r[i] for r in self.rows] for i, c in enumerate(self.columns)}

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts (column → value)."""
        return [dict(zip(self.columns, r)) for r in self.rows]


def ngram_table(
    store: NgramStore,
    run_id: int | None = None,
    *,
    path: str | None = None,
    input_id: int | None = None,
    n: int = 20,
) -> NgramTable:
    """The top ``n`` n-grams of one run of ``store``.

    The run is ``run_id``, or else the latest finished run of ``path`` (or of the only path
    stored). A bigram run gives its global top pairs by P(next | token), or, with
    ``input_id``, that token's top next tokens; a trigram run its top skip-trigrams.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    runs = [r for r in store.runs(path=path, status="done")]
    if run_id is not None:
        runs = [r for r in runs if int(r["run_id"]) == run_id]
        if not runs:
            raise InputError(f"no finished run {run_id}" + (f" of path {path!r}" if path else "") + f" in {store.path}")
    elif not runs:
        raise InputError("no finished run" + (f" of path {path!r}" if path else "") + f" in {store.path}")
    elif path is None and len({r["path"] for r in runs}) > 1:
        shown = ", ".join(sorted({str(r["path"]) for r in runs}))
        raise InputError(f"{store.path} holds several paths ({shown}); choose one with path=")
    run = max(runs, key=lambda r: int(r["run_id"]))
    rid = int(run["run_id"])
    if run["kind"] == "trigram":
        if input_id is not None:
            raise InputError("input_id selects a bigram run's next tokens; a trigram run has one global top-K")
        rows = store.ngrams(rid, n=n)
        cols, section = TRIGRAM_COLUMNS, f"top {n} trigrams (a … b → c)"
    elif input_id is not None:
        rows = store.ngrams(rid, input_id=input_id, n=n)
        cols, section = BIGRAM_COLUMNS, f"next tokens of {store.token(input_id)!r} (#{input_id})"
    else:
        rows = [r | {"run_id": rid, "path": run["path"]} for r in store.top_pairs(rid, n)]
        cols, section = BIGRAM_COLUMNS, f"global top {n} bigrams by P(next | token)"
    return NgramTable(
        kind=str(run["kind"]),
        path=str(run["path"]),
        run_id=rid,
        model_name=str(run.get("model_name") or ""),
        section=section,
        columns=list(cols),
        rows=[tuple(_plain(r.get(c)) for c in cols) for r in rows],
    )


__all__ = ["BIGRAM_COLUMNS", "NgramTable", "TRIGRAM_COLUMNS", "ngram_table"]
