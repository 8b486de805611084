"""Training dynamics on a Ray cluster (``jetex dynamics --backend ray``).

:func:`bigram_dynamics_ray` evaluates a series of checkpoints on Ray actors
(:class:`CheckpointWorker`), each loading a checkpoint itself from its name or path and
evaluating it with the local code of :mod:`jetex.apps.dynamics`; the driver assembles the
result exactly as :func:`jetex.apps.dynamics.bigram_dynamics` does. Connection, retries,
the address probe and the local Ray instance are :class:`jetex.ngrams.distributed.RayBackend`'s
(one layer down); Ray itself is imported only when a backend starts.
"""

from __future__ import annotations

import collections
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from jetex.apps.dynamics import (
    DynamicsResult,
    _assemble,
    _check_args,
    _corpus_pairs,
    arch_signature,
    check_compatible,
    checkpoint_summary,
    pair_logprobs,
)
from jetex.apps.tables import bigram_path
from jetex.errors import JetexError
from jetex.models.base import ResidualModel
from jetex.models.load import load
from jetex.ngrams.device import resolve_device, resolve_dtype
from jetex.ngrams.distributed import (
    DEFAULT_RETRIES,
    ClusterError,
    FaultPlan,
    LoadSpec,
    RayBackend,
    _one_line,
    _root_cause,
    check_fingerprint,
)


# ---------------------------------------------------------------------------------------
@dataclass
class CheckpointTask:
    """One checkpoint's work: ``kind`` ``summary`` (its full bigram table read as a global
    top-N, and the corpus pairs' log-probabilities: :func:`jetex.apps.dynamics.checkpoint_summary`)
    or ``pairs`` (log P(b|a) of ``pairs``: :func:`jetex.apps.dynamics.pair_logprobs`).

    ``expect`` = (reference name, architecture signature, tokenizer fingerprint): the worker
    refuses a checkpoint that does not match it. ``fingerprint``: the weights must be these
    (a ``pairs`` task must see the checkpoint its ``summary`` saw; the last checkpoint must be
    the driver's)."""

    index: int
    source: str
    kind: str
    path: str
    top: int = 1000
    k: int = 128
    exclude_self: bool = True
    order: int = 0
    pairs: tuple[tuple[int, int], ...] | None = None
    expect: tuple[str, tuple, str] | None = None
    fingerprint: str | None = None
    score: str | None = None  # None: checkpoint_summary's default score, as the local run

    def __post_init__(self) -> None:
        if self.kind not in ("summary", "pairs"):
            raise ValueError("CheckpointTask.kind must be 'summary' or 'pairs'")
        if not isinstance(self.source, str) or not self.source:
            raise ClusterError("a checkpoint task needs the checkpoint's name or path, not a model object")


class CheckpointWorker:
    """A Ray actor that loads checkpoints itself, from their name or path, and evaluates them
    with the local code (:mod:`jetex.apps.dynamics`). It keeps the last checkpoint it loaded,
    so a ``pairs`` task sent to the worker that just summarised that checkpoint loads nothing."""

    def __init__(self, granularity: str = "sublayer", dtype: str = "float32", device: str = "cpu", threads: int = 1,
                 fault: FaultPlan | None = None) -> None:
        os.environ["JETEX_NUM_THREADS"] = str(max(1, int(threads)))
        torch.set_num_threads(max(1, int(threads)))
        self.granularity, self.dtype, self.device, self.fault = granularity, dtype, device, fault
        self._source: str | None = None
        self._model: Any = None
        self.loads = 0

    def info(self) -> dict:
        return {"pid": os.getpid(), "host": platform.node(), "cpu_s": time.process_time(), "loads": self.loads}

    def model(self, source: str) -> Any:
        if source != self._source:
            self._model = self._source = None  # free the previous checkpoint first
            self._model = load(source, granularity=self.granularity, dtype=resolve_dtype(self.dtype),
                               device=resolve_device(self.device))
            self._source = source
            self.loads += 1
        return self._model

    def run(self, task: CheckpointTask) -> Any:
        m = self.model(task.source)
        if task.expect is not None:
            check_compatible(*task.expect, m.name, arch_signature(m), m.tokenizer_fingerprint())
        if task.fingerprint is not None:
            check_fingerprint({"fingerprint": m.fingerprint(), "host": platform.node()}, task.source, task.fingerprint)
        if self.fault is not None and task.kind == "summary":
            self.fault.strike(task.index)  # killed with the checkpoint loaded, before its sweep
        if task.kind == "summary":
            return checkpoint_summary(m, task.path, top=task.top, k=task.k, exclude_self=task.exclude_self,
                                      order=task.order, corpus_pairs=list(task.pairs) if task.pairs else None,
                                      score=task.score)
        return pair_logprobs(m, task.path, list(task.pairs or ()), task.exclude_self, task.order)


