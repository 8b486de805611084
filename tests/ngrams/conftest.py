"""Fixtures for the n-gram tests: tiny random Hugging Face models (float64 for exactness checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ngrams_tiny import _wrap  # noqa: E402  (tiny HF models as residual views)


@pytest.fixture(scope="session")
def tiny_llama():
    """Tiny random Llama (2 layers, 4 heads, GQA, rotary, tied embeddings), float64."""
    return _wrap("llama")


@pytest.fixture(scope="session")
def tiny_gemma():
    """Tiny random Gemma 3 (q/k norms, sandwich norms, sliding window), float64."""
    return _wrap("gemma3")


@pytest.fixture(scope="session")
def tiny_gpt2():
    """Tiny random GPT-2 (absolute positions, biases, LayerNorm), float64."""
    return _wrap("gpt2")


@pytest.fixture(scope="session")
def tiny_llama_f32(tiny_llama_dir):
    """The tiny Llama loaded from its saved folder, as the CLI sees it (float32)."""
    import jetex

    return jetex.load(tiny_llama_dir)
