"""One readout for every lens kind of the zoo, over precomputed streams.

Kinds: ``logit`` (U γ_{L+1}(h_l)), ``tuned`` (U γ_{L+1}(h_l + A_l h_l + b_l)),
``jacobian`` (U γ_{L+1}(J_l h_l)), ``iterative`` (the iterative jet lens of order k,
U J^k γ_{L+1}(h_l)(h_L)), ``joint`` (the joint jet lens; per-centre terms, see
:mod:`jetex.lenses.lens`). The logit, tuned and Jacobian lenses read h_l alone; the jet
lenses of order ≥ 1 read the final stream h_L as well (``reads_final``).

For an RMSNorm decoder the order-1 iterative lens is exactly

    U J^1 γ(h_l)(h_L) = ρ · U γ(h_L) + (1 − ρ cos θ) · U γ(h_l),   ρ = r(h_L) / r(h_l)

(r the root mean square, θ the angle between h_l and h_L, ε of the norm neglected): a
multiple of the model's own output q(z) plus a multiple of the logit lens.
:func:`own_output_share` reports |α|‖U γ(h_L)‖ / (|α|‖U γ(h_L)‖ + ‖rest‖) with α the
coefficient along γ(h_L) (= ρ when ε = 0) and rest = (lens logits) − α U γ(h_L) computed
exactly: the same quantity as ``LensResult.q_share``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from jetex.errors import InputError
from jetex.expand.algorithm import check_order
from jetex.lenses.jacobian import JacobianLens
from jetex.lenses.lens import LensResult, _ids, _row_stats, _rows, iterative_lens_logits, layer_streams, output_share, split_along_output
from jetex.lenses.tuned import TunedLens
from jetex.models.base import ResidualModel

KINDS = ("logit", "tuned", "jacobian", "iterative", "joint")
FITTED = ("tuned", "jacobian")


def reads_final(kind: str, order: int) -> bool:
    """Whether a lens's readout at layer l depends on the final stream h_L (jet lenses, k ≥ 1)."""
    return kind in ("iterative", "joint") and order >= 1


READS_FINAL = reads_final


