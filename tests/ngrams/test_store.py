"""The DuckDB n-gram store: contents, resumability, refusal to mix models, I/O failures."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from dbdump import dump

from jetex.errors import StoreError
from jetex.ngrams import NgramStore, bigram_table, extract_ngrams, parse_path, top_trigrams
from jetex.ngrams.scores import DEFAULT_SCORE
from jetex.ngrams.store import SCHEMA_VERSION

PATHS = ["direct", "mlp:1", "attn:0.2"]
KW = dict(top_k=4, global_top=30, batch_size=8, fidelity_sample=16, progress=False)
def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_store_contents_match_the_engine(tiny_llama, tmp_path):
    db = tmp_path / "n.duckdb"
    res = extract_ngrams(tiny_llama, PATHS, db=db, **KW)
    assert [r.status for r in res] == ["done"] * 3 and [r.kind for r in res] == ["bigram", "bigram", "trigram"]
    (mlp,) = parse_path(tiny_llama, "mlp:1")
    # extraction defaults: self-transitions excluded, rows ranked by the default score
    t = bigram_table(tiny_llama, mlp, top_k=4, global_top=30, batch_size=8, exclude_self=True, score=DEFAULT_SCORE)
    with NgramStore(db, read_only=True) as s:
        assert s.meta["model_fingerprint"] == tiny_llama.fingerprint()
        assert s.meta["tokenizer_fingerprint"] == tiny_llama.tokenizer_fingerprint()
        assert s.meta["schema_version"] == SCHEMA_VERSION
        run = [r for r in s.runs() if r["path"] == "mlp:1"][0]
        assert run["status"] == "done" and run["top_k"] == 4 and run["n_batches"] == 10
        rows = s.ngrams(run["run_id"])
        assert len(rows) == tiny_llama.vocab_size * 4
        got = np.array([[r["input_id"], r["output_id"], r["rank"]] for r in sorted(rows, key=lambda r: (r["input_id"], r["rank"]))])
        np.testing.assert_array_equal(got[:, 1].reshape(-1, 4), t.top_ids)
        np.testing.assert_array_equal(got[:, 2].reshape(-1, 4), np.tile(np.arange(1, 5), (tiny_llama.vocab_size, 1)))
        np.testing.assert_allclose([r["logprob"] for r in sorted(rows, key=lambda r: (r["input_id"], r["rank"]))],
                                   t.top_logprobs.reshape(-1), rtol=1e-5)
        assert rows[0]["input"] == tiny_llama.token_strings([rows[0]["input_id"]])[0]
        pairs = s.top_pairs(run["run_id"], 100)
        assert [p["rank"] for p in pairs] == list(range(1, 31))
        assert [(p["input_id"], p["output_id"]) for p in pairs] == list(zip(t.global_top.input_ids.tolist(), t.global_top.output_ids.tolist()))
        fid = s.fidelity(run["run_id"])
        assert fid["sample_size"] == 16 and 0 <= fid["top1_agreement"] <= 1
        tri = [r for r in s.runs() if r["kind"] == "trigram"][0]
        trows = s.ngrams(tri["run_id"])
        (p,) = parse_path(tiny_llama, "attn:0.2")
        want = top_trigrams(tiny_llama, p, top_k=4)
        assert [(r["context_id"], r["input_id"], r["output_id"]) for r in trows] == list(
            zip(want.context_ids.tolist(), want.input_ids.tolist(), want.output_ids.tolist()))
        assert [r["rank"] for r in trows] == [1, 2, 3, 4] and all(r["attn_prob"] is not None for r in trows)
    # a second run finds everything done and writes nothing
    before = dump(db)
    res2 = extract_ngrams(tiny_llama, PATHS, db=db, **KW)
    assert [r.status for r in res2] == ["already done"] * 3
    assert dump(db) == before
    # redo recomputes to the same tables
    extract_ngrams(tiny_llama, ["mlp:1"], db=db, redo=True, **KW)
    after = dump(db)
    assert after["ngrams"] != [] and sorted(r[1:] for r in after["ngrams"]) == sorted(r[1:] for r in before["ngrams"])


class Boom(Exception):
    pass


def _fail_after(monkeypatch, name: str, n: int, exc: BaseException) -> None:
    orig = getattr(NgramStore, name)
    calls = {"n": 0}

    def wrapped(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > n:
            raise exc
        return orig(self, *a, **k)

    monkeypatch.setattr(NgramStore, name, wrapped)


@pytest.fixture(scope="module")
def reference_db(tiny_llama, tmp_path_factory):
    """An uninterrupted extraction of PATHS."""
    ref = tmp_path_factory.mktemp("ref") / "ref.duckdb"
    extract_ngrams(tiny_llama, PATHS, db=ref, **KW)
    return ref


@pytest.mark.parametrize("where, n", [("write_bigram_batch", 3), ("write_bigram_batch", 13), ("write_trigram_chunk", 2), ("finish_run", 1)])
def test_interrupted_run_resumes_to_identical_tables(tiny_llama, tmp_path, monkeypatch, reference_db, where, n):
    ref = reference_db
    db = tmp_path / "n.duckdb"
    with monkeypatch.context() as mp:
        _fail_after(mp, where, n, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            extract_ngrams(tiny_llama, PATHS, db=db, **KW)
    with NgramStore(db, read_only=True) as s:
        done = s._q("SELECT count(*) FROM done_batches")[0][0]
        assert done > 0
    res = extract_ngrams(tiny_llama, PATHS, db=db, **KW)
    assert sum(r.resumed_batches for r in res) > 0 or where == "finish_run"
    assert dump(db) == dump(ref)


def test_injected_disk_full_keeps_committed_batches(tiny_llama, tmp_path, monkeypatch):
    db = tmp_path / "n.duckdb"
    with monkeypatch.context() as mp:
        _fail_after(mp, "_insert", 8, OSError(28, "No space left on device"))
        with pytest.raises(StoreError, match="the disk is full; what was committed before is kept") as e:
            extract_ngrams(tiny_llama, ["direct"], db=db, **KW)
        assert "\n" not in str(e.value)
    with NgramStore(db, read_only=True) as s:
        # 1 insert for log q_ζ (the first pass of the default score, zpmi), then 3 per batch
        # (ngrams, input_stats, top_pairs; no column_parts): batches 0 and 1 committed, batch 2
        # rolled back whole after its first insert
        assert s.logq(1) is not None
        assert s.done_batches(1) == {0, 1}
        assert s._q("SELECT count(*) FROM ngrams")[0][0] == 2 * 8 * 4
        assert s._q("SELECT count(*) FROM input_stats")[0][0] == 16
        assert s._q("SELECT count(*) FROM column_parts")[0][0] == 0
    ref = tmp_path / "ref.duckdb"
    extract_ngrams(tiny_llama, ["direct"], db=ref, **KW)
    extract_ngrams(tiny_llama, ["direct"], db=db, **KW)
    assert dump(db) == dump(ref)


def test_real_full_disk_on_tmpfs(tiny_llama, tmp_path):
    """A 1 MiB tmpfs fills up mid-run: a one-line StoreError, and what was committed survives."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        db = mnt / "n.duckdb"
        with pytest.raises(StoreError) as e:
            for i in range(40):  # keep adding runs until the disk is full
                extract_ngrams(tiny_llama, ["direct", "mlp:0", "mlp:1", "mlps", "attn-free"], db=db, top_k=70 - i,
                               global_top=500, batch_size=4, fidelity_sample=0, progress=False)
        msg = str(e.value)
        assert "\n" not in msg and ("disk is full" in msg or "cannot" in msg)
        copy = tmp_path / "copy.duckdb"
        shutil.copy(db, copy)
        if (mnt / "n.duckdb.wal").exists():
            shutil.copy(mnt / "n.duckdb.wal", tmp_path / "copy.duckdb.wal")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    with NgramStore(copy, read_only=True) as s:
        per_run = s._q("SELECT run_id, sum(n_rows) FROM done_batches GROUP BY run_id")
        assert per_run, "nothing was committed before the disk filled up"
        for rid, n in per_run:
            assert s._q("SELECT count(*) FROM ngrams WHERE run_id = ?", [rid])[0][0] == n


