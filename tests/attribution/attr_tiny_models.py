"""Tiny random Hugging Face causal LMs with a word-level tokenizer (attribution and CLI tests).

The vocabulary is every word of the shipped evaluation set (plus specials), so those
prompts tokenise without unknown words.
"""

from __future__ import annotations

import re

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from jetex.attribution import load_prompts

    words: list[str] = []
    for line in load_prompts():
        for w in re.findall(r"\w+|[^\w\s]", line):
            if w not in words:
                words.append(w)
    words += [w for w in ("Paris", "mat", "door", "room", "red", "blue", "green") if w not in words]
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def make_hf(arch: str, vocab_size: int, seed: int = 0):
    """A tiny randomly initialised causal LM of the given architecture family."""
    import transformers as tf

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = tf.LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            pad_token_id=0,
        )
        hf = tf.LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
        hf = tf.GPT2LMHeadModel(cfg)
    elif arch == "gemma3":
        cfg = tf.Gemma3TextConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=8, max_position_embeddings=64, sliding_window=4, bos_token_id=1,
            eos_token_id=2, pad_token_id=0,
        )
        hf = tf.Gemma3ForCausalLM(cfg)
    else:  # pragma: no cover
        raise ValueError(arch)
    # random init is small: widen it so predictions are not all ties
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    return hf.eval()


def wrap(hf, tokenizer, name: str):
    from jetex.models.hf import HFResidualModel

    return HFResidualModel.from_hf(hf, tokenizer=tokenizer, name=name)
