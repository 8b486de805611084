"""End-to-end tests of ``jetex ngrams`` through ``main(argv)`` on a saved tiny Llama, and a real
SIGKILL-and-resume of ``jetex ngrams extract`` in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from jetex.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ngrams"))
from dbdump import dump  # noqa: E402


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_extract_top_export_json(tiny_llama_dir, tmp_path, capsys):
    db = tmp_path / "n.duckdb"
    argv = ["ngrams", "extract", "--model", tiny_llama_dir, "--path", "direct", "--path", "mlp:1", "--path", "attn:0",
            "--top", "5", "--db", str(db), "--global-top", "20", "--fidelity-sample", "16", "--json"]
    assert main(argv) == 0
    out = _json(capsys)
    runs = out["runs"]
    assert [r["path"] for r in runs] == ["direct", "mlp:1", "attn:0.0", "attn:0.1", "attn:0.2", "attn:0.3"]
    assert all(r["status"] == "done" for r in runs)
    assert runs[0]["stats"]["n_rows"] == 77 * 5 and runs[0]["fidelity"]["sample_size"] == 16
    assert 0.9 < runs[0]["stats"]["self_transition_rate"] <= 1.0  # tied embeddings
    assert main(argv) == 0 and all(r["status"] == "already done" for r in _json(capsys)["runs"])

    assert main(["ngrams", "top", "--db", str(db), "--path", "direct", "-n", "3", "--json"]) == 0
    top = _json(capsys)["paths"]
    assert len(top) == 1 and [r["rank"] for r in top[0]["rows"]] == [1, 2, 3]
    assert top[0]["fidelity"]["path"] == "direct"

    assert main(["ngrams", "top", "--db", str(db), "--token", "cat", "--path", "mlp:1", "--json"]) == 0
    rows = _json(capsys)["paths"][0]["rows"]
    assert len(rows) == 5 and {r["input"] for r in rows} == {"cat"} and [r["rank"] for r in rows] == [1, 2, 3, 4, 5]

    assert main(["ngrams", "top", "--db", str(db), "--path", "attn:0", "-n", "2", "--json"]) == 0
    heads = _json(capsys)["paths"]
    assert [h["run"]["path"] for h in heads] == [f"attn:0.{i}" for i in range(4)]
    assert all(len(h["rows"]) == 2 and h["rows"][0]["context"] is not None for h in heads)

    pq = tmp_path / "n.parquet"
    assert main(["ngrams", "export", "--db", str(db), "--parquet", str(pq), "--json"]) == 0
    assert _json(capsys)["rows"] == 2 * 77 * 5 + 4 * 5 and pq.exists()


def test_readable_tables(tiny_llama_dir, tmp_path, capsys):
    db = tmp_path / "n.duckdb"
    assert main(["ngrams", "extract", "-m", tiny_llama_dir, "--path", "mlp:0", "--path", "attn:1.2", "--top", "3",
                 "--db", str(db), "--exclude-self", "-q"]) == 0
    text = capsys.readouterr().out
    assert "mlp:0" in text and "attn:1.2" in text and "done" in text
    assert main(["ngrams", "top", "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert "fidelity vs model after [BOS, t]" in text and "KL" in text and "self-transitions excluded" in text
    assert "a (earlier)" in text and "global top 20 bigrams" in text
    assert main(["ngrams", "paths", "-m", tiny_llama_dir]) == 0
    assert "attn:L.H (L in 0..1, H in 0..3)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--path", "nope"], "unknown path 'nope'"),
        (["--path", "mlp:9"], "MLP layer 9 out of range"),
        (["--path", "attn:0.7"], "head 7 out of range"),
        (["--top", "500"], "top K = 500 is larger than the 76 possible next tokens"),  # self excluded by default
        (["--path", "attn:0.1", "--order", "1"], "order 0 only"),
        (["--order", "-2"], "order"),
        (["--limit-vocab", "0"], "limit-vocab"),
        (["--fidelity-sample", "-5"], "fidelity-sample"),
    ],
)
def test_extract_errors_are_one_line(tiny_llama_dir, tmp_path, capsys, extra, msg):
    db = tmp_path / "n.duckdb"
    code = main(["ngrams", "extract", "-m", tiny_llama_dir, "--db", str(db), "-q", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("error: ") and msg in err[-1]
    assert not db.exists()  # bad input is refused before the database is created


def test_top_and_export_errors(tiny_llama_dir, tmp_path, capsys):
    assert main(["ngrams", "top", "--db", str(tmp_path / "missing.duckdb")]) != 0
    assert "no n-gram database" in capsys.readouterr().err
    db = tmp_path / "n.duckdb"
    assert main(["ngrams", "extract", "-m", tiny_llama_dir, "--db", str(db), "-q", "--top", "2", "--fidelity-sample", "0"]) == 0
    capsys.readouterr()
    assert main(["ngrams", "top", "--db", str(db), "--path", "mlp:0"]) != 0
    assert "no finished run of path 'mlp:0'" in capsys.readouterr().err
    assert main(["ngrams", "top", "--db", str(db), "--token", "zebra"]) != 0
    assert "token 'zebra' is not in the vocabulary" in capsys.readouterr().err
    assert main(["ngrams", "export", "--db", str(db), "--parquet", str(tmp_path / "no" / "x.parquet")]) != 0
    assert "does not exist" in capsys.readouterr().err


# ---- bare `attn`: every head of the first attention layer --------------------------------
def test_bare_attn_is_every_head_of_the_first_layer(tiny_llama_dir, tmp_path, capsys):
    import jetex
    from jetex.models import ToyResidualNet
    from jetex.ngrams.paths import available_paths, parse_path, parse_paths

    m = jetex.load(tiny_llama_dir)
    bare = parse_path(m, "attn")
    assert [p.name for p in bare] == [p.name for p in parse_path(m, "attn:0")] == [f"attn:0.{h}" for h in range(4)]
    assert all(p.layer == 0 and p.block == 1 for p in bare)
    assert [p.name for p in parse_path(m, "attn:1")] == [f"attn:1.{h}" for h in range(4)]  # attn:N is a layer, never a head
    assert [p.name for p in parse_paths(m, ["attn", "attn:0.2", "direct"])] == [f"attn:0.{h}" for h in range(4)] + ["direct"]
    assert "attn (all heads of the first attention layer, attn:0)" in available_paths(m)
    with pytest.raises(Exception, match="has no self-attention blocks"):
        parse_path(ToyResidualNet(depth=2), "attn")

    db = tmp_path / "n.duckdb"
    argv = ["ngrams", "extract", "-m", tiny_llama_dir, "--path", "attn", "--path", "attn:1.3", "--top", "2", "--db", str(db),
            "--limit-vocab", "12", "-q", "--json"]
    assert main(argv) == 0
    assert [r["path"] for r in _json(capsys)["runs"]] == [f"attn:0.{h}" for h in range(4)] + ["attn:1.3"]
    assert main(["ngrams", "top", "--db", str(db), "--path", "attn", "-n", "1", "--json"]) == 0
    assert [p["run"]["path"] for p in _json(capsys)["paths"]] == [f"attn:0.{h}" for h in range(4)]
    assert main(["ngrams", "top", "--db", str(db), "--path", "attn:1", "-n", "1", "--json"]) == 0
    assert [p["run"]["path"] for p in _json(capsys)["paths"]] == ["attn:1.3"]
    assert main(["ngrams", "paths", "-m", tiny_llama_dir]) == 0
    assert "attn (all heads of the first attention layer, attn:0)" in capsys.readouterr().out


# ---- a database that is not ours to write -------------------------------------------------
def _db_state(db: Path) -> tuple:
    import hashlib

    return hashlib.sha256(db.read_bytes()).hexdigest(), sorted(p.name for p in db.parent.iterdir())


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_db_of_another_model_is_refused_unchanged(tiny_llama_dir, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _tiny import save_tiny

    other = save_tiny(tmp_path / "other-llama", "llama", seed=1)  # same architecture and tokenizer, other weights
    db = tmp_path / "db" / "n.duckdb"
    db.parent.mkdir()
    assert main(["ngrams", "extract", "-m", tiny_llama_dir, "--db", str(db), "--top", "3", "--fidelity-sample", "0", "-q"]) == 0
    capsys.readouterr()
    before, tables = _db_state(db), dump(db)
    code = main(["ngrams", "extract", "-m", str(other), "--db", str(db), "--path", "mlp:0", "--top", "3", "-q"])
    line = _one_error_line(capsys)
    assert code != 0
    assert "holds n-grams of model" in line and "use another --db file" in line
    assert _db_state(db) == before and dump(db) == tables  # not a byte written, no WAL left behind
    # the owner can still extend it
    assert main(["ngrams", "extract", "-m", tiny_llama_dir, "--db", str(db), "--path", "mlp:0", "--top", "3",
                 "--fidelity-sample", "0", "-q", "--json"]) == 0
    assert [r["status"] for r in _json(capsys)["runs"]] == ["done"]


def test_read_only_db_is_one_line_error(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    import os
    import stat

    db = tmp_path / "db" / "n.duckdb"
    db.parent.mkdir()
    assert main(["ngrams", "extract", "-m", tiny_llama_dir, "--db", str(db), "--top", "3", "--fidelity-sample", "0", "-q"]) == 0
    capsys.readouterr()
    os.chmod(db, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    if os.geteuid() == 0:  # root ignores file modes: make DuckDB answer as it does for anyone else
        real = duckdb.connect

        def connect(database=":memory:", read_only=False, *args, **kwargs):
            p = Path(str(database))
            if not read_only and p.exists() and not (p.stat().st_mode & stat.S_IWUSR):
                raise duckdb.IOException(f'IO Error: Cannot open file "{p}": Permission denied')
            return real(database, read_only, *args, **kwargs)

        monkeypatch.setattr(duckdb, "connect", connect)
    try:
        before = _db_state(db)
        code = main(["ngrams", "extract", "-m", tiny_llama_dir, "--db", str(db), "--path", "mlp:0", "--top", "3", "-q"])
        line = _one_error_line(capsys)
        assert code != 0
        assert str(db) in line and "read-only" in line
        assert _db_state(db) == before
        # reading it is fine
        assert main(["ngrams", "top", "--db", str(db), "-n", "2", "--json"]) == 0
        assert _json(capsys)["paths"][0]["run"]["path"] == "direct"
    finally:
        os.chmod(db, stat.S_IRUSR | stat.S_IWUSR)


# ---- a real kill -9 in the middle of a run ----------------------------------------------
KILL_PATHS = ["direct", "mlp:0", "mlp:1", "mlp:0,1", "attn-free", "attn:0.1"]


def _extract_argv(model_dir: str, db: Path) -> list[str]:
    argv = ["ngrams", "extract", "--model", model_dir, "--db", str(db), "--top", "7", "--global-top", "40",
            "--batch-size", "1", "--fidelity-sample", "8"]
    for p in KILL_PATHS:
        argv += ["--path", p]
    return argv


def _run_and_kill(argv: list[str], wait_for: str, min_count: int, timeout: float = 240) -> str:
    """Start ``jetex`` in a subprocess; SIGKILL it once its progress bar shows ``wait_for`` at ≥ min_count tokens."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "jetex.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    seen: list[str] = []

    def reader():
        buf = b""
        while True:
            chunk = proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
            if not chunk:
                break
            buf += chunk
            seen.append(buf.decode("utf-8", "replace"))
            buf = buf[-4096:]

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    pat = re.compile(re.escape(wait_for) + r":\s+\d+%\|[^|]*\|\s*(\d+)/")
    start = time.time()
    try:
        while time.time() - start < timeout:
            text = seen[-1] if seen else ""
            counts = [int(c) for c in pat.findall(text)]
            if counts and max(counts) >= min_count:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail("the extraction finished before it could be killed:\n" + text[-2000:])
            time.sleep(0.02)
        else:
            pytest.fail("timed out waiting for progress")
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        t.join(5)
    return seen[-1] if seen else ""


