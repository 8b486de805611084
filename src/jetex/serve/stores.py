"""The n-gram stores the explorer serves: named on the command line, opened read-only.

The browser picks a store by its *name* (the file's stem, made unique), never by a path.
Every query runs under the store's lock (one DuckDB connection is not shared by two
threads at once). Nothing here writes: the files are opened with ``read_only=True``.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path
from typing import Any


from jetex.apps.diff import diff_bigrams
from jetex.apps.tables import table_from_store
from jetex.errors import JetexError
from jetex.ngrams.scores import SCORES as BIGRAM_SCORES, check_score, score_label
from jetex.ngrams.store import NgramStore
from jetex.serve.limits import RequestError

#: scores a bigram listing may be ranked by (jetex.ngrams.scores; default: the run's own)
SCORES = tuple(BIGRAM_SCORES)
#: what a trigram (attention head) listing may be ranked by (the first is the default)
TRIGRAM_SCORES = ("prob", "attn_prob")


class ServedStore:
    """One read-only n-gram database and what the pages need to know about it."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.lock = threading.Lock()
        try:
            self.store = NgramStore(path, read_only=True)
        except JetexError as e:
            raise JetexError(f"cannot serve store {path}: {e}") from None
        self.meta = dict(self.store.meta)
        self._tables: dict[str, Any] = {}

    def runs(self) -> list[dict[str, Any]]:
        with self.lock:
            runs = self.store.runs(status="done")
        latest: dict[str, dict] = {}
        for r in runs:
            latest[r["path"]] = r
        with self.lock:
            return [
                {k: r[k] for k in ("run_id", "kind", "path", "description", "order", "top_k", "exclude_self", "n_inputs")}
                | {"score": None if r["kind"] == "trigram" else self.store.run_score(r)}
                for r in latest.values()
            ]

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.meta.get("model_name"),
            "model_fingerprint": self.meta.get("model_fingerprint"),
            "tokenizer_fingerprint": self.meta.get("tokenizer_fingerprint"),
            "vocab_size": int(self.meta.get("vocab_size", 0) or 0),
            "runs": self.runs(),
        }

    def run_of(self, path: str | None) -> dict[str, Any]:
        runs = self.runs()
        if not runs:
            raise RequestError(404, f"store {self.name!r} has no finished run")
        if path is None:
            return runs[0]
        for r in runs:
            if r["path"] == path:
                return r
        raise RequestError(404, f"store {self.name!r} has no finished run of path {path!r}; it has: {', '.join(r['path'] for r in runs)}")

    def token_ids(self, token: str) -> list[tuple[int, str]]:
        with self.lock:
            if token.startswith("#") and token[1:].isdigit():
                tid = int(token[1:])
                V = int(self.meta.get("vocab_size", 0) or 0)
                if not 0 <= tid < V:
                    raise RequestError(400, f"token id {tid} out of range 0..{V - 1}")
                return [(tid, self.store.token(tid))]
            found = self.store.find_tokens(token)
        if not found:
            raise RequestError(404, f"token {token!r} is not in the vocabulary of store {self.name!r}; give its exact string (e.g. ' the') or #ID")
        return found

    def listing(self, path: str | None, score: str | None, n: int, token: str | None, side: str) -> dict[str, Any]:
        """The top-``n`` rows of a path's run by ``score``; with ``token``, only rows where it is
        the input (``side="input"``) or the output (``side="output"``).

        Bigram runs are ranked by a score of :mod:`jetex.ngrams.scores` (``logprob``, ``logit``,
        ``zlogit``, ``pmi``, ``zpmi``; default: the run's own score, the store's default), each row's value
        in the column ``score``; another score of the same row order is re-scored from the
        stored statistics (as ``jetex ngrams top --score``). Trigram (attention head) runs are
        ranked by ``prob`` (default) or ``attn_prob``."""
        run = self.run_of(path)
        ids = self.token_ids(token) if token is not None else [(None, None)]
        if run["kind"] == "trigram":
            if score not in (None, *TRIGRAM_SCORES):
                raise RequestError(400, f"trigram (attention head) runs are ranked by {' or '.join(TRIGRAM_SCORES)}, not {score!r}")
            by = score or TRIGRAM_SCORES[0]
            rows: list[dict] = []
            with self.lock:
                for tid, _ in ids:
                    kw = {"input_id": tid} if side == "input" else {"output_id": tid}
                    rows += self.store.ranked(run["run_id"], by, n=n, **kw)
            for r in rows:
                r["score"] = r[by]
            default, exact = TRIGRAM_SCORES[0], True
            cols = ["position", "context", "input", "output", "score", "prob", "attn_prob", "logit", "rank"]
        else:
            if score in TRIGRAM_SCORES[1:]:
                raise RequestError(400, f"score {score!r} exists for trigram (attention head) runs only")
            default = run["score"]
            by = check_score(score if score is not None else default)
            with self.lock:
                rows, exact = self._scored(self.store.run(run["run_id"]), by, n, ids, side)
            cols = ["position", "input", "output", "score", "prob", "logprob", "logit", "rank"]
        rows.sort(key=lambda r: -(r["score"] if r["score"] is not None and r["score"] == r["score"] else float("-inf")))
        rows = rows[:n]
        for i, r in enumerate(rows, 1):
            r["position"] = i
        return {
            "store": self.name,
            "model": self.meta.get("model_name"),
            "run": run,
            "score": by,
            "score_label": score_label(by) if run["kind"] != "trigram" else by,
            "default_score": default,
            "exact": exact,
            "token": token,
            "side": side,
            "columns": cols,
            "rows": [{c: r.get(c) for c in cols + ["input_id", "output_id", "context_id"]} for r in rows],
        }

    def _scored(self, run: dict, score: str, n: int, ids: list, side: str) -> tuple[list[dict], bool]:
        """A bigram run's rows under ``score`` (under the lock): the global top-``n``, or the rows
        of the given tokens as input or output, each with its ``score`` (and whether a global
        list is certified exact)."""
        rid = run["run_id"]
        try:
            self.store.check_rescorable(run, score)
        except JetexError as e:
            raise RequestError(409, str(e)) from None
        if ids == [(None, None)]:
            rows = self.store.top_pairs(rid, n, score=score)
            return rows, all(r.get("exact", True) for r in rows)
        rows = []
        for tid, _ in ids:
            kw = {"input_id": tid} if side == "input" else {"output_id": tid}
            rows += self.store.ranked(rid, "logit", n=int(run["n_inputs"]) * int(run["top_k"]), **kw)
        if rows:
            try:
                vals = self.store.entry_scores(run, score, [r["input_id"] for r in rows], [r["output_id"] for r in rows],
                                               [r["logit"] for r in rows])
            except JetexError as e:
                raise RequestError(409, str(e)) from None
            for r, v in zip(rows, vals.tolist()):
                r["score"] = v
        return rows, True

    def table(self, path: str) -> Any:
        """The stored top-K table of a bigram path (cached: the store is read-only)."""
        with self.lock:
            if path not in self._tables:
                try:
                    self._tables[path] = table_from_store(self.path, path)
                except JetexError as e:
                    raise RequestError(404, f"store {self.name!r}: {e}") from None
            return self._tables[path]

    def close(self) -> None:
        with self.lock:
            self.store.close()


