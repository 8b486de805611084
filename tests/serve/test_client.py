"""``--server URL``: predict / lens / paths / attribute answered by a running server print what
the local commands print (``--json`` and tables), and the client imports no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_helpers import finite

TEXT = "the cat sat on the mat ."
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _run(capsys, argv):
    from jetex.cli.main import main

    capsys.readouterr()
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("args", [
    ["lens", TEXT],
    ["lens", TEXT, "--order", "0", "--layers", "0-1", "--top", "3"],
    ["lens", TEXT, "--kind", "joint", "--centres", "blocks", "--optimize", "--order", "2"],
    ["paths", TEXT, "--max-len", "1", "--position", "2", "--top", "4"],
    ["predict", TEXT, "--top", "3"],
    ["attribute", TEXT, "--method", "logat"],
    ["lens", TEXT, "--layers", "emb,attn.0,mlp.1", "--top", "3"],
    ["lens", TEXT, "--kind", "joint", "--centres", "mlp.0,mlp.1"],
    ["paths", TEXT, "--max-len", "2", "--use", "mlp.0", "--avoid", "attn.1", "--top", "4"],
    ["attribute", TEXT, "--method", "jetxlogit", "--layer", "mlp.0"],
    ["attribute", TEXT, "--method", "normxlogit", "--layer", "0"],
], ids=["lens", "lens-layers", "joint", "paths", "predict", "attribute",
        "lens-stream-names", "joint-centre-names", "paths-block-names", "attribute-stream-name", "attribute-layer-number"])
def test_server_answers_print_like_the_local_command(explorer, serve_files, capsys, monkeypatch, args):
    monkeypatch.setenv("COLUMNS", "200")
    for extra in (["--json"], []):
        rc, local, err = _run(capsys, args + extra + ["-m", serve_files["a_dir"]])
        assert rc == 0, err
        rc, remote, err = _run(capsys, args + extra + ["-m", "tiny", "--server", explorer.url])
        assert rc == 0, err
        if extra:  # the API's JSON writes non-finite numbers as null (browsers refuse NaN)
            local, remote = finite(json.loads(local)), json.loads(remote)
            if args[0] == "attribute":  # the model field echoes --model
                assert local.pop("model") == serve_files["a_dir"] and remote.pop("model") == "tiny"
        assert remote == local


def test_server_errors_are_one_line(explorer, capsys, monkeypatch):
    rc, _, err = _run(capsys, ["lens", "", "--server", explorer.url])
    assert rc == 2 and err.strip().splitlines() == [f"error: server {explorer.url}: empty text: give at least one non-blank character"]
    rc, _, err = _run(capsys, ["lens", TEXT, "-m", "nope", "--server", explorer.url])
    assert rc == 2 and "unknown model 'nope'" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, ["lens", TEXT, "--server", "http://127.0.0.1:9"])
    assert rc == 2 and "cannot reach the jetex server at http://127.0.0.1:9" in err
    monkeypatch.setenv("JETEX_SERVER", "ftp://x")
    rc, _, err = _run(capsys, ["predict", TEXT])
    assert rc == 2 and "must be an http:// URL" in err
    monkeypatch.setenv("JETEX_SERVER", explorer.url)
    rc, out, err = _run(capsys, ["predict", TEXT, "-m", "tiny", "--json"])
    assert rc == 0 and json.loads(out)["top"], err  # the environment variable names the server


@pytest.mark.parametrize("cmd", [["lens", "the cat"], ["lens", "the cat", "--order", "2"], ["paths", "the cat", "--max-len", "1"],
                                 ["predict", "the cat"], ["attribute", "the cat", "--method", "logat"]],
                         ids=["lens", "lens-order", "paths", "predict", "attribute"])
def test_client_imports_no_torch(explorer, cmd):
    env = dict(os.environ, PYTHONPATH=SRC)
    pkg = subprocess.run([sys.executable, "-c", "import sys, jetex.cli.main; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert pkg.stdout.strip() == "False", "importing the jetex command line loads torch"
    code = (f"import sys; from jetex.cli.main import main; rc = main({cmd!r} + ['-m', 'tiny', '--json', '--server', "
            f"{explorer.url!r}]); print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH 0"
