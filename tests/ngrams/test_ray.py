"""The Ray backend of n-gram extraction: same table as the local engine, killed workers
neither lose nor duplicate rows, repeated deaths stop cleanly, bad addresses fail fast.

Tests that need Ray share ONE local Ray session (module-scoped fixture, 2 CPUs; Ray start-up
is slow on 2 cores) and skip when Ray is not installed. The local reference runs with one
torch thread, as each 1-CPU worker does, so the two tables are equal bit for bit.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import duckdb
import pytest

from jetex.errors import StoreError
from jetex.ngrams import extract_ngrams
from jetex.ngrams.distributed import FAULT_ENV, ClusterError, FaultPlan, LoadSpec, RayBackend, ShardTask, ShardWorker, check_address
from jetex.ngrams.engine import iter_bigram_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_store import dump  # noqa: E402

PATHS = ["direct", "mlp:1", "attn:0.1"]
KW = dict(top_k=4, global_top=30, batch_size=8, fidelity_sample=16, progress=False)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


def _assert_same_store(a: dict, b: dict) -> None:
    """Same tables, same rows in the same order, every value equal, floats bit for bit: the
    workers run the local engine's code with 1 torch thread each, as the reference does.
    (With 2 threads the local engine itself differs from its 1-thread run in the last bits:
    19 of the floats of this store, by up to 3.5e-7 relative, measured.)"""
    assert a.keys() == b.keys()
    for table in a:
        ra, rb = a[table], b[table]
        assert len(ra) == len(rb), table
        for x, y in zip(ra, rb):
            assert x == y, (table, x, y)


def _comparable(d: dict) -> dict:
    """A store dump without the run options' ``backend`` entry (the only intended difference)."""
    out = dict(d)
    runs = []
    for r in d["runs"]:
        r = list(r)
        for i, v in enumerate(r):
            if isinstance(v, str) and v.startswith("{") and '"backend"' in v:
                o = json.loads(v)
                o.pop("backend")
                r[i] = json.dumps(o, sort_keys=True)
        runs.append(tuple(r))
    out["runs"] = runs
    return out