class CheckpointBackend(RayBackend):
    """Evaluates a series of checkpoints on Ray actors (:class:`CheckpointWorker`), for
    :func:`jetex.apps.dynamics.bigram_dynamics_ray`; the driver assembles the results.

    ``sources``: each checkpoint's name or path (every node must be able to read it);
    ``reference``: the driver's copy of the LAST checkpoint (the workers' copy must have its
    fingerprint; every checkpoint must have its architecture and tokenizer). Two passes:
    :meth:`summaries` (one task per checkpoint: the expensive sweep) and :meth:`pair_values`
    (one cheap task per checkpoint, sent to the worker that summarised it and still holds it).
    Connection, retries (``max_restarts`` = ``max_task_retries`` = ``retries``), the address
    probe and the local instance are :class:`RayBackend`'s. Nothing is stored: a run that
    stops (a worker dying more than ``retries`` times) keeps nothing and is rerun whole.
    """

    def __init__(self, sources: Sequence[str], reference: Any, *, path: str = "direct", top: int = 1000, k: int = 128,
                 exclude_self: bool = True, order: int = 0, granularity: str = "sublayer", score: str | None = None,
                 **backend: Any) -> None:
        self.sources = [str(s) for s in sources]
        if len(self.sources) < 1 or any(not s for s in self.sources):
            raise ClusterError("the Ray backend needs each checkpoint's name or path")
        self.reference = reference
        self.path, self.top, self.k = path, top, k
        self.exclude_self, self.order, self.granularity = exclude_self, order, granularity
        self.score = score
        self._ran_on: dict[int, list[int]] = {}  # actor → checkpoints it ran in the last pass
        self.fingerprints: list[str] | None = None
        spec = LoadSpec(self.sources[-1], granularity, "float32", "cpu")
        RayBackend.__init__(self, spec, max_workers=len(self.sources), **backend)

    def _actor_class(self) -> type:
        return CheckpointWorker

    def _actor_args(self, spec: LoadSpec) -> tuple:
        return (spec.granularity, spec.dtype, spec.device, self.cpus_per_worker, self.fault)

    def _expect(self) -> tuple[str, tuple, str]:
        ref = self.reference
        return (ref.name, arch_signature(ref), ref.tokenizer_fingerprint())

    def _run(self, tasks: list[CheckpointTask], next_for: Callable[[int], Any] | None = None) -> dict[int, Any]:
        self.start()
        queue = collections.deque(tasks)
        results: dict[int, Any] = {}

        def on_result(task: CheckpointTask, ai: int, result: Any) -> None:
            results[task.index] = result
            self._ran_on.setdefault(ai, []).append(task.index)
            if self.progress:
                print(f"jetex: checkpoint {len(results)}/{len(tasks)} ({task.kind}) done: {task.source}", file=sys.stderr,
                      flush=True)

        failure = self._drive(next_for or (lambda ai: queue.popleft() if queue else None),
                              lambda actor, task: actor.run.remote(task), on_result)
        if failure is not None:
            task, e = failure
            cause = _root_cause(e)
            if isinstance(cause, JetexError):
                raise type(cause)(str(cause)) from None
            what = f"checkpoint {task.index + 1} of {len(self.sources)} ({task.source})"
            if isinstance(e, self._ray.exceptions.RayActorError):
                raise ClusterError(
                    f"dynamics: the Ray worker evaluating {what} died and was restarted {self.retries} time(s) "
                    f"without finishing; stopped after {len(results)} of {len(tasks)} checkpoints (nothing is kept; "
                    "rerun)") from None
            raise ClusterError(f"dynamics: {what} failed on a Ray worker: {_one_line(cause)}") from None
        return results

    def summaries(self, corpus_pairs: Sequence[tuple[int, int]] | None = None) -> list[Any]:
        """Every checkpoint's :class:`~jetex.apps.dynamics.CheckpointSummary`, in checkpoint order."""
        expect, T = self._expect(), len(self.sources)
        ref_fp = self.reference.fingerprint()
        cp = tuple(corpus_pairs) if corpus_pairs else None
        tasks = [CheckpointTask(i, s, "summary", self.path, self.top, self.k, self.exclude_self, self.order, cp, expect,
                                ref_fp if i == T - 1 else None, self.score) for i, s in enumerate(self.sources)]
        self._ran_on = {}
        res = self._run(tasks)
        self.fingerprints = [res[i].fingerprint for i in range(T)]
        return [res[i] for i in range(T)]

    def pair_values(self, pairs: Sequence[tuple[int, int]]) -> Any:
        """log P_c(b | a) ``[T, n]`` of ``pairs`` at every checkpoint c (after :meth:`summaries`).

        Each checkpoint goes back to the worker that summarised it, latest first, so that the
        checkpoint the worker still holds is not loaded again; an idle worker takes over the
        oldest work of the busiest one."""
        T = len(self.sources)
        fps = self.fingerprints
        if fps is None:
            raise RuntimeError("CheckpointBackend.pair_values needs summaries() first")
        pt = tuple((int(a), int(b)) for a, b in pairs)
        tasks = {i: CheckpointTask(i, s, "pairs", self.path, self.top, self.k, self.exclude_self, self.order, pt, None,
                                   fps[i]) for i, s in enumerate(self.sources)}
        own = {ai: list(ix) for ai, ix in self._ran_on.items()}

        def next_for(ai: int) -> CheckpointTask | None:
            mine = own.get(ai)
            if mine:
                return tasks[mine.pop()]
            busiest = max(own, key=lambda j: len(own[j]), default=None)
            if busiest is not None and own[busiest]:
                return tasks[own[busiest].pop(0)]
            return None

        self._ran_on = {}
        res = self._run(list(tasks.values()), next_for)
        return torch.stack([res[i] for i in range(T)])


