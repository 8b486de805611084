"""Models held by other libraries: a Hugging Face model, TransformerLens's ``TransformerBridge``,
nnsight's ``LanguageModel`` (or any nnsight ``NNsight`` envoy) → a jetex residual view.

:func:`from_hf` finds the Hugging Face causal LM inside what it is given and wraps it with
:meth:`HFResidualModel.from_hf` (eager attention, eval mode, weights frozen —
``requires_grad=False`` — as for a plain Hugging Face model; the weights are shared, never
copied):

- a ``transformers`` causal LM: itself;
- a ``TransformerBridge`` (TransformerLens ≥ 3): its ``original_model``. The bridge replaces
  the model's sub-modules by hooked wrappers that keep the original module as
  ``_original_component``; jetex reads a view of the module tree with every wrapper
  replaced by its original module (new module objects sharing the same parameter and
  buffer tensors; the bridge itself is not changed; the zero ``bias`` buffer the bridge
  adds to an unembedding without bias is left out, so the view — and its fingerprint — is
  the checkpoint's). Refused: a bridge whose weights were
  processed (``enable_compatibility_mode()`` folds norms and centres weights, so the
  module no longer holds the checkpoint's function), a remote bridge (vLLM, Inspect: no
  local module), a bridge around a TransformerLens-native model;
- an nnsight ``LanguageModel`` / ``NNsight``: the wrapped module (``._module``). Refused:
  a model not yet dispatched (weights on the meta device), a wrapped module that is not a
  Hugging Face causal LM.

Each refusal is one line (:class:`~jetex.errors.UnsupportedArchitectureError`). Neither
TransformerLens nor nnsight is imported here: objects are recognised by their classes'
modules.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from jetex.errors import UnsupportedArchitectureError
from jetex.models.hf import HFResidualModel


def _library(obj: Any) -> str | None:
    """``"transformer_lens"`` / ``"nnsight"`` when ``obj``'s class comes from that library."""
    for cls in type(obj).__mro__:
        root = (cls.__module__ or "").split(".")[0]
        if root in ("transformer_lens", "nnsight"):
            return root
    return None


def _is_hf(module: Any) -> bool:
    cfg = getattr(module, "config", None)
    return isinstance(module, nn.Module) and cfg is not None and hasattr(cfg, "to_dict") and _library(module) is None


def _strip_bridge(module: nn.Module) -> nn.Module:
    """A copy of the module tree with every TransformerLens wrapper replaced by its
    ``_original_component``; parameters and buffers are the same tensors."""
    unembedding = False
    while _library(module) == "transformer_lens":
        inner = module._modules.get("_original_component")
        if inner is None:
            raise UnsupportedArchitectureError(
                f"the TransformerBridge's {type(module).__name__} wraps no original module; jetex cannot recover the Hugging Face model"
            )
        unembedding = unembedding or "Unembedding" in type(module).__name__
        module = inner
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    zero_bias = clone._buffers.get("bias")
    if unembedding and isinstance(module, nn.Linear) and zero_bias is not None and not zero_bias.any():
        # the bridge's unembedding replaces a missing bias by a zero buffer: the checkpoint has none
        del clone._buffers["bias"]
        clone._parameters["bias"] = None
    clone._modules = {name: (None if child is None else _strip_bridge(child)) for name, child in module._modules.items()}
    return clone


def _from_bridge(bridge: Any) -> tuple[nn.Module, Any]:
    if getattr(bridge, "_weights_processed", False):
        raise UnsupportedArchitectureError(
            "this TransformerBridge has processed weights (enable_compatibility_mode folds norms and centres weights): "
            "boot it without compatibility mode, or with enable_compatibility_mode(no_processing=True)"
        )
    try:
        inner = bridge.original_model
    except AttributeError:
        raise UnsupportedArchitectureError(
            f"this {type(bridge).__name__} holds no local module (a remote or non-torch driver): it wraps no Hugging Face model"
        ) from None
    if _library(inner) is not None and "_original_component" not in getattr(inner, "_modules", {}):
        raise UnsupportedArchitectureError(
            f"this TransformerBridge wraps a TransformerLens-native {type(inner).__name__}, not a Hugging Face model "
            "(boot it with TransformerBridge.boot_transformers)"
        )
    hf = _strip_bridge(inner) if isinstance(inner, nn.Module) else inner
    if not _is_hf(hf):
        raise UnsupportedArchitectureError(
            f"this TransformerBridge wraps a {type(inner).__name__}, not a Hugging Face model "
            "(boot it with TransformerBridge.boot_transformers)"
        )
    return hf, getattr(bridge, "tokenizer", None)


def _from_nnsight(obj: Any) -> tuple[nn.Module, Any]:
    inner = obj.__dict__.get("_module")
    if inner is None:
        raise UnsupportedArchitectureError(f"this nnsight {type(obj).__name__} wraps no module")
    if _library(inner) is not None:
        return unwrap(inner)[0], getattr(obj, "tokenizer", None)
    if not _is_hf(inner):
        raise UnsupportedArchitectureError(f"this nnsight {type(obj).__name__} wraps a {type(inner).__name__}, not a Hugging Face causal LM")
    if getattr(obj, "dispatched", None) is False or any(p.is_meta for p in inner.parameters()):
        raise UnsupportedArchitectureError(
            f"this nnsight {type(obj).__name__} is not loaded yet (its weights are on the meta device): "
            "create it with dispatch=True, or give it a loaded Hugging Face model"
        )
    return inner, getattr(obj, "tokenizer", None)


def unwrap(model: Any) -> tuple[nn.Module, Any]:
    """The Hugging Face causal LM held by ``model`` and the holder's tokenizer (or None)."""
    lib = _library(model)
    if lib == "transformer_lens":
        if not hasattr(type(model), "original_model") and "original_model" not in getattr(model, "__dict__", {}):
            raise UnsupportedArchitectureError(
                f"a TransformerLens {type(model).__name__} holds no Hugging Face model: "
                "use TransformerBridge.boot_transformers(...) or pass the Hugging Face model"
            )
        return _from_bridge(model)
    if lib == "nnsight":
        return _from_nnsight(model)
    if isinstance(model, HFResidualModel):
        return model.hf, model.tokenizer
    if not _is_hf(model):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} is not a Hugging Face causal LM, a TransformerLens TransformerBridge or an nnsight model"
        )
    return model, None


def from_hf(model: Any, tokenizer: Any = None, *, granularity: str = "sublayer", name: str | None = None) -> HFResidualModel:
    """The jetex residual view of a Hugging Face causal LM, or of the one held by a
    TransformerLens ``TransformerBridge`` or an nnsight ``LanguageModel`` (see the module
    docstring). ``tokenizer``: default the holder's tokenizer (bridge, nnsight), else none.
    """
    hf, held_tokenizer = unwrap(model)
    return HFResidualModel.from_hf(hf, tokenizer if tokenizer is not None else held_tokenizer, granularity=granularity, name=name)


__all__ = ["from_hf", "unwrap"]
