"""Exact row-wise top-k and log-sum-exp over wide rows (a vocabulary), with few passes over memory.

Both read the rows through their chunk maxima: each row of ``[n, m]`` is cut into chunks
of ``CHUNK`` columns (a tail of fewer columns is kept whole) and the maximum of every chunk
is taken in one read pass.

- :func:`stable_topk`: the top-k lies in the k+1 chunks with the largest maxima (an element
  of any other chunk has k+1 larger-or-equal chunk maxima above it), so ``torch.topk`` runs
  on those chunks (plus the tail) only. Ties are broken by the lower column index, exactly:
  a row whose k-th and (k+1)-th candidates tie is redone with a stable full sort (this also
  catches every case where a tied element could sit in a chunk that was not gathered).
- :func:`sum_exp`: Σ_c exp(x_c − max) skipping the chunks whose maximum is below
  max − τ, τ = ln(m) + 24 nats: all skipped terms together are < m·e^{−τ} = e^{−24} ≈ 4e−11
  of the sum (which is ≥ 1), far below float32 resolution. The argument of exp is floored
  at ``EXP_FLOOR`` = −87 (exp(−87) ≈ 1.6e−38 is still a normal float32; floored terms add at
  most m·1.6e−38 to a sum ≥ 1, nothing at float precision), because exp of arguments whose
  result underflows takes a slow path on x86 CPUs, about 10× slower (the ``direct`` path of
  SmolLM2 has logit ranges around 300 nats). When every row maximum lies in
  [−87 + τ, 87 − ln m], the shift is skipped: Σ exp(x) cannot overflow, the floor only lifts
  terms below e^{−τ} of the row maximum, and the result is rescaled by exp(−max).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.expand.numerics import EXP_FLOOR  # the one floor of every exp of logits

CHUNK = 64
SKIP_MARGIN = 24.0


@dataclass
class RowChunks:
    """Chunk maxima of a ``[n, m]`` matrix: ``main`` ``[n, nc, CHUNK]`` (a view), ``cmax`` ``[n, nc]``,
    and ``tail`` = the ``m − nc·CHUNK`` last columns (a view, maybe empty)."""

    x: Tensor
    main: Tensor
    cmax: Tensor
    tail: Tensor

    @property
    def nc(self) -> int:
        return int(self.cmax.shape[1])

    def gather(self, rows: Int[Tensor, "s"], chunk_ids: Int[Tensor, "s"]) -> Float[Tensor, "s c"]:
        """The chunks (rows[i], chunk_ids[i]) as a ``[s, CHUNK]`` copy.

        For a contiguous x this is one ``index_select`` of 64-float windows of its storage
        (about 3× faster than advanced indexing of ``main``)."""
        x = self.x
        if x.is_contiguous():
            windows = x.reshape(-1).unfold(0, CHUNK, 1)  # a view: window j = x.flat[j : j + CHUNK]
            return torch.index_select(windows, 0, rows * x.shape[1] + chunk_ids * CHUNK)
        return self.main[rows, chunk_ids]

    @staticmethod
    def of(x: Float[Tensor, "n m"], min_chunks: int = 8) -> "RowChunks | None":
        """The chunk view of x, or None when x has fewer than ``min_chunks`` chunks (not worth it)."""
        n, m = x.shape
        nc = m // CHUNK
        if nc < min_chunks:
            return None
        main = x[:, : nc * CHUNK].unflatten(1, (nc, CHUNK))
        return RowChunks(x, main, main.amax(-1), x[:, nc * CHUNK :])


def stable_topk(x: Float[Tensor, "n m"], k: int, chunks: RowChunks | None = None) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """Row-wise top-k, largest first, ties broken by the lower column index (``k`` ≤ m: else all m).

    ``torch.topk`` picks among tied values arbitrarily; rows whose k-th and (k+1)-th values
    tie are redone with a stable full sort, and the k winners are ordered by (−value, index).
    ``chunks`` (:class:`RowChunks` of x) restricts the search to the best chunks (exact).
    """
    n, m = x.shape
    k = min(k, m)
    if k == 0:
        return x[:, :0], torch.zeros(n, 0, dtype=torch.long, device=x.device)
    kk = min(k + 1, m)
    if chunks is None and m // CHUNK >= 4 * kk:
        chunks = RowChunks.of(x)
    if chunks is not None and chunks.nc >= 2 * kk:
        ci = torch.topk(chunks.cmax, kk, dim=1).indices  # [n, kk] chunks holding the top-k
        rows = torch.arange(n, device=x.device)[:, None].expand(n, kk)
        cand = chunks.gather(rows.reshape(-1), ci.reshape(-1)).reshape(n, kk * CHUNK)
        cidx = (ci[:, :, None] * CHUNK + torch.arange(CHUNK, device=x.device)).reshape(n, kk * CHUNK)
        if chunks.tail.shape[1]:
            cand = torch.cat([cand, chunks.tail], dim=1)
            tail_idx = torch.arange(chunks.nc * CHUNK, m, device=x.device).expand(n, -1)
            cidx = torch.cat([cidx, tail_idx], dim=1)
        vals, pos = torch.topk(cand, kk, dim=1, sorted=True)
        idx = cidx.gather(1, pos)
    else:
        vals, idx = torch.topk(x, kk, dim=1, sorted=True)
    if kk > k:
        tied = (vals[:, k - 1] == vals[:, k]).nonzero().flatten()
        vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
        if len(tied):
            sv, si = torch.sort(x[tied], dim=1, descending=True, stable=True)
            vals[tied], idx[tied] = sv[:, :k], si[:, :k]
    # order the winners by (-value, index)
    o = torch.argsort(idx, dim=1)
    vals, idx = vals.gather(1, o), idx.gather(1, o)
    o = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, o), idx.gather(1, o)


def sum_exp(
    x: Float[Tensor, "n m"],
    mx: Float[Tensor, "n"],
    chunks: RowChunks | None = None,
    out: Tensor | None = None,
) -> Float[Tensor, "n"]:
    """Σ_c exp(x_c − mx) per row, where mx is the row maximum (see the module docstring).

    When most chunks matter the whole rows are exponentiated, into ``out`` (same shape as
    x) if given, else in place: x is overwritten.
    """
    n, m = x.shape
    col = mx[:, None]
    if chunks is not None:
        tau = math.log(m) + SKIP_MARGIN
        sel = chunks.cmax >= col - tau  # [n, nc]
        if float(sel.sum()) <= 0.5 * sel.numel():
            r, c = sel.nonzero(as_tuple=True)
            blocks = chunks.gather(r, c)  # [s, CHUNK] copy of the chunks that matter
            part = blocks.sub_(mx[r][:, None]).clamp_(min=EXP_FLOOR).exp_().sum(1)
            s = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, r, part)
            if chunks.tail.shape[1]:
                s += (chunks.tail - col).clamp_(min=EXP_FLOOR).exp_().sum(1)
            return s
    tau = math.log(m) + SKIP_MARGIN
    if n and float(mx.max()) <= 87.0 - math.log(m) and float(mx.min()) >= EXP_FLOOR + tau:
        # no shift needed: Σ exp(x) cannot overflow, and the floor at −87 only lifts terms that
        # are < e^{−τ} of the row maximum; one pass less than shifting first
        y = x.clamp_(min=EXP_FLOOR) if out is None else torch.clamp(x, min=EXP_FLOOR, out=out)
        return y.exp_().sum(1) * torch.exp(-mx)
    y = x.sub_(col) if out is None else torch.sub(x, col, out=out)
    return y.clamp_(min=EXP_FLOOR).exp_().sum(1)
