"""Progress on stderr for steps that take longer than about two seconds.

Progress never goes to stdout, so it stays on with ``--json`` (whose document is stdout).
:func:`bar` is a tqdm bar that appears only once its work has run for :data:`DELAY_S`;
:func:`step` prints ``jetex: <label>…`` only when the step is still running after
:data:`DELAY_S`, and then its duration when it ends. Quick steps print nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

DELAY_S = 2.0


def bar(total: int, desc: str, *, enabled: bool = True, unit: str = "it") -> Any:
    """A tqdm progress bar on stderr, shown after :data:`DELAY_S` (a no-op when not ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, delay=DELAY_S, leave=False, disable=not enabled,
                dynamic_ncols=True)


@contextlib.contextmanager
def step(label: str, *, enabled: bool = True) -> Iterator[None]:
    """``jetex: <label>…`` on stderr if the step outlasts :data:`DELAY_S`, then ``done in X s``."""
    if not enabled:
        yield
        return
    start = time.perf_counter()
    shown = threading.Event()

    def announce() -> None:
        shown.set()
        print(f"jetex: {label}…", file=sys.stderr, flush=True)

    timer = threading.Timer(DELAY_S, announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if shown.is_set():
            print(f"jetex: {label}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
