"""End-to-end tests of ``jetex lens`` and ``jetex paths`` through ``main(argv)``."""

from __future__ import annotations

import json

import pytest

from jetex.cli.main import main

TEXT = "the cat sat on the mat"


def test_lens_iterative_json(tiny_llama_dir, capsys):
    assert main(["lens", TEXT, "--model", tiny_llama_dir, "--order", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "iterative" and out["order"] == 1
    assert out["rows"] == ["emb", "mlp.0", "mlp.1"]
    assert len(out["tokens"]) == 7  # BOS + 6 words
    assert abs(out["mean_cosine"][-1] - 1.0) < 1e-4  # the last row is the model itself


def test_lens_joint_optimised_table_and_files(tiny_llama_dir, tmp_path, capsys):
    out_json = tmp_path / "lens.json"
    assert main(["lens", TEXT, "--model", tiny_llama_dir, "--kind", "joint", "--centres", "blocks", "--optimize", "--out", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "joint jet lens" in text and "expansion" in text
    data = json.loads(out_json.read_text())
    assert data["rows"] == ["emb", "attn.0", "mlp.0", "attn.1", "mlp.1"]
    weights = [[c["weight"] for c in row] for row in data["cells"]]
    assert all(abs(sum(col) - 1) < 1e-3 for col in zip(*weights))


def test_paths_ranked(tiny_llama_dir, capsys):
    assert main(["paths", TEXT, "--model", tiny_llama_dir, "--max-len", "2", "--top", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_paths"] == 1 + 4 + 6
    logits = [p["logit"] for p in out["paths"]]
    assert logits == sorted(logits, reverse=True) and len(logits) == 5
    assert all(p["path"].startswith("emb") and p["path"].endswith("dec") for p in out["paths"])


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["lens", "   "], "empty text"),
        (["lens", TEXT, "--order", "-1"], "order"),
        (["lens", TEXT, "--layers", "7"], "out of range"),
        (["lens", TEXT, "--layers", "x"], "bad layer list"),
        (["lens", TEXT, "--out", "f.bmp"], ""),
        (["paths", TEXT, "--use", "mlp.9"], "unknown block"),
        (["paths", TEXT, "--max-len", "4", "--limit", "3"], "narrow the filters"),
    ],
)
def test_bad_input_one_line_error(tiny_llama_dir, capsys, argv, msg):
    code = main(argv + ["--model", tiny_llama_dir])
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert code != 0
    assert len(err_lines) == 1
    assert msg in err_lines[0]