def _rows_are_clean(db: Path, run_id: int, K: int) -> tuple[int, int]:
    """No duplicate (input, rank) row; every committed batch has its rows and only those. Returns (batches, rows)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        dup = con.execute("SELECT count(*) FROM (SELECT input_id, rank FROM ngrams WHERE run_id = ? GROUP BY 1, 2 HAVING count(*) > 1)",
                          [run_id]).fetchone()[0]
        assert dup == 0
        nb, nrows = con.execute("SELECT count(*), coalesce(sum(n_rows), 0) FROM done_batches WHERE run_id = ?", [run_id]).fetchone()
        assert con.execute("SELECT count(*) FROM ngrams WHERE run_id = ?", [run_id]).fetchone()[0] == nrows
        assert con.execute("SELECT count(*) FROM input_stats WHERE run_id = ?", [run_id]).fetchone()[0] == nrows // K
        return int(nb), int(nrows)
    finally:
        con.close()


# ---------------------------------------------------------------------------------------
# without Ray
# ---------------------------------------------------------------------------------------
def test_missing_ray_is_one_line(monkeypatch, tiny_llama_f32, tiny_llama_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ClusterError, match=r"pip install 'jetex\[ray\]'") as e:
        extract_ngrams(tiny_llama_f32, ["direct"], db=tmp_path / "n.duckdb", backend="ray", load_spec=tiny_llama_dir, **KW)
    assert "\n" not in str(e.value)


def test_unreachable_address_fails_fast(tiny_llama_f32, tiny_llama_dir, tmp_path, capsys):
    port = _closed_port()
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}") as e:
        extract_ngrams(tiny_llama_f32, ["direct"], db=tmp_path / "n.duckdb", backend="ray", address=f"127.0.0.1:{port}",
                       load_spec=tiny_llama_dir, **KW)
    assert time.perf_counter() - t0 < 15 and "\n" not in str(e.value)
    with pytest.raises(ClusterError, match="cannot read the Ray address"):
        check_address("http://x:1")
    # the CLI refuses before loading the model
    from jetex.cli.main import main

    rc = main(["ngrams", "extract", "--model", tiny_llama_dir, "--db", str(tmp_path / "c.duckdb"), "--backend", "ray",
               "--address", f"127.0.0.1:{port}", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith(f"error: cannot reach a Ray cluster at 127.0.0.1:{port}")
    assert not (tmp_path / "c.duckdb").exists()


def test_store_of_another_model_is_refused(tiny_llama_f32, tiny_llama_dir, tmp_path):
    from _tiny import save_tiny

    import jetex

    other = jetex.load(save_tiny(tmp_path / "other", "llama", seed=1))
    db = tmp_path / "n.duckdb"
    extract_ngrams(other, ["direct"], db=db, **KW)
    before = dump(db)
    with pytest.raises(StoreError, match="holds n-grams of model"):
        extract_ngrams(tiny_llama_f32, ["direct"], db=db, backend="ray", load_spec=tiny_llama_dir, **KW)
    assert dump(db) == before


def test_worker_computes_the_engine_batches(tiny_llama_f32, tiny_llama_dir, tmp_path):
    """The actor class, run in-process: its shard is exactly the local engine's batches."""
    w = ShardWorker(LoadSpec(tiny_llama_dir))
    assert w.info()["fingerprint"] == tiny_llama_f32.fingerprint()
    (p,) = [q for q in __import__("jetex").ngrams.parse_path(tiny_llama_f32, "mlp:1")]
    task = ShardTask(3, "bigram", "mlp:1", (6, 7), 10, 8, 4, global_top=30)
    got = w.run_shard(task)
    want = [b for b in iter_bigram_batches(tiny_llama_f32, p, top_k=4, batch_size=8, global_top=30,
                                           skip=set(range(10)) - {6, 7})]
    assert [b.batch_index for b in got] == [6, 7]
    for g, x in zip(got, want):
        for f in ("input_ids", "top_ids", "top_logits", "top_logprobs", "lse", "self_logprob"):
            assert (getattr(g, f) == getattr(x, f)).all(), f
    backend = RayBackend(LoadSpec(tiny_llama_dir), shard_batches=3)
    assert backend.shards(10, {0, 1, 4}) == [(0, (2,)), (1, (3, 5)), (2, (6, 7, 8)), (3, (9,))]


@pytest.mark.parametrize("score", ["pmi", "zpmi"])
def test_worker_first_pass_equals_the_engine(tiny_llama_f32, tiny_llama_dir, score):
    """The actor's first-pass shards (column log-sums per batch), summed in batch order, give the
    engine's column distribution bit for bit."""
    import numpy as np

    from jetex.ngrams.engine import column_logq
    from jetex.ngrams.paths import parse_path
    from jetex.ngrams.scores import ColumnLSE

    w = ShardWorker(LoadSpec(tiny_llama_dir))
    parts = []
    for shard, batches in ((0, (0, 1, 2, 3)), (1, (4, 5, 6, 7, 8, 9))):
        parts += w.run_shard(ShardTask(shard, "bigram", "direct", batches, 10, 8, 1, 0, True, None, 0, None, score,
                                       column_of=score))
    assert [p.batch_index for p in parts] == list(range(10))
    acc = ColumnLSE.empty(tiny_llama_f32.vocab_size)
    for p in parts:
        acc.add_partial(p.col_lse, p.n_rows)
    (path,) = parse_path(tiny_llama_f32, "direct")
    want = column_logq(tiny_llama_f32, path, exclude_self=True, batch_size=8, score=score)
    np.testing.assert_array_equal(acc.logq().numpy(), want.numpy())


