"""Gradient baselines for token attribution, computed with Captum.

All three differentiate the same scalar: the target's logit at the last position,

    f(h_0) = (U γ_{L+1}(h_L[t-1]))[target],   h_L = β_L ∘ … ∘ β_1 (h_0),

as a function of the input representations h_0 = η(z) ``[t, d]`` (the layer-0 stream:
what Hugging Face calls ``inputs_embeds`` for models without absolute position
embeddings, Llama and Gemma included; for Gemma it carries the sqrt(d) scaling). The
function is run through the residual view (``model.blocks`` then ``model.final_norm`` and
U's target row), the same computation whose h_0 and h_L NormXLogit reads.

- ``saliency``: ||∂f/∂h_0[i]||_2 (``captum.attr.Saliency``; the L2 norm over d is the
  token score, so the sign of the gradient is dropped).
- ``input_x_gradient``: Σ_d h_0[i] ⊙ ∂f/∂h_0[i] (``captum.attr.InputXGradient``).
- ``integrated_gradients``: Σ_d of Captum's ``IntegratedGradients`` attributions,
  (h_0 − b) ⊙ ∫_0^1 ∂f/∂h_0(b + α(h_0 − b)) dα, Gauss–Legendre with ``n_steps``
  (default 50) nodes evaluated ``internal_batch_size`` (default 10) at a time. The
  baseline b (``baseline=``) is ``"pad"`` by default: every position holds η of a
  reference token (the tokenizer's pad token, else its unk, else its eos token, else
  id 0), except a BOS token, which keeps its own embedding (so BOS gets attribution 0);
  ``"zero"`` is the all-zero baseline. Completeness, Σ_i score_i = f(h_0) − f(b), holds
  up to Captum's convergence delta, stored in ``extras["convergence_delta"]`` with
  ``extras["f_input"]`` and ``extras["f_baseline"]``. (A zero baseline sits on the
  singular point of the first RMS norm, x/rms(x), where f jumps: the pad baseline
  avoids it.)

Gradients need ordinary (non-inference) weights. A user meets
:class:`~jetex.attribution.common.GradientUnavailableError` by loading or building the
model inside ``torch.inference_mode()`` (its parameters are then inference tensors,
which autograd cannot save), or with a view whose forward does not reach the logits
differentiably from h_0. Calling a gradient method *inside* ``torch.inference_mode()``
or ``torch.no_grad()`` on a normal model works: both are lifted locally.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.attribution.common import GradientUnavailableError, has_bos, predicted_target, target_logits
from jetex.errors import InputError, JetexError
from jetex.models.base import ResidualModel

GRADIENT_OPTIONS = ("baseline", "n_steps", "internal_batch_size")


class CaptumMissingError(JetexError):
    """A gradient method was asked for, but Captum (the optional extra ``attribution``) is not installed."""


def import_captum(method: str | None = None) -> Any:
    """``captum.attr``, or a one-line :class:`CaptumMissingError` (naming ``method``) telling how to install it."""
    try:
        import captum.attr as attr
    except ImportError:
        what = "gradient methods need" if method is None else f"method {method!r} needs"
        raise CaptumMissingError(f"{what} Captum, which is not installed: pip install 'jetex[attribution]'") from None
    return attr


def target_logit_fn(model: ResidualModel, target: int) -> Callable[[Tensor], Tensor]:
    """f: h_0 ``[b, t, d]`` → the target's logit at the last position ``[b]``."""

    def f(h0: Float[Tensor, "b t d"]) -> Float[Tensor, "b"]:
        h = h0
        for blk in model.blocks:
            h = h + blk(h)
        return target_logits(model, model.final_norm(h[:, -1:, :]), target)[:, 0]

    return f


def reference_token_id(model: ResidualModel) -> int:
    """The token whose embedding fills the ``"pad"`` baseline: pad, else unk, else eos, else 0."""
    tok = model.tokenizer
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        i = getattr(tok, name, None) if tok is not None else None
        if isinstance(i, int) and 0 <= i < model.vocab_size:
            return i
    return 0


