"""Algorithm 1 of the paper: ``jet_expand`` (METHODS.md §3).

``jet_expand(model, l, centres, k, weights)`` rewrites the residual block β_{l+1} = id + γ_{l+1}
(or, for l = L, the decoder υ = U γ_{L+1}) around centres x_1..x_N that are meant to
decompose the stream h_l:

- jet terms   w_i · J^k γ_{l+1}(x_i)(h_l)     (the jets are evaluated at the actual stream h_l)
- identity terms (l < L only): x_i for k ≥ 1 (Eq. 9), w_i·x_i for k = 0 (footnote 2)
- remainder   δ = h_{l+1} − Σ terms,   or  δ = γ_{L+1}(h_L) − Σ terms at the decoder.

Centres are :class:`~jetex.expand.terms.Term` objects (functions of the input) and may be
the terms of an earlier expansion, so expansions compose. After expanding the decoder
the model is rewritten exactly (Eq. 11): q(z) = Σ_e U e(z) + U δ(z) (+ the unembedding
bias, if the model has one) for every weight vector in the simplex.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.expand.diagnostics import Diagnostics, decay_from_norms, ratio, relative_distance
from jetex.jets import check_max_order
from jetex.expand.terms import (
    DEC,
    Embedding,
    EvalContext,
    IdentityTerm,
    JetTerm,
    Remainder,
    Stream,
    Term,
)
from jetex.expand.numerics import unembed, unit_roundoff
from jetex.models.base import ResidualModel


class CentreGapWarning(UserWarning):
    """The centres of an expansion do not sum to the stream they claim to decompose."""


def check_order(order: object) -> int:
    """Validate a jet order k: a non-negative int ≤ :data:`jetex.jets.MAX_ORDER` (the verified range)."""
    return check_max_order(order)


def resolve_block(model: ResidualModel, block: int | str) -> int:
    """Algorithm-1 index l ∈ 0..L from an int, a block name (``mlp.3``: expand that block) or ``dec``."""
    L = model.n_blocks
    if isinstance(block, str):
        if block in ("dec", "decoder"):
            return L
        return model.block_index(block) - 1
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= L:
        raise InputError(f"block index {block!r} out of range: use 0..{L} (l = {L} expands the decoder) or a block name")
    return block


def _simplex_tol(dtype: torch.dtype) -> float:
    """Tolerance on Σ w = 1 and w ≥ 0: a few ulps of the weights' precision (float64: 1e-9)."""
    if dtype == torch.float64:
        return 1e-9
    if dtype == torch.float32:
        return 1e-5
    return 1e-2  # half precisions


def _weights(weights, n: int) -> list[float | Tensor]:
    """Check w against the simplex and split it per centre (floats, or tensor rows ``[*b, t]``)."""
    if weights is None:
        return [1.0 / n] * n
    if isinstance(weights, Tensor):
        if weights.ndim == 0:
            raise InputError(f"tensor weights need a leading centre dimension: shape [{n}] or [{n}, *batch, tokens]")
        if weights.shape[0] != n:
            raise InputError(f"got {weights.shape[0]} weights for {n} centres")
        if not weights.is_floating_point():
            raise InputError(f"tensor weights must be floating point, got {weights.dtype}")
        w = weights.detach()
        tol = _simplex_tol(w.dtype)
        if not bool(torch.isfinite(w).all()):
            raise InputError("weights must lie in the simplex; some are not finite")
        lo = float(w.min())
        if lo < -tol:
            raise InputError(f"weights must lie in the simplex (non-negative, summing to 1 over the centres); the smallest is {lo:.6g}")
        dev = float((w.double().sum(0) - 1.0).abs().max())
        if dev > tol:
            raise InputError(
                "weights must lie in the simplex (non-negative, summing to 1 over the centres, dim 0); "
                f"their sum is off by up to {dev:.3g}"
            )
        return [weights[i] for i in range(n)]
    ws = list(weights)
    if len(ws) != n:
        raise InputError(f"got {len(ws)} weights for {n} centres")
    try:
        out = [float(w) for w in ws]
    except (TypeError, ValueError):
        raise InputError(f"weights must be numbers, got {ws!r}") from None
    s = sum(out)
    if any(not math.isfinite(w) or w < 0 for w in out) or not math.isclose(s, 1.0, rel_tol=1e-6):
        raise InputError(f"weights must lie in the simplex (non-negative, summing to 1); they sum to {s:.6g}")
    return out  # type: ignore[return-value]


