"""Jet lenses (paper Sec. 4, METHODS.md §4).

- **Iterative jet lens**: for each chosen stream h_l, the decoder expansion
  ``jet_expand(q, L, {h_l}, k)`` with the single centre h_l (weight 1); its logits are
  U J^k γ_{L+1}(h_l)(h_L). At k = 0 this is the logit lens U γ_{L+1}(h_l).
- **Joint jet lens**: ``jet_expand(q, L, {η} ∪ {γ_l ∘ h_{l-1}}_l, k)``: centres are the
  embedding and each block's contribution (or the contributions of groups of consecutive
  blocks), which sum to h_L; weights uniform or optimised per position (Remark 3,
  solved exactly, see :mod:`jetex.lenses.weights`). Each row shows one centre's term
  U w_i J^k γ_{L+1}(x_i)(h_L); their sum is the expansion's prediction.

U is linear, so it is applied once per term (never per Taylor coefficient): the jets are
taken in d-dimensional final-norm space and only then mapped to the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.expand.algorithm import check_order
from jetex.expand.diagnostics import Diagnostics, decay_from_norms, ratio, relative_distance
from jetex.expand.numerics import accumulation_dtype, logsumexp, unembed, unit_roundoff
from jetex.lenses.weights import optimal_weights, unembedding_gram
from jetex.models.base import ResidualModel
from jetex.models.batch import Batch, as_batch, is_batch
from jetex.results import Result, ResultList
from jetex.models.naming import resolve_stream

LensKind = Literal["iterative", "joint", "logit", "tuned", "jacobian"]


def _short_text(tokens: Sequence[str], width: int = 40) -> str:
    text = "".join(tokens)
    return repr(text if len(text) <= width else text[: width - 1] + "…")


@dataclass(repr=False)
class LensResult(Result):
    """What a lens shows for one input sequence (batch of one).

    R rows (streams for the iterative lens, centres for the joint lens), t positions, K top tokens:

    - ``top_ids``, ``top_logits``: ``[R, t, K]`` the lens's top tokens and their logits per cell;
    - ``cosine``: ``[R, t]`` cosine similarity between each row's logits and the model's logits;
    - ``model_top_ids``, ``model_top_logits``: ``[t, K]`` the model's own prediction;
    - ``expansion_top_ids``, ``expansion_top_logits``, ``expansion_cosine`` (``[t, K]``, ``[t]``):
      the joint expansion's prediction Σ_i U e_i (joint lens only; ``None`` for iterative);
    - ``weights``: ``[R, t]`` the jet weights (joint lens only);
    - ``remainder_norm``: ``[R, t]`` (iterative: per row) or ``[1, t]`` (joint) norms of the
      logit-space remainder U δ;
    - ``top_logprobs``: ``[R, t, K]`` log-probabilities of the top tokens under each row's own
      softmax (what figures colour by: comparable across orders and models, unlike logits);
    - ``model_rank``: ``[R, t]`` the rank (0 = first) of the model's own top-1 token in each
      row's logits (how early the model's answer surfaces);
    - ``model_logprob``: ``[R, t]`` the log-probability of the model's own top-1 token under
      each row's softmax; ``model_top_logprobs``: ``[t, K]`` the model's own top-k
      log-probabilities (the explorer's cell details read both);
    - ``diagnostics``: :class:`~jetex.expand.diagnostics.Diagnostics` ``[R, t]``: how far each
      cell can be trusted (divergence, remainder share, cancellation, rounding).
    - iterative lens only, the row's split into the part along the model's own logits and the
      rest (docs/trust.md): row = ``q_coef``·q̃ + rest, q̃ = U γ_{L+1}(h_L) (q without the
      unembedding bias), where the rest is what the row takes from h_l (for an RMSNorm decoder
      exactly a multiple of the logit lens U γ_{L+1}(h_l)); ``rest_cosine`` ``[R, t]`` the
      cosine of the rest with q; ``q_share`` ``[R, t]`` = |q_coef|‖q̃‖ / (|q_coef|‖q̃‖ + ‖rest‖).

    Methods (:class:`~jetex.results.Result`): ``plot()``, ``to_html()``, ``save()``/``load()``,
    ``to_dict()``/``from_dict()``, ``to_dataframe()``/``to_parquet()``. The table has one row
    per (lens row, position, rank) with columns ``kind``, ``order``, ``row`` (row name, e.g.
    ``mlp.3``), ``row_index``, ``position``, ``input_token``, ``input_id``, ``rank`` (1 = top),
    ``token``, ``token_id``, ``logit``, ``cosine`` (the row's logits vs the model's at that
    position), ``weight`` (joint lens; null for the iterative lens), ``model_token`` (the
    model's own top-1 at that position).
    """

    _renderer_module = "jetex.viz.lens"

    kind: LensKind
    order: int
    model_name: str
    tokens: list[str]
    input_ids: Tensor
    row_names: list[str]
    top_ids: Tensor
    top_logits: Tensor
    cosine: Tensor
    model_top_ids: Tensor
    model_top_logits: Tensor
    remainder_norm: Tensor
    vocab: list[list[list[str]]] = field(default_factory=list)
    model_vocab: list[str] = field(default_factory=list)
    weights: Tensor | None = None
    expansion_top_ids: Tensor | None = None
    expansion_top_logits: Tensor | None = None
    expansion_cosine: Tensor | None = None
    expansion_vocab: list[str] = field(default_factory=list)
    optimized: bool = False
    diagnostics: Diagnostics | None = None
    q_coef: Tensor | None = None
    rest_cosine: Tensor | None = None
    q_share: Tensor | None = None
    top_logprobs: Tensor | None = None
    model_rank: Tensor | None = None
    model_logprob: Tensor | None = None
    model_top_logprobs: Tensor | None = None

    def __post_init__(self) -> None:
        R, t = len(self.row_names), len(self.tokens)
        if self.top_ids.shape[:2] != (R, t) or self.top_logits.shape != self.top_ids.shape:
            raise ValueError(f"LensResult: top_ids/top_logits must be [{R}, {t}, K]")
        if tuple(self.cosine.shape) != (R, t):
            raise ValueError(f"LensResult: cosine must be [{R}, {t}]")
        if self.model_top_ids.shape[0] != t:
            raise ValueError("LensResult: model_top_ids must be [t, K]")
        if self.weights is not None and tuple(self.weights.shape) != (R, t):
            raise ValueError(f"LensResult: weights must be [{R}, {t}]")
        if self.kind == "joint" and self.expansion_top_ids is None:
            raise ValueError("LensResult: a joint lens carries the expansion's prediction")
        if self.diagnostics is not None and self.diagnostics.shape != (R, t):
            raise ValueError(f"LensResult: diagnostics must be [{R}, {t}]")
        for name in ("q_coef", "rest_cosine", "q_share", "model_logprob"):
            v = getattr(self, name)
            if v is not None and tuple(v.shape) != (R, t):
                raise ValueError(f"LensResult: {name} must be [{R}, {t}]")

    @property
    def trusted(self) -> Tensor | None:
        """Boolean ``[R, t]``: cells whose readout passes the trust criteria (docs/trust.md)."""
        return None if self.diagnostics is None else self.diagnostics.trusted

    def mean_rest_cosine(self) -> Tensor | None:
        """Iterative lens: cosine of the rest (the row without its part along q) with q, averaged over positions ``[R]``."""
        return None if self.rest_cosine is None else self.rest_cosine.mean(-1)

    @property
    def top1(self) -> list[list[str]]:
        """Top-1 token string per (row, position)."""
        return [[cell[0] for cell in row] for row in self.vocab]

    def mean_cosine(self) -> Tensor:
        """Cosine per row averaged over positions ``[R]``."""
        return self.cosine.mean(-1)

    def _summary(self) -> str:
        return (
            f"kind={self.kind!r}, order={self.order}, model={self.model_name!r}, rows={len(self.row_names)}, "
            f"positions={len(self.tokens)}, top_k={int(self.top_ids.shape[-1])}"
            + (", optimized=True" if self.optimized else "")
            + f", text={_short_text(self.tokens)}"
        )

    def _columns(self) -> dict[str, list]:
        R, t, K = self.top_ids.shape
        cols: dict[str, list] = {k: [] for k in ("kind", "order", "row", "row_index", "position", "input_token", "input_id",
                                                  "rank", "token", "token_id", "logit", "cosine", "weight", "model_token",
                                                  "trusted", "rest_cosine", "q_share")}
        tr = self.trusted.tolist() if self.diagnostics is not None else None
        rc = self.rest_cosine.tolist() if self.rest_cosine is not None else None
        qs = self.q_share.tolist() if self.q_share is not None else None
        ids, logits, cos = self.top_ids.tolist(), self.top_logits.tolist(), self.cosine.tolist()
        w = self.weights.tolist() if self.weights is not None else None
        in_ids = self.input_ids.reshape(-1).tolist()
        for r in range(R):
            for i in range(t):
                for j in range(K):
                    cols["kind"].append(self.kind)
                    cols["order"].append(self.order)
                    cols["row"].append(self.row_names[r])
                    cols["row_index"].append(r)
                    cols["position"].append(i)
                    cols["input_token"].append(self.tokens[i])
                    cols["input_id"].append(int(in_ids[i]))
                    cols["rank"].append(j + 1)
                    cols["token"].append(self.vocab[r][i][j] if self.vocab else None)
                    cols["token_id"].append(int(ids[r][i][j]))
                    cols["logit"].append(float(logits[r][i][j]))
                    cols["cosine"].append(float(cos[r][i]))
                    cols["weight"].append(None if w is None else float(w[r][i]))
                    cols["model_token"].append(self.model_vocab[i] if self.model_vocab else None)
                    cols["trusted"].append(None if tr is None else bool(tr[r][i]))
                    cols["rest_cosine"].append(None if rc is None else float(rc[r][i]))
                    cols["q_share"].append(None if qs is None else float(qs[r][i]))
        return cols

    def to_dict(self) -> dict:
        """JSON-ready summary (top-k tokens and logits per cell, cosines, weights), plus
        ``type``/``format``/``fields`` (every field exactly, for :meth:`from_dict`)."""
        # every tensor read once as lists (element-wise tensor indexing costs ~µs per number)
        R, t = len(self.row_names), len(self.tokens)
        r4 = lambda v: [round(x, 4) for x in v]  # noqa: E731
        logits, cos = self.top_logits.tolist(), self.cosine.tolist()
        w = self.weights.tolist() if self.weights is not None else None
        lps = self.top_logprobs.tolist() if self.top_logprobs is not None else None
        mr = self.model_rank.tolist() if self.model_rank is not None else None
        cells = []
        for r in range(R):
            row = []
            for i in range(t):
                c = {"top": self.vocab[r][i], "logits": r4(logits[r][i]), "cosine": round(cos[r][i], 4)}
                if w is not None:
                    c["weight"] = round(w[r][i], 4)
                if lps is not None:
                    c["logprobs"] = r4(lps[r][i])
                if mr is not None:
                    c["model_rank"] = int(mr[r][i])
                row.append(c)
            cells.append(row)
        out = {
            "kind": self.kind,
            "order": self.order,
            "model": self.model_name,
            "optimized": self.optimized,
            "tokens": self.tokens,
            "rows": self.row_names,
            "cells": cells,
            "model_top": self.model_vocab,
            "mean_cosine": r4(self.mean_cosine().tolist()),
            "remainder_norm": self.remainder_norm.tolist(),
        }
        if self.kind == "joint":
            out["expansion_top"] = self.expansion_vocab
            out["expansion_cosine"] = r4(self.expansion_cosine.tolist())  # type: ignore[union-attr]
        if self.rest_cosine is not None and self.q_coef is not None and self.q_share is not None:
            qc, qs, rc = self.q_coef.tolist(), self.q_share.tolist(), self.rest_cosine.tolist()
            for r, row in enumerate(cells):
                for i, c in enumerate(row):
                    c["q_coef"] = _round(qc[r][i])
                    c["q_share"] = _round(qs[r][i])
                    c["rest_cosine"] = _round(rc[r][i])
            out["mean_rest_cosine"] = [_round(x) for x in self.rest_cosine.mean(-1).tolist()]
            out["mean_q_share"] = [_round(x) for x in self.q_share.mean(-1).tolist()]
        if self.diagnostics is not None:
            d = self.diagnostics
            tr = d.trusted.tolist()
            for r, row in enumerate(cells):
                for i, c in enumerate(row):
                    c["trusted"] = bool(tr[r][i])
            out["diagnostics"] = d.to_dict()
            out["row_diagnostics"] = [d.row(r) for r in range(len(self.row_names))]
        return out | Result.to_dict(self)


def _round(x: float) -> float | None:
    return None if x != x else round(x, 4)


def _ids(model: ResidualModel, text_or_ids: str | Tensor) -> Int[Tensor, "1 t"]:
    if isinstance(text_or_ids, str):
        return model.tokenize(text_or_ids)
    ids = torch.as_tensor(text_or_ids, dtype=torch.long)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise InputError("a lens reads one non-empty sequence: token ids of shape [t] or [1, t]")
    if int(ids.min()) < 0 or int(ids.max()) >= model.vocab_size:
        raise InputError(f"token ids must lie in 0..{model.vocab_size - 1}")
    return ids.to(model.device)


def layer_streams(model: ResidualModel, layers: Sequence[int | str] | None = None) -> tuple[list[int], list[str]]:
    """Stream indices l (h_l) at the end of transformer layers, with row names.

    ``layers=None``: h_0 (``emb``) and the stream after every transformer layer. Layer i
    (0-based) ends after the last block whose ``layer`` is i; its row is named after that
    block (``mlp.3``). Toys: one row per block. A layer may also be given by a stream name
    (``emb``, ``attn.3``, ``mlp.14``, ``final``: :mod:`jetex.models.naming`), which also
    reaches the streams inside a layer (after its attention).
    """
    ends: dict[int, int] = {}
    for l, blk in enumerate(model.blocks, start=1):
        ends[blk.layer] = l
    n_layers = len(ends)
    if layers is None:
        chosen = sorted(ends)
        streams = [0] + [ends[i] for i in chosen]
    else:
        streams = []
        for i in layers:
            if isinstance(i, str):
                streams.append(resolve_stream(model, i))
                continue
            if isinstance(i, bool) or not isinstance(i, int) or not -1 <= i < n_layers:
                raise InputError(f"layer {i!r} out of range: this model has layers 0..{n_layers - 1} (-1 = embedding)")
            streams.append(0 if i == -1 else ends[i])
    names = ["emb" if l == 0 else model.blocks[l - 1].name for l in streams]
    return streams, names


def _decoder_coefficients(model: ResidualModel, X: Tensor, y: Tensor, k: int) -> Tensor:
    """Taylor coefficients ``[k+1, *X.shape]`` of γ_{L+1} around the centres X at the variate y
    (broadcast to X), in :func:`~jetex.expand.numerics.accumulation_dtype` (float64 for k ≥ 1)."""
    from jetex.jets import jet_coefficients

    flat = X.reshape(-1, *X.shape[-2:])
    if k == 0:
        c = model.final_norm(flat).unsqueeze(0)
    else:
        c = jet_coefficients(model.final_norm, flat, y.expand_as(X).reshape(flat.shape), k)
    c = c.reshape(c.shape[0], *X.shape)
    return c.to(accumulation_dtype(c.dtype, k))


def iterative_lens_terms(
    model: ResidualModel, h: Float[Tensor, "l1 b t d"], streams: Sequence[int], order: int
) -> Float[Tensor, "k1 r b t d"]:
    """Taylor coefficients of J^k γ_{L+1}(h_l)(h_L) for each chosen l: ``[k+1, R, b, t, d]``
    (float64 for k ≥ 1); their sum over dim 0 is the iterative lens's term in final-norm space."""
    k = check_order(order)
    X = h[list(streams)]  # [R, b, t, d]
    return _decoder_coefficients(model, X, h[model.n_blocks].unsqueeze(0), k)


def iterative_lens_logits(
    model: ResidualModel,
    h: Float[Tensor, "l1 b t d"],
    streams: Sequence[int],
    order: int,
    *,
    dtype: torch.dtype | None = None,
) -> Float[Tensor, "r b t v"]:
    """U J^k γ_{L+1}(h_l)(h_L) for each chosen l, from a precomputed stream ``h`` (``[L+1, b, t, d]``).

    The degrees are summed in float64 for k ≥ 1; the logits are returned in ``dtype`` (default
    the model's: each row to the model's relative precision). Pass ``torch.float64`` for
    logits that, with the remainder U(γ_{L+1}(h_L) − term), sum to q to float64 rounding (Eq. 11).
    """
    terms = iterative_lens_terms(model, h, streams, order).sum(0)
    return unembed(model, terms.to(dtype or model.dtype), bias=True)


def _topk(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    v, i = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return i, v


def _row_stats(
    logits: Float[Tensor, "r t v"],
    model_logits: Float[Tensor, "t v"],
    top_k: int,
    *,
    alpha: Float[Tensor, "r t"] | None = None,
    bias: Tensor | None = None,
    chunk: int = 32,
) -> dict[str, Tensor]:
    """Everything the lens tables read from full-vocabulary rows, in one pass over ``logits``.

    Per row and position: ``top_ids``/``top_logits`` ``[R, t, k]``, ``lse`` (log Σ exp),
    ``rank`` (how many tokens the row scores above the model's top-1), ``own`` (the row's
    logit of the model's top-1), ``cosine`` with the
    model's logits q, ``norm`` ‖row‖ and ``rem`` ‖q − row‖; with ``alpha`` ``[R, t]`` also the
    row's rest without its part along q̃ = q − ``bias``: ``rest_norm`` ‖row − α q̃‖ and
    ``rest_cosine`` cos(row − α q̃, q). All ``[R, t]``, in the logits' dtype (float32 rows:
    each value to float32 precision, as the rows themselves); half-precision rows are widened
    to float32 first (their norms overflow float16).

    The rows are visited position by position, ``chunk`` rows at a time (so q is one row,
    broadcast, never copied), and every reduction reads data already in cache: on SmolLM2 (31 rows × 16 positions × 49,152 tokens) this is ~10× faster than the
    same reductions over the whole ``[R, t, V]`` tensor, one after another.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):  # --dtype float16: ‖row‖² overflows at ‖row‖ > 65504
        logits, model_logits = logits.float(), model_logits.float()  # (the rows' values are kept, widened)
        bias = None if bias is None else bias.float()
    R, t, V = logits.shape
    m_top = model_logits.argmax(-1)  # [t]
    names = ("lse", "rank", "own", "cosine", "norm", "rem") + (("rest_norm", "rest_cosine") if alpha is not None else ())
    out = {n: torch.empty(R, t, dtype=torch.int64 if n == "rank" else logits.dtype, device=logits.device) for n in names}
    kk = min(top_k, V)
    top_v = torch.empty(R, t, kk, dtype=logits.dtype, device=logits.device)
    top_i = torch.empty(R, t, kk, dtype=torch.int64, device=logits.device)
    al = alpha.to(logits.dtype) if alpha is not None else None
    qn_all = torch.linalg.vector_norm(model_logits, dim=-1)  # [t]
    qt_all = model_logits if bias is None else model_logits - bias
    # one scratch block reused by every chunk: a fresh [chunk, V] temporary per operation
    # costs more (allocation, page faults) than the operation itself
    buf = torch.empty(min(chunk, R), V, dtype=logits.dtype, device=logits.device)
    for p in range(t):  # a chunk = some rows at one position, so q is one row, broadcast
        q, qt, qn = model_logits[p], qt_all[p], qn_all[p]
        for r0 in range(0, R, chunk):
            r1 = min(r0 + chunk, R)
            x, w = logits[r0:r1, p], buf[: r1 - r0]
            out["lse"][r0:r1, p] = logsumexp(x, -1, out=w)
            v, i = x.topk(kk, dim=-1)
            top_v[r0:r1, p], top_i[r0:r1, p] = v, i
            own = x[:, m_top[p]].unsqueeze(-1)
            out["own"][r0:r1, p] = own[:, 0]
            out["rank"][r0:r1, p] = torch.gt(x, own, out=w).sum(-1).to(torch.int64)  # exact: counts < 2^24
            xn = torch.linalg.vector_norm(x, dim=-1)
            out["norm"][r0:r1, p] = xn
            out["cosine"][r0:r1, p] = torch.mul(x, q, out=w).sum(-1) / (xn * qn).clamp_min(1e-8)
            out["rem"][r0:r1, p] = torch.linalg.vector_norm(torch.sub(q, x, out=w), dim=-1)
            if al is not None:
                rest = torch.sub(x, torch.mul(qt, al[r0:r1, p, None], out=w), out=w)  # x − α q̃
                rn = torch.linalg.vector_norm(rest, dim=-1)
                out["rest_norm"][r0:r1, p] = rn
                out["rest_cosine"][r0:r1, p] = rest.mul_(q).sum(-1) / (rn * qn).clamp_min(1e-8)
    return {**out, "top_logits": top_v, "top_ids": top_i}


def _rows(model: ResidualModel, ids: Tensor, names: list[str], stats: dict, model_logits: Tensor, top_k: int) -> dict:
    """The fields every lens shares, from :func:`_row_stats`: each row's top-k and cosine to
    the model, the rank of the model's top-1, the model's top-k."""
    top_ids, top_logits = stats["top_ids"], stats["top_logits"]
    m_ids, m_logits = _topk(model_logits, top_k)
    strings = _strings(model, torch.cat([top_ids.flatten(), m_ids[:, 0], ids[0]]))
    return dict(
        top_logprobs=(top_logits.float() - stats["lse"].float().unsqueeze(-1)).cpu(),
        model_rank=stats["rank"].cpu(),
        model_logprob=(stats["own"].float() - stats["lse"].float()).cpu(),
        model_top_logprobs=(m_logits.float() - logsumexp(model_logits.float(), -1).unsqueeze(-1)).cpu(),
        model_name=model.name,
        tokens=[strings[int(i)] for i in ids[0]],
        input_ids=ids[0].cpu(),
        row_names=names,
        top_ids=top_ids.cpu(),
        top_logits=top_logits.float().cpu(),
        cosine=stats["cosine"].float().cpu(),
        model_top_ids=m_ids.cpu(),
        model_top_logits=m_logits.float().cpu(),
        vocab=[[[strings[int(i)] for i in cell] for cell in row] for row in top_ids],
        model_vocab=[strings[int(i)] for i in m_ids[:, 0]],
    )


def _strings(model: ResidualModel, ids: Tensor) -> dict[int, str]:
    """{id: readable string} for the distinct ``ids`` (each decoded once)."""
    uniq = torch.unique(ids.flatten().cpu()).tolist()
    return dict(zip(uniq, model.token_strings(uniq)))


def _batch(model: ResidualModel, inputs, attention_mask) -> tuple[Batch, Tensor]:
    """A batch's items and their stream ``[L+1, b, T, d]`` from one right-padded forward pass."""
    batch = as_batch(inputs, lambda x: _ids(model, x)[0], attention_mask)
    ids, mask = batch.padded()
    return batch, model.stream(ids, mask)


@torch.no_grad()
def iterative_lens(
    model: ResidualModel,
    text_or_ids: str | Tensor | Sequence,
    order: int = 1,
    layers: Sequence[int | str] | None = None,
    *,
    top_k: int = 10,
    attention_mask: Tensor | Sequence | None = None,
) -> LensResult | ResultList:
    """The iterative jet lens: one decoder expansion per chosen layer, centre h_l, weight 1.

    ``layers``: transformer layers (0-based; -1 = the embedding h_0) or stream names
    (``emb``, ``attn.3``, ``mlp.14``, ``final``), default every layer's end plus the
    embedding. k = 0 gives the logit lens.

    ``text_or_ids``: one sequence (a text, ids ``[t]`` or ``[1, t]``) → a :class:`LensResult`;
    a batch (a list of texts or of id sequences, or ids ``[b, t]`` with an optional
    ``attention_mask``, see :mod:`jetex.models.batch`) → a :class:`~jetex.results.ResultList`
    of one LensResult per item, each the item's own result (one batched forward pass).
    """
    k = check_order(order)
    streams, names = layer_streams(model, layers)
    if is_batch(text_or_ids, attention_mask):
        batch, h = _batch(model, text_or_ids, attention_mask)
        return ResultList(
            _iterative(model, x[None], h[:, i : i + 1, : x.shape[-1]], streams, names, k, top_k) for i, x in enumerate(batch.ids)
        )
    ids = _ids(model, text_or_ids)
    return _iterative(model, ids, model.stream(ids), streams, names, k, top_k)


def _iterative(
    model: ResidualModel, ids: Tensor, h: Float[Tensor, "l1 1 t d"], streams: list[int], names: list[str], k: int, top_k: int
) -> LensResult:
    core = _iterative_core(model, h, streams, k, top_k=top_k)
    return LensResult(
        kind="iterative",
        order=k,
        remainder_norm=core["rem"].float().cpu(),
        **_rows(model, ids, names, core["stats"], core["model_logits"], top_k),
        diagnostics=core["diag"],
        q_coef=core["q_coef"],
        rest_cosine=core["rest_cos"],
        q_share=core["q_share"],
    )


def _iterative_core(
    model: ResidualModel, h: Float[Tensor, "l1 1 t d"], streams: Sequence[int], k: int, diagnose: bool = True, top_k: int = 10
) -> dict:
    """Rows' logits and their :func:`_row_stats`, the model's logits, remainder norms,
    diagnostics and the split along q, from the stream ``h`` of one sequence."""
    coeffs = iterative_lens_terms(model, h, streams, k)[:, :, 0]  # [k+1, R, t, d]
    terms = coeffs.sum(0)
    logits = unembed(model, terms.to(model.dtype), bias=True)  # [R, t, V]
    model_logits = model.decode(h[-1])[0]  # [t, V]
    if not diagnose:  # (benchmarks/lenses.py times the diagnostics against this)
        stats = _row_stats(logits, model_logits, top_k)
        return dict(logits=logits, model_logits=model_logits, rem=stats["rem"].double(), stats=stats)
    target = model.final_norm(h[-1, 0])  # [t, d]
    alpha, _ = split_along_output(terms, coeffs[0], target)  # [R, t]
    stats = _row_stats(logits, model_logits, top_k, alpha=alpha, bias=model.unembedding_bias)
    rem = stats["rem"].double()
    q_norm = model_logits.norm(dim=-1).double()  # [t]
    diag = Diagnostics(
        order=k,
        decay=decay_from_norms(coeffs.norm(dim=-1)).cpu(),
        distance=relative_distance(h[list(streams), 0], h[-1, 0].unsqueeze(0)).cpu(),
        remainder_share=ratio(rem, q_norm).cpu(),
        cancellation=ratio(stats["norm"].double() + rem, q_norm).cpu(),
        unit_roundoff=unit_roundoff(model.dtype),
    )
    q_share = output_share(alpha, model_logits, stats["rest_norm"], model.unembedding_bias)
    return dict(
        logits=logits, model_logits=model_logits, rem=rem, diag=diag, stats=stats,
        q_coef=alpha.float().cpu(), rest_cos=stats["rest_cosine"].float().cpu(), q_share=q_share.float().cpu(),
    )


def output_share(
    alpha: Float[Tensor, "r t"], model_logits: Float[Tensor, "t v"], rest_norm: Float[Tensor, "r t"], bias: Tensor | None = None
) -> Float[Tensor, "r t"]:
    """The share of a lens row that is the model's own output: |α|‖q̃‖ / (|α|‖q̃‖ + ‖row − α q̃‖).

    q̃ = q − ``bias`` = U γ_{L+1}(h_L) (the model's logits ``[t, V]`` without the unembedding
    bias), α the row's coefficient along γ_{L+1}(h_L) (:func:`split_along_output`) and
    ``rest_norm`` ‖row − α q̃‖ (:func:`_row_stats` with ``alpha``). 1: the row is q̃ rescaled;
    0: none of it. This is ``LensResult.q_share`` and the ``own_share`` of ``jetex lens-eval``.
    """
    qt = model_logits if bias is None else model_logits - bias
    along = alpha.abs().double() * qt.norm(dim=-1).double().unsqueeze(0)
    return ratio(along, along + rest_norm.double())


def split_along_output(
    terms: Float[Tensor, "*r d"], lens0: Float[Tensor, "*r d"], target: Float[Tensor, "*s d"]
) -> tuple[Float[Tensor, "*r"], Float[Tensor, "*r"]]:
    """Coefficients (α, β) of the least-squares split term = α·target + β·lens0 + ε (last dim, float64).

    For an RMSNorm decoder γ(x) = g ⊙ x / r(x) (any elementwise gain g: Gemma's 1 + w too) the
    order-k iterative-lens term J^k γ(h_l)(h_L) lies exactly in span{γ(h_L), γ(h_l)}, so ε = 0 and
    α = r(h_L)·S_{k−1}, β = r(h_l)·s_k, with s_j the Taylor coefficients of 1/r(h_l + t(h_L − h_l))
    and S_{k−1} = s_0 + … + s_{k−1}; at k = 1: α = ρ = r(h_L)/r(h_l), β = 1 − ρ cos θ (eps aside).
    Where target and lens0 are parallel (h_l = h_L) all of the term is put on the target (β = 0).
    """
    e, t, c = terms.double(), target.double().expand_as(terms), lens0.double()
    tt, cc, tc = (t * t).sum(-1), (c * c).sum(-1), (t * c).sum(-1)
    et, ec = (e * t).sum(-1), (e * c).sum(-1)
    det = tt * cc - tc * tc
    ok = det > 1e-12 * tt * cc
    safe = torch.where(ok, det, torch.ones_like(det))
    alpha = torch.where(ok, (et * cc - ec * tc) / safe, et / tt.clamp_min(1e-300))
    beta = torch.where(ok, (ec * tt - et * tc) / safe, torch.zeros_like(det))
    return alpha, beta


def joint_centres(model: ResidualModel, centres: str | int | Sequence[int] = "blocks") -> tuple[list[tuple[int, int]], list[str]]:
    """Segments (a, b] of blocks whose contributions h_b − h_a are the joint lens centres.

    ``"blocks"``: every block (L+1 centres with the embedding); ``"layers"``: one centre per
    transformer layer; an int n: the embedding plus n−1 groups of consecutive blocks of
    near-equal size; a list of boundaries [b_1 < … < b_m = L]: segments (0,b_1], (b_1,b_2], ….
    The embedding is always the first centre, written (−1, 0).
    """
    L = model.n_blocks
    if centres == "blocks":
        bounds = list(range(1, L + 1))
    elif centres == "layers":
        ends: dict[int, int] = {}
        for l, blk in enumerate(model.blocks, start=1):
            ends[blk.layer] = l
        bounds = sorted(ends.values())
    elif isinstance(centres, int) and not isinstance(centres, bool):
        if not 2 <= centres <= L + 1:
            raise InputError(f"the joint lens needs 2..{L + 1} centres (embedding + block groups), got {centres}")
        g = centres - 1
        bounds = [round(L * (i + 1) / g) for i in range(g)]
    elif isinstance(centres, str):
        raise InputError(f"unknown centres {centres!r}: use 'blocks', 'layers', a number, or block boundaries")
    else:
        bounds = [int(b) for b in centres]
        if not bounds or any(b2 <= b1 for b1, b2 in zip(bounds, bounds[1:])) or bounds[0] < 1:
            raise InputError(f"boundaries must increase strictly from >= 1 and end at L = {L}")
        if bounds[-1] != L:
            raise InputError(
                f"these centres do not sum to the stream h_{L} the joint lens decomposes: the last boundary is "
                f"{bounds[-1]}, so blocks {bounds[-1] + 1}..{L} belong to no centre; end the boundaries at L = {L}"
            )
    segs = [(-1, 0)]
    names = ["emb"]
    prev = 0
    for b in bounds:
        segs.append((prev, b))
        first, last = model.blocks[prev].name, model.blocks[b - 1].name
        names.append(first if b - prev == 1 else f"{first}…{last}")
        prev = b
    return segs, names


def joint_lens_terms(
    model: ResidualModel,
    h: Float[Tensor, "l1 t d"],
    segs: Sequence[tuple[int, int]],
    order: int,
    optimize: bool = False,
) -> tuple[Float[Tensor, "k1 n t d"], Float[Tensor, "n t"], Float[Tensor, "n t d"]]:
    """The joint lens's jets from a precomputed stream ``h`` ``[L+1, t, d]`` of one sequence.

    Returns the unweighted Taylor coefficients of J^k γ_{L+1}(x_i)(h_L) ``[k+1, n, t, d]`` (float64
    for k ≥ 1), the weights ``[n, t]`` (uniform, or optimised per position, Remark 3) and the
    centres x_i ``[n, t, d]``. The terms are ``W[..., None] * coeffs.sum(0)``.
    """
    k = check_order(order)
    X = torch.stack([h[0] if a < 0 else h[b] - h[a] for a, b in segs])  # [n, t, d]
    n, t, d = X.shape
    hL = h[-1]
    coeffs = _decoder_coefficients(model, X, hL.unsqueeze(0), k)
    J = coeffs.sum(0)
    if optimize:
        W = optimal_weights(J, model.final_norm(hL), unembedding_gram(model)).to(J.dtype)  # [n, t]
    else:
        W = torch.full((n, t), 1.0 / n, dtype=J.dtype, device=J.device)
    return coeffs, W, X


def joint_lens_logits(
    model: ResidualModel,
    h: Float[Tensor, "l1 t d"],
    segs: Sequence[tuple[int, int]],
    order: int,
    optimize: bool = False,
    *,
    dtype: torch.dtype | None = None,
) -> tuple[Float[Tensor, "n t v"], Float[Tensor, "n t"], Float[Tensor, "t v"]]:
    """The joint lens's terms from a precomputed stream ``h`` ``[L+1, t, d]`` of one sequence.

    Centres are the segments ``segs`` of :func:`joint_centres` ((−1, 0) = the embedding).
    Returns the rows' logits U w_i J^k γ_{L+1}(x_i)(h_L) ``[n, t, V]`` (no unembedding bias:
    they are terms of the expansion), the weights ``[n, t]`` (uniform, or optimised per
    position, Remark 3) and the model's logits ``[t, V]``. Logits are in ``dtype`` (default the
    model's); at k ≥ 2 the rows can be ~1e7 and cancel, so sum them only in float64
    (``dtype=torch.float64``), or unembed the float64 sum of :func:`joint_lens_terms`.
    """
    coeffs, W, _ = joint_lens_terms(model, h, segs, order, optimize)
    terms = W[..., None] * coeffs.sum(0)
    return unembed(model, terms.to(dtype or model.dtype)), W, model.decode(h[-1])


@torch.no_grad()
def joint_lens(
    model: ResidualModel,
    text_or_ids: str | Tensor | Sequence,
    order: int = 1,
    centres: str | int | Sequence[int] = "blocks",
    *,
    optimize: bool = False,
    top_k: int = 10,
    attention_mask: Tensor | Sequence | None = None,
) -> LensResult | ResultList:
    """The joint jet lens: decoder expansion around the embedding and the block contributions.

    Row i holds the term U w_i J^k γ_{L+1}(x_i)(h_L); with ``optimize=True`` the weights
    minimise the logit-space remainder exactly per position (Remark 3), else w_i = 1/n.
    One sequence → a :class:`LensResult`; a batch → a :class:`~jetex.results.ResultList`
    (as :func:`iterative_lens`).
    """
    k = check_order(order)
    segs, names = joint_centres(model, centres)
    if is_batch(text_or_ids, attention_mask):
        batch, h = _batch(model, text_or_ids, attention_mask)
        return ResultList(
            _joint(model, x[None], h[:, i, : x.shape[-1]], segs, names, k, optimize, top_k) for i, x in enumerate(batch.ids)
        )
    ids = _ids(model, text_or_ids)
    return _joint(model, ids, model.stream(ids)[:, 0], segs, names, k, optimize, top_k)


def _joint(
    model: ResidualModel, ids: Tensor, h: Float[Tensor, "l1 t d"], segs: list, names: list[str], k: int, optimize: bool, top_k: int
) -> LensResult:
    core = _joint_core(model, h, segs, k, optimize, top_k=top_k)
    e_ids, e_logits = _topk(core["exp_logits"], top_k)
    return LensResult(
        kind="joint",
        order=k,
        remainder_norm=core["rem"][None].float().cpu(),
        **_rows(model, ids, names, core["stats"], core["model_logits"], top_k),
        weights=core["W"].float().cpu(),
        expansion_top_ids=e_ids.cpu(),
        expansion_top_logits=e_logits.float().cpu(),
        expansion_cosine=core["exp_cos"],
        expansion_vocab=[model.token_strings(cell)[0] for cell in e_ids],
        optimized=optimize,
        diagnostics=core["diag"],
    )


def _term_row_stats(
    model: ResidualModel, terms: Float[Tensor, "n t d"], model_logits: Float[Tensor, "t v"], top_k: int
) -> dict[str, Tensor]:
    """:func:`_row_stats` of the joint lens's rows U terms ``[n, t, V]``, unembedding only the
    cells whose term is not exactly zero.

    With optimised weights most cells have weight 0 (on SmolLM2, 47 of 61 × 13 cells are
    non-zero for a 13-token text), so their term is the zero vector and their row is
    U·0 = 0 exactly (joint rows carry no unembedding bias). The statistics of a zero row
    depend only on the position (its distance to q), so they are computed once per position
    and copied; the non-zero cells are unembedded in one product and read position by
    position. With every cell non-zero (uniform weights) this is :func:`_row_stats` of the
    full ``[n, t, V]`` logits, as before.
    """
    n, t, _ = terms.shape
    active = (terms != 0).any(-1)  # NaN/inf terms count as non-zero and are computed
    if bool(active.all()):
        return _row_stats(unembed(model, terms.to(model.dtype)), model_logits, top_k)
    V = model_logits.shape[-1]
    zero = _row_stats(torch.zeros(1, t, V, dtype=model.dtype, device=model_logits.device), model_logits, top_k)
    out = {key: v.expand(n, *v.shape[1:]).clone() for key, v in zero.items()}
    pos, rows = active.T.nonzero(as_tuple=True)  # ordered by position, then row
    if len(pos) == 0:
        return out
    logits = unembed(model, terms[rows, pos].to(model.dtype))  # [m, V]
    start = 0
    for p, c in enumerate(torch.bincount(pos, minlength=t).tolist()):
        if c:
            part = _row_stats(logits[start : start + c, None], model_logits[p : p + 1], top_k)
            r = rows[start : start + c]
            for key, v in part.items():
                out[key][r, p] = v[:, 0].to(out[key].dtype)
            start += c
    return out


def _joint_core(
    model: ResidualModel,
    h: Float[Tensor, "l1 t d"],
    segs: Sequence[tuple[int, int]],
    k: int,
    optimize: bool,
    diagnose: bool = True,
    top_k: int = 10,
) -> dict:
    """Rows' logits and their :func:`_row_stats`, weights, the expansion's and the model's
    logits, remainder norms, diagnostics, from the stream ``h`` of one sequence."""
    coeffs, W, X = joint_lens_terms(model, h, segs, k, optimize)
    terms = W[..., None] * coeffs.sum(0)  # [n, t, d], float64 for k >= 1
    model_logits = model.decode(h[-1])
    stats = _term_row_stats(model, terms, model_logits, top_k)
    total = terms.sum(0)  # summed before U, in the accumulation dtype
    exp_logits = unembed(model, total.to(model.dtype))
    delta = model.final_norm(h[-1]).to(total.dtype) - total  # δ in final-norm space
    rem = unembed(model, delta.to(model.dtype), bias=True).norm(dim=-1).double()  # [t]
    if not diagnose:  # (benchmarks/lenses.py times the diagnostics against this)
        return dict(W=W, model_logits=model_logits, exp_logits=exp_logits, rem=rem, stats=stats)
    q_norm = model_logits.norm(dim=-1).double()
    n = len(segs)
    active = W > 0
    nan = torch.full(W.shape, float("nan"), dtype=torch.float64, device=W.device)
    diag = Diagnostics(
        order=k,
        decay=torch.where(active, decay_from_norms(coeffs.norm(dim=-1)), nan).cpu(),
        distance=torch.where(active, relative_distance(X, h[-1].unsqueeze(0)), nan).cpu(),
        remainder_share=ratio(rem, q_norm).expand(n, -1).cpu(),
        cancellation=ratio(stats["norm"].double().sum(0) + rem, q_norm).expand(n, -1).cpu(),
        unit_roundoff=unit_roundoff(model.dtype),
    )
    exp_cos = F.cosine_similarity(exp_logits.double(), model_logits.double(), dim=-1).float().cpu()
    return dict(W=W, model_logits=model_logits, exp_logits=exp_logits, rem=rem, diag=diag, exp_cos=exp_cos, stats=stats)


@dataclass(repr=False)
class CosineCurve(Result):
    """Mean cosine similarity (over sentences and positions) between lens and model logits.

    ``cosine [n_orders, R]`` for rows ``row_names`` (streams h_l for the iterative lens, centres
    for the joint lens) and jet orders ``orders``; ``n_sentences``. Joint lens only:
    ``expansion_cosine [n_orders]``, the mean cosine between the expansion's prediction
    Σ_i U e_i and the model's logits (the quantity the paper averages over sentences).
    Iterative lens only: ``rest_cosine [n_orders, R]``, the mean cosine with q of each row
    without its part along q (:attr:`LensResult.rest_cosine`). ``trusted [n_orders, R]``: the
    fraction of (sentence, position) cells that pass the trust criteria (docs/trust.md).

    Table columns: ``kind``, ``order``, ``row``, ``row_index``, ``cosine`` (one row per order
    and lens row), ``expansion_cosine`` (joint lens; null otherwise).
    """

    _renderer_module = "jetex.viz.lens"

    kind: LensKind
    orders: list[int]
    row_names: list[str]
    cosine: Tensor
    n_sentences: int
    model_name: str
    expansion_cosine: Tensor | None = None
    optimized: bool = False
    rest_cosine: Tensor | None = None
    trusted: Tensor | None = None

    def __post_init__(self) -> None:
        shape = (len(self.orders), len(self.row_names))
        if tuple(self.cosine.shape) != shape:
            raise ValueError("CosineCurve: cosine must be [n_orders, R]")
        if self.kind == "joint" and (self.expansion_cosine is None or tuple(self.expansion_cosine.shape) != (len(self.orders),)):
            raise ValueError("CosineCurve: a joint-lens curve carries expansion_cosine [n_orders]")
        for name in ("rest_cosine", "trusted"):
            v = getattr(self, name)
            if v is not None and tuple(v.shape) != shape:
                raise ValueError(f"CosineCurve: {name} must be [n_orders, R]")

    def _summary(self) -> str:
        return (
            f"kind={self.kind!r}, orders={self.orders}, model={self.model_name!r}, rows={len(self.row_names)}, "
            f"sentences={self.n_sentences}" + (", optimized=True" if self.optimized else "")
        )

    def _columns(self) -> dict[str, list]:
        cols: dict[str, list] = {k: [] for k in ("kind", "order", "row", "row_index", "cosine", "expansion_cosine", "rest_cosine", "trusted")}
        for oi, k in enumerate(self.orders):
            for r, name in enumerate(self.row_names):
                cols["kind"].append(self.kind)
                cols["order"].append(k)
                cols["row"].append(name)
                cols["row_index"].append(r)
                cols["cosine"].append(float(self.cosine[oi, r]))
                cols["expansion_cosine"].append(None if self.expansion_cosine is None else float(self.expansion_cosine[oi]))
                cols["rest_cosine"].append(None if self.rest_cosine is None else float(self.rest_cosine[oi, r]))
                cols["trusted"].append(None if self.trusted is None else float(self.trusted[oi, r]))
        return cols


@torch.no_grad()
def lens_cosine_curve(
    model: ResidualModel,
    texts: Sequence[str],
    orders: Sequence[int] = (0, 1, 2),
    layers: Sequence[int | str] | None = None,
    *,
    kind: str = "iterative",
    centres: str | int | Sequence[int] | None = None,
    optimize: bool = False,
) -> CosineCurve:
    """Lens cosine similarity to the model's logits per row and order, averaged over all
    positions of all ``texts`` (paper Fig. 3 bottom / App. lens plots).

    ``kind="iterative"``: one row per chosen layer (``layers``, as :func:`iterative_lens`), with
    the cosine of each row's rest (without its part along q) next to the plain cosine.
    ``kind="joint"``: one row per joint-lens centre (``centres``, default ``"blocks"``, as
    :func:`joint_lens`; ``optimize`` for per-position optimal weights), plus the expansion's
    own cosine in ``expansion_cosine``. Both: the fraction of trusted cells per row and order.
    """
    if kind not in ("iterative", "joint"):
        raise InputError(f"unknown lens kind {kind!r}: use 'iterative' or 'joint'")
    if not texts:
        raise InputError("no sentences given")
    if kind == "joint" and layers is not None:
        raise InputError("layers apply to the iterative lens; the joint lens takes centres")
    if kind == "iterative" and (centres is not None or optimize):
        raise InputError("centres and optimize apply to the joint lens; the iterative lens takes layers")
    orders = [check_order(k) for k in orders]
    if not orders:
        raise InputError("no jet order given")
    if kind == "iterative":
        streams, names = layer_streams(model, layers)
    else:
        segs, names = joint_centres(model, "blocks" if centres is None else centres)
    R = len(names)
    total = torch.zeros(len(orders), R, dtype=torch.float64)
    rest_total = torch.zeros(len(orders), R, dtype=torch.float64)
    trusted = torch.zeros(len(orders), R, dtype=torch.float64)
    exp_total = torch.zeros(len(orders), dtype=torch.float64)
    count = 0
    for text in texts:
        ids = model.tokenize(text)
        h = model.stream(ids)
        for oi, k in enumerate(orders):
            if kind == "iterative":
                core = _iterative_core(model, h, streams, k)
                rest_total[oi] += core["rest_cos"].double().sum(-1)
            else:
                core = _joint_core(model, h[:, 0], segs, k, optimize)
                exp_total[oi] += core["exp_cos"].double().sum()
            total[oi] += core["stats"]["cosine"].double().sum(-1).cpu()
            trusted[oi] += core["diag"].trusted.double().sum(-1)
        count += ids.shape[-1]
    return CosineCurve(
        kind,
        orders,
        names,
        (total / count).float(),
        len(texts),
        model.name,
        expansion_cosine=(exp_total / count).float() if kind == "joint" else None,
        optimized=optimize,
        rest_cosine=(rest_total / count).float() if kind == "iterative" else None,
        trusted=(trusted / count).float(),
    )
