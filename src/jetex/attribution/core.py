"""Token attribution for causal language models (METHODS.md §6): NormXLogit and friends.

For the prediction at the last position of a token sequence z = (z_0 … z_{t-1}) and a
target token t (by default the model's own argmax prediction there), every method gives
one score per input token i:

- ``norm``        ||e_i||_2, with e_i = h_0[i] = η(z)[i] the input representation (token
  embedding, plus position embedding where the model has one; for Gemma η includes the
  sqrt(d) scaling).
- ``logat``       LogAt_i(t) = (U γ_{L+1}(h_L[i]))[t]: token i's own final-layer
  representation alone through the prediction head, read at the target (signed).
- ``normxlogit``  ||e_i||_2 · LogAt_i(t).
- layer-wise variants (``layer=l``, 0 ≤ l ≤ L): h_l[i] replaces h_L[i] in LogAt, i.e.
  the logit lens at position i. ``norm_of="input"`` (default) keeps ||e_i||;
  ``norm_of="layer"`` uses ||h_l[i]|| instead. ``norm`` with ``layer=l`` is ||h_l[i]||.
- ``jetxlogit``   ||e_i|| · (U J^k γ_{L+1}(h_l[i])(h_L[i]))[t]: LogAt through the order-k
  iterative jet lens centred at the layer-l stream (``order=k``, ``layer=l`` required).
  At k = 0 it is the layer-wise NormXLogit; at l = L it is NormXLogit for every k.
- ``saliency``, ``input_x_gradient``, ``integrated_gradients``: gradient baselines from
  Captum, see :mod:`jetex.attribution.gradient`.
- ``random``      uniform scores in [0, 1), seeded (``seed=``, default 0): the chance
  baseline of the faithfulness evaluation.

The non-gradient methods run one forward pass through the residual view under
``torch.no_grad`` and evaluate only the target's row of U, once per position: they never
materialise the ``[t, V]`` logits. (The default target costs one extra head evaluation
of the last position, to take the argmax.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.attribution.common import (
    FORWARD_METHODS,
    GRADIENT_METHODS,
    LAYERWISE_METHODS,
    METHODS,
    GradientUnavailableError,
    as_input_ids,
    has_bos,
    predicted_target,
    resolve_layer,
    resolve_target,
    run_stream,
    target_logits,
)
from jetex.attribution.gradient import gradient_scores
from jetex.errors import InputError, JetexError
from jetex.finite import check_finite
from jetex.jets import check_max_order
from jetex.models.base import ResidualModel
from jetex.models.batch import as_batch, is_batch
from jetex.results import Result, ResultList


@dataclass(frozen=True, repr=False)
class Attribution(Result):
    """Scores of the input tokens for one prediction (the target at the last position).

    ``tokens[i]`` / ``token_ids[i]`` is input token i, ``scores[i]`` its score ``[t]``
    (larger = supports the target more; signed for ``logat``/``normxlogit``/``jetxlogit``/
    ``input_x_gradient``/``integrated_gradients``). ``bos`` is True when token 0 is the
    tokenizer's beginning-of-sequence token (scored, but never removed or ranked by the
    faithfulness evaluation). ``options`` are the method's settings (layer, order, …);
    ``extras`` holds side results (e.g. the integrated-gradients convergence delta).
    """

    tokens: tuple[str, ...]
    token_ids: Int[Tensor, "t"]
    scores: Float[Tensor, "t"]
    target_id: int
    target: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    bos: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    _renderer_module = "jetex.viz.attribution"

    def __post_init__(self) -> None:
        if self.token_ids.ndim != 1 or self.scores.ndim != 1:
            raise ValueError("Attribution.token_ids and .scores must be 1-D [t]")
        n = len(self.tokens)
        if n == 0:
            raise ValueError("Attribution needs at least one token")
        if self.token_ids.shape[0] != n or self.scores.shape[0] != n:
            raise ValueError(
                f"Attribution: {n} tokens but token_ids {tuple(self.token_ids.shape)}, scores {tuple(self.scores.shape)}"
            )
        if self.scores.is_floating_point() is False:
            raise ValueError("Attribution.scores must be floating point")
        if self.method not in METHODS:
            raise ValueError(f"Attribution.method {self.method!r} is not one of {METHODS}")

    def __len__(self) -> int:
        return len(self.tokens)

    def ranking(self) -> list[int]:
        """Positions ordered by decreasing score (ties: earlier first); BOS is left out."""
        start = 1 if self.bos else 0
        s = self.scores.tolist()
        return sorted(range(start, len(s)), key=lambda i: (-s[i], i))

    def _summary(self) -> str:
        text = "".join(self.tokens)
        text = text if len(text) <= 40 else text[:39] + "…"
        return f"method={self.method!r}, target={self.target!r}, tokens={len(self.tokens)}, text={text!r}" + (
            f", options={self.options}" if self.options else ""
        )

    def _columns(self) -> dict[str, list]:
        """One row per input token: ``position``, ``token``, ``token_id``, ``score``, ``rank``
        (1 = most supporting; null for BOS), ``bos``, ``method``, ``target``, ``target_id``."""
        rank = {pos: r for r, pos in enumerate(self.ranking(), 1)}
        n = len(self.tokens)
        return {
            "position": list(range(n)),
            "token": list(self.tokens),
            "token_id": [int(i) for i in self.token_ids.tolist()],
            "score": [float(s) for s in self.scores.tolist()],
            "rank": [rank.get(i) for i in range(n)],
            "bos": [bool(self.bos and i == 0) for i in range(n)],
            "method": [self.method] * n,
            "target": [self.target] * n,
            "target_id": [int(self.target_id)] * n,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the attribution (plus ``type``/``format``/``fields``, every field
        exactly, for :meth:`from_dict`)."""
        return Result.to_dict(self) | {
            "method": self.method,
            "options": dict(self.options),
            "target_id": self.target_id,
            "target": self.target,
            "bos": self.bos,
            "tokens": list(self.tokens),
            "token_ids": [int(i) for i in self.token_ids.tolist()],
            "scores": [float(s) for s in self.scores.tolist()],
            "extras": {k: (float(v) if isinstance(v, (float, int)) else v) for k, v in self.extras.items()},
        }