@dataclass
class Expansion:
    """The result of one ``jet_expand``: terms (named paths) and the remainder, as functions of z.

    ``block`` is Algorithm 1's l (the expanded block is γ_{l+1}; l = L is the decoder).
    ``terms[i].name`` reads as the path the term stands for (``emb → mlp.3 → dec``).
    """

    model: ResidualModel
    block: int
    order: int
    centres: list[Term]
    weights: list[float | Tensor]
    terms: list[Term]
    remainder: Remainder

    @property
    def is_decoder(self) -> bool:
        return self.block == self.model.n_blocks

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def evaluate(self, input_ids: Int[Tensor, "*b t"], ctx: EvalContext | None = None) -> "ExpansionValues":
        """Evaluate all terms and the remainder on an input (one batched jet call per block)."""
        ctx = ctx or EvalContext(self.model, input_ids)
        self._check_centres(ctx)
        terms = ctx.values(self.terms)
        rem = ctx.value(self.remainder)
        target = ctx.target(self.block, self.is_decoder)
        return ExpansionValues(self.names, terms, rem, target, self.is_decoder, self.model, ctx, expansion=self)

    def _check_centres(self, ctx: EvalContext) -> None:
        """Warn if Σ centres (+ the remainders of the expansions they complete) ≠ h_l."""
        if len(self.centres) == 1 and isinstance(self.centres[0], Stream):
            return  # a lens centre h_l: a deliberate centre, not a decomposition of h_L
        ctx.evaluate(self.centres)
        total = torch.stack([ctx.value(c) for c in self.centres]).sum(0)
        for rem in _completed_remainders(self.centres):
            total = total + ctx.value(rem)
        h = ctx.h[self.block]
        gap = float(((h - total).norm() / h.norm().clamp_min(1e-30)).detach())
        tol = 1e-4 if h.dtype == torch.float32 else 1e-9
        if gap > tol and not any(c.space == "decoder" for c in self.centres):
            warnings.warn(
                f"the centres do not sum to h_{self.block}: relative gap {gap:.3g} (the expansion is still exact "
                "through its remainder)",
                CentreGapWarning,
                stacklevel=3,
            )


def _completed_remainders(centres: Sequence[Term]) -> list[Remainder]:
    """Remainders of earlier expansions all of whose terms appear among ``centres``."""
    ids = {id(c) for c in centres}
    out, seen = [], set()
    for c in centres:
        rem = getattr(c, "_expansion_remainder", None)
        if rem is not None and id(rem) not in seen and all(id(t) in ids for t in rem.terms):
            seen.add(id(rem))
            out.append(rem)
    return out


