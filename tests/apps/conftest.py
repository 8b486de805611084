"""Fixtures of the application tests (tiny models; helpers in ``apps_tiny``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps_tiny import PLANTED, tiny  # noqa: E402
from jetex.models.hf import HFResidualModel  # noqa: E402


@pytest.fixture(scope="module")
def model_a() -> HFResidualModel:
    return tiny(name="A")


@pytest.fixture(scope="module")
def model_b() -> HFResidualModel:
    """Model A with one embedding row (tied: also the unembedding row) of token PLANTED changed."""
    m = tiny(name="B")
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        m.hf.model.embed_tokens.weight[PLANTED] += 1.0 * torch.randn(m.d_model, generator=g)
    return m