def make_baseline(model: ResidualModel, ids: Int[Tensor, "t"], h0: Float[Tensor, "t d"], baseline: Any) -> Float[Tensor, "t d"]:
    """The integrated-gradients baseline ``[t, d]`` (see the module docstring)."""
    if baseline == "zero":
        return torch.zeros_like(h0)
    if baseline == "pad":
        ref = torch.full_like(ids, reference_token_id(model))
        if has_bos(model, ids):
            ref[0] = ids[0]
        with torch.no_grad():
            return model.embed(ref).to(h0.dtype)
    raise InputError(f"baseline must be 'pad' or 'zero', got {baseline!r}")


def check_differentiable(model: ResidualModel, method: str) -> None:
    """Raise :class:`GradientUnavailableError` if the weights are inference tensors."""
    for name, t in chain(model.named_parameters(), model.named_buffers()):
        if t.is_inference():
            raise GradientUnavailableError(
                f"method {method!r} needs gradients, but the weights of {model.name} are inference tensors "
                f"({name}: the model was loaded under torch.inference_mode()); reload it outside inference mode, "
                "or use a forward-only method such as normxlogit"
            )


def gradient_scores(
    model: ResidualModel,
    ids: Int[Tensor, "t"],
    target: int | None,
    method: str,
    **kw: Any,
) -> tuple[Float[Tensor, "t"], int, dict[str, Any], dict[str, Any]]:
    """Token scores ``[t]`` of a Captum gradient method; returns (scores, target, extras, options)."""
    unknown = sorted(set(kw) - set(GRADIENT_OPTIONS))
    if unknown:
        raise InputError(f"unknown option(s) for method {method!r}: {', '.join(unknown)}")
    options: dict[str, Any] = {}
    if method == "integrated_gradients":
        baseline = kw.get("baseline", "pad")
        n_steps = kw.get("n_steps", 50)
        ibs = kw.get("internal_batch_size", 10)
        for name, v in (("n_steps", n_steps), ("internal_batch_size", ibs)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive int, got {v!r}")
        options.update(baseline=baseline, n_steps=n_steps, internal_batch_size=ibs)
    elif kw:
        raise InputError(f"option(s) {', '.join(sorted(kw))} apply to integrated_gradients only")
    captum_attr = import_captum(method)
    InputXGradient, IntegratedGradients, Saliency = (
        captum_attr.InputXGradient, captum_attr.IntegratedGradients, captum_attr.Saliency)
    check_differentiable(model, method)

    extras: dict[str, Any] = {}
    with torch.inference_mode(False), torch.enable_grad():
        ids = ids.clone()
        with torch.no_grad():
            h0 = model.embed(ids).clone()
            if target is None:
                h = h0
                for blk in model.blocks:
                    h = h + blk(h)
                target = predicted_target(model, h[-1])
        f = target_logit_fn(model, target)
        x = h0[None].detach().requires_grad_(True)
        try:
            if method == "saliency":
                g = Saliency(f).attribute(x, abs=True)
                scores = g[0].norm(dim=-1)
            elif method == "input_x_gradient":
                scores = InputXGradient(f).attribute(x)[0].sum(-1)
            else:
                b = make_baseline(model, ids, h0, options["baseline"])[None]
                attr, delta = IntegratedGradients(f).attribute(
                    x,
                    baselines=b,
                    n_steps=options["n_steps"],
                    method="gausslegendre",
                    internal_batch_size=options["internal_batch_size"],
                    return_convergence_delta=True,
                )
                scores = attr[0].sum(-1)
                with torch.no_grad():
                    extras["f_input"] = float(f(x)[0])
                    extras["f_baseline"] = float(f(b)[0])
                extras["convergence_delta"] = float(delta.reshape(-1)[0])
        except RuntimeError as e:
            msg = " ".join(str(e).split())
            if "inference" in msg.lower() or "does not require grad" in msg or "not have been used in the graph" in msg:
                raise GradientUnavailableError(
                    f"method {method!r} could not differentiate {model.name}'s target logit with respect to its input embeddings ({msg[:160]})"
                ) from None
            raise
    return scores.detach(), int(target), extras, options


__all__ = ["GRADIENT_OPTIONS", "CaptumMissingError", "check_differentiable", "gradient_scores", "import_captum", "make_baseline", "reference_token_id", "target_logit_fn"]
