"""The n-gram database: a DuckDB file holding jet n-gram tables of ONE model.

Schema (version 1):

- ``meta(key, value)``: ``schema_version``, ``model_name``, ``model_fingerprint``,
  ``tokenizer_fingerprint``, ``vocab_size``, ``created_at``. A store refuses to open with a
  model whose fingerprint or tokenizer fingerprint differs (:class:`StoreError`, nothing written).
- ``tokens(token_id, token)``: the readable string of every token id.
- ``runs``: one row per extraction of one path: ``run_id``, ``kind`` (bigram / trigram),
  ``path``, ``description``, ``order``, ``top_k``, ``global_top``, ``exclude_self``,
  ``n_inputs``, ``batch_size``, ``n_batches``, ``options`` (JSON), ``model_name``,
  ``model_fingerprint``, ``tokenizer_fingerprint``, ``created_at``, ``finished_at``,
  ``status`` (running / done), ``seconds`` (compute time summed over sessions), ``stats`` (JSON).
- ``ngrams``: the n-grams. Bigrams: for every input token its top-K next tokens, ``rank``
  1..K. Trigrams (a … b → c): the head's global top-K, ``rank`` 1..K. Columns ``run_id``,
  ``path``, ``order``, ``context_id`` / ``context`` (a; NULL for bigrams), ``input_id`` /
  ``input`` (t, or b), ``output_id`` / ``output`` (c), ``logit`` (path logit; the OV logit
  for trigrams), ``logprob`` / ``prob`` (log P(c|t); for trigrams log S and S =
  p(a|b)·P_OV(c|a)), ``attn_prob`` (p(a|b), trigrams only), ``rank``.
- ``input_stats(run_id, input_id, lse, self_logit, self_logprob, self_top1, mean_logit,
  std_logit, lse_z)``: per input token of a bigram run (log-sum-exp of its softmax; the
  self-transition in the full softmax; μ and σ of its logits over the candidate outputs;
  lse_ζ, the log-sum-exp of its z-scored logits, kept by ``zpmi`` runs only, else NULL).
- ``output_stats(run_id, output_id, logq)``: the column distribution of the run's score:
  for ``pmi`` runs log q(c), the path's mean output distribution
  q(c) = (1/N) Σ_t P(c | t) over the run's inputs; for ``zpmi`` runs log q_ζ(c), the mean
  z-scored output distribution (1/N) Σ_t softmax(ζ(t, ·))(c) (both written by their
  first pass, before the ranking pass, so a killed run does not redo it; or assembled when a
  run finishes from ``column_parts(run_id, batch, output_id, log_sum)``, each batch's
  log Σ_{t ∈ batch} P(c|t), committed with the batch, for callers that pass
  ``column_stats=True``). Runs of the other scores do not keep it: no score they can be
  re-scored into needs it, and accumulating it cost ~20 % of the extraction.
- ``top_pairs``: the global top-N (input, output) pairs of a bigram run by its score
  (``score``; the run's ``options.score``, :mod:`jetex.ngrams.scores`), ``rank`` 1..N (while
  a run is unfinished it holds per-batch candidates with NULL rank).

Scores (``options.score`` of a run; runs made before scores existed rank by ``logprob``):
the ngrams rows of a bigram run are each input's top-K by that score. ``logprob``,
``logit`` and ``zlogit`` rank a row identically, so a run of one of them can be re-scored into
another without evaluating the model (:meth:`NgramStore.rescore_run`: a new run, written in
one transaction); ``pmi`` and ``zpmi`` each rank rows in their own order and need their own
extraction. A store made before the statistics existed (no ``mean_logit`` / ``output_stats`` /
``lse_z``) is refused for the scores that need them, with a line saying to re-extract.

Migrations: the schema version stays 1; columns and tables added since (``mean_logit``,
``std_logit``, ``score``, ``output_stats``, ``column_parts``, ``lse_z``) are added to an older
file when it is opened for writing (:data:`_ADDED`), and read as NULL from an older file
opened read-only.
- ``fidelity(run_id, path, sample_size, n_inputs, sample_rule, context, mean_kl,
  top1_agreement, top10_agreement)``.
- ``done_batches(run_id, batch, n_rows, committed_at)``: committed in the same transaction as
  the batch's rows, so a killed run resumes exactly where it stopped: no duplicate, no loss.

Every failure to read or write (not a DuckDB file, another schema, read-only file or
folder, full disk, file locked by another process) is a one-line :class:`StoreError`;
what was committed before stays.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from jetex.errors import StoreError
from jetex.models.base import ResidualModel

SCHEMA_VERSION = "1"

_DDL = [
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
    "CREATE TABLE IF NOT EXISTS tokens (token_id INTEGER PRIMARY KEY, token VARCHAR)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id INTEGER PRIMARY KEY, kind VARCHAR, path VARCHAR, description VARCHAR, "order" INTEGER,
        top_k INTEGER, global_top INTEGER, exclude_self BOOLEAN, n_inputs INTEGER, batch_size INTEGER,
        n_batches INTEGER, options VARCHAR, model_name VARCHAR, model_fingerprint VARCHAR,
        tokenizer_fingerprint VARCHAR, created_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
        seconds DOUBLE, stats VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS ngrams (
        run_id INTEGER, path VARCHAR, "order" INTEGER, context_id INTEGER, context VARCHAR,
        input_id INTEGER, input VARCHAR, output_id INTEGER, output VARCHAR, logit REAL, logprob REAL,
        prob REAL, attn_prob REAL, rank INTEGER)""",
    """CREATE TABLE IF NOT EXISTS input_stats (
        run_id INTEGER, input_id INTEGER, lse REAL, self_logit REAL, self_logprob REAL, self_top1 BOOLEAN,
        mean_logit REAL, std_logit REAL, lse_z REAL)""",
    """CREATE TABLE IF NOT EXISTS top_pairs (
        run_id INTEGER, input_id INTEGER, output_id INTEGER, logit REAL, logprob REAL, rank INTEGER, score REAL)""",
    """CREATE TABLE IF NOT EXISTS output_stats (run_id INTEGER, output_id INTEGER, logq DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS column_parts (run_id INTEGER, batch INTEGER, output_id INTEGER, log_sum DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS fidelity (
        run_id INTEGER PRIMARY KEY, path VARCHAR, sample_size INTEGER, n_inputs INTEGER, sample_rule VARCHAR,
        context VARCHAR, mean_kl DOUBLE, top1_agreement DOUBLE, top10_agreement DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS done_batches (
        run_id INTEGER, batch INTEGER, n_rows INTEGER, committed_at TIMESTAMP, PRIMARY KEY (run_id, batch))""",
]
_NGRAM_COLS = ("run_id", "path", "order", "context_id", "context", "input_id", "input", "output_id", "output",
               "logit", "logprob", "prob", "attn_prob", "rank")
