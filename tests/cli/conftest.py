"""CLI tests load each test model once per test module.

Every ``main([...])`` call loads its ``--model`` through ``jetex.models.load.load``; the
command modules look that function up when a command runs, so a module-scoped wrapper
that memoises successful loads makes the many CLI calls of one test module share one
model object (the commands never modify the model: eval mode, frozen weights). The key
holds the source's files' sizes and modification times and ``$JETEX_CACHE``, so a test
that rewrites or breaks a model folder still sees the new files, and errors are never
cached. A test module that exercises loading itself sets ``CLI_LOAD_CACHE = False``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from jetex.finite import ALLOW_NONFINITE


def _stamp(source: object) -> tuple:
    p = Path(os.fspath(source)).expanduser() if isinstance(source, (str, os.PathLike)) else None
    if p is None or not p.exists():
        return (str(source),)
    files = sorted(p.iterdir()) if p.is_dir() else [p]
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


@pytest.fixture(scope="module", autouse=True)
def _load_once_per_module(request):
    if not getattr(request.module, "CLI_LOAD_CACHE", True):
        yield
        return
    import jetex.models.load as loader

    real = loader.load
    cache: dict[tuple, object] = {}

    def load(name_or_path=loader.DEFAULT_MODEL, granularity="sublayer", dtype="float32", device="cpu", allow_nonfinite=None):
        # whether non-finite weights may load (the argument, else --allow-nonfinite's context
        # variable) is part of the key: a model let through by the flag must not be handed to
        # a later command without it
        allowed = ALLOW_NONFINITE.get() if allow_nonfinite is None else bool(allow_nonfinite)
        key = (os.fspath(name_or_path), _stamp(name_or_path), granularity, str(dtype), str(device),
               os.environ.get("JETEX_CACHE"), torch.is_inference_mode_enabled(),  # inference mode changes the weights' kind
               allowed)
        if key not in cache:
            cache[key] = real(name_or_path, granularity=granularity, dtype=dtype, device=device, allow_nonfinite=allow_nonfinite)
        return cache[key]

    loader.load = load
    try:
        yield
    finally:
        loader.load = real
        import jetex

        # `jetex.load` resolved lazily while patched would keep the memoising wrapper for the
        # rest of the session (two loads of one folder would then be one object): forget it
        if vars(jetex).get("load") is load:
            del jetex.load
