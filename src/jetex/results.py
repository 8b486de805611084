"""What every jetex result object can do: short repr, dict / file round-trip, tables, pictures.

:class:`Result` is a mixin for the result dataclasses (:class:`~jetex.lenses.LensResult`,
:class:`~jetex.attribution.Attribution`, :class:`~jetex.expand.PathRanking`,
:class:`~jetex.ngrams.NgramTable`, …). A subclass provides ``_columns()`` (its long-format
table) and ``_summary()`` (the few words of its repr); everything else is generic:

- ``repr(r)``: one short line (shapes and names, never tensor values);
- ``r.to_dict()`` / ``Cls.from_dict(d)``: a JSON-ready dict whose ``"fields"`` entry holds
  every dataclass field exactly (tensors as ``{"__tensor__": dtype, "shape", "data"}``,
  nested jetex dataclasses as ``{"__dataclass__": "module:Name", "fields"}``), so that
  ``from_dict(to_dict(r))`` equals ``r`` bit for bit (float32 values survive the
  float64 text form exactly);
- ``r.save(path)`` / ``Cls.load(path)``: ``.json`` (the dict above) or ``.safetensors``
  (tensors as safetensors, every other field as JSON in the file's metadata). No pickle.
  Written atomically (temporary file, then rename);
- ``r.to_dataframe()`` (needs pandas: ``pip install 'jetex[pandas]'``) and
  ``r.to_parquet(path)`` (pyarrow only): the long-format table, columns documented on
  each class and in docs/api.md;
- ``r.plot(path=None)`` → a matplotlib ``Figure`` and ``r.to_html()`` → a self-contained
  page. These delegate to the renderer registered for the class by its ``jetex.viz``
  module (:func:`register_renderer`; results never import the rendering layer, the class
  names the module that registers its renderers and it is imported on first use).

:class:`ResultList` is what the batched entry points return for a list of inputs: a
``list`` of results (one per input, each equal to the single-input result) with the same
methods; its table gains an ``item`` column (the input's index).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes
from torch import Tensor

from jetex.errors import InputError, JetexError

PathLike = str | os.PathLike

#: result classes by name (filled by subclassing :class:`Result`)
RESULT_TYPES: dict[str, type] = {}
#: renderers by class name: {"plot": fn(result, path=None, **kw) -> Figure, "html": fn(result, **kw) -> str}
_RENDERERS: dict[str, dict[str, Callable[..., Any]]] = {}
_FORMAT = "jetex-result/1"


def register_renderer(cls: type, *, plot: Callable[..., Any] | None = None, html: Callable[..., str] | None = None) -> None:
    """Register the figure / HTML renderers of a result class (called by ``jetex.viz`` modules)."""
    slot = _RENDERERS.setdefault(cls.__name__, {})
    if plot is not None:
        slot["plot"] = plot
    if html is not None:
        slot["html"] = html


def _renderer(obj: Any, what: str) -> Callable[..., Any]:
    name = type(obj).__name__
    if what not in _RENDERERS.get(name, {}):
        module = getattr(obj, "_renderer_module", None)
        if module:
            importlib.import_module(module)  # the viz module registers its renderers on import
    fn = _RENDERERS.get(name, {}).get(what)
    if fn is None:
        raise JetexError(f"{name} has no {'figure' if what == 'plot' else 'HTML'} view")
    return fn


# ---------------------------------------------------------------------------------- encoding


def _encode(v: Any) -> Any:
    """A JSON-ready form of a field value (exact; inverse: :func:`_decode`)."""
    if isinstance(v, Tensor):
        t = v.detach().cpu()
        data = t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
        return {"__tensor__": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": data.reshape(-1).tolist()}
    if isinstance(v, np.ndarray):
        return {"__ndarray__": str(v.dtype), "shape": list(v.shape), "data": v.reshape(-1).tolist()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        cls = type(v)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": {f.name: _encode(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError("result dicts must have string keys")
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return {"__float__": repr(v)}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    raise TypeError(f"cannot encode a {type(v).__name__} in a result")


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__tensor__" in v:
        dtype = getattr(torch, v["__tensor__"])
        src = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
        return torch.tensor(v["data"], dtype=src).reshape(v["shape"]).to(dtype)
    if "__ndarray__" in v:
        return np.asarray(v["data"], dtype=v["__ndarray__"]).reshape(v["shape"])
    if "__tuple__" in v:
        return tuple(_decode(x) for x in v["__tuple__"])
    if "__float__" in v:
        return float(v["__float__"])
    if "__dataclass__" in v:
        module, _, qual = v["__dataclass__"].partition(":")
        if not module.startswith("jetex."):
            raise InputError(f"refusing to rebuild {v['__dataclass__']!r}: not a jetex class")
        cls = getattr(importlib.import_module(module), qual, None)
        if cls is None or not dataclasses.is_dataclass(cls):
            raise InputError(f"unknown result class {v['__dataclass__']!r}")
        return cls(**{k: _decode(x) for k, x in v["fields"].items()})
    return {k: _decode(x) for k, x in v.items()}


def write_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    p = Path(path)
    if not p.parent.is_dir():
        raise InputError(f"cannot write {p}: directory {p.parent} does not exist")
    if p.is_dir():
        raise InputError(f"cannot write {p}: it is a directory")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, (p.stat().st_mode & 0o777) if p.exists() else 0o644)
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise InputError(f"cannot write {p}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return p


def _suffix(path: PathLike) -> str:
    s = Path(path).suffix.lower()
    if s not in (".json", ".safetensors"):
        raise InputError(f"cannot save or load a result as {s or 'a file without suffix'!r} ({Path(path).name}): use .json or .safetensors")
    return s


def _pack(tensors: dict[str, Tensor], prefix: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Fields with their top-level tensors moved to ``tensors`` (as ``{"__stored__": key}``)."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if isinstance(v, Tensor) and v.numel() > 0:
            key = f"{prefix}{k}"
            tensors[key] = v.detach().cpu().contiguous().clone()
            out[k] = {"__stored__": key}
        else:
            out[k] = _encode(v)
    return out


def _unpack(fields: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    return {k: tensors[v["__stored__"]] if isinstance(v, dict) and "__stored__" in v else _decode(v) for k, v in fields.items()}


def _dump(meta: dict[str, Any], tensors: dict[str, Tensor], path: PathLike) -> Path:
    return write_atomic(path, _safetensors_bytes(tensors, metadata={"jetex": json.dumps(meta, ensure_ascii=False)}))


def _read(path: PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    p = Path(path)
    suffix = _suffix(p)
    if not p.is_file():
        raise InputError(f"no result file {p}")
    try:
        if suffix == ".json":
            return json.loads(p.read_text(encoding="utf-8")), {}
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["jetex"])
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RuntimeError, SafetensorError) as e:
        raise InputError(f"{p} is not a jetex result file ({type(e).__name__})") from None


def _need_pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise JetexError("to_dataframe needs pandas: pip install 'jetex[pandas]' (or: pip install pandas)") from None
    return pandas


def _columns_to_arrow(cols: dict[str, list]) -> Any:
    import pyarrow as pa

    return pa.table({k: pa.array(v) for k, v in cols.items()})


def _parquet_bytes(cols: dict[str, list]) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(_columns_to_arrow(cols), buf)
    return buf.getvalue()


def _png_page(fig: Any, title: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    b64 = base64.b64encode(buf.getvalue()).decode()
    from html import escape

    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title></head>"
        f"<body><h1>{escape(title)}</h1><img alt='{escape(title)}' src='data:image/png;base64,{b64}'></body></html>\n"
    )


# ---------------------------------------------------------------------------------- the mixin


class Result:
    """Mixin of the result dataclasses (see the module docstring)."""

    #: the jetex.viz module that registers this class's renderers
    _renderer_module: ClassVar[str | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        RESULT_TYPES[cls.__name__] = cls

    # ---- subclasses provide ---------------------------------------------------
    def _summary(self) -> str:  # pragma: no cover - every subclass overrides
        return ""

    def _columns(self) -> dict[str, list]:  # pragma: no cover
        raise JetexError(f"{type(self).__name__} has no table view")

    # ---- repr -----------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._summary()})"

    __str__ = __repr__

    # ---- dict round-trip ----------------------------------------------------------
    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """``{"type", "format", "fields"}``: every field, exactly (see the module docstring)."""
        return {"type": type(self).__name__, "format": _FORMAT, "fields": {k: _encode(v) for k, v in self._fields().items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """The result whose :meth:`to_dict` is ``d``."""
        if not isinstance(d, dict) or "fields" not in d or "type" not in d:
            raise InputError(f"not a jetex result dict (needs 'type' and 'fields'; got keys {sorted(d)[:6] if isinstance(d, dict) else type(d).__name__})")
        target = RESULT_TYPES.get(d["type"])
        if target is None or (cls is not Result and not issubclass(target, cls)):
            raise InputError(f"this is a {d['type']} result, not a {cls.__name__}")
        if target is ResultList:
            return ResultList.from_dict(d)
        return target(**{k: _decode(v) for k, v in d["fields"].items()})

    # ---- files ------------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        """Write the result to ``path`` (``.json`` or ``.safetensors``), atomically; returns the path."""
        if _suffix(path) == ".json":
            return write_atomic(path, (json.dumps(self.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
        tensors: dict[str, Tensor] = {}
        meta = {"type": type(self).__name__, "format": _FORMAT, "fields": _pack(tensors, "", self._fields())}
        return _dump(meta, tensors, path)

    @classmethod
    def load(cls, path: PathLike) -> Any:
        """Read a result written by :meth:`save`."""
        meta, tensors = _read(path)
        return _from_stored(cls, meta, tensors)

    # ---- tables ---------------------------------------------------------------------
    def to_dataframe(self) -> Any:
        """The long-format table as a ``pandas.DataFrame`` (columns: see the class docstring)."""
        return _need_pandas().DataFrame(self._columns())

    def to_parquet(self, path: PathLike) -> Path:
        """Write the long-format table to a Parquet file (pyarrow; no pandas needed), atomically."""
        return write_atomic(path, _parquet_bytes(self._columns()))

    # ---- pictures ----------------------------------------------------------------------
    def plot(self, path: PathLike | None = None, **kw: Any) -> Any:
        """A matplotlib ``Figure`` of the result (also written as PNG when ``path`` is given)."""
        return _renderer(self, "plot")(self, path, **kw)

    def to_html(self, **kw: Any) -> str:
        """A self-contained HTML page showing the result."""
        try:
            fn = _renderer(self, "html")
        except JetexError:
            return _png_page(self.plot(), repr(self))
        return fn(self, **kw)


def _from_stored(cls: type, meta: dict[str, Any], tensors: dict[str, Tensor]) -> Any:
    if not isinstance(meta, dict) or "type" not in meta:
        raise InputError("not a jetex result (no 'type')")
    if meta["type"] == "ResultList":
        if cls not in (Result, ResultList):
            raise InputError(f"this is a ResultList, not a {cls.__name__}")
        return ResultList(_from_stored(Result, m, tensors) for m in meta["items"])
    target = RESULT_TYPES.get(meta.get("type", ""))
    if target is None or (cls is not Result and not issubclass(target, cls)):
        raise InputError(f"this is a {meta.get('type')} result, not a {cls.__name__}")
    return target(**_unpack(meta["fields"], tensors))


class ResultList(list, Result):
    """Results of a batch, one per input (in input order), with the :class:`Result` methods.

    Each item equals the result of the same input run alone. The table
    (:meth:`to_dataframe`, :meth:`to_parquet`) is the items' tables stacked, with a first
    column ``item`` (the input's index); :meth:`plot` returns one figure per item (written
    as ``stem.0.png``, ``stem.1.png``, … when ``path`` is given); :meth:`to_html` one page
    with every item's page in turn.
    """

    def _summary(self) -> str:
        kinds = sorted({type(r).__name__ for r in self})
        return f"{len(self)} × {'/'.join(kinds) or 'nothing'}"

    def __repr__(self) -> str:
        inner = ", ".join(repr(r) for r in self[:3]) + (", …" if len(self) > 3 else "")
        return f"ResultList({self._summary()}: [{inner}])"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return list.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ResultList", "format": _FORMAT, "items": [r.to_dict() for r in self], "fields": {}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResultList":
        if not isinstance(d, dict) or d.get("type") != "ResultList":
            raise InputError("not a jetex ResultList dict")
        return cls(Result.from_dict(x) for x in d["items"])

    def save(self, path: PathLike) -> Path:
        if _suffix(path) == ".json":
            return write_atomic(path, (json.dumps(self.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
        tensors: dict[str, Tensor] = {}
        items = [{"type": type(r).__name__, "format": _FORMAT, "fields": _pack(tensors, f"{i}/", r._fields())} for i, r in enumerate(self)]
        return _dump({"type": "ResultList", "format": _FORMAT, "items": items}, tensors, path)

    @classmethod
    def load(cls, path: PathLike) -> "ResultList":
        meta, tensors = _read(path)
        if meta.get("type") != "ResultList":
            raise InputError(f"{path} holds a {meta.get('type')} result, not a ResultList")
        return cls(_from_stored(Result, m, tensors) for m in meta["items"])

    def _columns(self) -> dict[str, list]:
        out: dict[str, list] = {}
        n = 0
        for i, r in enumerate(self):
            cols = r._columns()
            m = len(next(iter(cols.values()), []))
            keys = ["item", *cols] if not out else list(out)
            for k in keys:
                if k not in out:
                    out[k] = [None] * n
            for k in out:
                if k == "item":
                    out[k].extend([i] * m)
                else:
                    out[k].extend(cols.get(k, [None] * m))
            n += m
        return out

    def plot(self, path: PathLike | None = None, **kw: Any) -> list[Any]:  # type: ignore[override]
        figs = []
        for i, r in enumerate(self):
            p = None if path is None else Path(path).with_suffix(f".{i}{Path(path).suffix or '.png'}")
            figs.append(r.plot(p, **kw))
        return figs

    def to_html(self, **kw: Any) -> str:
        from html import escape

        frames = "".join(
            f"<h2>item {i}</h2><iframe style='width:100%;height:32em;border:1px solid #ccc' srcdoc=\"{escape(r.to_html(**kw))}\"></iframe>"
            for i, r in enumerate(self)
        )
        return f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{escape(self._summary())}</title></head><body>{frames}</body></html>\n"


def load_result(path: PathLike) -> Any:
    """Read any result (or :class:`ResultList`) written by ``save``."""
    return Result.load(path)


__all__ = ["RESULT_TYPES", "Result", "ResultList", "load_result", "register_renderer", "write_atomic"]