_RUN_KEY = ("kind", "path", "order", "top_k", "global_top", "exclude_self", "n_inputs")
#: columns and tables added to schema 1 for scores (an older file gets them when opened for writing)
_ADDED = [
    "ALTER TABLE input_stats ADD COLUMN IF NOT EXISTS mean_logit REAL",
    "ALTER TABLE input_stats ADD COLUMN IF NOT EXISTS std_logit REAL",
    "ALTER TABLE top_pairs ADD COLUMN IF NOT EXISTS score REAL",
    "CREATE TABLE IF NOT EXISTS output_stats (run_id INTEGER, output_id INTEGER, logq DOUBLE)",
    "CREATE TABLE IF NOT EXISTS column_parts (run_id INTEGER, batch INTEGER, output_id INTEGER, log_sum DOUBLE)",
    "ALTER TABLE input_stats ADD COLUMN IF NOT EXISTS lse_z REAL",
]
#: the columns of input_stats, in order (inserts name them: older files may lack the last ones)
_INPUT_STATS_COLS = ("run_id", "input_id", "lse", "self_logit", "self_logprob", "self_top1", "mean_logit", "std_logit",
                     "lse_z")


def _now() -> _dt.datetime:
    return _dt.datetime.now().replace(microsecond=0)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 240 else text[:239] + "…"


def _reason(e: BaseException) -> str:
    """A short cause for an I/O failure (read-only, full disk, lock, …)."""
    text = str(e).lower()
    errno_ = getattr(e, "errno", None)
    if errno_ == 28 or "no space left" in text or "disk full" in text:
        return "the disk is full"
    if errno_ in (1, 13, 30) or any(w in text for w in ("permission denied", "read-only", "read only", "not permitted")):
        return "it is read-only (no write permission)"
    if "lock" in text:
        return "it is in use by another process"
    return _one_line(e)


def _score_entries(score: str, st: dict[str, np.ndarray], logq: np.ndarray | None, input_ids: Any, output_ids: Any,
                   logits: Any) -> np.ndarray:
    """Values under ``score`` of entries (input, output, logit), from a run's per-input
    statistics ``st`` (:meth:`NgramStore.input_stats`) and column statistic ``logq``."""
    from jetex.ngrams.scores import score_values

    pos = np.searchsorted(st["input_id"], np.asarray(input_ids, dtype=np.int64))
    return score_values(score, np.asarray(logits, dtype=np.float64), st["lse"][pos], st["mean_logit"][pos],
                        st["std_logit"][pos], None if logq is None else logq[np.asarray(output_ids, dtype=np.int64)],
                        st["lse_z"][pos])


