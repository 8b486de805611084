"""Tiny randomly initialised Hugging Face causal LMs with a word-level tokenizer, for tests.

Nothing is downloaded: configs are built in code, the tokenizer from a fixed word list.
``save_tiny(path, arch)`` writes a loadable HF folder (config, safetensors, tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = (
    "the a an of to in and is was on at for with by from as it he she they we you i this that "
    "cat dog sat mat door room red blue green house tree city river king queen man woman paris france "
    "italy rome capital big small good bad new old day night sun moon water fire eat ran walk said "
    ". , ! ? ' \" ( ) : ;"
).split()


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def make_hf(arch: str = "llama", vocab_size: int | None = None, seed: int = 0, n_layers: int = 2):
    """A tiny causal LM of ``arch`` (llama, gpt2, gemma3) with weights widened so logits are not ties."""
    import transformers as tf

    V = vocab_size or len(SPECIALS) + len(WORDS)
    torch.manual_seed(seed)
    common = dict(vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, **common)
        hf = tf.LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=64, **common)
        hf = tf.GPT2LMHeadModel(cfg)
    elif arch == "gemma3":
        cfg = tf.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
                                  num_key_value_heads=1, head_dim=8, max_position_embeddings=64, sliding_window=4, **common)
        hf = tf.Gemma3ForCausalLM(cfg)
    else:  # pragma: no cover
        raise ValueError(arch)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim >= 2:
                p.mul_(4.0)
    return hf.eval()


def save_tiny(path: Path, arch: str = "llama", seed: int = 0, n_layers: int = 2) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    make_hf(arch, seed=seed, n_layers=n_layers).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path
