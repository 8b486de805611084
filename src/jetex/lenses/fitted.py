"""Storage shared by the fitted lenses (tuned lens, Jacobian lens).

A fitted lens is one safetensors file: its tensors plus a JSON metadata record that names
the lens kind, the format version, and the fingerprint of the model it was fitted on
(:meth:`jetex.models.base.ResidualModel.fingerprint`). Files are written atomically (a
temporary file in the same folder, then ``os.replace``), so a fit killed while saving
leaves the previous file intact. No pickle: safetensors holds tensors only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jetex.errors import InputError
from jetex.models.base import ResidualModel

FORMAT = 1


def save_lens_file(path: str | Path, kind: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` (JSON-able) to ``path`` atomically; returns the path."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    record = {"kind": kind, "format": FORMAT} | meta
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata={"jetex": json.dumps(record)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_lens_file(path: str | Path, kind: str, model: ResidualModel | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a lens file of ``kind``; with ``model``, refuse a file fitted for another model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"lens file {path} not found")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("jetex")
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"lens file {path} is not a readable safetensors file ({str(e).splitlines()[0][:80]})") from None
    if raw is None:
        raise InputError(f"{path} is not a jetex lens file (no jetex metadata)")
    meta = json.loads(raw)
    if meta.get("kind") != kind:
        raise InputError(f"{path} holds a {meta.get('kind')!r} lens, not a {kind!r} lens")
    if meta.get("format") != FORMAT:
        raise InputError(f"{path} has lens format {meta.get('format')}; this jetex reads format {FORMAT}")
    if model is not None:
        check_fingerprint(meta, model, path)
    return tensors, meta


def check_fingerprint(meta: dict[str, Any], model: ResidualModel, path: str | Path) -> None:
    """Raise if ``meta`` was fitted on a model other than ``model``."""
    fp = model.fingerprint()
    if meta.get("fingerprint") != fp:
        raise InputError(
            f"lens file {path} was fitted for model {meta.get('model')!r} (fingerprint {meta.get('fingerprint')}), "
            f"not for {model.name!r} (fingerprint {fp})"
        )


def as_tensor_ids(windows: Tensor) -> Tensor:
    """Validate a batch of token windows ``[n, t]`` (long)."""
    w = torch.as_tensor(windows, dtype=torch.long)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] < 2:
        raise InputError("a lens fit needs token windows of shape [n >= 1, t >= 2]")
    return w