def _forward_scores(
    model: ResidualModel,
    ids: Int[Tensor, "t"],
    target: int | None,
    method: str,
    layer: int | None,
    order: int,
    norm_of: str,
    seed: int,
) -> tuple[Tensor, int, dict[str, Any]]:
    L = model.n_blocks
    l = L if layer is None else layer
    if method == "random":
        need = {L} if target is None else set()
    elif method == "norm":
        need = {0} if norm_of == "input" else {l}
        if target is None:
            need.add(L)
    elif method == "jetxlogit":
        need = {0, l, L}
    else:  # logat, normxlogit
        need = {l} | ({0} if method == "normxlogit" and norm_of == "input" else set())
        if target is None:
            need.add(L)
    hs = run_stream(model, ids, need) if need else {}
    if target is None:
        target = predicted_target(model, hs[L][-1])
    extras: dict[str, Any] = {}
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(ids.shape[0], generator=g, dtype=torch.float64), target, extras
    if method == "norm":
        return _norms(hs, l, norm_of), target, extras
    if method == "jetxlogit":
        from jetex.jets import jet

        x = jet(model.final_norm, hs[l], hs[L], order)
    else:
        x = model.final_norm(hs[l])
    logat = target_logits(model, x, target)
    if method == "logat":
        return logat, target, extras
    return _norms(hs, l, norm_of) * logat, target, extras


def _norms(hs: dict[int, Tensor], l: int, norm_of: str) -> Tensor:
    """||e_i|| = ||h_0[i]|| (``norm_of="input"``) or ||h_l[i]|| (``"layer"``), ``[t]``."""
    return (hs[0] if norm_of == "input" else hs[l]).norm(dim=-1)


# ---- the entry point ---------------------------------------------------------------


