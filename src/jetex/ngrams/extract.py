"""``extract_ngrams``: evaluate n-gram paths exhaustively into an n-gram database, resumably.

Each path is one run of the store (:mod:`jetex.ngrams.store`). A run is identified by
(kind, path, order, K, global N, exclude_self, number of inputs); running the same
extraction again resumes an unfinished run from its last committed batch (each batch's
rows and its ``done_batches`` mark commit in one transaction) and leaves a finished run
alone (``redo=True`` recomputes it). Interrupting at any moment and rerunning gives the
same tables as an uninterrupted run.

Placement (:mod:`jetex.ngrams.device`): ``device`` / ``dtype`` evaluate on a placed copy of
the model (the store keeps the float32 model's identity); a run records its ``dtype``,
``device`` and ``backend`` in its options, and a run computed in one dtype is never resumed
or reused in another. With a dtype below float32 the numerical difference to float32 on a
sample is printed and stored in the run's options (``precision``).

Backends: ``local`` (this process, the default) or ``ray`` (:mod:`jetex.ngrams.distributed`:
shards computed by Ray actors, committed here by the one writer, same transactions).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from jetex.errors import InputError
from jetex.finite import check_finite
from jetex.models.base import ResidualModel
from jetex.ngrams.device import DEVICES, dtype_name, place_model, precision_report, resolve_device, resolve_dtype
from jetex.ngrams.distributed import DEFAULT_RETRIES, LoadSpec
from jetex.ngrams.engine import (
    check_global_top,
    check_top_k,
    column_logq,
    compute_threads,
    default_batch_size,
    input_count,
    iter_bigram_batches,
)
from jetex.ngrams.fidelity import path_fidelity
from jetex.ngrams.paths import BigramPath, NgramPath, TrigramPath, parse_paths
from jetex.ngrams.scores import COLUMN_SCORES
from jetex.ngrams.store import NgramStore
from jetex.ngrams.trigrams import iter_trigram_chunks, n_trigram_chunks, trigram_chunk_size


@dataclass
class RunSummary:
    """What one path's run did: ``status`` is ``done`` (computed now, maybe resumed) or
    ``already done`` (found finished in the store)."""

    run_id: int
    path: str
    kind: str
    status: str
    order: int
    top_k: int
    n_inputs: int
    n_batches: int
    resumed_batches: int
    seconds: float
    stats: dict = field(default_factory=dict)
    fidelity: dict | None = None
    precision: dict | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("bigram", "trigram"):
            raise ValueError("RunSummary.kind must be 'bigram' or 'trigram'")


def extract_ngrams(
    model: ResidualModel,
    paths: Sequence[str | NgramPath] | str,
    *,
    db: str | Path,
    top_k: int = 10,
    order: int = 0,
    exclude_self: bool = True,
    limit_vocab: int | None = None,
    global_top: int = 100,
    score: str | None = None,
    batch_size: int | None = None,
    fidelity_sample: int | None = 1024,
    progress: bool = True,
    redo: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    precision_sample: int | None = 256,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    load_spec: str | LoadSpec | None = None,
    shard_batches: int = 1,
    retries: int = DEFAULT_RETRIES,
    cpus_per_worker: int = 1,
) -> list[RunSummary]:
    """Extract jet n-grams of ``paths`` into the DuckDB file ``db`` (created if missing).

    Bigram paths: every input token's top-``top_k`` next tokens, the global top-``global_top``
    pairs, per-input log-sum-exp and self-transition statistics, and (``fidelity_sample`` > 0)
    the path's fidelity to the model on that many evenly spaced inputs (None: all).
    Bigram rows and the global top are ranked by ``score`` (:mod:`jetex.ngrams.scores`;
    None: :data:`~jetex.ngrams.scores.DEFAULT_SCORE`); the per-input logit mean / spread and
    the path's mean output distribution are stored with every bigram run, so the run can be
    re-scored later (:meth:`~jetex.ngrams.store.NgramStore.rescore_run`). ``pmi`` needs that
    distribution before ranking, ``zpmi`` the mean z-scored one (log q_ζ): one more pass over
    the vocabulary, committed before the ranking pass (a resumed run does not redo it). Self-transitions are
    excluded by default (``exclude_self``).
    Trigram paths (``attn:L.H``): the head's exact top-``top_k`` skip-trigrams (order 0 only).
    ``limit_vocab`` restricts the input tokens (and, for trigrams, a, b and c) to ids below it.

    ``device`` (cpu, cuda, auto) and ``dtype`` (float32, bfloat16, float16) place the
    evaluation (None: where the model is); below float32 the difference to float32 is
    measured on ``precision_sample`` inputs per path. ``backend="ray"`` computes the batches
    on ``workers`` Ray actors (``address``: an existing cluster, else a local instance), each
    loading the model from ``load_spec`` (its name or folder); see
    :mod:`jetex.ngrams.distributed` for ``shard_batches``, ``retries``, ``cpus_per_worker``.
    """
    from jetex.ngrams.scores import DEFAULT_SCORE, check_score

    score = check_score(DEFAULT_SCORE if score is None else score)
    plist: list[NgramPath] = []
    for item in [paths] if isinstance(paths, str) else list(paths):
        for p in parse_paths(model, [item]) if isinstance(item, str) else [item]:
            if all(q.name != p.name for q in plist):
                plist.append(p)
    if not plist:
        raise InputError("no path given")
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise InputError(f"order must be a non-negative integer, got {order!r}")
    N = input_count(model, limit_vocab)
    V = model.vocab_size
    for p in plist:
        if isinstance(p, TrigramPath):
            if order != 0:
                raise InputError(f"{p.name}: trigram paths are defined at order 0 only (got --order {order})")
            check_top_k(top_k, N**3, of="possible trigrams")
        else:
            check_top_k(top_k, V - (1 if exclude_self else 0))
            check_global_top(global_top, N * (V - (1 if exclude_self else 0)))
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    if backend not in ("local", "ray"):
        raise InputError(f"unknown backend {backend!r}; use 'local' or 'ray'")
    dt = resolve_dtype(dtype) if dtype is not None else model.dtype
    if backend == "local":
        # no placement asked: evaluate the model as it is (whatever its dtype, e.g. float64 test models)
        eval_model = model if device is None and dtype is None else place_model(
            model, model.device if device is None else resolve_device(device), dt)
        where = str(eval_model.device)
    else:  # the device is the workers' (resolved there); the driver evaluates fidelity and precision on its CPU
        where = (device or "cpu").strip().lower()
        if where not in DEVICES and not where.startswith("cuda:"):
            raise InputError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}")
        eval_model = place_model(model, "cpu", dt)
    extra = {"dtype": dtype_name(dt), "device": where, "backend": backend}

    def precision(p: NgramPath) -> dict | None:
        if dt == torch.float32 or model.dtype != torch.float32 or precision_sample == 0:
            return None
        rep = precision_report(model, eval_model, [p], n_inputs=N, sample=precision_sample, top_k=top_k, order=order)[p.name]
        if progress:
            print(f"jetex: precision: {rep.line()}", file=sys.stderr, flush=True)
        return rep.as_dict()

    runner = contextlib.nullcontext()
    if backend == "ray":
        from jetex.ngrams.distributed import RayBackend

        source = "" if load_spec is None or isinstance(load_spec, LoadSpec) else str(load_spec)
        if source and Path(source).expanduser().exists():  # workers may run in another folder
            source = str(Path(source).expanduser().resolve())
        spec = load_spec if isinstance(load_spec, LoadSpec) else LoadSpec(
            source, getattr(model, "granularity", "sublayer"), dtype_name(dt), where)
        runner = RayBackend(spec, address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                            shard_batches=shard_batches, retries=retries, expect_fingerprint=eval_model.fingerprint(),
                            progress=progress)
    out: list[RunSummary] = []
    with NgramStore(db, model=model) as store, compute_threads(), runner as backend_runner:
        for p in plist:
            out.append(_run_path(store, model, p, top_k=top_k, order=order, exclude_self=exclude_self,
                                 limit_vocab=limit_vocab, n_inputs=N, global_top=global_top if not isinstance(p, TrigramPath) else 0,
                                 batch_size=batch_size, progress=progress, redo=redo, compute_model=eval_model,
                                 extra_options=extra, precision=precision, runner=backend_runner, score=score))
        bigrams = [(s, p) for s, p in zip(out, plist) if isinstance(p, BigramPath)]
        todo = [(s, p) for s, p in bigrams if store.fidelity(s.run_id) is None]
        if fidelity_sample != 0 and todo:
            if progress:
                print(f"jetex: fidelity of {len(todo)} path(s) on {min(N, fidelity_sample or N)} inputs", file=sys.stderr, flush=True)
            fids = path_fidelity(eval_model, [p for _, p in todo], n_inputs=N, sample=fidelity_sample, order=order,
                                 exclude_self=exclude_self, progress=progress)
            for s, p in todo:
                store.write_fidelity(s.run_id, fids[p.name])
        for s in out:
            s.fidelity = store.fidelity(s.run_id)
    return out


def _run_path(store: NgramStore, model: ResidualModel, p: NgramPath, *, top_k: int, order: int, exclude_self: bool,
              limit_vocab: int | None, n_inputs: int, global_top: int, batch_size: int | None, progress: bool,
              redo: bool, compute_model: ResidualModel | None = None, extra_options: dict | None = None,
              precision: Callable[[NgramPath], dict | None] | None = None, runner: Any = None,
              score: str = "logprob") -> RunSummary:
    """One path's run. ``model`` is the store's identity; ``compute_model`` (default: ``model``)
    evaluates; ``runner`` (a :class:`~jetex.ngrams.distributed.RayBackend`) computes remotely."""
    kind = "trigram" if isinstance(p, TrigramPath) else "bigram"
    key = dict(kind=kind, path=p.name, order=order, top_k=top_k, global_top=global_top,
               exclude_self=bool(exclude_self), n_inputs=n_inputs)
    cm = compute_model if compute_model is not None else model
    extra = extra_options or {}
    run = store.find_run(score=score if kind == "bigram" else None, **key)
    if run is not None and redo:
        store.delete_run(run["run_id"])
        run = None
    if run is not None:
        opts = json.loads(run["options"] or "{}")
        had, want = opts.get("dtype", "float32"), extra.get("dtype", "float32")
        if had != want:
            raise InputError(f"run {run['run_id']} of {p.name} in {store.path} was computed in {had}, not {want}; "
                             f"pass --redo to recompute it in {want}, or use another --db")
    if run is not None and run["status"] == "done":
        return RunSummary(run["run_id"], p.name, kind, "already done", order, top_k, n_inputs, run["n_batches"], 0,
                          float(run["seconds"] or 0.0), json.loads(run["stats"] or "{}"),
                          precision=json.loads(run["options"] or "{}").get("precision"))
    if run is None:
        B = batch_size or (trigram_chunk_size(cm) if kind == "trigram" else default_batch_size(cm))
        nb = n_trigram_chunks(cm, limit_vocab, B) if kind == "trigram" else (n_inputs + B - 1) // B
        options = {"limit_vocab": limit_vocab, "score": score if kind == "bigram" else "log p(a|b) + log P_OV(c|a)", **extra}
        if precision is not None:
            rep = precision(p)
            if rep is not None:
                options["precision"] = rep
        run = store.start_run(description=p.description, batch_size=B, n_batches=nb, model=model,
                              options=options, **key)
    rid, B = run["run_id"], int(run["batch_size"])
    done = store.done_batches(rid)
    resumed = len(done)
    if runner is not None and resumed < int(run["n_batches"]):
        runner.start()  # connect and start the workers outside the run's compute time
    t0 = time.perf_counter()
    logq = None
    if kind == "bigram" and score in COLUMN_SCORES:
        # the column distribution first (one more pass), committed before the ranking pass
        logq = store.logq(rid)
        if logq is None:
            if runner is not None:
                logq = runner.column_logq(run, p, order=order, exclude_self=exclude_self, limit_vocab=limit_vocab,
                                          score=score)
            else:
                logq = column_logq(cm, p, order=order, exclude_self=exclude_self, limit_vocab=limit_vocab, batch_size=B,
                                   progress=progress, score=score).numpy()
            store.write_logq(rid, logq)
    if runner is not None:
        runner.run_path(store, run, p, kind=kind, top_k=top_k, order=order, exclude_self=exclude_self,
                        limit_vocab=limit_vocab, global_top=global_top, done=done, score=score, logq=logq)
    elif kind == "bigram":
        assert isinstance(p, BigramPath)
        seen = store.global_candidates(rid) if global_top else None
        for batch in iter_bigram_batches(cm, p, top_k=top_k, order=order, exclude_self=exclude_self,
                                         limit_vocab=limit_vocab, batch_size=B, global_top=global_top, skip=done,
                                         seen=seen, progress=progress, score=score, logq=logq):
            # nothing non-finite is stored: one line instead (before this batch is written)
            check_finite(batch.top_logits, f"the {p.name} order-{order} bigram logits (batch {batch.batch_index})",
                         "the expansion overflows: try a lower --order")
            store.write_bigram_batch(run, batch)
    else:
        assert isinstance(p, TrigramPath)
        chunks = iter_trigram_chunks(cm, p, top_k=top_k, limit_vocab=limit_vocab, chunk_size=B, skip=done)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, total=run["n_batches"], initial=len(done), unit="chunk", desc=p.name, file=sys.stderr)
        for chunk in chunks:
            store.write_trigram_chunk(run, chunk)
    run = store.finish_run(run, time.perf_counter() - t0)

    return RunSummary(rid, p.name, kind, "done", order, top_k, n_inputs, int(run["n_batches"]), resumed,
                      float(run["seconds"]), json.loads(run["stats"] or "{}"),
                      precision=json.loads(run["options"] or "{}").get("precision"))
