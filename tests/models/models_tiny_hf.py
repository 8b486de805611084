"""Tiny randomly initialised Hugging Face models of every supported architecture (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

V, D, T = 101, 32, 8  # vocab, width, test sequence length (> every sliding window below)
WINDOW = 4

_COMMON = dict(vocab_size=V, max_position_embeddings=64, attn_implementation="eager", bos_token_id=0, eos_token_id=1)


def _llama_like(cfg_cls, model_cls, **kw):
    cfg = cfg_cls(hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **_COMMON, **kw)
    return model_cls(cfg)


def make(arch: str) -> torch.nn.Module:
    """A tiny model of ``arch`` with perturbed norms and biases (so that none is trivially 1 or 0)."""
    torch.manual_seed(1234)
    if arch == "llama":
        m = _llama_like(LlamaConfig, LlamaForCausalLM)
    elif arch == "mistral":
        m = _llama_like(MistralConfig, MistralForCausalLM, sliding_window=WINDOW)
    elif arch == "qwen2":  # layer 0 full attention, layer 1 sliding; q/k/v biases
        m = _llama_like(Qwen2Config, Qwen2ForCausalLM, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    elif arch == "gemma3":
        cfg = Gemma3TextConfig(
            hidden_size=D,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **_COMMON,
        )
        m = Gemma3ForCausalLM(cfg)
    elif arch == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(n_embd=D, n_layer=2, n_head=4, n_positions=64, vocab_size=V, attn_implementation="eager", bos_token_id=0, eos_token_id=1))
    elif arch == "gpt_neo":
        cfg = GPTNeoConfig(
            hidden_size=D, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=WINDOW, **_COMMON
        )
        m = GPTNeoForCausalLM(cfg)
    elif arch in ("gpt_neox", "gpt_neox_seq"):
        cfg = GPTNeoXConfig(
            hidden_size=D,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.5,
            use_parallel_residual=(arch == "gpt_neox"),
            **_COMMON,
        )
        m = GPTNeoXForCausalLM(cfg)
    elif arch == "olmo":
        m = _llama_like(OlmoConfig, OlmoForCausalLM)
    elif arch == "opt":  # an architecture without an adapter
        from transformers import OPTConfig, OPTForCausalLM

        m = OPTForCausalLM(
            OPTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16, **_COMMON)
        )
    else:  # pragma: no cover
        raise KeyError(arch)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:  # norm weights and biases
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


ARCHS = ["llama", "mistral", "qwen2", "gemma3", "gpt2", "gpt_neo", "gpt_neox", "gpt_neox_seq", "olmo"]
WINDOWED = {"mistral", "qwen2", "gemma3", "gpt_neo"}