def test_refuses_another_model_without_writing(tiny_llama, tmp_path):
    from ngrams_tiny import _wrap

    db = tmp_path / "n.duckdb"
    extract_ngrams(tiny_llama, ["direct"], db=db, **KW)
    other = _wrap("llama", seed=1)
    before = sha(db)
    with pytest.raises(StoreError, match=r"holds n-grams of model 'tiny-llama' \(fingerprint .*\), not of 'tiny-llama'") as e:
        extract_ngrams(other, ["direct"], db=db, **KW)
    assert "\n" not in str(e.value)
    assert sha(db) == before and not Path(str(db) + ".wal").exists()
    # same weights, other tokenizer → refused too
    from jetex.models.hf import HFResidualModel

    class OtherTok:
        def __getattr__(self, k):
            return getattr(tiny_llama.tokenizer, k)

        def get_vocab(self):
            v = dict(tiny_llama.tokenizer.get_vocab())
            v["extra"] = len(v)
            return v

    m2 = HFResidualModel.from_hf(tiny_llama.hf, OtherTok(), name="tiny-llama")
    m2.fingerprint = tiny_llama.fingerprint  # only the tokenizer differs
    with pytest.raises(StoreError, match="tokenizer"):
        NgramStore(db, model=m2)
    assert sha(db) == before