@dataclass(repr=False)
class ExpansionValues:
    """Values of an expansion on one input.

    ``terms``: ``[n, *b, t, d]`` (final-norm space for a decoder expansion), ``remainder`` and
    ``target``: ``[*b, t, d]``, with Σ terms + remainder = target exactly.

    :attr:`diagnostics` (computed on first use) says how far each term and the whole expansion
    can be trusted (docs/trust.md): per term, the decay of its jet's Taylor-degree norms and the
    centre→variate distance; per expansion, the remainder's share and the cancellation level.
    """

    names: list[str]
    terms: Tensor
    remainder: Tensor
    target: Tensor
    is_decoder: bool
    model: ResidualModel
    ctx: EvalContext
    #: the expansion these are the values of (its terms' jets and centres give the diagnostics)
    expansion: "Expansion | None" = None
    _diagnostics: Diagnostics | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.terms.shape[0] != len(self.names) or self.terms.shape[1:] != self.remainder.shape:
            raise ValueError("ExpansionValues: terms must be [n, *remainder.shape] with n names")
        if self.target.shape != self.remainder.shape:
            raise ValueError("ExpansionValues: target and remainder shapes differ")
        if self.expansion is not None and len(self.expansion.terms) != len(self.names):
            raise ValueError("ExpansionValues: the expansion's terms do not match the names")

    @property
    def diagnostics(self) -> Diagnostics:
        """Trust diagnostics ``[n, c]``: one row per term, one column per cell, c = b·t (the positions
        of every batch item in turn; ``[n, t]`` for one sequence). Per term: ``decay`` (the largest
        ratio of successive Taylor-degree norms of its jet, unweighted) and ``distance`` (‖variate −
        centre‖ / ‖centre‖); NaN for identity terms, and where the term's weight is 0. Per expansion
        (the same in every row): ``remainder_share`` ‖U δ‖/‖q‖ and ``cancellation``
        (Σ_i ‖U e_i‖ + ‖U δ‖)/‖q‖ at the decoder (U δ with the unembedding bias, q the model's
        logits; these logits in the model's dtype, from the float64 sums), ‖δ‖/‖h_{l+1}‖ and (Σ_i ‖e_i‖ + ‖δ‖)/‖h_{l+1}‖ for an inner block. ``unit_roundoff``:
        the model's dtype (the jets run in it). Computed once, on first use."""
        if self._diagnostics is None:
            self._diagnostics = self._diagnose()
        return self._diagnostics

    @property
    def trusted(self) -> Tensor:
        """Boolean ``[n, *b, t]``: the term's cells that pass every trust criterion (docs/trust.md)."""
        return self.diagnostics.trusted.reshape(self.terms.shape[:-1])

    def warning(self) -> str | None:
        """One line when most (term, position) cells are untrusted, saying which criterion and what to try; else None."""
        return self.diagnostics.warning("term cells", "try a lower order or centres closer to the stream they expand around")

    @torch.no_grad()
    def _diagnose(self) -> Diagnostics:
        if self.expansion is None:
            raise InputError("diagnostics need the expansion: get these values from Expansion.evaluate")
        exp, ctx = self.expansion, self.ctx
        n, cells = len(self.names), self.terms.shape[1:-1]  # [*b, t]
        nan = torch.full(cells, math.nan, dtype=torch.float64, device=self.terms.device)
        decays, dists = [], []
        for t in exp.terms:
            if not isinstance(t, JetTerm):
                decays.append(nan)
                dists.append(nan)
                continue
            variate = ctx.h[ctx.L] if t.l == ctx.L + 1 else ctx.h[t.l - 1]
            dec = decay_from_norms(ctx.coefficient_norms[id(t)])
            dist = relative_distance(ctx.value(t.centre), variate)
            w = torch.as_tensor(t.weight, dtype=torch.float64, device=dec.device).expand(cells)
            decays.append(torch.where(w != 0, dec, nan))
            dists.append(torch.where(w != 0, dist, nan))
        if self.is_decoder:  # norms of logits: each to the model's precision, as the lenses' (8 terms per matmul)
            dt, f64 = self.model.dtype, torch.float64
            q = torch.linalg.vector_norm(self.model.decode(ctx.h[ctx.L]), dim=-1, dtype=f64)
            rem = torch.linalg.vector_norm(unembed(self.model, self.remainder.to(dt), bias=True), dim=-1, dtype=f64)
            parts = sum(torch.linalg.vector_norm(unembed(self.model, self.terms[i : i + 8].to(dt)), dim=-1, dtype=f64).sum(0)
                        for i in range(0, n, 8))
        else:
            q = self.target.double().norm(dim=-1)
            rem = self.remainder.double().norm(dim=-1)
            parts = self.terms.double().norm(dim=-1).sum(0)
        flat = (n, -1)
        return Diagnostics(
            order=exp.order,
            decay=torch.stack(decays).reshape(flat).cpu(),
            distance=torch.stack(dists).reshape(flat).cpu(),
            remainder_share=ratio(rem, q).reshape(1, -1).expand(n, -1).cpu(),
            cancellation=ratio(parts + rem, q).reshape(1, -1).expand(n, -1).cpu(),
            unit_roundoff=unit_roundoff(self.model.dtype),
        )

    def __repr__(self) -> str:
        where = "dec" if self.is_decoder else f"block l={self.expansion.block}" if self.expansion is not None else "block"
        order = f", order {self.expansion.order}" if self.expansion is not None else ""
        trust = f"; {self.diagnostics.summary()}" if self.expansion is not None else ""
        return f"ExpansionValues({where}{order}, {len(self.names)} terms, {list(self.terms.shape[1:])}{trust})"

    __str__ = __repr__

    def to_dict(self) -> dict:
        """JSON-ready summary: the setting, the terms' names, the diagnostics (``diagnostics``: per cell,
        :meth:`Diagnostics.to_dict`; ``term_diagnostics``: per term, maxima over cells and the verdict)
        and, when they dominate, the one-line ``warning``. The tensors stay on the object."""
        d = self.diagnostics
        return {
            "type": "ExpansionValues",
            "model": self.model.name,
            "block": None if self.expansion is None else self.expansion.block,
            "order": d.order,
            "is_decoder": self.is_decoder,
            "shape": list(self.terms.shape[1:]),
            "names": list(self.names),
            "diagnostics": d.to_dict(),
            "term_diagnostics": [{"name": nm, **d.row(i)} for i, nm in enumerate(self.names)],
            "warning": self.warning(),
        }

    def logits(self, position: int | None = None, tokens: Tensor | None = None) -> Float[Tensor, "n *b t v"]:
        """U·e for every term (decoder expansions only): ``[n, *b, t, V]`` (``[n, *b, V]`` at one
        ``position``; only the vocabulary entries ``tokens`` if given).

        In the terms' dtype: float64 for k ≥ 1 (:mod:`jetex.expand.numerics`), so that
        Σ logits() + remainder_logits() = q(z) holds to float64 rounding of the terms.
        """
        self._need_decoder()
        return unembed(self.model, _at(self.terms, position), tokens=tokens)

    def remainder_logits(self, position: int | None = None, tokens: Tensor | None = None) -> Float[Tensor, "*b t v"]:
        """U δ, plus the unembedding bias if any, so that Σ logits() + remainder_logits() = q(z)."""
        self._need_decoder()
        return unembed(self.model, _at(self.remainder, position), bias=True, tokens=tokens)

    def expansion_logits(self, position: int | None = None, tokens: Tensor | None = None) -> Float[Tensor, "*b t v"]:
        """Σ_e U e: the expansion's own prediction, without the remainder (summed before U)."""
        self._need_decoder()
        return unembed(self.model, _at(self.terms.sum(0), position), tokens=tokens)

    def _need_decoder(self) -> None:
        if not self.is_decoder:
            raise InputError("logits exist only for an expansion of the decoder (block l = L)")