class StoreRegistry:
    """The stores given on the command line, by unique name."""

    def __init__(self, paths: list[str | Path]) -> None:
        self.stores: dict[str, ServedStore] = {}
        for p in paths:
            path = Path(p)
            name = path.stem
            i = 2
            while name in self.stores:
                name = f"{path.stem}-{i}"
                i += 1
            self.stores[name] = ServedStore(name, path)

    def get(self, name: str | None) -> ServedStore:
        if not self.stores:
            raise RequestError(404, "no n-gram store is served; start the server with --store FILE")
        if name is None:
            return next(iter(self.stores.values()))
        if name not in self.stores:
            raise RequestError(404, f"unknown store {name!r}; served stores: {', '.join(self.stores)}")
        return self.stores[name]

    def check_model(self, store: ServedStore, model_fp: str, model_name: str) -> None:
        if store.meta.get("model_fingerprint") != model_fp:
            raise RequestError(
                409,
                f"store {store.name!r} holds n-grams of model {store.meta.get('model_name')!r}, not of {model_name!r} "
                "(fingerprints differ)",
            )

    def diff(self, a: ServedStore, b: ServedStore, path: str, top: int, step: int) -> dict[str, Any]:
        if a.meta.get("tokenizer_fingerprint") != b.meta.get("tokenizer_fingerprint"):
            raise RequestError(409, f"stores {a.name!r} and {b.name!r} have different tokenizers: their bigrams cannot be compared")
        try:
            res = diff_bigrams(a.table(path), b.table(path), path, top=top, step=step)
        except JetexError as e:
            raise RequestError(400, str(e)) from None
        return {"store_a": a.name, "store_b": b.name} | res.to_dict()

    def close(self) -> None:
        for s in self.stores.values():
            s.close()


def to_csv(listing: dict[str, Any]) -> str:
    """The rows of a listing as CSV (the page's export of its current view)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = listing["columns"]
    w.writerow(cols)
    for r in listing["rows"]:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    return buf.getvalue()


def to_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)
