"""jetex.ngram_table: a store's query results as an NgramTable, equal to the store's own rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jetex  # noqa: E402
from _tiny import make_hf, make_tokenizer  # noqa: E402
from jetex.errors import InputError  # noqa: E402
from jetex.models.hf import HFResidualModel  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    m = HFResidualModel.from_hf(make_hf("llama"), make_tokenizer(), name="tiny")
    db = tmp_path_factory.mktemp("ngt") / "n.duckdb"
    jetex.extract_ngrams(m, ["direct", "attn:0.1"], db=db, top_k=4, global_top=30, batch_size=16, fidelity_sample=None, progress=False)
    with jetex.NgramStore(db, read_only=True) as s:
        yield s


def test_bigram_and_trigram_tables(store, tmp_path):
    runs = {r["path"]: r for r in store.runs(status="done")}
    big = jetex.ngram_table(store, path="direct", n=5)
    assert big.kind == "bigram" and len(big) == 5
    want = store.top_pairs(runs["direct"]["run_id"], 5)
    assert [r["output"] for r in big.records()] == [w["output"] for w in want]
    assert [r["prob"] for r in big.records()] == [w["prob"] for w in want]
    one = jetex.ngram_table(store, path="direct", input_id=big.records()[0]["input_id"], n=3)
    assert [r["rank"] for r in one.records()] == [1, 2, 3]
    tri = jetex.ngram_table(store, path="attn:0.1", n=4)
    assert tri.kind == "trigram" and "context" in tri.columns and len(tri) == 4
    p = tri.save(tmp_path / "t.json")
    assert jetex.load_result(p).to_dict() == tri.to_dict()
    assert len(tri.to_dataframe()) == 4 if _has_pandas() else True
    with pytest.raises(InputError, match="several paths"):
        jetex.ngram_table(store)
    with pytest.raises(InputError, match="no finished run 99"):
        jetex.ngram_table(store, 99)


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True