def test_sigkill_mid_run_then_rerun_gives_identical_tables(tiny_llama_dir, tmp_path, capsys):
    db = tmp_path / "killed.duckdb"
    argv = _extract_argv(tiny_llama_dir, db)
    _run_and_kill(argv, "mlp:0", 20)
    # the kill happened mid-run: some but not all batches of mlp:0 are committed, no run is finished beyond direct
    con = duckdb.connect(str(db), read_only=True)
    done = dict(con.execute("SELECT r.path, count(d.batch) FROM runs r LEFT JOIN done_batches d USING (run_id) GROUP BY r.path").fetchall())
    status = dict(con.execute("SELECT path, status FROM runs").fetchall())
    rows = con.execute("SELECT count(*) FROM ngrams n JOIN runs r USING (run_id) WHERE r.path = 'mlp:0'").fetchone()[0]
    con.close()
    assert status["direct"] == "done" and status["mlp:0"] == "running"
    assert 0 < done["mlp:0"] < 77 and rows == 7 * done["mlp:0"]  # each batch's rows committed with its mark
    # kill it a second time, later, then let it finish
    _run_and_kill(argv, "attn-free", 10)
    assert main(argv + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)["runs"]
    assert [r["status"] for r in res] == ["already done"] * 4 + ["done"] * 2  # killed the 2nd time in attn-free
    assert sum(r["resumed_batches"] for r in res) > 0
    ref = tmp_path / "ref.duckdb"
    assert main(_extract_argv(tiny_llama_dir, ref) + ["-q"]) == 0
    capsys.readouterr()
    a, b = dump(db), dump(ref)
    assert a.keys() == b.keys()
    for table in a:
        assert a[table] == b[table], table
