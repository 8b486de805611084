"""Fixtures for the n-gram tests: tiny random Hugging Face models (float64 for exactness checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _wrap(arch: str, seed: int = 0, dtype=torch.float64):
    from _tiny import make_hf, make_tokenizer

    from jetex.models.hf import HFResidualModel

    hf = make_hf(arch, seed=seed)
    m = HFResidualModel.from_hf(hf, make_tokenizer(), name=f"tiny-{arch}")
    return m.to(dtype)


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