def check_lens(model: ResidualModel, kind: str, lens: Any) -> None:
    """Refuse a missing, mismatched or foreign fitted lens for ``kind``.

    The fingerprint comparison runs once per (lens, model object) pair: a lens already
    checked against this ``model`` is not re-hashed on every readout (the fingerprint hashes
    every weight, several times the cost of a readout's translators). A model whose weights
    are changed in place after the check is not re-checked."""
    if kind not in KINDS:
        raise InputError(f"unknown lens kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind in FITTED:
        want = TunedLens if kind == "tuned" else JacobianLens
        if lens is None:
            raise InputError(f"the {kind} lens needs a fitted lens file (fit one with `jetex lens-fit --kind {kind}`)")
        if not isinstance(lens, want):
            raise InputError(f"a {kind} lens needs a {want.__name__}, got {type(lens).__name__}")
        checked = getattr(lens, "_checked_for", None)
        if checked is not None and checked() is model:  # model.fingerprint() hashes every weight (~0.3 s)
            return
        fp = model.fingerprint()
        if lens.fingerprint != fp:
            raise InputError(
                f"this {kind} lens was fitted for model {lens.model_name!r} (fingerprint {lens.fingerprint}), "
                f"not for {model.name!r} (fingerprint {fp})"
            )
        lens._checked_for = weakref.ref(model)


def load_fitted(kind: str, path: str | Path, model: ResidualModel | None = None) -> TunedLens | JacobianLens:
    """Read a fitted lens file of ``kind`` (tuned or jacobian); with ``model``, check its fingerprint."""
    if kind == "tuned":
        return TunedLens.load(path, model)
    if kind == "jacobian":
        return JacobianLens.load(path, model)
    raise InputError(f"lens kind {kind!r} has no fitted lens file (tuned and jacobian do)")


def lens_logits(
    model: ResidualModel,
    kind: str,
    h: Float[Tensor, "l1 b t d"],
    streams: Sequence[int],
    *,
    lens: TunedLens | JacobianLens | None = None,
    order: int = 1,
) -> Float[Tensor, "r b t v"]:
    """Per chosen stream l, the lens's logits ``[R, b, t, V]`` from the stream ``h`` ``[L+1, b, t, d]``.

    ``kind`` in logit, tuned, jacobian, iterative (``order`` k; k = 0 is the logit lens).
    (The joint lens has centres, not layers: use :func:`jetex.lenses.joint_lens_logits`.)
    """
    if kind == "logit":
        return iterative_lens_logits(model, h, streams, 0)
    if kind == "iterative":
        return iterative_lens_logits(model, h, streams, check_order(order))
    if kind in FITTED:
        assert lens is not None
        return model.decode(lens.translate(h[list(streams)], streams))
    raise InputError(f"lens kind {kind!r} has no per-layer readout here (use logit, tuned, jacobian or iterative)")


@torch.no_grad()
def own_output_share(
    model: ResidualModel,
    terms: Float[Tensor, "r t d"],
    lens0: Float[Tensor, "r t d"],
    hL: Float[Tensor, "t d"],
    logits: Float[Tensor, "r t v"],
    model_logits: Float[Tensor, "t v"] | None = None,
) -> Float[Tensor, "r t"]:
    """The share of each lens row that is the model's own output, one sequence: ``[R, t]``.

    The same definition as ``LensResult.q_share`` (:func:`jetex.lenses.lens.output_share`):
    |α|‖q̃‖ / (|α|‖q̃‖ + ‖row − α q̃‖), q̃ = U γ_{L+1}(h_L), with α the least-squares
    coefficient of the row's term along γ_{L+1}(h_L) in span{γ_{L+1}(h_L), ``lens0``}
    (:func:`jetex.lenses.lens.split_along_output`). ``terms``: the rows in final-norm space
    before the unembedding (iterative lens: J^k γ(h_l)(h_L); joint lens: w_i J^k γ(x_i)(h_L));
    ``lens0``: their order-0 part (γ(h_l); w_i γ(x_i)); ``logits``: the rows' logits;
    ``model_logits``: q (default U γ(h_L) + bias from ``hL``). At order 1, ε of the norm
    neglected, α = w ρ with ρ = r(h_L)/r(x).
    """
    if model_logits is None:
        model_logits = model.decode(hL)
    alpha, _ = split_along_output(terms, lens0, model.final_norm(hL))  # [R, t]
    stats = _row_stats(logits, model_logits.to(logits.dtype), 1, alpha=alpha, bias=model.unembedding_bias)
    return output_share(alpha, model_logits, stats["rest_norm"], model.unembedding_bias)


@torch.no_grad()
def zoo_lens(
    model: ResidualModel,
    text_or_ids: str | Tensor,
    kind: str,
    *,
    lens: TunedLens | JacobianLens | None = None,
    order: int = 1,
    layers: Sequence[int] | None = None,
    top_k: int = 10,
) -> LensResult:
    """A per-layer lens of any kind (logit, tuned, jacobian, iterative) as a :class:`LensResult`.

    ``kind="logit"`` is the iterative lens at order 0; ``tuned``/``jacobian`` need the
    fitted ``lens`` (its fingerprint must be the model's). Rows: the chosen layers
    (default: embedding + every layer); the remainder norm is ‖q(z) − lens logits‖.
    """
    check_lens(model, kind, lens)
    if kind == "joint":
        raise InputError("the joint lens has centres, not layers: use jetex.lenses.joint_lens")
    k = 0 if kind == "logit" else check_order(order) if kind == "iterative" else 0
    ids = _ids(model, text_or_ids)
    streams, names = layer_streams(model, layers)
    h = model.stream(ids)
    logits = lens_logits(model, kind, h, streams, lens=lens, order=k)[:, 0]
    model_logits = model.decode(h[-1])[0]
    stats = _row_stats(logits, model_logits, top_k)
    return LensResult(kind=kind, order=k, remainder_norm=stats["rem"].float().cpu(), **_rows(model, ids, names, stats, model_logits, top_k))  # type: ignore[arg-type]
