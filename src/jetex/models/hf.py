"""The residual-block view of a Hugging Face causal language model (paper Sec. 2).

:class:`HFResidualModel` wraps a ``transformers`` causal-LM model and reads it as
q = υ ∘ β_L ∘ … ∘ β_1 ∘ η through the architecture's declarative adapter
(:mod:`jetex.models.adapters`): η is the model's embedding, γ_1..γ_L are blocks that call
the model's own modules, γ_{L+1} is its final norm and U its unembedding. The view
reproduces :meth:`reference_logits` (the model's own forward pass) to float precision.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jetex.errors import InputError, UnsupportedArchitectureError
from jetex.finite import check_finite_weights
from jetex.models.adapters import AdapterSpec, adapter_for, attention_of, get_module
from jetex.models.base import HeadWeights, ResidualModel


_NOT_ARCHITECTURE = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "_commit_hash",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "use_cache",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
    }
)


def _architecture_names(hf: nn.Module) -> list[str]:
    names = [type(hf).__name__]
    names += list(getattr(hf.config, "architectures", None) or [])
    return names


class HFResidualModel(ResidualModel):
    """A Hugging Face causal LM as a residual network.

    Attributes: ``hf`` (the ``transformers`` model, eval mode, eager attention, frozen),
    ``config``, ``tokenizer`` (or None), ``name``, ``adapter`` (the :class:`AdapterSpec`),
    ``granularity`` (``"sublayer"``: attn.i / mlp.i blocks, L = 2N; ``"layer"``: layer.i
    blocks, L = N; parallel-residual models have one ``attn+mlp.i`` block per layer).
    """

    def __init__(
        self,
        hf: nn.Module,
        adapter: AdapterSpec,
        tokenizer: Any = None,
        granularity: str = "sublayer",
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.hf = hf
        self.adapter = adapter
        self.config = hf.config
        self.tokenizer = tokenizer
        self.granularity = granularity
        self.name = name or str(getattr(hf.config, "_name_or_path", "") or type(hf).__name__)
        self.blocks = nn.ModuleList(adapter.build_blocks(hf, granularity))  # type: ignore[arg-type]
        base = get_module(hf, adapter.base)
        self._embed_tokens = get_module(base, adapter.embed_tokens)
        self._embed_positions = get_module(base, adapter.embed_positions)
        self._final_norm = get_module(base, adapter.final_norm)
        self._unembed = get_module(hf, adapter.unembed)

    @classmethod
    def from_hf(
        cls,
        hf_model: nn.Module,
        tokenizer: Any = None,
        granularity: str = "sublayer",
        name: str | None = None,
        allow_nonfinite: bool | None = None,
    ) -> "HFResidualModel":
        """Wrap a loaded ``transformers`` causal LM (switches it to eager attention, eval, frozen).

        Raises :class:`UnsupportedArchitectureError` for architectures without an adapter
        or configs the adapter cannot represent exactly, and
        :class:`~jetex.errors.NonFiniteWeightsError` naming the first parameter or buffer
        holding NaN/Inf unless ``allow_nonfinite`` (default: :data:`jetex.finite.ALLOW_NONFINITE`,
        False unless the CLI's ``--allow-nonfinite`` is given).
        """
        if granularity not in ("sublayer", "layer"):
            raise InputError(f"unknown granularity {granularity!r}: use 'sublayer' or 'layer'")
        config = getattr(hf_model, "config", None)
        if config is None:
            raise UnsupportedArchitectureError(f"{type(hf_model).__name__} is not a Hugging Face model (no config)")
        adapter = adapter_for(_architecture_names(hf_model), config)
        check_finite_weights(hf_model, name or str(getattr(config, "_name_or_path", "") or type(hf_model).__name__), allow_nonfinite)
        if getattr(config, "_attn_implementation", "eager") != "eager":
            hf_model.set_attn_implementation("eager")
        hf_model.eval()
        hf_model.requires_grad_(False)
        return cls(hf_model, adapter, tokenizer=tokenizer, granularity=granularity, name=name)

    # ---- the four parts of q -------------------------------------------------------
    def embed(self, input_ids: Int[Tensor, "*b t"]) -> Float[Tensor, "*b t d"]:
        """η(z): token embedding (scaled by √d for Gemma 3) + learned position embedding (GPT-2, GPT-Neo)."""
        h = self._embed_tokens(input_ids)
        if self._embed_positions is not None:
            pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
            h = h + self._embed_positions(pos)
        return h

    def final_norm(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        """γ_{L+1}: the model's final norm module."""
        return self._final_norm(x)

    @property
    def unembedding_matrix(self) -> Float[Tensor, "v d"]:
        return self._unembed.weight

    @property
    def unembedding_bias(self) -> Tensor | None:
        return getattr(self._unembed, "bias", None)

    # ---- structure --------------------------------------------------------------------
    def architecture_config(self) -> dict[str, Any]:
        """The view's blocks plus the Hugging Face config, without what does not change the
        model's function (names and paths — ``_name_or_path``, the GGUF's display name
        ``_model_name_or_path`` —, transformers version, dtype — hashed per tensor —, cache
        and output switches)."""
        cfg = {k: v for k, v in self.config.to_dict().items() if k not in _NOT_ARCHITECTURE and "name_or_path" not in k}
        return {**super().architecture_config(), "hf_class": type(self.hf).__name__, "config": cfg}

    @property
    def d_model(self) -> int:
        return int(self.unembedding_matrix.shape[1])

    @property
    def n_layers(self) -> int:
        """N, the number of transformer layers."""
        return self.adapter.n_layers(self.hf)

    @property
    def max_length(self) -> int | None:
        """Context window from the config (``max_position_embeddings``)."""
        n = getattr(self.config, "max_position_embeddings", None)
        return None if n is None else int(n)

    def layer_of_block(self, l: int) -> int:
        """The 0-based transformer layer of block γ_l (l 1-based)."""
        return int(self.block(l).layer)

    def attn_blocks(self) -> list[int]:
        """1-based indices of the self-attention blocks (kind ``attn``)."""
        return [i + 1 for i, b in enumerate(self.blocks) if b.kind == "attn"]

    def mlp_blocks(self) -> list[int]:
        """1-based indices of the MLP blocks (kind ``mlp``): blocks whose γ attends to no other position."""
        return [i + 1 for i, b in enumerate(self.blocks) if b.kind == "mlp"]

    def head_weights(self, l: int) -> HeadWeights:
        """Per-head weights of the attention in block γ_l (an ``attn`` block, or the
        attention sub-layer of a ``layer`` / ``attn+mlp`` block)."""
        attn = attention_of(self.block(l))
        if attn is None:
            raise InputError(f"block {self.block(l).name} has no attention heads")
        return attn.head_weights()

    # ---- the reference ------------------------------------------------------------------
    def reference_logits(self, input_ids: Int[Tensor, "*b t"]) -> Float[Tensor, "*b t v"]:
        """The Hugging Face model's own forward logits (no cache, no padding)."""
        shape = input_ids.shape
        out = self.hf(input_ids=input_ids.reshape(-1, shape[-1]), use_cache=False)
        logits = out.logits
        return logits.reshape(*shape, logits.shape[-1])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, granularity={self.granularity!r}, L={self.n_blocks}"
