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
    assert len(err) == 1 and "unknown score 'bogus'; use one of: logprob, logit, zlogit, pmi, zpmi" in err[0]
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


def test_default_excludes_self_transitions_everywhere(stores, tiny_llama_dir, capsys, tmp_path):
    """`ngrams top` (like diff, index, dynamics, roles) shows no self-transition by default: on a
    store extracted with every default (the default score, zpmi), and on a store of the former
    default zlogit, which `ngrams top` without --score reads under its own score."""
    from jetex.ngrams.scores import DEFAULT_SCORE

    db = tmp_path / "default.duckdb"
    assert main(["ngrams", "extract", "-m", tiny_llama_dir, "--path", "direct", "--db", str(db), *BASE]) == 0
    capsys.readouterr()
    for src, want in ((db, DEFAULT_SCORE), (stores["zlogit"], "zlogit")):
        assert main(["ngrams", "top", "--db", str(src), "--path", "direct", "-n", "25", "--json"]) == 0
        got = _json(capsys)["paths"][0]
        rows = got["rows"]
        assert got["score"] == want
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


# ---------------------------------------------------------------------------------------- zpmi
def _zpmi_brute(model, path: str):
    """zpmi of every (a, b) in float64 from the definition, self-transitions excluded (numpy)."""
    import numpy as np
    import torch

    from jetex.ngrams.paths import parse_path

    (p,) = parse_path(model, path)
    V = model.vocab_size
    with torch.no_grad():
        z = p.logits(model, torch.arange(V)).double().numpy()
    keep = ~np.eye(V, dtype=bool)
    n = V - 1
    mu = np.where(keep, z, 0).sum(1, keepdims=True) / n
    sd = np.sqrt((np.where(keep, z - mu, 0) ** 2).sum(1, keepdims=True) / n)
    zeta = np.where(sd > 1e-12 * (1 + np.abs(mu)), (z - mu) / np.where(sd > 0, sd, 1), 0.0)
    zeta = np.where(keep, zeta, -np.inf)
    m = zeta.max(1, keepdims=True)
    logsm = zeta - m - np.log(np.exp(zeta - m).sum(1, keepdims=True))
    logqz = np.log(np.exp(logsm).mean(0))
    return logsm - logqz[None, :]


@pytest.fixture(scope="module")
def tiny_llama_f32(tiny_llama_dir):
    """The tiny Llama as the CLI loads it (float32)."""
    import jetex

    return jetex.load(tiny_llama_dir)


