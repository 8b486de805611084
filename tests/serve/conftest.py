"""Fixtures of the explorer tests: a tiny model, a slow copy of it, two tiny n-gram stores,
and a server on a free loopback port (started once per module)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_helpers import SlowBlocks, file_hash  # noqa: E402


@pytest.fixture(scope="session")
def serve_files(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama folder and two direct-path bigram stores (ranked by the default score):
    ``store_a`` of that model, ``store_b`` of the same architecture and tokenizer with perturbed
    weights (another model); ``store_a`` also holds an ``mlp:1`` run ranked by ``zlogit`` (a
    score other scores of its row order are re-scored from)."""
    import jetex
    import torch
    from jetex.ngrams import extract_ngrams

    root = tmp_path_factory.mktemp("serve")
    a = jetex.load(tiny_llama_dir)
    b = jetex.load(tiny_llama_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in b.parameters():
            if p.ndim >= 2:
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    assert a.fingerprint() != b.fingerprint()
    out = {"a_dir": tiny_llama_dir}
    for key, m in (("store_a", a), ("store_b", b)):
        db = root / f"{key}.duckdb"
        extract_ngrams(m, ["direct"], db=db, top_k=8, exclude_self=True, global_top=40, progress=False, fidelity_sample=0)
        out[key] = str(db)
    extract_ngrams(a, ["mlp:1"], db=out["store_a"], top_k=8, exclude_self=True, global_top=40, progress=False,
                   fidelity_sample=0, score="zlogit")
    return out


@pytest.fixture(scope="module")
def explorer(serve_files):
    """A server on a free loopback port with models ``tiny`` and ``slow`` (the same weights,
    every block call delayed) and the stores ``store_a`` (of ``tiny``) and ``store_b``."""
    import jetex
    from jetex.serve.app import create_app, start_in_thread

    tiny = jetex.load(serve_files["a_dir"])
    slow = jetex.load(serve_files["a_dir"])
    slow_hooks = SlowBlocks(slow, 0.15)
    hashes = {k: file_hash(serve_files[k]) for k in ("store_a", "store_b")}
    app = create_app({"tiny": tiny, "slow": slow}, [serve_files["store_a"], serve_files["store_b"]])
    srv = start_in_thread(app)
    srv.tiny, srv.slow, srv.slow_hooks, srv.app = tiny, slow, slow_hooks, app
    yield srv
    srv.stop()
    for k, h in hashes.items():  # the server never writes to a store
        assert file_hash(serve_files[k]) == h, f"{k} was modified by the server"
