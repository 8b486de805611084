"""Tiny randomly initialised Hugging Face models and their residual blocks, for jet tests.

Each builder returns the blocks of the first decoder layer as plain callables on a stream
``[b, t, d]``: ``attn`` (input norm + self-attention, causal mask — with the sliding window
for Mistral, Gemma 3 and GPT-Neo's local layer —, rotary embeddings where the architecture
has them, plus Gemma's output norm), ``mlp`` (norm + MLP), and ``layer`` (the whole HF
decoder layer called as one module, minus its input, i.e. γ at layer granularity).

Architectures: Llama, Mistral (sliding window), Qwen2 (q/k/v biases), Gemma 3 (sandwich
norms, q/k norms), GPT-2, GPT-Neo (local attention), GPT-NeoX parallel and sequential
residual (``gpt_neox_seq``: ``use_parallel_residual=False``), OLMo (clip_qkv).

Hugging Face RMSNorms (and rotary modules) compute in float32 whatever the input dtype:
run float64 jets of these blocks under :class:`jet_helpers.KeepFloat64`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

ARCHS = ("llama", "mistral", "qwen2", "gemma3", "gpt2", "gpt_neo", "gpt_neox", "gpt_neox_seq", "olmo")
WINDOW = 4  # sliding window of mistral, gemma3, gpt_neo: shorter than the test sequences (t = 5)


@dataclass
class TinyBlocks:
    arch: str
    model: nn.Module
    d: int
    attn: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    layer: Callable[[Tensor], Tensor]


def _causal_mask(t: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    m = torch.full((t, t), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return m[None, None]


def _window_mask(t: int, window: int | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive causal mask, with a sliding window (key j visible from i iff i − w < j ≤ i)."""
    i = torch.arange(t, device=device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed = allowed & (i[:, None] - i[None, :] < window)
    m = torch.zeros((t, t), dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return m[None, None]


def _rotary(model: nn.Module, h: Tensor, **kw) -> tuple[Tensor, Tensor]:
    pos = torch.arange(h.shape[-2], device=h.device)[None]
    return model.model.rotary_emb(h, pos, **kw)


def build(arch: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> TinyBlocks:
    """Build a 1-layer tiny model of ``arch`` (eager attention) and its blocks."""
    import transformers as tf

    torch.manual_seed(seed)
    d = 32
    common = dict(vocab_size=64, num_hidden_layers=1, attn_implementation="eager")
    if arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=d, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, **common)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "mistral":  # one sliding window for every layer
        cfg = tf.MistralConfig(
            hidden_size=d, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, sliding_window=WINDOW, **common
        )
        model = tf.MistralForCausalLM(cfg)
    elif arch == "qwen2":  # biases on q, k, v
        cfg = tf.Qwen2Config(hidden_size=d, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, **common)
        model = tf.Qwen2ForCausalLM(cfg)
    elif arch == "gemma3":
        cfg = tf.Gemma3TextConfig(
            hidden_size=d, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            sliding_window=WINDOW, layer_types=["sliding_attention"], **common,
        )
        model = tf.Gemma3ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=d, n_layer=1, n_head=4, n_positions=64, vocab_size=64, attn_implementation="eager")
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "gpt_neo":
        cfg = tf.GPTNeoConfig(
            hidden_size=d, num_layers=1, num_heads=4, attention_types=[[["local"], 1]], window_size=WINDOW,
            max_position_embeddings=64, vocab_size=64, attn_implementation="eager",
        )
        model = tf.GPTNeoForCausalLM(cfg)
    elif arch in ("gpt_neox", "gpt_neox_seq"):  # parallel / sequential residual
        cfg = tf.GPTNeoXConfig(
            hidden_size=d, intermediate_size=48, num_attention_heads=4, rotary_pct=0.25,
            use_parallel_residual=(arch == "gpt_neox"), **common,
        )
        model = tf.GPTNeoXForCausalLM(cfg)
    elif arch == "olmo":
        cfg = tf.OlmoConfig(hidden_size=d, intermediate_size=48, num_attention_heads=4, clip_qkv=1.0, **common)
        model = tf.OlmoForCausalLM(cfg)
    else:  # pragma: no cover
        raise ValueError(arch)
    model = model.to(dtype).eval()
    # random (not default-initialised) norm weights and biases so every parameter matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))

    def mask_for(h: Tensor) -> Tensor:
        return _causal_mask(h.shape[-2], h.dtype, h.device)

    if arch in ("llama", "mistral", "qwen2", "olmo"):
        layer = model.model.layers[0]
        window = WINDOW if arch == "mistral" else None

        def llama_mask(h: Tensor) -> Tensor:
            return _window_mask(h.shape[-2], window, h.dtype, h.device)

        def attn(h: Tensor) -> Tensor:
            cs = _rotary(model, h)
            return layer.self_attn(layer.input_layernorm(h), position_embeddings=cs, attention_mask=llama_mask(h))[0]

        def mlp(h: Tensor) -> Tensor:
            return layer.mlp(layer.post_attention_layernorm(h))

        def whole(h: Tensor) -> Tensor:
            out = layer(h, attention_mask=llama_mask(h), position_embeddings=_rotary(model, h))
            return (out[0] if isinstance(out, tuple) else out) - h

    elif arch == "gemma3":
        layer = model.model.layers[0]
        ltype = cfg.layer_types[0]

        def sw_mask(h: Tensor) -> Tensor:
            return _window_mask(h.shape[-2], cfg.sliding_window, h.dtype, h.device)

        def attn(h: Tensor) -> Tensor:
            cs = _rotary(model, h, layer_type=ltype)
            a = layer.self_attn(layer.input_layernorm(h), position_embeddings=cs, attention_mask=sw_mask(h))[0]
            return layer.post_attention_layernorm(a)

        def mlp(h: Tensor) -> Tensor:
            return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))

        def whole(h: Tensor) -> Tensor:
            cs = _rotary(model, h, layer_type=ltype)
            out = layer(h, position_embeddings=cs, attention_mask=sw_mask(h))
            return (out[0] if isinstance(out, tuple) else out) - h

    elif arch in ("gpt2", "gpt_neo"):
        layer = model.transformer.h[0]

        def attn(h: Tensor) -> Tensor:
            return layer.attn(layer.ln_1(h), attention_mask=mask_for(h))[0]

        def mlp(h: Tensor) -> Tensor:
            return layer.mlp(layer.ln_2(h))

        def whole(h: Tensor) -> Tensor:
            out = layer(h, attention_mask=mask_for(h))
            return (out[0] if isinstance(out, tuple) else out) - h

    elif arch in ("gpt_neox", "gpt_neox_seq"):
        layer = model.gpt_neox.layers[0]

        def attn(h: Tensor) -> Tensor:
            pos = torch.arange(h.shape[-2], device=h.device)[None]
            cs = model.gpt_neox.rotary_emb(h, pos)
            return layer.attention(layer.input_layernorm(h), attention_mask=mask_for(h), position_embeddings=cs)[0]

        def mlp(h: Tensor) -> Tensor:
            return layer.mlp(layer.post_attention_layernorm(h))

        def whole(h: Tensor) -> Tensor:
            pos = torch.arange(h.shape[-2], device=h.device)[None]
            cs = model.gpt_neox.rotary_emb(h, pos)
            out = layer(h, attention_mask=mask_for(h), position_embeddings=cs)
            return (out[0] if isinstance(out, tuple) else out) - h

    else:  # pragma: no cover
        raise ValueError(arch)
    return TinyBlocks(arch, model, d, attn, mlp, whole)
