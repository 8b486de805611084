"""Declarative adapters: how each Hugging Face architecture reads as a residual network.

An adapter is a small :class:`AdapterSpec` naming where the parts of the model live
(token/position embedding, decoder layers, attention, MLP, the norms around each
sub-layer, final norm, unembedding) and how the attention module is called (rotary
position embedding from the model's own rotary module, an additive causal mask with the
layer's sliding window). Blocks built from a spec call the Hugging Face modules
themselves: no model's forward math is re-implemented here, so the view reproduces the
original model's logits to float precision.

The residual view (paper Sec. 2, METHODS.md §1), q = υ ∘ β_L ∘ … ∘ β_1 ∘ η:

- η: ``embed_tokens(z)`` (+ ``embed_positions(0..t-1)`` for GPT-2 / GPT-Neo). Gemma 3's
  embedding multiplies by √d inside its embedding module, so the scaling is part of η.
- ``sublayer`` granularity (the paper's choice), N layers → L = 2N blocks:
  ``attn.i``: γ(x) = out_norm(attn(in_norm(x))) and ``mlp.i``: γ(x) = out_norm(mlp(in_norm(x))),
  with out_norm the identity except for Gemma 3's sandwich norms
  (``post_attention_layernorm`` / ``post_feedforward_layernorm``).
- ``layer`` granularity, L = N blocks ``layer.i``: γ(x) = a + m(x + a) with a = γ_attn(x),
  m = γ_mlp; i.e. layer(x) − x, computed through the two sub-layers.
- Parallel residual (GPT-NeoX / Pythia with ``use_parallel_residual=True``):
  h' = h + attn(ln1(h)) + mlp(ln2(h)). Attention and MLP read the same stream, so they are
  not two sequential residual blocks. Each layer is ONE block even in ``sublayer``
  granularity, named ``attn+mlp.i`` (``layer.i`` in ``layer`` granularity) with kind
  ``"layer"`` and γ(x) = attn(ln1(x)) + mlp(ln2(x)). Its two branches are exposed as
  ``block.branches`` (an attention block and an MLP block, each callable on x, summing to γ),
  so expansions may split them by linearity.
- γ_{L+1}: the final norm (``norm`` / ``ln_f`` / ``final_layer_norm``); U: ``lm_head.weight``.

Every block takes a stream ``[*b, t, d]`` and uses positions 0..t-1 and a causal mask
(plus the layer's sliding window) built from the shape only, so it has no Python control
flow on tensor values and traces with ``torch.fx.experimental.proxy_tensor.make_fx``.

Adapters refuse what they cannot represent exactly (``check``): final-logit soft-capping
(a tanh after U breaks υ = U γ_{L+1}), cross attention, encoder-decoder models,
bidirectional attention, stateful (dynamic / long-rope) rotary scaling. Attention
soft-capping is inside γ and is reproduced by the Hugging Face module itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from jetex.errors import InputError, UnsupportedArchitectureError
from jetex.models.base import Block, HeadWeights

AttnCall = Literal["rope", "absolute", "self_masked"]
RotaryCall = Literal["plain", "layer_type"]
HeadLayout = Literal["separate", "gpt2_conv1d", "neox_fused"]
Granularity = Literal["sublayer", "layer"]


# ---------------------------------------------------------------------------------------
# masks and module lookup
# ---------------------------------------------------------------------------------------
def causal_mask(
    t: int | torch.SymInt, window: int | None, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> Float[Tensor, "1 1 t t"]:
    """Additive attention mask ``[1, 1, t, t]``: 0 where query i may attend key j, the
    dtype's most negative finite value elsewhere (what Hugging Face's eager attention adds).

    Key j is visible from query i iff j ≤ i and, with a sliding window w, j > i − w (the
    query sees itself and the w − 1 keys before it), as in ``transformers.masking_utils``.
    """
    i = torch.arange(t, device=device).unsqueeze(-1)
    j = torch.arange(t, device=device).unsqueeze(0)
    allowed = j <= i
    if window is not None:
        allowed = allowed & (j > i - int(window))
    zero = torch.zeros((), dtype=dtype, device=device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device)
    return torch.where(allowed, zero, neg)[None, None]


def get_module(root: nn.Module, path: str | None) -> nn.Module | None:
    """The sub-module at dotted ``path`` (None for a None path)."""
    if path is None:
        return None
    mod: Any = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


# ---------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------
def _flatten(x: Tensor) -> tuple[Tensor, torch.Size]:
    """``[*b, t, d]`` → ``[B, t, d]`` (B = prod(b), 1 for a bare ``[t, d]``)."""
    shape = x.shape
    return x.reshape(-1, shape[-2], shape[-1]), shape


class AttentionBlock(Block):
    """γ(x) = out_norm(attn(in_norm(x))) through the Hugging Face attention module.

    ``attn`` is called with positions 0..t-1: rotary position embeddings come from the
    model's own rotary module (``rotary``), the mask from :func:`causal_mask` with the
    layer's ``window``. GPT-Neo's attention masks itself (``call="self_masked"``).
    """

    def __init__(
        self,
        name: str,
        layer: int,
        *,
        attn: nn.Module,
        in_norm: nn.Module | None,
        out_norm: nn.Module | None,
        rotary: nn.Module | None,
        call: AttnCall,
        rotary_call: RotaryCall | None,
        layer_type: str | None,
        window: int | None,
        spec: "AdapterSpec",
    ) -> None:
        super().__init__(name, "attn", layer)
        self.attn = attn
        self.in_norm = in_norm
        self.out_norm = out_norm
        self.rotary = rotary
        self.call = call
        self.rotary_call = rotary_call
        self.layer_type = layer_type
        self.window = window
        self.spec = spec

    def position_embeddings(self, t: int | torch.SymInt, like: Tensor) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) ``[1, t, r]`` of the model's rotary module for positions 0..t-1 (None without rotary)."""
        if self.rotary is None:
            return None
        pos = torch.arange(t, device=like.device).unsqueeze(0)
        if self.rotary_call == "layer_type":
            return self.rotary(like, pos, self.layer_type)
        return self.rotary(like, pos)

    def attention_mask(self, t: int | torch.SymInt, like: Tensor) -> Tensor | None:
        """The additive mask ``[1, 1, t, t]`` passed to the module (None when it masks itself)."""
        if self.call == "self_masked":
            return None
        return causal_mask(t, self.window, like.dtype, like.device)

    def attend(self, h: Float[Tensor, "B t d"]) -> Float[Tensor, "B t d"]:
        """attn(h) on an already normalised ``[B, t, d]`` input (no output norm)."""
        t = h.shape[-2]
        mask = self.attention_mask(t, h)
        if self.call == "rope":
            out = self.attn(hidden_states=h, position_embeddings=self.position_embeddings(t, h), attention_mask=mask)
        else:
            out = self.attn(h, attention_mask=mask)
        return out[0]

    def forward(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        h, shape = _flatten(x)
        if self.in_norm is not None:
            h = self.in_norm(h)
        out = self.attend(h)
        if self.out_norm is not None:
            out = self.out_norm(out)
        return out.reshape(shape)

    def head_weights(self) -> HeadWeights:
        """Per-head W_Q, W_K, W_V, W_O (key/value heads repeated for GQA) of this attention."""
        return _head_weights(self)


class MLPBlock(Block):
    """γ(x) = out_norm(mlp(in_norm(x))) through the Hugging Face MLP module."""

    def __init__(self, name: str, layer: int, *, mlp: nn.Module, in_norm: nn.Module | None, out_norm: nn.Module | None) -> None:
        super().__init__(name, "mlp", layer)
        self.mlp = mlp
        self.in_norm = in_norm
        self.out_norm = out_norm

    def forward(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        h = self.in_norm(x) if self.in_norm is not None else x
        out = self.mlp(h)
        if self.out_norm is not None:
            out = self.out_norm(out)
        return out


class LayerBlock(Block):
    """One sequential transformer layer as one block: γ(x) = a + m(x + a), a = γ_attn(x).

    ``sublayers`` are the attention and MLP blocks of ``sublayer`` granularity.
    """

    def __init__(self, name: str, layer: int, attn: AttentionBlock, mlp: MLPBlock) -> None:
        super().__init__(name, "layer", layer)
        self.sublayers = nn.ModuleList([attn, mlp])

    @property
    def attention(self) -> AttentionBlock:
        return self.sublayers[0]

    def forward(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        a = self.sublayers[0](x)
        return a + self.sublayers[1](x + a)


class ParallelBlock(Block):
    """A parallel-residual layer (GPT-NeoX): γ(x) = attn(ln1(x)) + mlp(ln2(x)).

    ``branches`` = [attention block, MLP block], both functions of the same stream x;
    they sum to γ (expansions may split them by linearity).
    """

    def __init__(self, name: str, layer: int, attn: AttentionBlock, mlp: MLPBlock) -> None:
        super().__init__(name, "layer", layer)
        self.branches = nn.ModuleList([attn, mlp])

    @property
    def attention(self) -> AttentionBlock:
        return self.branches[0]

    def forward(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        return self.branches[0](x) + self.branches[1](x)


def attention_of(block: Block) -> AttentionBlock | None:
    """The attention sub-layer inside a block (itself for ``attn`` blocks), or None."""
    if isinstance(block, AttentionBlock):
        return block
    if isinstance(block, (LayerBlock, ParallelBlock)):
        return block.attention
    return None


# ---------------------------------------------------------------------------------------
# per-head weights
# ---------------------------------------------------------------------------------------
def _head_weights(block: AttentionBlock) -> HeadWeights:
    spec = block.spec
    attn = block.attn
    if getattr(getattr(attn, "config", None), "clip_qkv", None) is not None:
        raise InputError(f"block {block.name}: head weights cannot represent OLMo's clip_qkv clamping")
    H, Hkv, dh = spec.n_heads(attn)
    rep = H // Hkv
    q_name, k_name, v_name, o_name = spec.proj_names

    def bias(lin: nn.Module) -> Tensor | None:
        b = getattr(lin, "bias", None)
        return None if b is None else b.detach()

    if spec.head_layout == "separate":
        q, k, v, o = (getattr(attn, n) for n in (q_name, k_name, v_name, o_name))
        d = q.weight.shape[1]
        W_Q = q.weight.detach().view(H, dh, d).transpose(1, 2)
        W_K = k.weight.detach().view(Hkv, dh, d).transpose(1, 2).repeat_interleave(rep, dim=0)
        W_V = v.weight.detach().view(Hkv, dh, d).transpose(1, 2).repeat_interleave(rep, dim=0)
        W_O = o.weight.detach().view(d, H, dh).permute(1, 2, 0)
        bq, bk, bv = bias(q), bias(k), bias(v)
        b_Q = None if bq is None else bq.view(H, dh)
        b_K = None if bk is None else bk.view(Hkv, dh).repeat_interleave(rep, dim=0)
        b_V = None if bv is None else bv.view(Hkv, dh).repeat_interleave(rep, dim=0)
        b_O = bias(o)
    elif spec.head_layout == "gpt2_conv1d":  # Conv1D: y = x @ W + b, W [d_in, d_out]
        c_attn, c_proj = getattr(attn, q_name), getattr(attn, o_name)
        W = c_attn.weight.detach()
        d = W.shape[0]
        W_Q, W_K, W_V = (W[:, i * d : (i + 1) * d].view(d, H, dh).permute(1, 0, 2) for i in range(3))
        b = c_attn.bias.detach()
        b_Q, b_K, b_V = (b[i * d : (i + 1) * d].view(H, dh) for i in range(3))
        W_O = c_proj.weight.detach().view(H, dh, d)
        b_O = bias(c_proj)
    elif spec.head_layout == "neox_fused":  # rows per head: [q_h | k_h | v_h]
        qkv, dense = getattr(attn, q_name), getattr(attn, o_name)
        d = qkv.weight.shape[1]
        W = qkv.weight.detach().view(H, 3, dh, d)
        W_Q, W_K, W_V = (W[:, i].transpose(1, 2) for i in range(3))
        bb = bias(qkv)
        b_Q = b_K = b_V = None
        if bb is not None:
            bb = bb.view(H, 3, dh)
            b_Q, b_K, b_V = bb[:, 0], bb[:, 1], bb[:, 2]
        W_O = dense.weight.detach().view(d, H, dh).permute(1, 2, 0)
        b_O = bias(dense)
    else:  # pragma: no cover
        raise AssertionError(spec.head_layout)
    cos_sin = block.position_embeddings(1, W_Q) if block.rotary is not None else None
    rotary_dims = None if cos_sin is None else int(cos_sin[0].shape[-1])
    if rotary_dims is not None and rotary_dims == dh:
        rotary_dims = None
    return HeadWeights(
        W_Q=W_Q,
        W_K=W_K,
        W_V=W_V,
        W_O=W_O,
        b_Q=b_Q,
        b_K=b_K,
        b_V=b_V,
        b_O=b_O,
        scale=float(getattr(attn, "scaling", 1.0)) if spec.scaled else 1.0,
        rotary=block.rotary is not None,
        rotary_dims=rotary_dims,
        q_norm=getattr(attn, "q_norm", None),
        k_norm=getattr(attn, "k_norm", None),
    )


def _rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rotary(x: Float[Tensor, "*b t r"], cos: Tensor, sin: Tensor) -> Float[Tensor, "*b t r"]:
    """Rotary position embedding, Hugging Face's rotate-half convention: x cos + rot(x) sin."""
    return x * cos + _rotate_half(x) * sin


def head_attention(
    hw: HeadWeights,
    x: Float[Tensor, "*b t d"],
    mask: Float[Tensor, "*m t t"] | None = None,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
) -> Float[Tensor, "*b h t d"]:
    """Each head's output ``[*b, H, t, d]`` recomputed from :class:`HeadWeights`.

    ``x`` is the normalised stream (the attention's input). Per head h:
    q = x W_Q[h] + b_Q[h] (then ``q_norm`` and rotary on the first ``rotary_dims``
    dims where set), likewise k; v = x W_V[h] + b_V[h];
    out_h = softmax(q kᵀ · scale + mask) v W_O[h]. The block's attention output is
    Σ_h out_h + b_O (before any output norm). ``mask`` is additive (see :func:`causal_mask`).
    """
    q = torch.einsum("...td,hde->...hte", x, hw.W_Q)
    k = torch.einsum("...td,hde->...hte", x, hw.W_K)
    v = torch.einsum("...td,hde->...hte", x, hw.W_V)
    if hw.b_Q is not None:
        q = q + hw.b_Q[:, None, :]
    if hw.b_K is not None:
        k = k + hw.b_K[:, None, :]
    if hw.b_V is not None:
        v = v + hw.b_V[:, None, :]
    if hw.q_norm is not None:
        q = hw.q_norm(q)
    if hw.k_norm is not None:
        k = hw.k_norm(k)
    if hw.rotary:
        if position_embeddings is None:
            raise InputError("this attention uses rotary position embeddings: pass position_embeddings=(cos, sin)")
        cos, sin = position_embeddings
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # [.., 1, t, r] broadcasts over heads
        r = cos.shape[-1]
        q = torch.cat((apply_rotary(q[..., :r], cos, sin), q[..., r:]), dim=-1)
        k = torch.cat((apply_rotary(k[..., :r], cos, sin), k[..., r:]), dim=-1)
    scores = q @ k.transpose(-1, -2) * hw.scale
    if mask is not None:
        scores = scores + mask
    pattern = torch.softmax(scores, dim=-1)
    return (pattern @ v) @ hw.W_O


# ---------------------------------------------------------------------------------------
# the declarative spec
# ---------------------------------------------------------------------------------------
def _no_window(config: Any, i: int) -> int | None:
    return None


def _window_from_layer_types(config: Any, i: int) -> int | None:
    types = getattr(config, "layer_types", None)
    if types is not None and types[i] == "sliding_attention":
        return int(config.sliding_window)
    return None


def _window_all_layers(config: Any, i: int) -> int | None:
    w = getattr(config, "sliding_window", None)
    return None if w is None else int(w)


def _window_gpt_neo(config: Any, i: int) -> int | None:
    return int(config.window_size) if config.attention_layers[i] == "local" else None


def _layer_type(config: Any, i: int) -> str | None:
    types = getattr(config, "layer_types", None)
    return None if types is None else str(types[i])


def _heads_standard(attn: nn.Module) -> tuple[int, int, int]:
    c = attn.config
    H = int(c.num_attention_heads)
    Hkv = int(getattr(c, "num_key_value_heads", None) or H)
    return H, Hkv, int(attn.head_dim)


def _heads_gpt2(attn: nn.Module) -> tuple[int, int, int]:
    return int(attn.num_heads), int(attn.num_heads), int(attn.head_dim)


def _heads_neox(attn: nn.Module) -> tuple[int, int, int]:
    H = int(attn.config.num_attention_heads)
    return H, H, int(attn.head_size)


def _false(config: Any) -> bool:
    return False


def _check_common(config: Any) -> None:
    name = _arch_name(config)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(f"{name}: encoder-decoder models are not supported")
    if getattr(config, "add_cross_attention", False):
        raise UnsupportedArchitectureError(f"{name}: cross attention cannot be represented as a residual block of the stream alone")
    if getattr(config, "final_logit_softcapping", None) is not None:
        raise UnsupportedArchitectureError(
            f"{name}: final_logit_softcapping={config.final_logit_softcapping} puts a tanh after the unembedding, "
            "so υ = U γ_(L+1) is not linear in U; refusing rather than misrepresenting the model"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    ropes = rope.values() if rope and all(isinstance(v, dict) for v in rope.values()) else [rope]
    for r in ropes:
        kind = str((r or {}).get("rope_type", "default"))
        if "dynamic" in kind or "longrope" in kind:
            raise UnsupportedArchitectureError(
                f"{name}: rope_type={kind!r} rescales positions depending on the sequence seen so far (stateful); not supported"
            )
    if getattr(config, "use_bidirectional_attention", False):
        raise UnsupportedArchitectureError(f"{name}: bidirectional attention is not a causal language model")


def _check_gpt_neo(config: Any) -> None:
    _check_common(config)
    bad = sorted(set(config.attention_layers) - {"global", "local"})
    if bad:
        raise UnsupportedArchitectureError(f"GPTNeoForCausalLM: unknown attention layer types {bad}")


def _arch_name(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    return archs[0] if archs else str(getattr(config, "model_type", "model"))


@dataclass(frozen=True)
class AdapterSpec:
    """Where the parts of one architecture family live and how its attention is called.

    Paths are dotted attribute paths: ``base`` from the causal-LM model to its decoder
    stack, the others from ``base`` (embeddings, ``layers``, ``final_norm``) or from one
    decoder layer (``attn``, ``mlp`` and their norms); ``unembed`` is from the causal-LM
    model. ``window(config, i)`` is layer i's sliding window (None: full causal),
    ``layer_type(config, i)`` the key passed to a per-layer-type rotary module.
    """

    family: str
    architectures: tuple[str, ...]
    base: str
    embed_tokens: str
    layers: str
    attn: str
    mlp: str
    attn_in_norm: str | None
    mlp_in_norm: str | None
    final_norm: str
    attn_out_norm: str | None = None
    mlp_out_norm: str | None = None
    embed_positions: str | None = None
    rotary: str | None = None
    rotary_call: RotaryCall | None = None
    unembed: str = "lm_head"
    attn_call: AttnCall = "rope"
    window: Callable[[Any, int], int | None] = _no_window
    layer_type: Callable[[Any, int], str | None] = lambda config, i: None
    parallel_residual: Callable[[Any], bool] = _false
    head_layout: HeadLayout = "separate"
    proj_names: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    n_heads: Callable[[nn.Module], tuple[int, int, int]] = _heads_standard
    scaled: bool = True
    check: Callable[[Any], None] = _check_common
    notes: str = ""

    # ---- building -------------------------------------------------------------------
    def n_layers(self, hf: nn.Module) -> int:
        return len(get_module(get_module(hf, self.base), self.layers))

    def sublayers(self, hf: nn.Module, i: int) -> tuple[AttentionBlock, MLPBlock]:
        """The attention and MLP blocks of decoder layer i (0-based)."""
        base = get_module(hf, self.base)
        layer = get_module(base, self.layers)[i]
        config = hf.config
        attn = AttentionBlock(
            f"attn.{i}",
            i,
            attn=get_module(layer, self.attn),
            in_norm=get_module(layer, self.attn_in_norm),
            out_norm=get_module(layer, self.attn_out_norm),
            rotary=get_module(base, self.rotary),
            call=self.attn_call,
            rotary_call=self.rotary_call,
            layer_type=self.layer_type(config, i),
            window=self.window(config, i),
            spec=self,
        )
        mlp = MLPBlock(
            f"mlp.{i}",
            i,
            mlp=get_module(layer, self.mlp),
            in_norm=get_module(layer, self.mlp_in_norm),
            out_norm=get_module(layer, self.mlp_out_norm),
        )
        return attn, mlp

    def build_blocks(self, hf: nn.Module, granularity: Granularity) -> list[Block]:
        """γ_1..γ_L for ``granularity`` (see the module docstring for names and kinds)."""
        if granularity not in ("sublayer", "layer"):
            raise InputError(f"unknown granularity {granularity!r}: use 'sublayer' or 'layer'")
        parallel = bool(self.parallel_residual(hf.config))
        blocks: list[Block] = []
        for i in range(self.n_layers(hf)):
            attn, mlp = self.sublayers(hf, i)
            if parallel:
                blocks.append(ParallelBlock(f"attn+mlp.{i}" if granularity == "sublayer" else f"layer.{i}", i, attn, mlp))
            elif granularity == "sublayer":
                blocks += [attn, mlp]
            else:
                blocks.append(LayerBlock(f"layer.{i}", i, attn, mlp))
        return blocks


LLAMA = AdapterSpec(
    family="llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
    base="model",
    embed_tokens="embed_tokens",
    layers="layers",
    attn="self_attn",
    mlp="mlp",
    attn_in_norm="input_layernorm",
    mlp_in_norm="post_attention_layernorm",
    final_norm="norm",
    rotary="rotary_emb",
    rotary_call="plain",
    # Mistral: one sliding window for every layer; Qwen2: per layer via layer_types.
    window=lambda config, i: (
        _window_from_layer_types(config, i)
        if getattr(config, "layer_types", None) is not None
        else _window_all_layers(config, i)
    ),
    notes="RMSNorm pre-norm; rotary from model.rotary_emb; GQA",
)

GEMMA3 = AdapterSpec(
    family="gemma3",
    architectures=("Gemma3ForCausalLM",),
    base="model",
    embed_tokens="embed_tokens",  # Gemma3TextScaledWordEmbedding: includes the √d scale
    layers="layers",
    attn="self_attn",
    mlp="mlp",
    attn_in_norm="input_layernorm",
    attn_out_norm="post_attention_layernorm",
    mlp_in_norm="pre_feedforward_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
    final_norm="norm",
    rotary="rotary_emb",
    rotary_call="layer_type",  # local (sliding) and global layers have different rope bases
    window=_window_from_layer_types,
    layer_type=_layer_type,
    notes="sandwich norms; embedding scaled by √d; sliding-window local layers; q/k norms",
)

GPT2 = AdapterSpec(
    family="gpt2",
    architectures=("GPT2LMHeadModel",),
    base="transformer",
    embed_tokens="wte",
    embed_positions="wpe",
    layers="h",
    attn="attn",
    mlp="mlp",
    attn_in_norm="ln_1",
    mlp_in_norm="ln_2",
    final_norm="ln_f",
    attn_call="absolute",
    head_layout="gpt2_conv1d",
    proj_names=("c_attn", "c_attn", "c_attn", "c_proj"),
    n_heads=_heads_gpt2,
    notes="learned absolute positions in η; LayerNorm; Conv1D projections",
)

GPT_NEO = AdapterSpec(
    family="gpt_neo",
    architectures=("GPTNeoForCausalLM",),
    base="transformer",
    embed_tokens="wte",
    embed_positions="wpe",
    layers="h",
    attn="attn.attention",
    mlp="mlp",
    attn_in_norm="ln_1",
    mlp_in_norm="ln_2",
    final_norm="ln_f",
    attn_call="self_masked",  # causal / local window masks are buffers of the module
    window=_window_gpt_neo,
    proj_names=("q_proj", "k_proj", "v_proj", "out_proj"),
    n_heads=_heads_gpt2,
    scaled=False,  # GPT-Neo does not scale q·k
    check=_check_gpt_neo,
    notes="global/local attention layers; unscaled attention logits",
)

GPT_NEOX = AdapterSpec(
    family="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    base="gpt_neox",
    embed_tokens="embed_in",
    layers="layers",
    attn="attention",
    mlp="mlp",
    attn_in_norm="input_layernorm",
    mlp_in_norm="post_attention_layernorm",
    final_norm="final_layer_norm",
    rotary="rotary_emb",
    rotary_call="plain",
    parallel_residual=lambda config: bool(getattr(config, "use_parallel_residual", False)),
    head_layout="neox_fused",
    proj_names=("query_key_value", "query_key_value", "query_key_value", "dense"),
    n_heads=_heads_neox,
    notes="partial rotary; parallel residual → one attn+mlp block per layer",
)

OLMO = AdapterSpec(
    family="olmo",
    architectures=("OlmoForCausalLM",),
    base="model",
    embed_tokens="embed_tokens",
    layers="layers",
    attn="self_attn",
    mlp="mlp",
    attn_in_norm="input_layernorm",
    mlp_in_norm="post_attention_layernorm",
    final_norm="norm",
    rotary="rotary_emb",
    rotary_call="plain",
    notes="non-parametric LayerNorm",
)

ADAPTERS: tuple[AdapterSpec, ...] = (LLAMA, GEMMA3, GPT2, GPT_NEO, GPT_NEOX, OLMO)
REGISTRY: dict[str, AdapterSpec] = {arch: spec for spec in ADAPTERS for arch in spec.architectures}


def supported_architectures() -> list[str]:
    """The ``config.architectures`` names that have an adapter."""
    return sorted(REGISTRY)


def adapter_for(architecture: str | list[str] | tuple[str, ...] | None, config: Any = None) -> AdapterSpec:
    """The adapter registered for ``architecture`` (a name or a ``config.architectures`` list).

    Runs the adapter's ``check(config)`` when a config is given.
    Raises :class:`UnsupportedArchitectureError` naming the supported architectures.
    """
    names = [architecture] if isinstance(architecture, str) else list(architecture or [])
    for n in names:
        if n in REGISTRY:
            spec = REGISTRY[n]
            if config is not None:
                spec.check(config)
            return spec
    shown = ", ".join(names) if names else "unknown"
    raise UnsupportedArchitectureError(
        f"unsupported architecture {shown}; supported: {', '.join(supported_architectures())}"
    )