def test_not_a_store(tiny_llama, tmp_path):
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a jetex n-gram database"):
        NgramStore(junk, model=tiny_llama)
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE x (a INT)")
    con.close()
    with pytest.raises(StoreError, match="not a jetex n-gram database"):
        NgramStore(other, model=tiny_llama)
    with pytest.raises(StoreError, match="no n-gram database"):
        NgramStore(tmp_path / "missing.duckdb", read_only=True)
    with pytest.raises(StoreError, match="is a folder"):
        NgramStore(tmp_path, model=tiny_llama)
    db = tmp_path / "n.duckdb"
    NgramStore(db, model=tiny_llama).close()
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema version '99'"):
        NgramStore(db, read_only=True)


def _make_read_only(folder: Path, db: Path) -> None:
    """chmod for ordinary users; root ignores file modes, so use the immutable attribute."""
    if os.geteuid() != 0:
        os.chmod(db, 0o444)
        os.chmod(folder, 0o555)
        return
    for p in (db, folder):
        if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0:
            _undo_read_only(folder, db)
            pytest.skip("running as root and chattr +i is not available: cannot make a file read-only")


def _undo_read_only(folder: Path, db: Path) -> None:
    if os.geteuid() == 0:
        for p in (folder, db):
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
    os.chmod(folder, 0o755)
    if db.exists():
        os.chmod(db, 0o644)


