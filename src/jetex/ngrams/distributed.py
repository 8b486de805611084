"""N-gram sweeps on a Ray cluster (``jetex ngrams extract --backend ray``).

The exhaustive sweep of a path over the vocabulary is already cut into batches of
consecutive input ids with fixed indices (:func:`~jetex.ngrams.engine.iter_bigram_batches`;
trigram paths: chunks of key tokens, :func:`~jetex.ngrams.trigrams.iter_trigram_chunks`).
Here the batches are grouped into *shards* (``shard_batches`` consecutive batch indices;
shard s holds batches [s·S, (s+1)·S)) and each shard is a Ray task executed by one of
``workers`` actors (:class:`ShardWorker`). An actor loads the model ONCE from its load spec
(:class:`LoadSpec`: name or path, granularity, dtype, device; the model object is never
shipped) and computes a shard's batches with the local engine's own code, so every batch
is bit-for-bit the batch the local engine computes on the same device and dtype.

One writer: results come back to the driver, which commits each batch to the same DuckDB
store with the same per-batch transaction as the local engine (rows + ``done_batches``
mark together). Hence the local engine's resumability guarantees hold unchanged:

- a batch is either fully committed with its mark or not at all;
- a worker killed mid-shard is restarted by Ray and its shard retried (``max_restarts`` /
  ``max_task_retries`` = ``retries``); the driver skips batch indices already committed,
  so a retried or duplicated shard never duplicates rows (the ``done_batches`` primary key
  would refuse them anyway);
- a worker that keeps dying exhausts its retries: the driver stops submitting, commits what
  the other workers still deliver, and raises a one-line :class:`ClusterError`; rerunning
  (with any backend) resumes from the committed batches.

The global top-N of a bigram run is exact whatever order batches arrive in: each shard is
sent the best N candidates committed so far (a lower bound θ of the final N-th best, see
:mod:`jetex.ngrams.engine`).

Scores with a column distribution (``pmi``, ``zpmi``: :data:`jetex.ngrams.scores.COLUMN_SCORES`)
run their first pass on the workers too (:meth:`RayBackend.column_logq`: each batch's column
log-sums, summed by the driver in batch order, so the result does not depend on which worker
computed what); the driver commits log q before the ranking pass, whose tasks carry it.

Ray is an optional dependency (``pip install 'jetex[ray]'``), imported only here and only
when the Ray backend is used. ``address`` connects to a running cluster (checked first
with a bounded TCP probe, since Ray itself retries an unreachable address for minutes);
without it a local Ray instance is started with ``workers × cpus_per_worker`` CPUs and
shut down afterwards. An already initialised Ray session (``ray.is_initialized()``) is
reused and left running.

Many checkpoints (``jetex dynamics --backend ray``) run on the same connection, retry and
fingerprint code (:class:`RayBackend`), subclassed one layer up in
:mod:`jetex.apps.dynamics_ray` (the checkpoint workers evaluate :mod:`jetex.apps.dynamics`).

Test-only fault injection: ``$JETEX_RAY_FAULT = "shard=S,times=T,dir=D"`` makes the actor
process running shard S exit (``os._exit``) after computing the shard's first batch, the
first T times (``times=always``: every time), counted by marker files in folder D; with
``,pass=first`` or ``,pass=rank`` only in the first (column) pass of a pmi / zpmi run or only
in the ranking pass (default: either). For
checkpoints S is the checkpoint's index and the exit comes once it is loaded, before its sweep.
"""

from __future__ import annotations

import collections
import itertools
import contextlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NoReturn, Sequence

from jetex.errors import JetexError

FAULT_ENV = "JETEX_RAY_FAULT"
DEFAULT_RETRIES = 3
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READY_TIMEOUT_S = 900.0
IN_FLIGHT_PER_WORKER = 2
LOCAL_OBJECT_STORE_BYTES = 256 << 20


class ClusterError(JetexError):
    """The Ray backend cannot run: Ray missing, cluster unreachable, workers failing."""


