"""Hugging Face's own intermediate values of a forward pass, to check the residual view against.

:func:`hf_streams` runs the HF model once with ``output_hidden_states=True`` and forward
pre-hooks on the HF modules whose *input* is a residual stream:

- ``hidden``: HF's ``hidden_states`` — h at the input of each decoder layer (N of them),
  then HF's last entry (the final norm's output for every supported family);
- ``mid``: the stream after each layer's attention residual, i.e. the input of the
  layer's MLP input norm (``post_attention_layernorm`` / ``pre_feedforward_layernorm`` /
  ``ln_2``) — None for parallel-residual layers, which have no such stream;
- ``final_in``: the input of the final norm (the stream after the last layer).

The module paths are written out here per family, independently of
:mod:`jetex.models.adapters`, which is what these values check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# family: (decoder layers, MLP input norm inside a layer, final norm), dotted from the causal LM
_PATHS = {
    "LlamaForCausalLM": ("model.layers", "post_attention_layernorm", "model.norm"),
    "MistralForCausalLM": ("model.layers", "post_attention_layernorm", "model.norm"),
    "Qwen2ForCausalLM": ("model.layers", "post_attention_layernorm", "model.norm"),
    "OlmoForCausalLM": ("model.layers", "post_attention_layernorm", "model.norm"),
    "Gemma3ForCausalLM": ("model.layers", "pre_feedforward_layernorm", "model.norm"),
    "GPT2LMHeadModel": ("transformer.h", "ln_2", "transformer.ln_f"),
    "GPTNeoForCausalLM": ("transformer.h", "ln_2", "transformer.ln_f"),
    "GPTNeoXForCausalLM": ("gpt_neox.layers", "post_attention_layernorm", "gpt_neox.final_layer_norm"),
}


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


@dataclass
class HFStreams:
    hidden: tuple[Tensor, ...]
    mid: list[Tensor] | None
    final_in: Tensor
    logits: Tensor


def hf_streams(hf: nn.Module, ids: Tensor) -> HFStreams:
    """HF's hidden states, mid-layer streams and final-norm input for ``ids`` ``[b, t]``."""
    layers_path, mid_norm, final_path = _PATHS[type(hf).__name__]
    layers = _get(hf, layers_path)
    parallel = bool(getattr(hf.config, "use_parallel_residual", False))
    mids: list[Tensor] = []
    finals: list[Tensor] = []

    def grab(store: list[Tensor]):
        def hook(module, args):
            store.append(args[0].detach().clone())

        return hook

    handles = [_get(hf, final_path).register_forward_pre_hook(grab(finals))]
    if not parallel:
        handles += [getattr(layer, mid_norm).register_forward_pre_hook(grab(mids)) for layer in layers]
    try:
        with torch.no_grad():
            out = hf(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert len(finals) == 1 and len(mids) == (0 if parallel else len(layers))
    return HFStreams(tuple(out.hidden_states), None if parallel else mids, finals[0], out.logits)


def max_abs(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())
