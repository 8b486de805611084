"""What the attribution methods share (:mod:`jetex.attribution.core`, the forward-pass
methods, and :mod:`jetex.attribution.gradient`, the Captum baselines): the method names,
input and target resolution, the stream run and the target's logit."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError, JetexError
from jetex.models.base import ResidualModel

#: Methods that need no gradient (one forward pass).
FORWARD_METHODS = ("normxlogit", "logat", "norm", "jetxlogit", "random")
#: Gradient baselines computed with Captum on the input representations h_0.
GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
METHODS = FORWARD_METHODS + GRADIENT_METHODS
#: Methods that accept ``layer=``.
LAYERWISE_METHODS = ("normxlogit", "logat", "norm", "jetxlogit")


class GradientUnavailableError(JetexError):
    """A gradient method was asked of a model whose computation cannot be differentiated."""


# ---- inputs -----------------------------------------------------------------------


def as_input_ids(model: ResidualModel, text_or_ids: Any) -> Int[Tensor, "t"]:
    """Token ids ``[t]`` of a text (tokenised with BOS) or of given ids (``[t]`` or ``[1, t]``)."""
    if isinstance(text_or_ids, str):
        return model.tokenize(text_or_ids)[0]
    if isinstance(text_or_ids, Tensor):
        ids = text_or_ids
    elif isinstance(text_or_ids, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in text_or_ids):
            raise InputError("token ids must be a list of ints")
        ids = torch.tensor(list(text_or_ids), dtype=torch.long)
    else:
        raise InputError(f"expected a text or token ids, got {type(text_or_ids).__name__}")
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise InputError(f"token ids must have shape [t] or [1, t], got {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise InputError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.numel() == 0:
        raise InputError("empty input: give at least one token")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= model.vocab_size:
        raise InputError(f"token id out of range: ids must lie in 0..{model.vocab_size - 1}, got {lo if lo < 0 else hi}")
    if model.max_length is not None and ids.numel() > model.max_length:
        raise InputError(f"input is {ids.numel()} tokens long; the context window of {model.name} is {model.max_length}")
    return ids.to(device=model.device, dtype=torch.long)


def has_bos(model: ResidualModel, ids: Int[Tensor, "t"]) -> bool:
    """Whether token 0 is the tokenizer's BOS token."""
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    return bos is not None and int(ids[0]) == int(bos)


def resolve_target(model: ResidualModel, target: Any, *, text: str | None = None) -> int | None:
    """The target token id from an id or a string (None stays None: the model's prediction).

    A string is tokenised without special tokens. If neither it nor ``text`` begins/ends
    with whitespace, ``" " + target`` is tried first (a word continuing a text usually
    carries its leading space: ``--target Paris`` means the token " Paris"), then the
    string as given; the first form that is a single token is used. If no form is one
    token, the first token of the first form is used and a ``UserWarning`` names it.
    """
    if target is None:
        return None
    if isinstance(target, bool):
        raise InputError(f"target must be a token id or a string, got {target!r}")
    if isinstance(target, int):
        if not 0 <= target < model.vocab_size:
            raise InputError(f"target id {target} out of range: the vocabulary has ids 0..{model.vocab_size - 1}")
        return target
    if not isinstance(target, str):
        raise InputError(f"target must be a token id or a string, got {type(target).__name__}")
    if target == "":
        raise InputError("empty target string")
    if model.tokenizer is None:
        raise InputError(f"model {model.name!r} has no tokenizer: give the target as a token id")
    forms = [target]
    if not target[0].isspace() and not (text is not None and text[-1:].isspace()):
        forms = [" " + target, target]
    encoded = [list(model.tokenizer(f, add_special_tokens=False)["input_ids"]) for f in forms]
    for ids in encoded:
        if len(ids) == 1:
            return int(ids[0])
    first = next((ids for ids in encoded if ids), None)
    if first is None:
        raise InputError(f"target {target!r} tokenises to no token")
    pieces = model.token_strings(first)
    warnings.warn(
        f"target {forms[0]!r} is {len(first)} tokens {pieces}; attributing its first token {pieces[0]!r}",
        UserWarning,
        stacklevel=3,
    )
    return int(first[0])


def resolve_layer(model: ResidualModel, layer: Any) -> int:
    """Stream index l in 0..L (negative counts from the end: -1 is L)."""
    L = model.n_blocks
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InputError(f"layer must be an int in 0..{L}, got {layer!r}")
    if not -(L + 1) <= layer <= L:
        raise InputError(f"layer {layer} out of range: this model's stream has layers 0..{L}")
    return layer % (L + 1)


def target_logits(model: ResidualModel, x: Float[Tensor, "*b t d"], target: int) -> Float[Tensor, "*b t"]:
    """(U x)[target] for a normalised stream x (only U's target row is evaluated)."""
    if type(model).unembed is ResidualModel.unembed:
        U = model.unembedding_matrix
        out = x @ U[target].to(x.dtype)
        bias = model.unembedding_bias
        if bias is not None:
            out = out + bias[target].to(x.dtype)
        return out
    return model.unembed(x)[..., target]  # a model with a non-linear head (e.g. soft-capping)


def run_stream(model: ResidualModel, ids: Int[Tensor, "t"], layers: set[int]) -> dict[int, Float[Tensor, "t d"]]:
    """h_l for the requested l (0..L), running the blocks only as far as needed."""
    h = model.embed(ids)
    out: dict[int, Tensor] = {}
    if 0 in layers:
        out[0] = h
    last = max(layers)
    for l in range(1, last + 1):
        h = h + model.blocks[l - 1](h)
        if l in layers:
            out[l] = h
    return out


def predicted_target(model: ResidualModel, h_last: Float[Tensor, "d"]) -> int:
    """argmax of the next-token logits υ(h_L) at the last position."""
    return int(model.decode(h_last[None])[0].argmax())


__all__ = [
    "FORWARD_METHODS",
    "GRADIENT_METHODS",
    "GradientUnavailableError",
    "LAYERWISE_METHODS",
    "METHODS",
    "as_input_ids",
    "has_bos",
    "predicted_target",
    "resolve_layer",
    "resolve_target",
    "run_stream",
    "target_logits",
]
