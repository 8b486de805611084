"""Fixtures: tiny random HF models (float64) viewed as residual networks."""

from __future__ import annotations

import pytest
import torch
from attr_tiny_models import make_hf, make_tokenizer, wrap


@pytest.fixture(scope="session")
def word_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(word_tokenizer):
    """A tiny Llama (float64) as a residual view, with the word-level tokenizer."""
    hf = make_hf("llama", len(word_tokenizer)).to(torch.float64)
    return wrap(hf, word_tokenizer, "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2(word_tokenizer):
    """A tiny GPT-2 (absolute position embeddings in η), float64."""
    hf = make_hf("gpt2", len(word_tokenizer)).to(torch.float64)
    return wrap(hf, word_tokenizer, "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_gemma3(word_tokenizer):
    """A tiny Gemma 3 (√d-scaled embedding, sandwich norms), float64."""
    hf = make_hf("gemma3", len(word_tokenizer)).to(torch.float64)
    return wrap(hf, word_tokenizer, "tiny-gemma3")