def test_read_only_file_is_a_clean_error(tiny_llama, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "n.duckdb"
    extract_ngrams(tiny_llama, ["direct"], db=db, **KW)
    before = dump(db)
    _make_read_only(folder, db)
    try:
        with pytest.raises(StoreError, match="read-only") as e:
            extract_ngrams(tiny_llama, ["direct", "mlp:0"], db=db, **KW)
        assert "\n" not in str(e.value) and str(db) in str(e.value)
        assert dump(db) == before  # committed data intact and readable
        with NgramStore(db, read_only=True) as s:
            assert len(s.runs(status="done")) == 1
    finally:
        _undo_read_only(folder, db)


def test_export_parquet(tiny_llama, tmp_path):
    db = tmp_path / "n.duckdb"
    extract_ngrams(tiny_llama, PATHS, db=db, **KW)
    out = tmp_path / "n.parquet"
    with NgramStore(db, read_only=True) as s:
        n = s.export_parquet(out)
        total = s._q("SELECT count(*) FROM ngrams")[0][0]
    t = pq.read_table(out)
    assert n == total == t.num_rows == 2 * tiny_llama.vocab_size * 4 + 4
    assert {"path", "input", "output", "logit", "prob", "rank", "model_fingerprint", "context"} <= set(t.column_names)
    assert set(t.column("path").to_pylist()) == {"direct", "mlp:1", "attn:0.2"}
    with NgramStore(db, read_only=True) as s, pytest.raises(StoreError, match="does not exist"):
        s.export_parquet(tmp_path / "nope" / "x.parquet")


# ---------------------------------------------------------------------------------------- zpmi
ZKW = dict(top_k=4, global_top=30, batch_size=8, fidelity_sample=0, progress=False, score="zpmi")


@pytest.fixture(scope="module")
def zpmi_db(tiny_llama, tmp_path_factory):
    """An uninterrupted zpmi extraction of two bigram paths."""
    db = tmp_path_factory.mktemp("zpmi") / "z.duckdb"
    extract_ngrams(tiny_llama, ["direct", "mlp:1"], db=db, **ZKW)
    return db


def test_zpmi_store_matches_the_engine(tiny_llama, zpmi_db):
    """A zpmi run keeps its rows, its exact global top, lse_ζ per input and log q_ζ per output;
    the stored values re-read under zpmi equal the engine's."""
    with NgramStore(zpmi_db, read_only=True) as s:
        for path in ("direct", "mlp:1"):
            (p,) = parse_path(tiny_llama, path)
            t = bigram_table(tiny_llama, p, top_k=4, global_top=30, batch_size=8, exclude_self=True, score="zpmi")
            run = [r for r in s.runs() if r["path"] == path][0]
            assert s.run_score(run) == "zpmi" and run["status"] == "done"
            rows = sorted(s.ngrams(run["run_id"]), key=lambda r: (r["input_id"], r["rank"]))
            np.testing.assert_array_equal(np.array([r["output_id"] for r in rows]).reshape(-1, 4), t.top_ids)
            st = s.input_stats(run["run_id"])
            np.testing.assert_allclose(st["lse_z"], t.lse_z, rtol=1e-6)
            np.testing.assert_allclose(s.logq(run["run_id"]), t.logq, rtol=1e-12, atol=1e-12)
            pairs = s.top_pairs(run["run_id"], 30)
            assert [(q["input_id"], q["output_id"]) for q in pairs] == list(zip(t.global_top.input_ids.tolist(),
                                                                              t.global_top.output_ids.tolist()))
            np.testing.assert_allclose([q["score"] for q in pairs], t.global_top.scores, rtol=1e-6)
            # the stored statistics give back the ranked values
            vals = s.entry_scores(run, "zpmi", [r["input_id"] for r in rows], [r["output_id"] for r in rows],
                                  [r["logit"] for r in rows])
            np.testing.assert_allclose(vals.reshape(-1, 4), t.top_scores, rtol=1e-5, atol=1e-5)
            assert all(q["input_id"] != q["output_id"] for q in pairs)


def test_zpmi_resumes_after_its_first_pass(tiny_llama, tmp_path, monkeypatch, zpmi_db):
    """Killed during the ranking pass, a zpmi run keeps its committed log q_ζ (not recomputed)
    and resumes to the same tables as an uninterrupted run."""
    import jetex.ngrams.extract as ex

    db = tmp_path / "z.duckdb"
    with monkeypatch.context() as mp:
        _fail_after(mp, "write_bigram_batch", 5, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            extract_ngrams(tiny_llama, ["direct", "mlp:1"], db=db, **ZKW)
    with NgramStore(db, read_only=True) as s:
        assert s.logq(1) is not None and 0 < len(s.done_batches(1)) < 10
    calls = []
    orig = ex.column_logq
    monkeypatch.setattr(ex, "column_logq", lambda *a, **k: calls.append(k.get("score")) or orig(*a, **k))
    res = extract_ngrams(tiny_llama, ["direct", "mlp:1"], db=db, **ZKW)
    assert res[0].resumed_batches == 5 and calls == ["zpmi"]  # only mlp:1's first pass ran
    assert dump(db) == dump(zpmi_db)


def test_store_without_lse_z_reads_and_migrates(tiny_llama, tmp_path, zpmi_db):
    """A store made before lse_ζ existed (no input_stats.lse_z column): read-only it reads (NULL
    lse_z), a zpmi read that needs lse_ζ is one InputError line; opened for writing, it gains the
    column and takes new runs."""
    from jetex.errors import InputError

    old = tmp_path / "old.duckdb"
    shutil.copy(zpmi_db, old)
    con = duckdb.connect(str(old))
    con.execute("ALTER TABLE input_stats DROP COLUMN lse_z")
    con.close()
    with NgramStore(old, read_only=True) as s:
        run = s.runs()[0]
        assert np.isnan(s.input_stats(run["run_id"])["lse_z"]).all()
        with pytest.raises(InputError, match=r"was made without the per-input z-scored log-sum-exp .* re-extract") as e:
            s.entry_scores(run, "zpmi", [1], [2], [0.0])
        assert "\n" not in str(e.value)
        assert len(s.top_pairs(run["run_id"], 5)) == 5  # its stored global top still reads
    extract_ngrams(tiny_llama, ["direct"], db=old, **{**ZKW, "score": "zlogit"})
    with NgramStore(old, read_only=True) as s:
        assert s._has_column("input_stats", "lse_z")
        assert [s.run_score(r) for r in s.runs()] == ["zpmi", "zpmi", "zlogit"]