def bigram_dynamics_ray(
    checkpoints: Sequence[str],
    *,
    reference: ResidualModel | None = None,
    labels: Sequence[str] | None = None,
    steps: Sequence[int | None] | None = None,
    path: str = "direct",
    top: int = 1000,
    k: int = 128,
    n_show: int = 10,
    unigram: Float[Tensor, "v"] | None = None,
    corpus_text: str | None = None,
    bigrams: Sequence[tuple[int, int]] | None = None,
    losses: Sequence[float] | None = None,
    exclude_self: bool = True,
    order: int = 0,
    score: str | None = None,
    granularity: str = "sublayer",
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    retries: int | None = None,
    progress: bool = False,
) -> DynamicsResult:
    """:func:`bigram_dynamics` of the checkpoints named by ``checkpoints`` (names or paths every
    Ray node can read), each loaded and evaluated by a Ray worker (:class:`CheckpointBackend`).

    The driver holds one model only: ``reference``, the LAST checkpoint (loaded here when
    None). It gives the tokenizer (corpus bigrams, token strings) and the identity the
    workers' copy of that checkpoint is checked against (fingerprint); every other checkpoint
    is checked against its architecture and tokenizer on the worker that loads it. The result
    is the local function's, number for number, when the workers and the local run use the
    same torch thread count. ``address``, ``workers``, ``cpus_per_worker``, ``retries``: as
    for ``jetex ngrams extract --backend ray``.
    """
    sources = [str(c) for c in checkpoints]
    _check_args(len(sources), labels, steps, losses, top)
    # workers may run in another folder: give them absolute paths
    sources = [str(Path(s).expanduser().resolve()) if Path(s).expanduser().exists() else s for s in sources]
    if reference is None:
        reference = load(sources[-1], granularity=granularity)
    bigram_path(reference, path)  # an unknown path fails here, before Ray starts
    cpairs = _corpus_pairs(reference, unigram, corpus_text, top, exclude_self)
    from jetex.ngrams.scores import DEFAULT_SCORE, check_score

    backend = CheckpointBackend(sources, reference, path=path, top=top, k=k, exclude_self=exclude_self, order=order,
                                score=check_score(DEFAULT_SCORE if score is None else score), granularity=granularity, address=address, workers=workers,
                                cpus_per_worker=cpus_per_worker,
                                retries=DEFAULT_RETRIES if retries is None else retries, progress=progress)
    with backend:
        summaries = backend.summaries(cpairs)
        return _assemble(summaries, backend.pair_values, reference, labels=labels, steps=steps, path=path, top=top,
                         n_show=n_show, unigram=unigram, corpus_pairs=cpairs, bigrams=bigrams, losses=losses,
                         exclude_self=exclude_self)
