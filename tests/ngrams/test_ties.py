"""The global top-N order among pairs tied on their ranking value, with different inputs AND
different outputs: (value desc, input id asc, output id asc), in the engine and in the store."""

from __future__ import annotations

import numpy as np
import torch

from jetex.models.hf import HFResidualModel
from jetex.ngrams.engine import GlobalCandidates, bigram_table
from jetex.ngrams.extract import extract_ngrams
from jetex.ngrams.paths import parse_path
from jetex.ngrams.store import NgramStore


def test_merge_orders_ties_by_input_then_output_whatever_the_merge_order():
    lp = np.full(4, -1.0, np.float32)
    a = GlobalCandidates(np.array([2, 1]), np.array([0, 5]), lp[:2].copy(), lp[:2].copy())
    b = GlobalCandidates(np.array([1, 2]), np.array([3, 1]), lp[2:].copy(), lp[2:].copy())
    want = [(1, 3), (1, 5), (2, 0), (2, 1)]  # an order by output first would give (2,0), (2,1), (1,3), (1,5)
    for x, y in ((a, b), (b, a)):
        m = x.merged(y, 4)
        assert list(zip(m.input_ids.tolist(), m.output_ids.tolist())) == want
    m = GlobalCandidates.empty().merged(a, 1).merged(b, 1)  # the cut keeps the first of the tie
    assert list(zip(m.input_ids.tolist(), m.output_ids.tolist())) == [(1, 3)]


def _tied_model(tiny_llama, src: int, dups: tuple[int, ...]):
    """The tiny Llama with embedding row ``src`` copied into rows ``dups`` (tied unembedding):
    in the direct path inputs src, *dups give identical rows and outputs src, *dups identical
    columns, so e.g. the pairs (src, d) and (d, src) tie exactly."""
    hf = type(tiny_llama.hf)(tiny_llama.hf.config).to(torch.float64)
    hf.load_state_dict(tiny_llama.hf.state_dict())
    emb = hf.get_input_embeddings().weight
    with torch.no_grad():
        for d in dups:
            emb[d] = emb[src]
    assert hf.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # tied
    return HFResidualModel.from_hf(hf, tiny_llama.tokenizer, name="tiny-tied")


def _expected(model, path, G, dtype=np.float64):
    """Brute force: every pair sorted by (log-probability desc, input, output), the values
    rounded to ``dtype`` first (the store keeps float32)."""
    V = model.vocab_size
    lp = torch.log_softmax(path.logits(model, torch.arange(V)).double(), -1).numpy().astype(dtype)
    pairs = sorted((-float(lp[r, c]), r, c) for r in range(V) for c in range(V))[:G]
    return [(r, c) for _, r, c in pairs]


def test_engine_and_store_rank_ties_by_input_then_output(tiny_llama, tmp_path):
    (p,) = parse_path(tiny_llama, "direct")
    src = _expected(tiny_llama, p, 1)[0][0]  # the input of the best pair (tied embeddings: itself)
    V = tiny_llama.vocab_size
    dups = (V - 1, V - 2) if src < V - 2 else (V - 4, V - 3)
    m = _tied_model(tiny_llama, src, dups)
    G = 30
    want = _expected(m, p, G)
    # the test has teeth: pairs tied with different inputs and different outputs in the top G
    group = {src, *dups}
    tied = [(r, c) for r, c in want if r in group and c in group]
    assert len(tied) >= 4 and len({r for r, _ in tied}) >= 2 and len({c for _, c in tied}) >= 2
    for B in (4, 64):  # the order may not depend on how inputs are batched
        t = bigram_table(m, p, top_k=3, global_top=G, batch_size=B)
        # the engine ranks float32 scores (here log P): values that differ
        # in float64 by rounding alone tie there, and the (input, output) rule orders them
        assert t.global_top.scores.dtype == np.float32
        assert list(zip(t.global_top.input_ids.tolist(), t.global_top.output_ids.tolist())) == _expected(m, p, G, np.float32)
    db = tmp_path / "ties.duckdb"
    extract_ngrams(m, ["direct"], db=db, top_k=3, global_top=G, batch_size=5, fidelity_sample=0, progress=False,
                   score="logprob", exclude_self=False)  # the ranking _expected brute-forces
    with NgramStore(db, read_only=True) as store:
        (run,) = store.runs(status="done")
        rows = store.top_pairs(run["run_id"], G)
    assert [r["rank"] for r in rows] == list(range(1, G + 1))
    # the store ranks its float32 values: pairs whose float64 values differ by less than
    # float32 resolution tie there too, and the same rule orders them
    assert [(r["input_id"], r["output_id"]) for r in rows] == _expected(m, p, G, np.float32)
