"""Helpers of the application tests: tiny random models with a word-level tokenizer, brute-force tables."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _tiny import SPECIALS, WORDS, make_hf, make_tokenizer  # noqa: E402

from jetex.models.hf import HFResidualModel  # noqa: E402


def tiny(arch: str = "llama", seed: int = 0, name: str = "tiny", tokenizer=None, n_layers: int = 2) -> HFResidualModel:
    return HFResidualModel.from_hf(make_hf(arch, seed=seed, n_layers=n_layers), tokenizer=tokenizer or make_tokenizer(), name=name)


def other_tokenizer():
    """A word-level tokenizer with the same size but different words (another vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [w.upper() if i % 2 else w for i, w in enumerate(WORDS)]
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


PLANTED = 30  # token id whose embedding row is changed ("cat")



def full_logprobs(model, path: str = "direct", exclude_self: bool = True) -> torch.Tensor:
    """Brute force: log P(b|a) for every pair, one input token at a time ``[V, V]``."""
    from jetex.ngrams.paths import parse_path

    p = parse_path(model, path)[0]
    V = model.vocab_size
    rows = []
    with torch.no_grad():
        for a in range(V):
            lg = p.logits(model, torch.tensor([a]), 0)[0].double()
            if exclude_self:
                lg[a] = float("-inf")
            rows.append(torch.log_softmax(lg, -1))
    return torch.stack(rows)
