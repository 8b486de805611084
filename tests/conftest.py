"""Shared fixtures. Real models are loaded once per session (weights cached on disk)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct residual view (sublayer granularity, float32)."""
    import jetex

    return jetex.load("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M residual view (sublayer granularity, float32)."""
    import jetex

    return jetex.load("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved tiny random Llama (2 layers, word-level tokenizer) loadable with ``jetex.load``."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama"))


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray instance with 2 CPUs for one test module (skipped without Ray)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20)
    yield ray
    ray.shutdown()