def _at(x: Tensor, position: int | None) -> Tensor:
    """``x[..., position, :]`` (the token axis is the second last), or ``x`` for ``None``."""
    return x if position is None else x[..., position, :]


def jet_expand(
    model: ResidualModel,
    block: int | str,
    centres: Sequence[Term],
    order: object,
    weights: Sequence[float] | Tensor | None = None,
    *,
    split_degrees: bool = False,
) -> Expansion:
    """Algorithm 1: expand β_{l+1} (or the decoder when l = L) around ``centres`` at order k.

    Args:
        model: the residual view q.
        block: Algorithm 1's l ∈ 0..L (expands γ_{l+1}; l = L expands the decoder), a block
            name such as ``"mlp.3"`` (expands that block), or ``"dec"``.
        centres: terms x_1..x_N (functions of z) meant to sum to h_l.
        order: the jet order k ≥ 0.
        weights: w in the simplex (default uniform 1/N); floats, or a tensor ``[N]`` or
            ``[N, *b, t]`` of per-position weights (non-negative and summing to 1 along dim 0,
            to a tolerance of the tensor's precision; else :class:`InputError`).
        split_degrees: (k ≥ 1) split each jet term into its Taylor degrees c_0..c_k, one term
            per degree, ``w_i c_j`` named ``block[j]`` (the super-exponential expansion's step).
            Their sum is the whole jet term, so the remainder is unchanged.

    Returns:
        An :class:`Expansion` whose terms are, for each centre i, the jet term
        ``w_i J^k γ_{l+1}(x_i)(h_l)`` (or its k+1 degree terms) and (if l < L) the identity
        term; plus the remainder.
    """
    k = check_order(order)
    l = resolve_block(model, block)
    centres = list(centres)
    if not centres:
        raise InputError("jet_expand needs at least one centre")
    if any(not isinstance(c, Term) for c in centres):
        raise InputError("centres must be jetex terms (Embedding(), Stream(l), terms of an earlier expansion, …)")
    if any(c.space == "decoder" for c in centres):
        raise InputError("centres must live in the residual stream; decoder terms are final")
    ws = _weights(weights, len(centres))
    if split_degrees and k == 0:
        raise InputError("splitting jets into Taylor degrees (super-exponential expansion) needs order k >= 1")
    L = model.n_blocks
    decoder = l == L
    name = DEC if decoder else model.blocks[l].name
    terms: list[Term] = []
    for c, w in zip(centres, ws):
        if split_degrees:
            terms.extend(JetTerm(l + 1, c, k, w, name, degree=j) for j in range(k + 1))
        else:
            terms.append(JetTerm(l + 1, c, k, w, name))
        if not decoder:
            terms.append(IdentityTerm(c, 1.0 if k >= 1 else w))
    rem = Remainder(l, terms, decoder)
    for t in terms:
        t._expansion_remainder = rem  # type: ignore[attr-defined]
    return Expansion(model, l, k, centres, ws, terms, rem)


def logit_lens_expansion(model: ResidualModel, l: int) -> Expansion:
    """The logit lens as a jet expansion: jet_expand(q, L, {h_l}, 0) = U γ_{L+1}(h_l)."""
    if not 0 <= l <= model.n_blocks:
        raise InputError(f"stream index {l} out of range 0..{model.n_blocks}")
    return jet_expand(model, model.n_blocks, [Stream(l)], 0)


__all__ = [
    "CentreGapWarning",
    "Embedding",
    "Expansion",
    "ExpansionValues",
    "Stream",
    "jet_expand",
    "logit_lens_expansion",
]