def attribute(
    model: ResidualModel,
    text_or_ids: str | Tensor | Sequence,
    target: int | str | Sequence | None = None,
    method: str = "normxlogit",
    layer: int | None = None,
    order: int = 1,
    *,
    attention_mask: Tensor | Sequence | None = None,
    **kw: Any,
) -> Attribution | ResultList:
    """Attribute the model's prediction at the last position to the input tokens.

    ``text_or_ids``: a text (tokenised with BOS where the tokenizer uses one) or token ids
    ``[t]``/``[1, t]``. ``target``: None (the model's argmax next token), a token id, or a
    string (see :func:`resolve_target`). ``method``: one of :data:`METHODS`. ``layer``: the
    stream index l in 0..L for the layer-wise variants (``jetxlogit`` requires it);
    ``order``: the jet order k of ``jetxlogit``. Keyword options: ``norm_of`` ("input" or
    "layer"), ``seed`` (``random``), and for the gradient methods ``baseline``,
    ``n_steps``, ``internal_batch_size`` (see :mod:`jetex.attribution.gradient`).

    Returns an :class:`Attribution` with one score per input token. A batch (a list of
    texts or of id sequences, or ids ``[b, t]`` with an optional ``attention_mask``, see
    :mod:`jetex.models.batch`) returns a :class:`~jetex.results.ResultList` of one
    Attribution per item, each equal to the item attributed alone (the prediction at the
    item's own last token); ``target`` is then one target for all or a list, one per item.
    """
    if is_batch(text_or_ids, attention_mask):
        batch = as_batch(text_or_ids, lambda x: as_input_ids(model, x), attention_mask)
        targets = list(target) if isinstance(target, (list, tuple)) else [target] * len(batch)
        if len(targets) != len(batch):
            raise InputError(f"{len(targets)} targets for a batch of {len(batch)}: give one target, or one per item")
        return ResultList(
            attribute(model, item, t, method, layer, order, **dict(kw)) for item, t in zip(batch.items, targets)
        )
    if not isinstance(method, str) or method not in METHODS:
        raise InputError(f"unknown attribution method {method!r}; choose one of: {', '.join(METHODS)}")
    text = text_or_ids if isinstance(text_or_ids, str) else None
    if text is not None and not text.strip():
        raise InputError("empty text: give at least one non-blank character")
    ids = as_input_ids(model, text_or_ids)
    target_id = resolve_target(model, target, text=text)
    options: dict[str, Any] = {}
    if layer is not None:
        if method not in LAYERWISE_METHODS:
            raise InputError(f"method {method!r} takes no layer; layer-wise methods are: {', '.join(LAYERWISE_METHODS)}")
        layer = resolve_layer(model, layer)
        options["layer"] = layer
    elif method == "jetxlogit":
        raise InputError(f"method 'jetxlogit' needs a layer: the stream index l in 0..{model.n_blocks} of the jet centre")
    if method == "jetxlogit":
        options["order"] = check_max_order(order)

    if method in GRADIENT_METHODS:
        scores, target_id, extras, grad_opts = gradient_scores(model, ids, target_id, method, **kw)
        options.update(grad_opts)
    else:
        norm_of = kw.pop("norm_of", None)
        if norm_of is None:
            norm_of = "layer" if method == "norm" and layer is not None else "input"
        seed = kw.pop("seed", 0)
        if kw:
            raise InputError(f"unknown option(s) for method {method!r}: {', '.join(sorted(kw))}")
        if norm_of not in ("input", "layer"):
            raise InputError(f"norm_of must be 'input' or 'layer', got {norm_of!r}")
        if method in ("normxlogit", "norm", "jetxlogit") and (layer is not None or norm_of != "input"):
            options["norm_of"] = norm_of
        if method == "random":
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise InputError(f"seed must be an int, got {seed!r}")
            options["seed"] = seed
        with torch.no_grad():
            scores, target_id, extras = _forward_scores(model, ids, target_id, method, layer, order, norm_of, seed)
    scores = scores.detach().to("cpu")
    check_finite(scores, f"the {method} attribution scores", "the model overflows on this input (or its weights are not finite)")
    return Attribution(
        tokens=tuple(model.token_strings(ids)),
        token_ids=ids.detach().to("cpu"),
        scores=scores,
        target_id=int(target_id),
        target=model.token_strings([int(target_id)])[0],
        method=method,
        options=options,
        bos=has_bos(model, ids),
        extras=extras,
    )


__all__ = [
    "Attribution",
    "FORWARD_METHODS",
    "GRADIENT_METHODS",
    "GradientUnavailableError",
    "LAYERWISE_METHODS",
    "METHODS",
    "as_input_ids",
    "attribute",
    "has_bos",
    "predicted_target",
    "resolve_layer",
    "resolve_target",
    "run_stream",
    "target_logits",
]