def test_fault_plan_parsing(monkeypatch, tmp_path):
    monkeypatch.setenv(FAULT_ENV, f"shard=2,times=always,dir={tmp_path}")
    assert FaultPlan.from_env() == FaultPlan(2, -1, str(tmp_path))
    monkeypatch.setenv(FAULT_ENV, f"shard=2,times=1,dir={tmp_path},pass=first")
    assert FaultPlan.from_env() == FaultPlan(2, 1, str(tmp_path), "first")
    FaultPlan(2, 1, str(tmp_path), "first").strike(2, "rank")  # another pass: no exit
    monkeypatch.setenv(FAULT_ENV, f"shard=2,times=1,dir={tmp_path},pass=third")
    with pytest.raises(ClusterError, match="pass=first"):
        FaultPlan.from_env()
    monkeypatch.setenv(FAULT_ENV, "shard=x")
    with pytest.raises(ClusterError, match=FAULT_ENV):
        FaultPlan.from_env()


# ---------------------------------------------------------------------------------------
# with a local Ray instance (2 workers, 1 CPU each), shared by the tests below
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tmp_path_factory):
    """The local engine's store (one torch thread, like a 1-CPU worker)."""
    import os

    import jetex

    db = tmp_path_factory.mktemp("ref") / "local.duckdb"
    old = os.environ.get("JETEX_NUM_THREADS")
    os.environ["JETEX_NUM_THREADS"] = "1"
    try:
        extract_ngrams(jetex.load(tiny_llama_dir), PATHS, db=db, **KW)
    finally:
        if old is None:
            os.environ.pop("JETEX_NUM_THREADS")
        else:
            os.environ["JETEX_NUM_THREADS"] = old
    return _comparable(dump(db))


def test_two_workers_one_killed_mid_shard_equal_the_local_engine(ray_session, reference, tiny_llama_f32, tiny_llama_dir,
                                                                 tmp_path, monkeypatch):
    """2 workers, 3 paths (bigram, MLP bigram, trigram); the worker running shard 1 of the first
    path exits after computing that shard's first batch: Ray restarts it and retries the shard.
    The store equals the local engine's, with no lost and no duplicated row."""
    marks = tmp_path / "faults"
    monkeypatch.setenv(FAULT_ENV, f"shard=1,times=1,dir={marks}")
    monkeypatch.setenv("JETEX_NUM_THREADS", "1")  # the driver's fidelity reports, like the reference's
    db = tmp_path / "ray.duckdb"
    res = extract_ngrams(tiny_llama_f32, PATHS, db=db, backend="ray", workers=2, shard_batches=2, retries=2,
                         load_spec=tiny_llama_dir, **KW)
    assert [r.status for r in res] == ["done"] * 3
    assert len(list(marks.iterdir())) == 1  # the worker did die once, mid-shard
    _assert_same_store(_comparable(dump(db)), reference)
    assert _rows_are_clean(db, res[0].run_id, 4) == (10, 77 * 4)
    runs = dump(db)["runs"]
    assert all('"backend": "ray"' in next(v for v in r if isinstance(v, str) and v.startswith("{")) for r in runs)
    # rerunning with the local engine finds everything done
    assert [r.status for r in extract_ngrams(tiny_llama_f32, PATHS, db=db, **KW)] == ["already done"] * 3


def test_worker_dying_repeatedly_stops_and_keeps_commits(ray_session, reference, tiny_llama_f32, tiny_llama_dir, tmp_path, monkeypatch):
    marks = tmp_path / "faults"
    # in the ranking pass (the default score, zpmi, runs a first column pass before it)
    monkeypatch.setenv(FAULT_ENV, f"shard=8,times=always,dir={marks},pass=rank")
    db = tmp_path / "ray.duckdb"
    with pytest.raises(ClusterError) as e:
        extract_ngrams(tiny_llama_f32, ["direct"], db=db, backend="ray", workers=1, retries=1,
                       load_spec=tiny_llama_dir, **KW)
    msg = str(e.value)
    # which shard is named depends on scheduling (the dying worker may have taken shard 9 next)
    assert "\n" not in msg and re.search(r"shard \d+", msg) and "restarted 1 time" in msg and "rerun to resume" in msg
    assert re.search(r"stopped with \d+ of \d+ batches committed \(\d+ left\)", msg)  # what was kept is said
    assert len(list(marks.iterdir())) == 2  # first try + one retry, then it stopped
    nb, nrows = _rows_are_clean(db, 1, 4)
    con = duckdb.connect(str(db), read_only=True)
    try:
        done = {r[0] for r in con.execute("SELECT batch FROM done_batches WHERE run_id = 1").fetchall()}
        assert con.execute("SELECT status FROM runs WHERE run_id = 1").fetchone()[0] == "running"
    finally:
        con.close()
    assert 8 not in done and nb == len(done) and done >= set(range(8))  # everything before the bad shard is kept
    # what was committed is kept: a rerun (here with the local engine) finishes the same table
    monkeypatch.delenv(FAULT_ENV)
    monkeypatch.setenv("JETEX_NUM_THREADS", "1")
    (r,) = extract_ngrams(tiny_llama_f32, ["direct"], db=db, **KW)
    assert r.status == "done" and r.resumed_batches == nb
    got = _comparable(dump(db))
    assert got["ngrams"] == [row for row in reference["ngrams"] if row[1] == "direct"]
    assert got["top_pairs"] == [row for row in reference["top_pairs"] if row[0] == 1]


