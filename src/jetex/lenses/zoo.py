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
:func:`own_output_share` reports ‖ρ U γ(h_L)‖ / (‖ρ U γ(h_L)‖ + ‖rest‖) with
rest = (lens logits) − ρ U γ(h_L) computed exactly, so the split is exact whatever ε.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from jetex.errors import InputError
from jetex.expand.algorithm import check_order
from jetex.lenses.jacobian import JacobianLens
from jetex.lenses.lens import LensResult, _ids, _row_stats, _rows, iterative_lens_logits, layer_streams
from jetex.lenses.tuned import TunedLens
from jetex.models.base import ResidualModel

KINDS = ("logit", "tuned", "jacobian", "iterative", "joint")
FITTED = ("tuned", "jacobian")


def reads_final(kind: str, order: int) -> bool:
    """Whether a lens's readout at layer l depends on the final stream h_L (jet lenses, k ≥ 1)."""
    return kind in ("iterative", "joint") and order >= 1


READS_FINAL = reads_final


def check_lens(model: ResidualModel, kind: str, lens: Any) -> None:
    """Refuse a missing, mismatched or foreign fitted lens for ``kind``."""
    if kind not in KINDS:
        raise InputError(f"unknown lens kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind in FITTED:
        want = TunedLens if kind == "tuned" else JacobianLens
        if lens is None:
            raise InputError(f"the {kind} lens needs a fitted lens file (fit one with `jetex lens-fit --kind {kind}`)")
        if not isinstance(lens, want):
            raise InputError(f"a {kind} lens needs a {want.__name__}, got {type(lens).__name__}")
        if lens.fingerprint != model.fingerprint():
            raise InputError(
                f"this {kind} lens was fitted for model {lens.model_name!r} (fingerprint {lens.fingerprint}), "
                f"not for {model.name!r} (fingerprint {model.fingerprint()})"
            )


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


def own_output_share(
    model: ResidualModel,
    X: Float[Tensor, "r b t d"],
    hL: Float[Tensor, "b t d"],
    logits: Float[Tensor, "r b t v"],
    weights: Float[Tensor, "r b t"] | None = None,
) -> Float[Tensor, "r b t"]:
    """The share of a readout that is the model's own output: ‖a‖ / (‖a‖ + ‖logits − a‖), a = w ρ U γ(h_L).

    ``X``: the vectors the lens is centred at (h_l for the iterative lens; the centres x_i
    for the joint lens, whose order-1 term is w_i (ρ_i γ(h_L) + (1 − ρ_i cos θ_i) γ(x_i))),
    ``hL`` the final stream, ``weights`` w (default 1); ρ = r(h_L)/r(x) per position (r the
    root mean square). The split of ``logits`` into a and the rest is exact; 1 means the
    readout is q(z) itself (rescaled), 0 that it holds none of it.
    """
    rho = hL.pow(2).mean(-1).sqrt().unsqueeze(0) / X.pow(2).mean(-1).sqrt().clamp_min(1e-30)  # [R, b, t]
    if weights is not None:
        rho = rho * weights
    q = model.final_norm(hL) @ model.unembedding_matrix.T  # [b, t, V] (no bias: a term, not a prediction)
    own = rho[..., None] * q.unsqueeze(0)
    a = own.norm(dim=-1)
    rest = (logits - own).norm(dim=-1)
    return a / (a + rest).clamp_min(torch.finfo(a.dtype).tiny)


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
