"""One computation per model at a time, the rest queued; cancelled requests stop their work.

Each loaded model owns a :class:`ModelWorker`: a single worker thread that runs that model's
computations one after another (a model is never used by two threads at once), and a bound
on the computations waiting or running (``max_queue``; the next request is refused with 429).

Cancellation: while a request waits for its computation the server polls whether the client
is still connected; when it is gone the job's :class:`threading.Event` is set. A job not yet
started is then skipped; a running job stops at the next module call of the model, where a
global ``torch.nn`` forward pre-hook (installed by :func:`install_cancel_hook`) checks the
event of the job running on the current thread and raises :class:`Cancelled`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from jetex.serve.limits import RequestError

_current = threading.local()


def _libc_malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None (another C library, or switched off with ``JETEX_SERVE_TRIM=0``)."""
    if not sys.platform.startswith("linux") or os.environ.get("JETEX_SERVE_TRIM", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_malloc_trim = _libc_malloc_trim()


def release_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``; nothing elsewhere).

    A computation frees hundreds of MiB of temporaries (a lens's [rows, t, V] logits); glibc
    keeps freed heap pages of the worker thread's arena mapped, so without this the server's
    resident memory creeps up request after request (docs/serve.md, memory)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class Cancelled(Exception):
    """The client that asked for this computation went away; the work was stopped."""


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the job running on this thread was cancelled."""
    ev = getattr(_current, "cancel", None)
    if ev is not None and ev.is_set():
        raise Cancelled("the client disconnected")


def _pre_hook(module: Any, args: Any) -> None:
    check_cancelled()


_hook_lock = threading.Lock()
_hook_users = 0
_hook_handle: Any = None


def install_cancel_hook() -> None:
    """Install (reference-counted) the global forward pre-hook that stops cancelled jobs."""
    global _hook_users, _hook_handle
    from torch.nn.modules.module import register_module_forward_pre_hook

    with _hook_lock:
        if _hook_users == 0:
            _hook_handle = register_module_forward_pre_hook(_pre_hook)
        _hook_users += 1


def remove_cancel_hook() -> None:
    global _hook_users, _hook_handle
    with _hook_lock:
        if _hook_users == 0:
            return
        _hook_users -= 1
        if _hook_users == 0 and _hook_handle is not None:
            _hook_handle.remove()
            _hook_handle = None


@dataclass
class Counters:
    """What the workers did (shown by /api/status; the tests read it)."""

    started: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    skipped: int = 0  # cancelled before they started
    refused_busy: int = 0
    compute_s: float = 0.0
    running: dict[str, str] = field(default_factory=dict)  # model -> endpoint of the running job

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()} | {
            "running": dict(self.running)
        }


class ModelWorker:
    """The single thread computing with one model, and its bounded queue."""

    def __init__(self, name: str, max_queue: int, counters: Counters) -> None:
        self.name = name
        self.max_queue = max_queue
        self.pending = 0  # waiting or running
        self.counters = counters
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"jetex-serve-{name}")

    def _call(self, what: str, fn: Callable[[], Any], cancel: threading.Event, queued_at: float) -> tuple[Any, float, float]:
        if cancel.is_set():
            self.counters.skipped += 1
            raise Cancelled("the client disconnected before the computation started")
        _current.cancel = cancel
        self.counters.started += 1
        self.counters.running[self.name] = what
        t0 = time.perf_counter()
        try:
            out = fn()
        except Cancelled:
            self.counters.cancelled += 1
            raise
        except BaseException:
            self.counters.failed += 1
            raise
        finally:
            _current.cancel = None
            self.counters.running.pop(self.name, None)
            self.counters.compute_s += time.perf_counter() - t0
            release_memory()  # on the worker thread, after the job's temporaries are gone
        self.counters.finished += 1
        return out, t0 - queued_at, time.perf_counter() - t0

    def _release(self, _: Future) -> None:
        with self._lock:
            self.pending -= 1

    async def run(
        self, what: str, fn: Callable[[], Any], disconnected: Callable[[], Awaitable[bool]], poll_s: float = 0.05
    ) -> tuple[Any, float, float]:
        """Run ``fn()`` on this model's thread; return ``(result, queue seconds, compute seconds)``.

        Refuses with 429 when ``max_queue`` computations are already waiting or running.
        Polls ``disconnected()`` every ``poll_s`` s while waiting; on a disconnect the job is
        cancelled and :class:`Cancelled` is raised here.
        """
        with self._lock:
            if self.pending >= self.max_queue:
                self.counters.refused_busy += 1
                raise RequestError(429, f"model {self.name!r} is busy: {self.pending} computations queued (limit {self.max_queue}); retry later")
            self.pending += 1
        cancel = threading.Event()
        try:
            fut = self._pool.submit(self._call, what, fn, cancel, time.perf_counter())
        except BaseException:
            with self._lock:
                self.pending -= 1
            raise
        fut.add_done_callback(self._release)
        afut = asyncio.wrap_future(fut)
        try:
            while True:
                done, _ = await asyncio.wait({afut}, timeout=poll_s)
                if done:
                    return afut.result()
                if await disconnected():
                    cancel.set()
                    raise Cancelled("the client disconnected")
        except BaseException:
            cancel.set()  # also when the server task itself is cancelled (shutdown)
            if not afut.done():
                afut.add_done_callback(lambda f: f.cancelled() or f.exception())  # never an unretrieved-exception warning
            raise

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