@pytest.fixture(scope="module")
def zpmi_store(tiny_llama_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("zpmi") / "zpmi.duckdb"
    assert main(["ngrams", "extract", "-m", tiny_llama_dir, "--path", "direct", "--path", "mlp:1", "--score", "zpmi",
                 "--db", str(db), *BASE]) == 0
    return db


def test_zpmi_end_to_end(zpmi_store, tiny_llama_f32, capsys):
    """`--score zpmi`: the exact global top-25 and every input's top-6 by zpmi (float64 brute
    force over all N × V pairs), read back by `ngrams top`, with no self-transition."""
    import numpy as np

    capsys.readouterr()
    for path in ("direct", "mlp:1"):
        want = _zpmi_brute(tiny_llama_f32, path)
        V = want.shape[0]
        order = sorted(((-want[a, b], a, b) for a in range(V) for b in range(V) if a != b))[:25]
        assert main(["ngrams", "top", "--db", str(zpmi_store), "--path", path, "-n", "25", "--score", "zpmi", "--json"]) == 0
        got = _json(capsys)["paths"][0]
        assert got["score"] == "zpmi" and "PMI of z-scored logits" in got["section"]
        assert [(r["input_id"], r["output_id"]) for r in got["rows"]] == [(a, b) for _, a, b in order]
        assert [r["score"] for r in got["rows"]] == pytest.approx([-v for v, _, _ in order], abs=1e-4)
        # one input's next tokens, valued from the stored statistics (lse_ζ, log q_ζ)
        a = order[0][1]
        assert main(["ngrams", "top", "--db", str(zpmi_store), "--path", path, "--token", f"#{a}", "-n", "6", "--json"]) == 0
        rows = _json(capsys)["paths"][0]["rows"]
        best = sorted((b for b in range(V) if b != a), key=lambda b: (-want[a, b], b))[:6]
        assert [r["output_id"] for r in rows] == best
        assert [r["score"] for r in rows] == pytest.approx([want[a, b] for b in best], abs=1e-4)
        with NgramStore(zpmi_store, read_only=True) as s:
            run = [r for r in s.runs() if r["path"] == path][0]
            per_row = {}
            for r in s.ngrams(run["run_id"]):
                per_row.setdefault(r["input_id"], []).append((r["rank"], r["output_id"]))
            for i in range(V):
                top6 = sorted((b for b in range(V) if b != i), key=lambda b: (-want[i, b], b))[:6]
                assert [o for _, o in sorted(per_row[i])] == top6, (path, i)
    # the export carries each zpmi row's value
    import pyarrow.parquet as pq

    out = zpmi_store.parent / "z.parquet"
    assert main(["ngrams", "export", "--db", str(zpmi_store), "--parquet", str(out)]) == 0
    t = [r for r in pq.read_table(out).to_pylist() if r["path"] == "direct"]
    want = _zpmi_brute(tiny_llama_f32, "direct")
    assert {r["score_name"] for r in t} == {"zpmi"}
    np.testing.assert_allclose([r["score"] for r in t], [want[r["input_id"], r["output_id"]] for r in t], atol=1e-4)


def test_zpmi_refusals_are_one_line(zpmi_store, stores, capsys, tmp_path):
    """zpmi ranks rows in its own order: a z-family run cannot be read or re-scored as zpmi, nor a
    zpmi run as pmi or zlogit; each is one line, non-zero exit, nothing written."""
    capsys.readouterr()
    cases = [(stores["zlogit"], "zpmi", "top"), (stores["zlogit"], "zpmi", "rescore"), (zpmi_store, "pmi", "top"),
             (zpmi_store, "zlogit", "rescore"), (zpmi_store, "logprob", "top")]
    for src, score, cmd in cases:
        db = tmp_path / f"{cmd}-{score}.duckdb"
        db.write_bytes(src.read_bytes())
        before = dump(db)
        args = ["ngrams", cmd, "--db", str(db), "--path", "direct", "--score", score]
        assert main(args) != 0, args
        err = _err(capsys)
        assert len(err) == 1 and "orders them differently" in err[0] and f"--score {score}`" in err[0], err
        assert dump(db) == before
    # an unknown name lists zpmi
    assert main(["ngrams", "top", "--db", str(zpmi_store), "--score", "zpmi2"]) != 0
    err = _err(capsys)
    assert len(err) == 1 and "unknown score 'zpmi2'; use one of: logprob, logit, zlogit, pmi, zpmi" in err[0]
    # a zpmi store made without lse_ζ (an older file): one line naming what is missing
    old = tmp_path / "old.duckdb"
    old.write_bytes(zpmi_store.read_bytes())
    con = duckdb.connect(str(old))
    con.execute("ALTER TABLE input_stats DROP COLUMN lse_z")
    con.close()
    assert main(["ngrams", "top", "--db", str(old), "--path", "direct", "--token", "#3", "--score", "zpmi"]) != 0
    err = _err(capsys)
    assert len(err) == 1 and "z-scored log-sum-exp" in err[0] and "re-extract" in err[0], err


def test_help_names_the_default_score(capsys):
    """The --score help of every command names the default of jetex.ngrams.scores."""
    from jetex.ngrams.scores import DEFAULT_SCORE

    for cmd in (["ngrams", "extract"], ["ngrams", "top"], ["diff"], ["index"], ["dynamics"], ["roles"]):
        capsys.readouterr()
        assert main([*cmd, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert f"Default: {DEFAULT_SCORE}, the measured default" in text and "zpmi (pmi of the z-scored logits" in text, cmd


def test_diff_of_stores_without_score_reads_their_runs(stores, zpmi_store, capsys):
    """`jetex diff A.duckdb B.duckdb` without --score: zpmi runs by the default; runs of the former
    default (zlogit) under their own score; an explicit score a run cannot give is one line."""
    capsys.readouterr()
    for db, want in ((zpmi_store, "zpmi"), (stores["zlogit"], "zlogit")):
        assert main(["diff", str(db), str(db), "--path", "direct", "--top", "20", "--json"]) == 0
        out = _json(capsys)
        assert out["score"] == want and out["identical"]
    assert main(["diff", str(stores["zlogit"]), str(stores["zlogit"]), "--path", "direct", "--score", "zpmi"]) != 0
    err = _err(capsys)
    assert len(err) == 1 and "orders them differently from zpmi" in err[0]
