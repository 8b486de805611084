"""``jetex serve`` as a user starts it: a subprocess on a free port, the warning off loopback,
a one-line error for a store that is not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("starlette")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env():
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_serve_command_warns_off_loopback_and_serves(serve_files):
    cmd = [sys.executable, "-m", "jetex.cli.main", "serve", "-m", serve_files["a_dir"], "--store", serve_files["store_a"],
           "--host", "0.0.0.0", "--port", "0"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
    try:
        lines = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            line = p.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "jetex explorer on" in line:
                break
        text = "".join(lines)
        assert "warning: listening on 0.0.0.0, not on loopback" in text, text
        url = text.split("jetex explorer on ")[1].split()[0].replace("0.0.0.0", "127.0.0.1")
        with urllib.request.urlopen(url + "api/status", timeout=30) as r:
            st = json.loads(r.read())
        assert st["default_model"] == serve_files["a_dir"] and [s["name"] for s in st["stores"]] == ["store_a"]
    finally:
        p.terminate()
        p.wait(30)


def test_serve_refuses_a_missing_store_in_one_line(tmp_path, capsys):
    from jetex.cli.main import main

    assert main(["serve", "--store", str(tmp_path / "none.duckdb")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: no n-gram database at {tmp_path / 'none.duckdb'}"]
