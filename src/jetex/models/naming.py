"""One way to name blocks and streams, shared by every command and function that chooses one.

Names (``model.block_names`` and two more):

- ``emb``: the embedding stream h_0 = η(z);
- ``attn.N``, ``mlp.N`` (``layer.N`` at layer granularity, ``attn+mlp.N`` for parallel-residual
  models, ``block.N`` for toys): block γ_l, N its 0-based transformer layer as in Hugging
  Face; as a *stream*, the residual stream right after that block, h_l = h_{l-1} + γ_l(h_{l-1});
- ``final``: the last stream h_L, the one the unembedding reads.

Numbers: a bare number N means transformer layer N: as a stream, the stream at the end of
layer N (``mlp.N`` in sub-layer granularity); as blocks, the blocks of layer N (filtered by
kind where a command wants one kind, e.g. MLPs); ``-1`` is ``emb``. Ranges ``A-B`` of
numbers (``0-29``) and lists (``emb,attn.3,mlp.14``) are accepted where several are chosen.

The command line states this in every command's help (``jetex.cli.common.NUMBERING``).
Every resolver raises a one-line :class:`~jetex.errors.InputError` naming the valid choices.
Stream indices are the paper's l = 0..L; block indices are 1-based (γ_1..γ_L).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from jetex.errors import InputError

_KINDS = ("attn", "mlp", "layer", "linear", "nonlinear")


def stream_names(model: Any) -> list[str]:
    """The name of each stream h_0..h_L: ``emb``, then the block that wrote it last."""
    return ["emb", *model.block_names]


def layer_ends(model: Any) -> dict[int, int]:
    """0-based transformer layer -> the stream index l at its end (the last block of the layer)."""
    ends: dict[int, int] = {}
    for l, blk in enumerate(model.blocks, start=1):
        ends[int(blk.layer)] = l
    return ends


def _span(names: Sequence[str]) -> str:
    """``attn.0 … attn.29`` style summary of a family of names."""
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]}"


def valid_streams_line(model: Any) -> str:
    """The valid stream choices in one short line."""
    names = model.block_names
    families: dict[str, list[str]] = {}
    for n in names:
        families.setdefault(n.rsplit(".", 1)[0], []).append(n)
    parts = ["emb", *(_span(v) for v in families.values()), "final"]
    n_layers = len(layer_ends(model))
    return ", ".join(parts) + f", or a layer number 0..{n_layers - 1} (-1 = emb)"


def valid_blocks_line(model: Any, kind: str | None = None) -> str:
    names = [b.name for b in model.blocks if kind is None or b.kind == kind]
    families: dict[str, list[str]] = {}
    for n in names:
        families.setdefault(n.rsplit(".", 1)[0], []).append(n)
    n_layers = len(layer_ends(model))
    kinds = "" if kind is not None else ", kinds " + "/".join(sorted({b.kind for b in model.blocks}))
    return ", ".join(_span(v) for v in families.values()) + kinds + f", or a layer number 0..{n_layers - 1}"


def _as_int(spec: Any) -> int | None:
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return spec
    if isinstance(spec, str) and re.fullmatch(r"\s*-?\d+\s*", spec):
        return int(spec)
    return None


def resolve_stream(model: Any, spec: Any, what: str = "layer") -> int:
    """The stream index l (0..L) of ``spec``: a name (``emb``, ``attn.3``, ``mlp.14``, ``final``)
    or a transformer-layer number (the stream at the layer's end; -1 = ``emb``)."""
    n = _as_int(spec)
    if n is not None:
        ends = layer_ends(model)
        if n == -1:
            return 0
        if n not in ends:
            raise InputError(f"{what} {n} out of range: valid: {valid_streams_line(model)}")
        return ends[n]
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ("emb", "embedding", "embed"):
            return 0
        if key == "final":
            return model.n_blocks
        lower = [b.lower() for b in model.block_names]
        if key in lower:
            return lower.index(key) + 1
    raise InputError(f"unknown {what} {spec!r}; valid: {valid_streams_line(model)}")


def _split(spec: str | Sequence[Any]) -> list[Any]:
    if isinstance(spec, str):
        return [p.strip() for p in spec.split(",") if p.strip()]
    return list(spec)


def _range(part: Any) -> tuple[int, int] | None:
    if isinstance(part, str):
        m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part.strip())
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def resolve_streams(model: Any, spec: str | Sequence[Any] | None, what: str = "layer") -> list[int] | None:
    """Stream indices of a list (``emb,attn.3,mlp.14``, ``0,5,10``, ranges ``0-29``; None or
    ``all``: None, the caller's default)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    out: list[int] = []
    for part in _split(spec):
        r = _range(part)
        if r is not None:
            a, b = r
            if b < a:
                raise InputError(f"bad {what} range {part!r}: the end comes before the start")
            out.extend(resolve_stream(model, i, what) for i in range(a, b + 1))
        else:
            out.append(resolve_stream(model, part, what))
    if not out:
        raise InputError(f"empty {what} list {spec!r}; valid: {valid_streams_line(model)}")
    return out


def resolve_blocks(model: Any, spec: str | Sequence[Any] | None, kind: str | None = None, what: str = "block",
                   kinds: bool = False) -> list[int]:
    """1-based block indices of a list of block names (``attn.3``, ``mlp.14``), layer numbers
    or ranges (every block of those layers, only ``kind`` ones when given) and, with
    ``kinds=True``, kinds (``attn``, ``mlp``: every block of that kind)."""
    if spec is None:
        return []
    blocks = list(model.blocks)
    lower = [b.name.lower() for b in blocks]
    out: list[int] = []

    def of_layer(n: int, part: Any) -> list[int]:
        found = [i + 1 for i, b in enumerate(blocks) if int(b.layer) == n and (kind is None or b.kind == kind)]
        if not found:
            raise InputError(f"{what} {part!r} out of range: valid: {valid_blocks_line(model, kind)}")
        return found

    for part in _split(spec):
        r = _range(part)
        n = _as_int(part)
        if r is not None:
            for i in range(r[0], r[1] + 1):
                out.extend(of_layer(i, part))
        elif n is not None:
            out.extend(of_layer(n, part))
        elif isinstance(part, str) and kinds and part.strip().lower() in _KINDS:
            k = part.strip().lower()
            out.extend(i + 1 for i, b in enumerate(blocks) if b.kind == k)
        elif isinstance(part, str) and part.strip().lower() in lower:
            i = lower.index(part.strip().lower())
            if kind is not None and blocks[i].kind != kind:
                raise InputError(f"{what} {part!r} is not a block of kind {kind}; valid: {valid_blocks_line(model, kind)}")
            out.append(i + 1)
        else:
            raise InputError(f"unknown {what} {part!r}; valid: {valid_blocks_line(model, kind)}")
    return list(dict.fromkeys(out))


def layers_of(model: Any, blocks: Iterable[int]) -> list[int]:
    """The 0-based transformer layers of 1-based blocks, in order, without repeats."""
    return list(dict.fromkeys(int(model.blocks[l - 1].layer) for l in blocks))


__all__ = [
    "layer_ends",
    "layers_of",
    "resolve_blocks",
    "resolve_stream",
    "resolve_streams",
    "stream_names",
    "valid_blocks_line",
    "valid_streams_line",
]
