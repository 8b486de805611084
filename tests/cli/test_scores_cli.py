"""``--score`` in ``jetex ngrams``: re-scoring a store without the model (exact, one transaction),
refusals of what a store cannot give, unknown names: one line, non-zero exit, nothing changed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pytest

from jetex.cli.main import main
from jetex.ngrams.store import NgramStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ngrams"))
from dbdump import dump  # noqa: E402

BASE = ["--top", "6", "--global-top", "25", "--fidelity-sample", "0", "-q"]


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def stores(tiny_llama_dir, tmp_path_factory):
    """Two stores of the same model: one extracted by zlogit, one by logprob."""
    d = tmp_path_factory.mktemp("scores")
    out = {}
    for sc in ("zlogit", "logprob"):
        db = d / f"{sc}.duckdb"
        assert main(["ngrams", "extract", "-m", tiny_llama_dir, "--path", "direct", "--path", "mlp:1", "--score", sc,
                     "--db", str(db), *BASE]) == 0
        out[sc] = db
    return out


def test_rescoring_gives_the_extraction_of_that_score(stores, capsys, tmp_path):
    capsys.readouterr()
    for path in ("direct", "mlp:1"):
        assert main(["ngrams", "top", "--db", str(stores["logprob"]), "--path", path, "-n", "25", "--score", "logprob",
                     "--json"]) == 0
        want = _json(capsys)["paths"][0]["rows"]
        # read-only re-scoring in memory
        assert main(["ngrams", "top", "--db", str(stores["zlogit"]), "--path", path, "-n", "25", "--score", "logprob",
                     "--json"]) == 0
        got = _json(capsys)["paths"][0]
        assert [(r["input_id"], r["output_id"]) for r in got["rows"]] == [(r["input_id"], r["output_id"]) for r in want]
        assert [r["score"] for r in got["rows"]] == pytest.approx([r["logprob"] for r in want], abs=1e-5)
    # written re-scoring: a new run per path, its top equal to the extraction's
    db = tmp_path / "copy.duckdb"
    db.write_bytes(stores["zlogit"].read_bytes())
    assert main(["ngrams", "rescore", "--db", str(db), "--score", "logprob", "--json"]) == 0
    res = _json(capsys)["runs"]
    assert [r["path"] for r in res] == ["direct", "mlp:1"] and all(r["top_exact"] for r in res)
    with NgramStore(db, read_only=True) as s, NgramStore(stores["logprob"], read_only=True) as ref:
        for r in res:
            run = s.run(r["run"])
            assert s.run_score(run) == "logprob" and run["status"] == "done"
            ref_run = [x for x in ref.runs() if x["path"] == r["path"]][0]
            got = [(p["input_id"], p["output_id"]) for p in s.top_pairs(run["run_id"], 25)]
            assert got == [(p["input_id"], p["output_id"]) for p in ref.top_pairs(ref_run["run_id"], 25)]
            assert len(s.ngrams(run["run_id"])) == len(ref.ngrams(ref_run["run_id"]))


def test_rescore_is_one_transaction(stores, capsys, tmp_path, monkeypatch):
    db = tmp_path / "copy.duckdb"
    db.write_bytes(stores["zlogit"].read_bytes())
    before = dump(db)

    def boom(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(NgramStore, "_insert", boom)
    assert main(["ngrams", "rescore", "--db", str(db), "--path", "direct", "--score", "logit"]) != 0
    err = _err(capsys)
    assert len(err) == 1 and "the disk is full" in err[0]
    assert dump(db) == before  # nothing half-written


def test_refusals_are_one_line(stores, capsys, tmp_path):
    capsys.readouterr()
    # another row order: pmi needs its own extraction
    assert main(["ngrams", "top", "--db", str(stores["zlogit"]), "--path", "direct", "--score", "pmi"]) != 0
    err = _err(capsys)
    assert len(err) == 1 and "re-extract with `jetex ngrams extract --score pmi`" in err[0]
    # an unknown name, before anything is opened or created
    db = tmp_path / "new.duckdb"
    assert main(["ngrams", "extract", "-m", "nowhere", "--db", str(db), "--score", "bogus", "-q"]) != 0
    err = _err(capsys)
    assert len(err) == 1 and "unknown score 'bogus'; use one of: logprob, logit, zlogit, pmi" in err[0]
    assert not db.exists()
    assert main(["ngrams", "top", "--db", str(stores["zlogit"]), "--score", "nope"]) != 0
    assert "unknown score 'nope'" in _err(capsys)[-1]
    # an old store: made before the per-input logit statistics existed
    old = tmp_path / "old.duckdb"
    old.write_bytes(stores["logprob"].read_bytes())
    con = duckdb.connect(str(old))
    con.execute("ALTER TABLE input_stats DROP COLUMN mean_logit")
    con.execute("ALTER TABLE input_stats DROP COLUMN std_logit")
    con.close()
    before = dump(old)
    for cmd in (["ngrams", "top", "--db", str(old), "--path", "direct", "--score", "zlogit"],
                ["ngrams", "rescore", "--db", str(old), "--score", "logit"]):
        assert main(cmd) != 0
        err = _err(capsys)
        assert len(err) == 1 and "older store" in err[0] and "re-extract" in err[0]
    assert dump(old) == before
    # the score it was made with still reads
    assert main(["ngrams", "top", "--db", str(old), "--path", "direct", "--score", "logprob", "-n", "3"]) == 0


def test_default_excludes_self_transitions_everywhere(stores, capsys):
    """`ngrams top` (like diff, index, dynamics, roles) shows no self-transition by default."""
    capsys.readouterr()
    assert main(["ngrams", "top", "--db", str(stores["zlogit"]), "--path", "direct", "-n", "25", "--json"]) == 0
    rows = _json(capsys)["paths"][0]["rows"]
    assert len(rows) == 25 and all(r["input_id"] != r["output_id"] for r in rows)
    assert len({round(r["score"], 6) for r in rows}) > 20


def test_export_carries_each_rows_score(stores, capsys, tmp_path):
    import pyarrow.parquet as pq

    capsys.readouterr()
    out = tmp_path / "x.parquet"
    assert main(["ngrams", "export", "--db", str(stores["zlogit"]), "--parquet", str(out)]) == 0
    assert "n-gram rows" in capsys.readouterr().out
    t = pq.read_table(out).to_pylist()
    assert {r["score_name"] for r in t} == {"zlogit"}
    assert main(["ngrams", "top", "--db", str(stores["zlogit"]), "--path", "mlp:1", "-n", "10", "--json"]) == 0
    top = _json(capsys)["paths"][0]["rows"]
    by_pair = {(r["run_id"], r["input_id"], r["output_id"]): r["score"] for r in t if r["path"] == "mlp:1"}
    rid = next(iter(by_pair))[0]
    for r in top:
        assert by_pair[(rid, r["input_id"], r["output_id"])] == pytest.approx(r["score"], abs=1e-4)