def test_worker_dying_repeatedly_in_the_first_pass(ray_session, reference, tiny_llama_f32, tiny_llama_dir, tmp_path,
                                                  monkeypatch):
    """A zpmi run (the default score) computes its column distribution on the workers first: a
    worker that keeps dying there stops the run with one line, before anything of the ranking
    is committed; a rerun computes the same table."""
    marks = tmp_path / "faults"
    monkeypatch.setenv(FAULT_ENV, f"shard=3,times=always,dir={marks},pass=first")
    db = tmp_path / "ray.duckdb"
    with pytest.raises(ClusterError) as e:
        extract_ngrams(tiny_llama_f32, ["direct"], db=db, backend="ray", workers=1, retries=1,
                       load_spec=tiny_llama_dir, **KW)
    msg = str(e.value)
    assert "\n" not in msg and "first pass of --score zpmi" in msg and "restarted 1 time" in msg and "rerun" in msg
    assert len(list(marks.iterdir())) == 2
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM output_stats").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM done_batches").fetchone()[0] == 0
    finally:
        con.close()
    monkeypatch.delenv(FAULT_ENV)
    monkeypatch.setenv("JETEX_NUM_THREADS", "1")
    (r,) = extract_ngrams(tiny_llama_f32, ["direct"], db=db, backend="ray", workers=2, load_spec=tiny_llama_dir, **KW)
    assert r.status == "done"
    got = _comparable(dump(db))
    assert got["ngrams"] == [row for row in reference["ngrams"] if row[1] == "direct"]
    assert got["top_pairs"] == [row for row in reference["top_pairs"] if row[0] == 1]
    assert got["output_stats"] == [row for row in reference["output_stats"] if row[0] == 1]


def test_worker_that_cannot_load_the_model(ray_session, tiny_llama_f32, tmp_path):
    from _tiny import save_tiny

    other = save_tiny(tmp_path / "other", "llama", seed=1)
    with pytest.raises(ClusterError, match="fingerprint") as e:
        extract_ngrams(tiny_llama_f32, ["direct"], db=tmp_path / "n.duckdb", backend="ray", workers=1,
                       load_spec=str(other), **KW)
    assert "\n" not in str(e.value)


def test_cli_extract_on_ray_equals_the_local_engine(ray_session, reference, tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """`jetex ngrams extract --backend ray --workers 2` through main(argv): the store is the local engine's."""
    from jetex.cli.main import main

    monkeypatch.setenv("JETEX_NUM_THREADS", "1")
    db = tmp_path / "cli.duckdb"
    argv = ["ngrams", "extract", "--model", tiny_llama_dir, "--db", str(db), *[x for p in PATHS for x in ("--path", p)],
            "--top", "4", "--global-top", "30", "--batch-size", "8", "--fidelity-sample", "16",
            "--backend", "ray", "--workers", "2", "--shard-batches", "3", "--retries", "1", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in out["runs"]] == PATHS and [r["status"] for r in out["runs"]] == ["done"] * 3
    _assert_same_store(_comparable(dump(db)), reference)
    assert main(argv) == 0  # rerun: every run is found done, no worker is started
    assert [r["status"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["already done"] * 3