def _one_line(e: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def import_ray() -> Any:
    """``import ray``, or a one-line :class:`ClusterError` telling how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--backend ray needs Ray, which is not installed: pip install 'jetex[ray]'") from None
    return ray


# ---------------------------------------------------------------------------------------
# what a worker needs to rebuild the model
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadSpec:
    """How a worker loads the model: ``jetex.load(source, granularity, dtype, device)``.

    ``source`` is a known model name or a path that every node can read (for a tiny test
    model: its saved folder); ``dtype`` is the evaluation dtype, ``device`` ``cpu``, ``cuda``
    or ``auto`` (resolved on the worker).
    """

    source: str
    granularity: str = "sublayer"
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ClusterError("the Ray backend needs the model's name or path (its load spec), not only a model object")


@dataclass(frozen=True)
class FaultPlan:
    """Test-only: exit the actor process running ``shard`` (``times`` times; −1: always) in the
    pass ``phase`` (``first``: a first column pass, ``rank``: a ranking pass, ``any``)."""

    shard: int
    times: int
    folder: str
    phase: str = "any"

    @staticmethod
    def from_env() -> "FaultPlan | None":
        text = os.environ.get(FAULT_ENV, "").strip()
        if not text:
            return None
        try:
            kv = dict(part.split("=", 1) for part in text.split(","))
            times = -1 if kv.get("times", "1") == "always" else int(kv.get("times", "1"))
            phase = kv.get("pass", "any")
            if phase not in ("any", "first", "rank"):
                raise ValueError(phase)
            return FaultPlan(int(kv["shard"]), times, kv["dir"], phase)
        except (KeyError, ValueError):
            raise ClusterError(f"${FAULT_ENV} must look like 'shard=S,times=T|always,dir=FOLDER[,pass=first|rank]', "
                               f"got {text!r}") from None

    def strike(self, shard: int, phase: str = "rank") -> None:
        """Exit this process if the plan says so (and record that it did)."""
        if shard != self.shard or self.phase not in ("any", phase):
            return
        os.makedirs(self.folder, exist_ok=True)
        n = sum(1 for f in os.listdir(self.folder) if f.startswith(f"fault-{shard}-"))
        if self.times < 0 or n < self.times:
            with open(os.path.join(self.folder, f"fault-{shard}-{n}"), "w") as f:
                f.write(str(os.getpid()))
            os._exit(17)


@dataclass
class ShardTask:
    """One shard of one run: the batch indices to compute and the engine's parameters."""

    shard: int
    kind: str
    path: str
    batches: tuple[int, ...]
    n_batches: int
    batch_size: int
    top_k: int
    order: int = 0
    exclude_self: bool = False
    limit_vocab: int | None = None
    global_top: int = 0
    seen: Any = None  # GlobalCandidates committed so far (bigrams), for the θ bound
    score: str = "logprob"
    logq: Any = None  # the score's column distribution [V] (pmi, zpmi), computed by the first pass
    column_of: str | None = None  # a first-pass task: the column log-sums of this score's distribution

    def __post_init__(self) -> None:
        if self.kind not in ("bigram", "trigram"):
            raise ValueError("ShardTask.kind must be 'bigram' or 'trigram'")
        if not self.batches or any(not 0 <= b < self.n_batches for b in self.batches):
            raise ValueError("ShardTask.batches must be non-empty indices below n_batches")


@dataclass
class ColumnPart:
    """A first-pass batch's result: log Σ_{t ∈ batch} of the score's per-row distribution ``[V]``."""

    batch_index: int
    col_lse: Any
    n_rows: int


# ---------------------------------------------------------------------------------------
# the worker (a Ray actor; a plain class so that it can be tested without Ray)
# ---------------------------------------------------------------------------------------
class ShardWorker:
    """Holds the model once and computes shards with the local engine's code."""

    def __init__(self, spec: LoadSpec, threads: int = 1, fault: FaultPlan | None = None) -> None:
        os.environ["JETEX_NUM_THREADS"] = str(max(1, int(threads)))
        import torch

        torch.set_num_threads(max(1, int(threads)))
        from jetex.models.load import load
        from jetex.ngrams.device import resolve_device, resolve_dtype

        self.spec = spec
        self.fault = fault
        dev = resolve_device(spec.device)
        self.model = load(spec.source, granularity=spec.granularity, dtype=resolve_dtype(spec.dtype), device=dev)
        self._paths: dict[str, Any] = {}

    def info(self) -> dict:
        """Identity of what this worker loaded (checked by the driver against its own model)."""
        import platform

        return {"fingerprint": self.model.fingerprint(), "tokenizer_fingerprint": self.model.tokenizer_fingerprint(),
                "vocab_size": self.model.vocab_size, "device": str(self.model.device),
                "dtype": str(self.model.dtype).replace("torch.", ""), "pid": os.getpid(), "host": platform.node(),
                "cpu_s": time.process_time()}

    def _path(self, name: str) -> Any:
        if name not in self._paths:
            from jetex.ngrams.paths import parse_path

            (self._paths[name],) = [p for p in parse_path(self.model, name) if p.name == name]
        return self._paths[name]

    def run_shard(self, task: ShardTask) -> list:
        """The shard's batches (:class:`~jetex.ngrams.engine.BigramBatch` or
        :class:`~jetex.ngrams.trigrams.TrigramChunk`), in batch order."""
        return list(self.iter_shard(task))

    def iter_shard(self, task: ShardTask) -> Iterator[Any]:
        from jetex.ngrams.engine import iter_bigram_batches
        from jetex.ngrams.trigrams import iter_trigram_chunks

        p = self._path(task.path)
        skip = set(range(task.n_batches)) - set(task.batches)
        if task.kind == "bigram" and task.column_of is not None:
            it = (ColumnPart(b.batch_index, b.col_lse, len(b.input_ids)) for b in iter_bigram_batches(
                self.model, p, top_k=1, order=task.order, exclude_self=task.exclude_self, limit_vocab=task.limit_vocab,
                batch_size=task.batch_size, global_top=0, skip=skip, column_stats=True, column_of=task.column_of))
        elif task.kind == "bigram":
            it = iter_bigram_batches(self.model, p, top_k=task.top_k, order=task.order, exclude_self=task.exclude_self,
                                     limit_vocab=task.limit_vocab, batch_size=task.batch_size,
                                     global_top=task.global_top, skip=skip, seen=task.seen, score=task.score,
                                     logq=task.logq)
        else:
            it = iter_trigram_chunks(self.model, p, top_k=task.top_k, limit_vocab=task.limit_vocab,
                                     chunk_size=task.batch_size, skip=skip)
        for i, out in enumerate(it):
            yield out
            if i == 0 and self.fault is not None:
                # killed mid-shard: the batches computed so far are lost
                self.fault.strike(task.shard, "first" if task.column_of is not None else "rank")


# ---------------------------------------------------------------------------------------
# connecting
# ---------------------------------------------------------------------------------------
def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address ``host:port`` or ``ray://host:port``; None for ``auto``."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    default_port = 6379
    if text.startswith("ray://"):
        text, default_port = text[len("ray://"):], 10001
    if "://" in text:
        raise ClusterError(f"cannot read the Ray address {address!r}; use host:port, ray://host:port or auto")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"cannot read the Ray address {address!r}; use host:port, ray://host:port or auto")
    return host, int(port)


