"""Batches of sequences: what is one input, what is a batch, and how padding is handled.

The entry points that read text (the lenses, :meth:`~jetex.expand.PathExpansion.rank`,
:func:`~jetex.attribute`) take either **one sequence** — a text, a 1-D id tensor or list of
ints, or a ``[1, t]`` id tensor — and return one result, or **a batch** and return a
:class:`~jetex.results.ResultList` (one result per item, always, even for one item).
A batch is

- a list (or tuple) of texts, or of id sequences (lists of ints, 1-D tensors), all of one
  kind (a list mixing texts and ids is refused);
- a ``[b, t]`` id tensor with ``b > 1``, or any ``[b, t]`` id tensor given with an
  ``attention_mask`` ``[b, t]`` (1 = token, 0 = padding). Each row's tokens must be one
  contiguous run: right padding (``1 1 1 0 0``) and left padding (``0 0 1 1 1``) are both
  accepted, holes are refused. Id rows of different lengths need a mask (the lengths
  would otherwise be ambiguous); texts are tokenised and padded by jetex.

Padding never changes a value: a block only reads positions at or before its own
(causal attention), so running the rows right-aligned — every row's tokens at positions
0..t_i−1, padding after them — gives each real position the same computation as the row
alone (float32 results can differ by the reassociation of batched matrix products).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from jetex.errors import InputError


@dataclass(frozen=True)
class Batch:
    """The items of a batch: ``items[i]`` is the original text (``str``) or the id row
    ``[t_i]`` with its padding removed; ``ids[i]`` its token ids ``[t_i]`` (as the single-
    sequence entry point would tokenise and check it)."""

    items: list[Any]
    ids: list[Tensor]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [int(x.shape[-1]) for x in self.ids]

    def padded(self, pad_id: int = 0) -> tuple[Int[Tensor, "b t"], Bool[Tensor, "b t"]]:
        """Right-padded ids ``[b, T]`` (T = the longest row; padding ``pad_id``) and the mask."""
        T = max(self.lengths)
        dev = self.ids[0].device
        out = torch.full((len(self), T), pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((len(self), T), dtype=torch.bool, device=dev)
        for i, x in enumerate(self.ids):
            out[i, : x.shape[-1]] = x
            mask[i, : x.shape[-1]] = True
        return out, mask


def is_batch(inputs: Any, attention_mask: Any = None) -> bool:
    """Whether ``inputs`` is a batch (see the module docstring), not one sequence."""
    if attention_mask is not None:
        return True
    if isinstance(inputs, str):
        return False
    if isinstance(inputs, Tensor):
        return inputs.ndim == 2 and inputs.shape[0] != 1
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise InputError("empty input: give a text, token ids, or a non-empty list of texts")
        return not all(isinstance(i, int) and not isinstance(i, bool) for i in inputs)
    return False


def mask_spans(attention_mask: Any, shape: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of each row's tokens in a ``[b, t]`` mask; one line of error for a bad mask."""
    mask = torch.as_tensor(attention_mask)
    if tuple(mask.shape) != tuple(shape):
        raise InputError(f"attention_mask has shape {tuple(mask.shape)}; the token ids have shape {tuple(shape)}")
    if mask.is_floating_point() or mask.is_complex():
        raise InputError("attention_mask must hold integers or booleans (1 = token, 0 = padding)")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError("attention_mask must hold only 0 (padding) and 1 (token)")
    m = mask.bool().cpu()
    spans = []
    for i, row in enumerate(m):
        idx = row.nonzero().flatten()
        if idx.numel() == 0:
            raise InputError(f"attention_mask row {i} has no token")
        s, e = int(idx[0]), int(idx[-1]) + 1
        if e - s != idx.numel():
            raise InputError(f"attention_mask row {i} has padding between tokens; only left or right padding is supported")
        spans.append((s, e))
    return spans


def as_batch(inputs: Any, one: Callable[[Any], Tensor], attention_mask: Any = None) -> Batch:
    """The items of a batch, each turned into ids ``[t_i]`` by ``one`` (the single-sequence
    tokeniser and checks of the calling entry point)."""
    if isinstance(inputs, Tensor):
        if inputs.ndim != 2:
            raise InputError(f"a batch of token ids must be [b, t], got shape {tuple(inputs.shape)}")
        rows = inputs
    elif isinstance(inputs, (list, tuple)):
        if not inputs:
            raise InputError("empty batch: give at least one text or id sequence")
        kinds = []
        for i, x in enumerate(inputs):
            if isinstance(x, str):
                kinds.append("text")
            elif isinstance(x, (list, tuple)) or (isinstance(x, Tensor) and x.ndim == 1):
                kinds.append("ids")
            else:
                what = f"a {x.ndim}-D tensor" if isinstance(x, Tensor) else f"a {type(x).__name__}"
                raise InputError(f"batch item {i} is {what}: give texts or 1-D token id sequences")
        if "text" in kinds and "ids" in kinds:
            t, d = kinds.index("text"), kinds.index("ids")
            raise InputError(f"the batch mixes texts (item {t}) and token ids (item {d}): give all texts or all ids")
        if kinds[0] == "text":
            if attention_mask is not None:
                raise InputError("attention_mask applies to token ids; texts are tokenised and padded by jetex")
            return Batch(list(inputs), [one(x) for x in inputs])
        lens = [len(x) for x in inputs]
        if len(set(lens)) > 1:
            if attention_mask is None:
                shown = ", ".join(str(n) for n in lens[:6]) + (", …" if len(lens) > 6 else "")
                raise InputError(
                    f"token id rows have different lengths ({shown}) and no attention_mask: "
                    "pad them to one length and pass attention_mask (1 = token, 0 = padding)"
                )
            raise InputError(f"token id rows have different lengths ({lens[0]} and {next(n for n in lens if n != lens[0])}): pad them to one length")
        try:
            rows = torch.stack([torch.as_tensor(x) for x in inputs]) if lens[0] else torch.zeros(len(lens), 0, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):
            raise InputError("token ids must be lists of ints") from None
    else:
        raise InputError(f"expected a text, token ids, or a list of them; got {type(inputs).__name__}")
    if rows.is_floating_point() or rows.dtype == torch.bool:
        raise InputError(f"token ids must be integers, got dtype {rows.dtype}")
    if rows.shape[-1] == 0:
        raise InputError("empty input: give at least one token per row")
    spans = mask_spans(attention_mask, rows.shape) if attention_mask is not None else [(0, rows.shape[-1])] * rows.shape[0]
    items = [rows[i, s:e] for i, (s, e) in enumerate(spans)]
    return Batch(items, [one(x) for x in items])


def pack(input_ids: Int[Tensor, "b t"], attention_mask: Any) -> tuple[Int[Tensor, "b t"], list[tuple[int, int]]]:
    """Rows moved to the front (right padding, pad id = the row's first token) and the spans
    they came from; used by :meth:`ResidualModel.stream` with a mask."""
    spans = mask_spans(attention_mask, input_ids.shape)
    out = input_ids.clone()
    for i, (s, e) in enumerate(spans):
        out[i, : e - s] = input_ids[i, s:e]
        out[i, e - s :] = input_ids[i, s]
    return out, spans


__all__ = ["Batch", "as_batch", "is_batch", "mask_spans", "pack"]