class NgramStore:
    """A jet n-gram database (DuckDB file, schema in the module docstring).

    ``NgramStore(path, model=m)`` opens or creates the file for writing, refusing a file made
    for another model or tokenizer; ``NgramStore(path, read_only=True)`` opens an existing
    file for reading (no model needed); ``NgramStore(path, check_model=False)`` opens an
    existing file for writing what needs no model (re-scoring). Use as a context manager or
    call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, *, model: ResidualModel | None = None, read_only: bool = False,
                 check_model: bool = True) -> None:
        import duckdb

        self.path = Path(path)
        self.read_only = read_only
        self._duckdb = duckdb
        self.con: Any = None
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not an n-gram database file")
        exists = self.path.exists()
        if read_only and not exists:
            raise StoreError(f"no n-gram database at {self.path}")
        if not read_only and model is None and (check_model or not exists):
            raise StoreError("opening an n-gram database for writing needs the model (to check its fingerprint)")
        self.meta: dict[str, str] = {}
        if exists:
            # check what the file is, read-only, before anything could be written
            self.meta = self._read_meta()
            if model is not None:
                self._check_model(model)
        if read_only:
            self.con = self._connect(read_only=True)
            return
        self.con = self._connect(read_only=False)
        if not exists or not self.meta:
            self._create(model)  # type: ignore[arg-type]
        else:
            with self.transaction():
                for ddl in _ADDED:
                    self.con.execute(ddl)

    # ---- opening ---------------------------------------------------------------------
    def _connect(self, read_only: bool) -> Any:
        try:
            return self._duckdb.connect(str(self.path), read_only=read_only)
        except self._duckdb.Error as e:
            raise StoreError(f"cannot open {self.path} for {'reading' if read_only else 'writing'}: {_reason(e)}") from None
        except OSError as e:
            raise StoreError(f"cannot open {self.path}: {_reason(e)}") from None

    def _read_meta(self) -> dict[str, str]:
        try:
            con = self._duckdb.connect(str(self.path), read_only=True)
        except self._duckdb.Error as e:
            msg = str(e).lower()
            if "lock" in msg:
                raise StoreError(f"cannot open {self.path}: it is in use by another process") from None
            if "permission" in msg:
                raise StoreError(f"cannot open {self.path}: {_reason(e)}") from None
            raise StoreError(f"{self.path} is not a jetex n-gram database (not a readable DuckDB file)") from None
        try:
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if "meta" not in tables:
                if not tables:
                    return {}
                raise StoreError(f"{self.path} is a DuckDB file but not a jetex n-gram database (no meta table)")
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        except self._duckdb.Error as e:
            raise StoreError(f"{self.path} is not a jetex n-gram database: {_one_line(e)}") from None
        finally:
            con.close()
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has n-gram schema version {meta.get('schema_version')!r}; this jetex reads version {SCHEMA_VERSION}")
        return meta

    def _check_model(self, model: ResidualModel) -> None:
        fp, tfp = model.fingerprint(), model.tokenizer_fingerprint()
        if self.meta.get("model_fingerprint") != fp:
            raise StoreError(
                f"{self.path} holds n-grams of model {self.meta.get('model_name')!r} (fingerprint {self.meta.get('model_fingerprint')}), "
                f"not of {model.name!r} (fingerprint {fp}); use another --db file"
            )
        if self.meta.get("tokenizer_fingerprint") != tfp:
            raise StoreError(
                f"{self.path} was made with tokenizer {self.meta.get('tokenizer_fingerprint')}, not {tfp}; use another --db file"
            )

    def _create(self, model: ResidualModel) -> None:
        strings = token_strings_all(model)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "model_name": model.name,
            "model_fingerprint": model.fingerprint(),
            "tokenizer_fingerprint": model.tokenizer_fingerprint(),
            "vocab_size": str(model.vocab_size),
            "created_at": _now().isoformat(),
        }
        tokens = pa.table({"token_id": pa.array(np.arange(len(strings), dtype=np.int32)), "token": pa.array(strings, pa.string())})
        with self.transaction():
            for ddl in _DDL:
                self.con.execute(ddl)
            self.con.register("_tokens", tokens)
            self.con.execute("INSERT INTO tokens SELECT token_id, token FROM _tokens")
            self.con.unregister("_tokens")
            self.con.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
        self.meta = meta

    def close(self) -> None:
        if self.con is not None:
            with contextlib.suppress(Exception):
                self.con.close()
            self.con = None

    def __enter__(self) -> "NgramStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write: everything inside commits together or not at all."""
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only")
        try:
            self.con.begin()
            yield
            self.con.commit()
        except StoreError:
            self._rollback()
            raise
        except (self._duckdb.Error, OSError) as e:
            self._rollback()
            raise StoreError(f"cannot write to {self.path}: {_reason(e)}; what was committed before is kept, rerun to resume") from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        with contextlib.suppress(Exception):
            self.con.rollback()

    def _q(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        try:
            return self.con.execute(sql, params).fetchall()
        except self._duckdb.Error as e:
            raise StoreError(f"cannot read {self.path}: {_one_line(e)}") from None

    def _dicts(self, sql: str, params: list | tuple = ()) -> list[dict]:
        try:
            cur = self.con.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]
        except self._duckdb.Error as e:
            raise StoreError(f"cannot read {self.path}: {_one_line(e)}") from None

    # ---- runs ------------------------------------------------------------------------
    def find_run(self, score: str | None = None, **key: Any) -> dict | None:
        """The latest run matching ``kind, path, order, top_k, global_top, exclude_self, n_inputs``
        (and, for bigrams, ranked by ``score`` when given)."""
        where = " AND ".join(f'"{k}" = ?' for k in _RUN_KEY)
        rows = self._dicts(f"SELECT * FROM runs WHERE {where} ORDER BY run_id DESC", [key[k] for k in _RUN_KEY])
        if score is not None:
            rows = [r for r in rows if self.run_score(r) in (score, "trigram")]
        return rows[0] if rows else None

    def start_run(self, *, description: str, batch_size: int, n_batches: int, options: dict, model: ResidualModel, **key: Any) -> dict:
        """Create a run row (status ``running``) and return it."""
        with self.transaction():
            rid = self.con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]
            self.con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 'running', 0, NULL)",
                [rid, key["kind"], key["path"], description, key["order"], key["top_k"], key["global_top"],
                 key["exclude_self"], key["n_inputs"], batch_size, n_batches, json.dumps(options, sort_keys=True),
                 model.name, model.fingerprint(), model.tokenizer_fingerprint(), _now()],
            )
        return self.run(rid)

    def run(self, run_id: int) -> dict:
        rows = self._dicts("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if not rows:
            raise StoreError(f"{self.path} has no run {run_id}")
        return rows[0]

    def runs(self, path: str | None = None, status: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM runs WHERE 1=1", []
        if path is not None:
            sql += " AND path = ?"
            params.append(path)
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        return self._dicts(sql + " ORDER BY run_id", params)

    def delete_run(self, run_id: int) -> None:
        with self.transaction():
            for t in ("ngrams", "input_stats", "top_pairs", "fidelity", "done_batches", "output_stats", "column_parts", "runs"):
                self.con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])

    def done_batches(self, run_id: int) -> set[int]:
        return {int(r[0]) for r in self._q("SELECT batch FROM done_batches WHERE run_id = ?", [run_id])}

    def add_seconds(self, run_id: int, seconds: float) -> None:
        with self.transaction():
            self.con.execute("UPDATE runs SET seconds = seconds + ? WHERE run_id = ?", [float(seconds), run_id])

    # ---- writing batches -----------------------------------------------------------------
    def _insert(self, table: str, cols: tuple[str, ...], data: pa.Table) -> None:
        self.con.register("_batch", data)
        try:
            quoted = ", ".join(f'"{c}"' for c in cols)
            self.con.execute(f"INSERT INTO {table} ({quoted}) SELECT {quoted} FROM _batch")
        finally:
            self.con.unregister("_batch")

    def _strings(self, ids: np.ndarray) -> pa.Array:
        if not hasattr(self, "_vocab_arr"):
            rows = self._q("SELECT token FROM tokens ORDER BY token_id")
            self._vocab_arr = pa.array([r[0] for r in rows], pa.string())
        return self._vocab_arr.take(pa.array(ids.astype(np.int64)))

    def write_bigram_batch(self, run: dict, batch: Any) -> None:
        """Commit one :class:`~jetex.ngrams.engine.BigramBatch` (rows + stats + candidates + done mark)."""
        B, K = batch.top_ids.shape
        inp = np.repeat(batch.input_ids, K)
        out = batch.top_ids.reshape(-1)
        lp = batch.top_logprobs.reshape(-1).astype(np.float32)
        n = len(inp)
        ngrams = pa.table({
            "run_id": pa.array(np.full(n, run["run_id"], np.int32)),
            "path": pa.array([run["path"]] * n, pa.string()),
            "order": pa.array(np.full(n, run["order"], np.int32)),
            "context_id": pa.nulls(n, pa.int32()),
            "context": pa.nulls(n, pa.string()),
            "input_id": pa.array(inp.astype(np.int32)),
            "input": self._strings(inp),
            "output_id": pa.array(out.astype(np.int32)),
            "output": self._strings(out),
            "logit": pa.array(batch.top_logits.reshape(-1).astype(np.float32)),
            "logprob": pa.array(lp),
            "prob": pa.array(np.exp(lp.astype(np.float64)).astype(np.float32)),
            "attn_prob": pa.nulls(n, pa.float32()),
            "rank": pa.array(np.tile(np.arange(1, K + 1, dtype=np.int32), B)),
        })
        stats = pa.table({
            "run_id": pa.array(np.full(B, run["run_id"], np.int32)),
            "input_id": pa.array(batch.input_ids.astype(np.int32)),
            "lse": pa.array(batch.lse.astype(np.float32)),
            "self_logit": pa.array(batch.self_logit.astype(np.float32)),
            "self_logprob": pa.array(batch.self_logprob.astype(np.float32)),
            "self_top1": pa.array(batch.self_top1.astype(bool)),
            "mean_logit": pa.array(batch.mean_logit.astype(np.float32)) if batch.mean_logit is not None else pa.nulls(B, pa.float32()),
            "std_logit": pa.array(batch.std_logit.astype(np.float32)) if batch.std_logit is not None else pa.nulls(B, pa.float32()),
            "lse_z": pa.array(batch.lse_z.astype(np.float32)) if getattr(batch, "lse_z", None) is not None else pa.nulls(B, pa.float32()),
        })
        c = batch.candidates
        cand = pa.table({
            "run_id": pa.array(np.full(len(c), run["run_id"], np.int32)),
            "input_id": pa.array(c.input_ids.astype(np.int32)),
            "output_id": pa.array(c.output_ids.astype(np.int32)),
            "logit": pa.array(c.logits.astype(np.float32)),
            "logprob": pa.array(c.logprobs.astype(np.float32)),
            "rank": pa.nulls(len(c), pa.int32()),
            "score": pa.array(np.asarray(c.scores).astype(np.float32)),
        })
        parts = None
        if batch.col_lse is not None:
            V = len(batch.col_lse)
            parts = pa.table({
                "run_id": pa.array(np.full(V, run["run_id"], np.int32)),
                "batch": pa.array(np.full(V, batch.batch_index, np.int32)),
                "output_id": pa.array(np.arange(V, dtype=np.int32)),
                "log_sum": pa.array(np.asarray(batch.col_lse, dtype=np.float64)),
            })
        with self.transaction():
            self._insert("ngrams", _NGRAM_COLS, ngrams)
            self._insert("input_stats", tuple(stats.column_names), stats)
            self._insert("top_pairs", tuple(cand.column_names), cand)
            if parts is not None:
                self._insert("column_parts", tuple(parts.column_names), parts)
            self.con.execute("INSERT INTO done_batches VALUES (?, ?, ?, ?)", [run["run_id"], batch.batch_index, n, _now()])

    def write_trigram_chunk(self, run: dict, chunk: Any) -> None:
        """Commit the candidates of one :class:`~jetex.ngrams.trigrams.TrigramChunk` (rank NULL until the run finishes)."""
        t = chunk.table
        n = len(t)
        lp = t.logscore.astype(np.float32)
        ngrams = pa.table({
            "run_id": pa.array(np.full(n, run["run_id"], np.int32)),
            "path": pa.array([run["path"]] * n, pa.string()),
            "order": pa.array(np.full(n, run["order"], np.int32)),
            "context_id": pa.array(t.context_ids.astype(np.int32)),
            "context": self._strings(t.context_ids),
            "input_id": pa.array(t.input_ids.astype(np.int32)),
            "input": self._strings(t.input_ids),
            "output_id": pa.array(t.output_ids.astype(np.int32)),
            "output": self._strings(t.output_ids),
            "logit": pa.array(t.ov_logit.astype(np.float32)),
            "logprob": pa.array(lp),
            "prob": pa.array(np.exp(lp.astype(np.float64)).astype(np.float32)),
            "attn_prob": pa.array(np.exp(t.attn_logprob.astype(np.float64)).astype(np.float32)),
            "rank": pa.nulls(n, pa.int32()),
        })
        with self.transaction():
            self._insert("ngrams", _NGRAM_COLS, ngrams)
            self.con.execute("INSERT INTO done_batches VALUES (?, ?, ?, ?)", [run["run_id"], chunk.batch_index, n, _now()])

    def global_candidates(self, run_id: int) -> Any:
        """The committed global candidates of a bigram run (to resume the engine's θ)."""
        from jetex.ngrams.engine import GlobalCandidates

        rows = self._q("SELECT input_id, output_id, logit, logprob, coalesce(score, logprob) FROM top_pairs WHERE run_id = ?", [run_id])
        if not rows:
            return GlobalCandidates.empty()
        a = np.array(rows, dtype=np.float64)
        g = GlobalCandidates(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2].astype(np.float32),
                             a[:, 3].astype(np.float32), a[:, 4].astype(np.float32))
        return GlobalCandidates.empty().merged(g, len(g))

    def finish_run(self, run: dict, seconds: float) -> dict:
        """Rank the global candidates (bigrams) or the trigram candidates, compute the run's stats, mark it done."""
        rid = run["run_id"]
        with self.transaction():
            if run["kind"] == "bigram":
                self.con.execute(
                    """CREATE OR REPLACE TEMP TABLE _ranked AS
                       SELECT run_id, input_id, output_id, logit, logprob,
                              CAST(row_number() OVER (ORDER BY coalesce(score, logprob) DESC, input_id, output_id) AS INTEGER) AS rank,
                              score
                       FROM top_pairs WHERE run_id = ?""", [rid])
                self.con.execute("DELETE FROM top_pairs WHERE run_id = ?", [rid])
                self.con.execute("INSERT INTO top_pairs SELECT * FROM _ranked WHERE rank <= ?", [run["global_top"]])
                self.con.execute("DROP TABLE _ranked")
                self._assemble_logq(run)
                st = self.con.execute(
                    """SELECT count(*), avg(CAST(self_top1 AS DOUBLE) ORDER BY input_id), avg(exp(self_logprob) ORDER BY input_id)
                       FROM input_stats WHERE run_id = ?""", [rid]).fetchone()
                n_rows = self.con.execute("SELECT count(*) FROM ngrams WHERE run_id = ?", [rid]).fetchone()[0]
                stats = {"n_inputs": int(st[0]), "self_transition_rate": float(st[1] or 0.0),
                         "mean_self_prob": float(st[2] or 0.0), "n_rows": int(n_rows)}
            else:
                cols = ", ".join(f'"{c}"' for c in _NGRAM_COLS[:-1])
                self.con.execute(
                    f"""CREATE OR REPLACE TEMP TABLE _ranked AS
                        SELECT {cols}, CAST(row_number() OVER (ORDER BY logprob DESC, context_id, input_id, output_id) AS INTEGER) AS rank
                        FROM ngrams WHERE run_id = ?""", [rid])
                self.con.execute("DELETE FROM ngrams WHERE run_id = ?", [rid])
                self.con.execute("INSERT INTO ngrams SELECT * FROM _ranked WHERE rank <= ?", [run["top_k"]])
                self.con.execute("DROP TABLE _ranked")
                n_rows = self.con.execute("SELECT count(*) FROM ngrams WHERE run_id = ?", [rid]).fetchone()[0]
                stats = {"n_rows": int(n_rows)}
            self.con.execute(
                "UPDATE runs SET status = 'done', finished_at = ?, seconds = seconds + ?, stats = ? WHERE run_id = ?",
                [_now(), float(seconds), json.dumps(stats, sort_keys=True), rid])
        return self.run(rid)

    def _assemble_logq(self, run: dict) -> None:
        """output_stats of a bigram run from its column_parts (inside the caller's transaction):
        log q(c) = log Σ_batches exp(log_sum) − log N, summed in batch order (deterministic)."""
        rid = run["run_id"]
        parts = self.con.execute("SELECT batch, output_id, log_sum FROM column_parts WHERE run_id = ? ORDER BY batch, output_id",
                                 [rid]).fetchnumpy()
        if len(parts["batch"]) == 0:
            return
        V = int(parts["output_id"].max()) + 1
        nb = len(parts["batch"]) // V
        ls = np.asarray(parts["log_sum"], dtype=np.float64).reshape(nb, V)
        n = int(self.con.execute("SELECT count(*) FROM input_stats WHERE run_id = ?", [rid]).fetchone()[0])
        logq = np.logaddexp.reduce(ls, axis=0) - np.log(max(1, n))
        self.con.execute("DELETE FROM output_stats WHERE run_id = ?", [rid])
        self._insert("output_stats", ("run_id", "output_id", "logq"), pa.table({
            "run_id": pa.array(np.full(V, rid, np.int32)), "output_id": pa.array(np.arange(V, dtype=np.int32)),
            "logq": pa.array(logq)}))
        self.con.execute("DELETE FROM column_parts WHERE run_id = ?", [rid])

    def write_logq(self, run_id: int, logq: Any) -> None:
        """Store log q(c) ``[V]`` of a run computed before its ranking pass (pmi runs), in one transaction."""
        lq = np.asarray(logq, dtype=np.float64)
        with self.transaction():
            self.con.execute("DELETE FROM output_stats WHERE run_id = ?", [run_id])
            self._insert("output_stats", ("run_id", "output_id", "logq"), pa.table({
                "run_id": pa.array(np.full(len(lq), run_id, np.int32)),
                "output_id": pa.array(np.arange(len(lq), dtype=np.int32)), "logq": pa.array(lq)}))

    def logq(self, run_id: int) -> np.ndarray | None:
        """log q(c) ``[V]`` of a bigram run (None when the store does not keep it)."""
        if not self._has_table("output_stats"):
            return None
        cols = self.con.execute("SELECT output_id, logq FROM output_stats WHERE run_id = ? ORDER BY output_id",
                                [run_id]).fetchnumpy()
        if len(cols["output_id"]) == 0:
            return None
        return np.asarray(cols["logq"], dtype=np.float64)

    def _has_table(self, name: str) -> bool:
        return bool(self._q("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name])[0][0])

    def _has_column(self, table: str, col: str) -> bool:
        return bool(self._q("SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                            [table, col])[0][0])

    def run_score(self, run: dict) -> str:
        """The score a run's rows are ranked by (``logprob`` for runs made before scores)."""
        return str(json.loads(run.get("options") or "{}").get("score", "logprob")) if run["kind"] == "bigram" else "trigram"

    def input_stats(self, run_id: int) -> dict[str, np.ndarray]:
        """Per-input statistics of a bigram run: ``input_id, lse, mean_logit, std_logit, lse_z`` ``[N]``
        (NaN where the store does not keep them: ``mean_logit`` / ``std_logit`` in stores made
        before scores, ``lse_z`` except in ``zpmi`` runs)."""
        cols = "input_id, lse, " + ", ".join(c if self._has_column("input_stats", c) else f"CAST(NULL AS REAL) AS {c}"
                                              for c in ("mean_logit", "std_logit", "lse_z"))
        d = self.con.execute(f"SELECT {cols} FROM input_stats WHERE run_id = ? ORDER BY input_id", [run_id]).fetchnumpy()
        return {k: np.asarray(np.ma.filled(v, np.nan) if np.ma.isMaskedArray(v) else v, dtype=np.float64 if k != "input_id" else np.int64)
                for k, v in d.items()}

    def check_rescorable(self, run: dict, score: str) -> None:
        """Refuse (one-line :class:`StoreError`) to read ``run`` under ``score`` when its rows are
        ranked in another order or the store lacks the statistics ``score`` needs."""
        from jetex.ngrams.scores import check_score, row_family

        score = check_score(score)
        have = self.run_score(run)
        where = f"run {run['run_id']} ({run['path']}) of {self.path}"
        if have == score:
            return
        if row_family(have) != row_family(score) or row_family(score) != "z":
            raise StoreError(f"{where} ranks each input's outputs by {have}, which orders them differently from {score}; "
                             f"re-extract with `jetex ngrams extract --score {score}`")
        st = self.input_stats(run["run_id"])
        if score in ("logit", "zlogit") and (len(st["mean_logit"]) == 0 or np.isnan(st["mean_logit"]).any()):
            raise StoreError(f"{where} was made without the per-input logit statistics that score {score!r} needs "
                             f"(an older store); re-extract it with `jetex ngrams extract --redo`")

    def check_readable(self, run: dict, score: str) -> None:
        """Refuse (one-line :class:`~jetex.errors.InputError`) to give the values of ``run``'s rows
        under ``score`` when the store lacks the statistics they need (a run or store made without
        them), after :meth:`check_rescorable`."""
        self._readable_stats(run, score)

    def _readable_stats(self, run: dict, score: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """(:meth:`input_stats`, :meth:`logq`) of ``run``, each read once, after the refusals of
        :meth:`check_readable`."""
        from jetex.errors import InputError
        from jetex.ngrams.scores import COLUMN_SCORES, check_score

        score = check_score(score)
        self.check_rescorable(run, score)
        st, logq = self.input_stats(run["run_id"]), self.logq(run["run_id"])
        if score in COLUMN_SCORES and (
                logq is None or (score == "zpmi" and (len(st["lse_z"]) == 0 or np.isnan(st["lse_z"]).any()))):
            where = f"run {run['run_id']} ({run['path']}) of {self.path}"
            what = ("the per-input z-scored log-sum-exp and mean z-scored output distribution" if score == "zpmi"
                    else "the mean output distribution")
            raise InputError(f"{where} was made without {what} that score {score!r} needs; "
                             f"re-extract it with `jetex ngrams extract --score {score} --redo`")
        return st, logq

    def entry_scores(self, run: dict, score: str, input_ids: Any, output_ids: Any, logits: Any) -> np.ndarray:
        """The values under ``score`` of entries (input, output, logit) of a bigram run's rows,
        from the stored statistics (float64; refused as by :meth:`check_readable`)."""
        return _score_entries(score, *self._readable_stats(run, score), input_ids, output_ids, logits)

    def rescored(self, run: dict, score: str, n: int) -> tuple[dict, np.ndarray, np.ndarray, bool]:
        """A bigram run's rows under another ``score`` (same row order), without writing:
        (rows: input_id / output_id / logit / logprob / rank arrays, their score values, the
        indices of the global top-``n`` by score (ties: lower input, then output id), and whether
        that top-n is certified exact: its n-th value ≥ every row's K-th kept value)."""
        from jetex.ngrams.scores import check_score

        score = check_score(score)
        stats = self._readable_stats(run, score)  # refused before the rows are read
        rid = run["run_id"]
        rows = self.con.execute("SELECT input_id, output_id, logit, logprob, rank FROM ngrams WHERE run_id = ? ORDER BY input_id, rank",
                                [rid]).fetchnumpy()
        rows = {k: np.asarray(v) for k, v in rows.items()}
        vals = _score_entries(score, *stats, rows["input_id"], rows["output_id"], rows["logit"])
        K = int(run["top_k"])
        kth = vals.reshape(-1, K)[:, -1] if len(vals) else np.zeros(1)
        order = np.lexsort((rows["output_id"], rows["input_id"], -vals))[:n]
        exact = bool(len(order) == n and n > 0 and (vals[order[-1]] >= kth.max() or K >= int(run["n_inputs"])))
        return rows, vals, order, exact

    def rescore_run(self, run_id: int, score: str) -> dict:
        """A new finished run: ``run_id``'s rows under another ``score`` of the same row order
        (per-input top-K re-valued; the global top-N re-ranked from the kept per-input top-K,
        flagged ``top_exact`` in its stats when certified), written in ONE transaction: nothing
        is changed if it fails. No model evaluation. Returns the new run (the existing one
        when ``score`` is already the run's score)."""
        from jetex.ngrams.scores import check_score

        score = check_score(score)
        run = self.run(run_id)
        if run["kind"] != "bigram" or run["status"] != "done":
            raise StoreError(f"run {run_id} of {self.path} is not a finished bigram run")
        if self.run_score(run) == score:
            return run
        rows, vals, order, exact = self.rescored(run, score, int(run["global_top"]))
        opts = json.loads(run["options"] or "{}")
        opts["score"] = score
        opts["rescored_from"] = run_id
        stats = json.loads(run["stats"] or "{}")
        stats["top_exact"] = exact
        with self.transaction():
            rid = self.con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]
            self.con.execute(
                """INSERT INTO runs SELECT ?, kind, path, description, "order", top_k, global_top, exclude_self, n_inputs,
                          batch_size, n_batches, ?, model_name, model_fingerprint, tokenizer_fingerprint, ?, ?, 'done', 0, ?
                   FROM runs WHERE run_id = ?""", [rid, json.dumps(opts, sort_keys=True), _now(), _now(),
                                                   json.dumps(stats, sort_keys=True), run_id])
            cols = ", ".join(f'"{c}"' for c in _NGRAM_COLS[1:])
            self.con.execute(f"INSERT INTO ngrams SELECT ?, {cols} FROM ngrams WHERE run_id = ?", [rid, run_id])
            cols = ", ".join(_INPUT_STATS_COLS[1:])
            self.con.execute(f"INSERT INTO input_stats ({', '.join(_INPUT_STATS_COLS)}) SELECT ?, {cols} FROM input_stats "
                             "WHERE run_id = ?", [rid, run_id])
            self.con.execute("INSERT INTO output_stats (run_id, output_id, logq) SELECT ?, output_id, logq FROM output_stats "
                             "WHERE run_id = ?", [rid, run_id])
            self.con.execute("INSERT INTO done_batches SELECT ?, batch, n_rows, committed_at FROM done_batches WHERE run_id = ?",
                             [rid, run_id])
            self._insert("top_pairs", ("run_id", "input_id", "output_id", "logit", "logprob", "rank", "score"), pa.table({
                "run_id": pa.array(np.full(len(order), rid, np.int32)),
                "input_id": pa.array(rows["input_id"][order].astype(np.int32)),
                "output_id": pa.array(rows["output_id"][order].astype(np.int32)),
                "logit": pa.array(rows["logit"][order].astype(np.float32)),
                "logprob": pa.array(rows["logprob"][order].astype(np.float32)),
                "rank": pa.array(np.arange(1, len(order) + 1, dtype=np.int32)),
                "score": pa.array(vals[order].astype(np.float32))}))
            fid = self.fidelity(run_id)
            if fid is not None:
                self.con.execute("INSERT INTO fidelity SELECT ?, path, sample_size, n_inputs, sample_rule, context, mean_kl, "
                                 "top1_agreement, top10_agreement FROM fidelity WHERE run_id = ?", [rid, run_id])
        return self.run(rid)

    def write_fidelity(self, run_id: int, fid: Any) -> None:
        d = fid.as_dict()
        with self.transaction():
            self.con.execute("DELETE FROM fidelity WHERE run_id = ?", [run_id])
            self.con.execute("INSERT INTO fidelity VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [run_id, d["path"], d["sample_size"], d["n_inputs"], d["sample_rule"], d["context"],
                              d["mean_kl"], d["top1_agreement"], d["top10_agreement"]])

    # ---- reading ---------------------------------------------------------------------
    def fidelity(self, run_id: int) -> dict | None:
        rows = self._dicts("SELECT * FROM fidelity WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def top_pairs(self, run_id: int, n: int, score: str | None = None) -> list[dict]:
        """The global top-n (input, output) pairs of a finished bigram run, by its own score, or
        re-scored in memory under ``score`` (same row order; rows then carry ``exact``: whether
        the list is certified exact, see :meth:`rescored`)."""
        run = self.run(run_id)
        if score is not None and self.run_score(run) != score:
            rows, vals, order, exact = self.rescored(run, score, n)
            strings = dict(self._q("SELECT token_id, token FROM tokens WHERE token_id IN (SELECT unnest(?))",
                                   [sorted({int(x) for i in order for x in (rows["input_id"][i], rows["output_id"][i])})]))
            return [dict(rank=r + 1, input_id=int(rows["input_id"][i]), input=strings.get(int(rows["input_id"][i])),
                         output_id=int(rows["output_id"][i]), output=strings.get(int(rows["output_id"][i])),
                         logit=float(rows["logit"][i]), logprob=float(rows["logprob"][i]),
                         prob=float(np.exp(float(rows["logprob"][i]))), score=float(vals[i]), exact=exact)
                    for r, i in enumerate(order.tolist())]
        return self._dicts(
            f"""SELECT p.rank, p.input_id, ti.token AS input, p.output_id, tout.token AS output, p.logit, p.logprob,
                      exp(p.logprob) AS prob, {'coalesce(p.score, p.logprob)' if self._has_column('top_pairs', 'score') else 'p.logprob'} AS score
               FROM top_pairs p JOIN tokens ti ON ti.token_id = p.input_id JOIN tokens tout ON tout.token_id = p.output_id
               WHERE p.run_id = ? AND p.rank IS NOT NULL AND p.rank <= ? ORDER BY p.rank""", [run_id, n])

    def ngrams(self, run_id: int, *, input_id: int | None = None, n: int | None = None) -> list[dict]:
        """Rows of the ngrams table of a run (one input token's top-K with ``input_id``)."""
        sql, params = "SELECT * FROM ngrams WHERE run_id = ?", [run_id]
        if input_id is not None:
            sql += " AND input_id = ?"
            params.append(input_id)
        sql += " ORDER BY input_id, rank" if input_id is not None else " ORDER BY rank, input_id"
        if n is not None:
            sql += " LIMIT ?"
            params.append(n)
        return self._dicts(sql, params)

    #: columns of the ngrams table a listing may be ranked by (largest first)
    RANKABLE = ("prob", "logprob", "logit", "attn_prob")

    def ranked(self, run_id: int, by: str = "prob", *, input_id: int | None = None, output_id: int | None = None,
               n: int = 20) -> list[dict]:
        """The ``n`` rows of a run with the largest ``by`` (one of :attr:`RANKABLE`), optionally
        only those with input ``input_id`` and/or output ``output_id``; each row gains ``position``
        (1-based place in this listing)."""
        if by not in self.RANKABLE:
            raise StoreError(f"cannot rank by {by!r}; choose one of: {', '.join(self.RANKABLE)}")
        sql, params = "SELECT * FROM ngrams WHERE run_id = ?", [run_id]
        for col, v in (("input_id", input_id), ("output_id", output_id)):
            if v is not None:
                sql += f" AND {col} = ?"
                params.append(int(v))
        sql += f" ORDER BY {by} DESC NULLS LAST, input_id, rank LIMIT ?"
        params.append(int(n))
        rows = self._dicts(sql, params)
        for i, r in enumerate(rows, 1):
            r["position"] = i
        return rows

    def find_tokens(self, word: str) -> list[tuple[int, str]]:
        """Token ids whose string is ``word`` exactly; else whose stripped string is ``word.strip()``."""
        rows = self._q("SELECT token_id, token FROM tokens WHERE token = ? ORDER BY token_id", [word])
        if not rows:
            rows = self._q("SELECT token_id, token FROM tokens WHERE trim(token) = ? ORDER BY token_id", [word.strip()])
        return [(int(a), str(b)) for a, b in rows]

    def token(self, token_id: int) -> str:
        rows = self._q("SELECT token FROM tokens WHERE token_id = ?", [token_id])
        return rows[0][0] if rows else f"<{token_id}>"

    def export_parquet(self, out: str | os.PathLike) -> int:
        """Write every n-gram row, with its run's model and options and its value under the run's score
        (``score_name``, ``score``), to a Parquet file; return the row count."""
        out = Path(out)
        if out.is_dir():
            raise StoreError(f"{out} is a folder; give a .parquet file name")
        if not out.parent.exists():
            raise StoreError(f"folder {out.parent} does not exist")
        tmp = out.with_name(out.name + ".tmp")
        # each row's value under its run's score (options.score; trigram runs: log S)
        has = self._has_column("input_stats", "mean_logit") and self._has_table("output_stats")
        mu, sd = ("s.mean_logit", "s.std_logit") if has else ("CAST(NULL AS REAL)", "CAST(NULL AS REAL)")
        lq = "o.logq" if has else "CAST(NULL AS DOUBLE)"
        lz = "s.lse_z" if has and self._has_column("input_stats", "lse_z") else "CAST(NULL AS REAL)"
        # ζ as the engine computes it (a flat row, σ ≤ FLAT·(1 + |μ|), has ζ = 0)
        zeta = f"CASE WHEN {sd} > 1e-12 * (1 + abs({mu})) THEN (n.logit - {mu}) / {sd} ELSE 0 END"
        joins = ("LEFT JOIN input_stats s ON s.run_id = n.run_id AND s.input_id = n.input_id AND r.kind = 'bigram' "
                 "LEFT JOIN output_stats o ON o.run_id = n.run_id AND o.output_id = n.output_id" if has else "")
        name = "CASE WHEN r.kind = 'trigram' THEN 'trigram' ELSE coalesce(json_extract_string(r.options, '$.score'), 'logprob') END"
        sql = f"""SELECT n.*, r.kind, r.top_k, r.exclude_self, r.model_name, r.model_fingerprint, r.tokenizer_fingerprint,
                         {name} AS score_name,
                         CASE {name} WHEN 'logit' THEN n.logit - {mu}
                                     WHEN 'zlogit' THEN {zeta}
                                     WHEN 'pmi' THEN n.logprob - {lq}
                                     WHEN 'zpmi' THEN {zeta} - {lz} - {lq}
                                     ELSE n.logprob END AS score
                  FROM ngrams n JOIN runs r USING (run_id) {joins} WHERE r.status = 'done'
                  ORDER BY n.run_id, n.rank, n.input_id"""
        try:
            n = self.con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
            path_sql = str(tmp).replace("'", "''")
            self.con.execute(f"COPY ({sql}) TO '{path_sql}' (FORMAT PARQUET)")
            os.replace(tmp, out)
        except (self._duckdb.Error, OSError) as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"cannot write {out}: {_reason(e)}") from None
        return int(n)


def token_strings_all(model: ResidualModel) -> list[str]:
    """Readable strings of every token id 0..V−1 (``<id>`` where the model has no tokenizer)."""
    V = model.vocab_size
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [f"<{i}>" for i in range(V)]
    n_tok = len(tok)
    ids = [[i] for i in range(min(V, n_tok))]
    strings = list(tok.batch_decode(ids)) if hasattr(tok, "batch_decode") else model.token_strings(list(range(min(V, n_tok))))
    return strings + [f"<{i}>" for i in range(len(strings), V)]