def check_address(address: str, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
    """Fail fast (one line) when nothing listens at the cluster address."""
    hp = _host_port(address)
    if hp is None:
        return
    t0 = time.perf_counter()
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or _one_line(e)).lower()
        raise ClusterError(
            f"cannot reach a Ray cluster at {address} ({why} after {time.perf_counter() - t0:.1f} s); "
            "start one with `ray start --head` or leave out --address to run a local instance"
        ) from None


def _root_cause(e: BaseException) -> BaseException:
    """The exception a worker raised, through Ray's wrappers."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = getattr(e, "cause", None) or getattr(e, "creation_task_error", None)
        if nxt is None or not isinstance(nxt, BaseException):
            break
        e = nxt
    return e


def check_fingerprint(info: dict, source: str, expect: str) -> None:
    """Refuse (one line) a worker whose loaded ``source`` is not the driver's (fingerprint ``expect``)."""
    if info["fingerprint"] != expect:
        raise ClusterError(
            f"a Ray worker on {info['host']} loaded {source!r} with fingerprint {info['fingerprint']}, "
            f"not the driver's {expect}; every node must see the same model files")


@dataclass
class RayBackend:
    """Runs shards on Ray actors; the caller (the driver) writes their results.

    Use as a context manager: Ray is connected to (or started) lazily on the first run and
    a local instance started here is shut down on exit, as are the actors.
    """

    spec: LoadSpec
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1
    shard_batches: int = 1
    retries: int = DEFAULT_RETRIES
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    expect_fingerprint: str | None = None
    progress: bool = False
    fault: FaultPlan | None = None
    _ray: Any = field(default=None, repr=False)
    _started: bool = field(default=False, repr=False)
    _actors: list = field(default_factory=list, repr=False)
    device: str = field(default="cpu", repr=False)
    startup_s: float = field(default=0.0, repr=False)
    max_workers: int | None = field(default=None, repr=False)  # no more actors than this (e.g. tasks in all)

    def __post_init__(self) -> None:
        for name in ("cpus_per_worker", "shard_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ClusterError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1):
            raise ClusterError(f"--workers must be a positive integer, got {self.workers!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ClusterError(f"--retries must be a non-negative integer, got {self.retries!r}")
        if self.fault is None:
            self.fault = FaultPlan.from_env()

    # ---- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "RayBackend":
        self._ray = import_ray()
        if self.address is not None:
            check_address(self.address, self.connect_timeout_s)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for a in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        self._actors = []
        if self._started:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._started = False

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            if self.address is not None:
                ray.init(address=self.address, **kw)
            else:
                try:
                    ncpu = len(os.sched_getaffinity(0))
                except AttributeError:  # pragma: no cover - not Linux
                    ncpu = os.cpu_count() or 1
                n = self.workers or max(1, ncpu // self.cpus_per_worker)
                ray.init(num_cpus=n * self.cpus_per_worker, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **kw)
        except JetexError:
            raise
        except Exception as e:
            where = self.address or "a local instance"
            raise ClusterError(f"cannot start Ray ({where}): {_one_line(e)}") from None
        self._started = True

    def start(self) -> None:
        """Connect (or start a local Ray instance) and start the workers, once; each loads the model."""
        if self._actors:
            return
        t0 = time.perf_counter()
        self._connect()
        ray = self._ray
        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        dev = self.spec.device.strip().lower()
        use_gpu = dev.startswith("cuda") or (dev == "auto" and gpus >= 1)
        if dev.startswith("cuda") and gpus < 1:
            raise ClusterError(f"--device {dev}: the Ray cluster has no GPU (resources: {cpus:g} CPU, {gpus:g} GPU)")
        n = self.workers or max(1, int(gpus) if use_gpu else int(cpus) // self.cpus_per_worker)
        if self.max_workers is not None:
            n = max(1, min(n, self.max_workers))
        if n * self.cpus_per_worker > cpus or (use_gpu and n > gpus):
            raise ClusterError(f"{n} workers × ({self.cpus_per_worker} CPU{', 1 GPU' if use_gpu else ''}) do not fit the "
                               f"Ray cluster ({cpus:g} CPU, {gpus:g} GPU); ask for fewer --workers")
        spec = LoadSpec(self.spec.source, self.spec.granularity, self.spec.dtype, "cuda" if use_gpu else "cpu")
        self.device = spec.device
        actor_cls = ray.remote(self._actor_class()).options(
            num_cpus=self.cpus_per_worker, num_gpus=1 if use_gpu else 0,
            max_restarts=self.retries, max_task_retries=self.retries)
        self._actors = [actor_cls.remote(*self._actor_args(spec)) for _ in range(n)]
        refs = [a.info.remote() for a in self._actors]
        ready, not_ready = ray.wait(refs, num_returns=len(refs), timeout=self.ready_timeout_s)
        if not_ready:
            raise ClusterError(f"{len(not_ready)} of {n} Ray workers did not start within {self.ready_timeout_s:.0f} s")
        for r in ready:
            try:
                info = ray.get(r)
            except Exception as e:
                cause = _root_cause(e)
                msg = str(cause) if isinstance(cause, JetexError) else _one_line(cause)
                raise ClusterError(f"a Ray worker could not load {self.spec.source!r}: {_one_line(msg)}") from None
            if self.expect_fingerprint is not None:
                check_fingerprint(info, self.spec.source, self.expect_fingerprint)
        self.startup_s = time.perf_counter() - t0
        if self.progress:
            print(f"jetex: {n} Ray worker(s) ready in {self.startup_s:.1f} s ({self.cpus_per_worker} CPU"
                  f"{', 1 GPU' if use_gpu else ''} each, {spec.dtype} on {spec.device})", file=sys.stderr, flush=True)

    def _actor_class(self) -> type:
        """The class of the actors (:class:`ShardWorker`: holds the model of ``spec``)."""
        return ShardWorker

    def _actor_args(self, spec: LoadSpec) -> tuple:
        return (spec, self.cpus_per_worker, self.fault)

    @property
    def n_workers(self) -> int:
        return len(self._actors)

    def workers_cpu_seconds(self) -> float:
        """CPU time the worker processes have used so far, summed (for benchmarks)."""
        return float(sum(i["cpu_s"] for i in self._ray.get([a.info.remote() for a in self._actors])))

    # ---- scheduling ---------------------------------------------------------------------------
    def _drive(self, next_for: Callable[[int], Any], submit: Callable[[Any, Any], Any],
               on_result: Callable[[Any, int, Any], None]) -> tuple[Any, BaseException] | None:
        """Run work items on the actors, up to ``IN_FLIGHT_PER_WORKER`` queued per actor.

        ``next_for(a)`` gives actor a's next item (None: nothing left for it), ``submit(actor,
        item)`` starts it (an object ref), ``on_result(item, a, result)`` takes each result in
        the order they arrive; an actor that delivers gets its next item. At the first failure
        (a task error, or an actor dead after its restarts) nothing more is submitted, what is
        in flight is still taken, and the failure is returned as (item, error): the earliest
        submitted failed item, since a dead actor fails all its queued items at once and it
        runs them in submission order. None when everything succeeded.
        """
        ray = self._ray
        pending: dict[Any, tuple[Any, int, int]] = {}  # ref → (item, actor, submission number)
        failure: tuple[int, Any, BaseException] | None = None
        seq = itertools.count()

        def start_next(ai: int) -> None:
            item = next_for(ai)
            if item is not None:
                pending[submit(self._actors[ai], item)] = (item, ai, next(seq))

        try:
            for _ in range(IN_FLIGHT_PER_WORKER):
                for ai in range(self.n_workers):
                    start_next(ai)
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                item, ai, n = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # a dead worker (retries exhausted) or an error in the task
                    if failure is None or n < failure[0]:
                        failure = (n, item, e)
                    continue
                on_result(item, ai, result)
                if failure is None:
                    start_next(ai)
        finally:
            if pending:  # interrupted: do not leave work running
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=False)
        return None if failure is None else (failure[1], failure[2])

    # ---- running one path ---------------------------------------------------------------------
    def shards(self, n_batches: int, done: set[int]) -> list[tuple[int, tuple[int, ...]]]:
        """(shard id, batch indices still to do) for every shard with work left."""
        S = self.shard_batches
        out = []
        for s in range((n_batches + S - 1) // S):
            todo = tuple(b for b in range(s * S, min(n_batches, (s + 1) * S)) if b not in done)
            if todo:
                out.append((s, todo))
        return out

    def column_logq(self, run: dict, path: Any, *, order: int, exclude_self: bool, limit_vocab: int | None,
                    score: str) -> Any:
        """The first pass of a ``pmi`` / ``zpmi`` run on the workers: log q ``[V]`` (float64 numpy;
        for zpmi log q_ζ), the same as :func:`jetex.ngrams.engine.column_logq` (the batches' column
        log-sums are added in batch order). Nothing is committed here: the caller stores the result."""
        import numpy as np

        from jetex.ngrams.scores import ColumnLSE

        B, nb = int(run["batch_size"]), int(run["n_batches"])
        todo = collections.deque(self.shards(nb, set()))
        self.start()
        parts: dict[int, ColumnPart] = {}
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=nb, unit="batch", desc=f"{path.name} first pass ({score}, ray ×{self.n_workers})", file=sys.stderr,
                       dynamic_ncols=True, smoothing=0.1)

        def submit(actor: Any, item: tuple[int, tuple[int, ...]]) -> Any:
            shard, batches = item
            return actor.run_shard.remote(ShardTask(shard, "bigram", path.name, batches, nb, B, 1, order, exclude_self,
                                                    limit_vocab, 0, None, score, column_of=score))

        def take(item: tuple[int, tuple[int, ...]], ai: int, results: list) -> None:
            for part in results:
                if part.batch_index not in parts and bar is not None:
                    bar.update(1)
                parts[part.batch_index] = part

        try:
            failure = self._drive(lambda ai: todo.popleft() if todo else None, submit, take)
        finally:
            if bar is not None:
                bar.close()
        if failure is not None:
            self._raise_failure(path, failure, nb,
                                what=f" of the first pass of --score {score} (its column distribution, nothing committed yet)")
        acc = ColumnLSE.empty(int(len(next(iter(parts.values())).col_lse)))
        for b in sorted(parts):
            acc.add_partial(parts[b].col_lse, parts[b].n_rows)
        return np.asarray(acc.logq())

    def _raise_failure(self, path: Any, failure: tuple, nb: int, *, what: str = "", died: str = "", failed: str = "") -> NoReturn:
        """Raise the one-line error of a shard that failed (``failure`` from :meth:`_drive`): the
        worker's own :class:`JetexError` as it is, else a :class:`ClusterError` naming the shard's
        batches, ``what`` it was computing, and what was kept (``died`` / ``failed``)."""
        (shard, _), e = failure
        cause = _root_cause(e)
        S = self.shard_batches
        batches = f"batches {shard * S}..{min(nb, (shard + 1) * S) - 1}" if S > 1 else f"batch {shard}"
        if isinstance(cause, JetexError):
            raise type(cause)(str(cause)) from None
        if isinstance(e, self._ray.exceptions.RayActorError):
            raise ClusterError(
                f"{path.name}: the Ray worker running shard {shard} ({batches}){what} died and was restarted "
                f"{self.retries} time(s) without finishing; {died}rerun to resume") from None
        raise ClusterError(f"{path.name}: shard {shard} ({batches}){what} failed on a Ray worker: {_one_line(cause)}; "
                           f"{failed}rerun to resume") from None

    def run_path(self, store: Any, run: dict, path: Any, *, kind: str, top_k: int, order: int, exclude_self: bool,
                 limit_vocab: int | None, global_top: int, done: set[int], score: str = "logprob",
                 logq: Any = None) -> None:
        """Compute every batch of ``run`` not in ``done`` on the workers and commit each one
        (``logq``: the column distribution ``pmi`` / ``zpmi`` rank by, from :meth:`column_logq`)."""
        todo = collections.deque(self.shards(int(run["n_batches"]), done))
        if not todo:
            return
        self.start()
        best = store.global_candidates(run["run_id"]) if (kind == "bigram" and global_top) else None
        B, nb = int(run["batch_size"]), int(run["n_batches"])
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=nb, initial=len(done), unit="batch", desc=f"{path.name} (ray ×{self.n_workers})",
                       file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

        def submit(actor: Any, item: tuple[int, tuple[int, ...]]) -> Any:
            shard, batches = item
            task = ShardTask(shard, kind, path.name, batches, nb, B, top_k, order, exclude_self, limit_vocab,
                             global_top, best if best is not None and len(best) else None, score,
                             logq if kind == "bigram" else None)
            return actor.run_shard.remote(task)

        def commit(item: tuple[int, tuple[int, ...]], ai: int, results: list) -> None:
            nonlocal best
            for out in results:
                if out.batch_index in done:
                    continue  # already committed (a retried shard): never twice
                if kind == "bigram":
                    store.write_bigram_batch(run, out)
                    if best is not None:
                        best = best.merged(out.candidates, global_top)
                else:
                    store.write_trigram_chunk(run, out)
                done.add(out.batch_index)
                if bar is not None:
                    bar.update(1)

        try:
            failure = self._drive(lambda ai: todo.popleft() if todo else None, submit, commit)
        finally:
            if bar is not None:
                bar.close()
        if failure is not None:
            committed = f"{len(done)} of {nb} batches committed"
            self._raise_failure(path, failure, nb, died=f"stopped with {committed} ({nb - len(done)} left); ",
                                failed=f"{committed}; ")
