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
    # with --out: a one-line summary instead of the table
    assert text.startswith(f"wrote {out_json}: joint jet lens, order 1") and len(text.strip().splitlines()) == 1
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
        (["lens", TEXT, "--layers", "x"], "unknown --layers entry 'x'; valid: emb, attn.0, attn.1, mlp.0, mlp.1, final"),
        (["lens", TEXT, "--out", "f.bmp"], ""),
        (["paths", TEXT, "--use", "mlp.9"], "unknown block"),
        (["paths", TEXT, "--max-len", "4", "--limit", "3"], "narrow the filters"),
        (["lens", TEXT, "--kind", "joint", "--centres", "mlp.0"], "do not sum to the stream"),
    ],
)
def test_bad_input_one_line_error(tiny_llama_dir, capsys, argv, msg):
    code = main(argv + ["--model", tiny_llama_dir])
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert code != 0
    assert len(err_lines) == 1
    assert msg in err_lines[0]


def test_paths_super_exponential_and_degree_filter(tiny_llama_dir, capsys):
    """--split-degrees ranks degree-split paths; --degrees restricts the degree at every block and the decoder."""
    import jetex
    from jetex.expand import PathFilter, exp_jet_expansion

    argv = ["paths", TEXT, "--model", tiny_llama_dir, "--order", "2", "--max-len", "1", "--top", "50", "--json"]
    assert main(argv + ["--split-degrees"]) == 0
    out = json.loads(capsys.readouterr().out)
    pe = exp_jet_expansion(jetex.load(tiny_llama_dir), 2, split_degrees=True)
    assert out["split_degrees"] is True and out["n_paths"] == pe.count(PathFilter(max_len=1))
    # empty path: 3 decoder degrees; attn.0 (block 1, exact): 3; the other 3 blocks: 3 × 3 each
    assert out["n_paths"] == 3 + 3 + 3 * 9
    names = [p["path"] for p in out["paths"]]
    assert len(names) == len(set(names)) == 33 and all("dec[" in n for n in names)
    assert any("mlp.0[1] → dec[2]" in n for n in names)
    assert main(argv + ["--super", "--degrees", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["degrees"] == [0] and out["n_paths"] == 1 + 1 + 3
    assert all(p["path"].endswith("dec[0]") for p in out["paths"])
    assert all("[1]" not in p["path"] and "[2]" not in p["path"] for p in out["paths"])
    # the exponential expansion is unchanged: no degree in any name
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split_degrees"] is False and out["n_paths"] == 5 and not any("[" in p["path"] for p in out["paths"])


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["paths", TEXT, "--order", "-1"], "order must be >= 0"),
        (["paths", TEXT, "--token", "cat sat"], "--token 'cat sat' is 2 tokens ('cat', 'sat'); give a single token"),
        (["paths", TEXT, "--degrees", "0"], "add --split-degrees"),
        (["paths", TEXT, "--split-degrees", "--order", "0"], "needs --order >= 1"),
        (["paths", TEXT, "--split-degrees", "--degrees", "3"], "degrees must lie in 0..1"),
        (["paths", TEXT, "--top", "0"], "--top must be >= 1"),
        (["lens", TEXT, "--kind", "joint", "--layers", "0,1"], "--layers applies to the iterative lens only"),
        (["lens", TEXT, "--centres", "blocks"], "--centres applies to the joint lens only"),
        (["lens", TEXT, "--kind", "joint", "--centres", "99"], "the joint lens needs 2..5 centres"),
        (["lens", TEXT, "--kind", "joint", "--centres", "heads"], "unknown centres 'heads'"),
    ],
)
def test_paths_and_lens_option_errors(tiny_llama_dir, capsys, argv, msg):
    code = main(argv + ["--model", tiny_llama_dir])
    captured = capsys.readouterr()
    err_lines = [ln for ln in captured.err.splitlines() if ln.startswith("error: ")]
    assert code != 0 and captured.out == ""
    assert len(err_lines) == 1 and msg in err_lines[0], captured.err


def test_paths_single_token_target(tiny_llama_dir, capsys):
    assert main(["paths", TEXT, "--model", tiny_llama_dir, "--token", "cat", "--top", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"]["token"] == "cat"


def test_lens_trust_in_json_table_and_one_warning(tiny_llama_dir, capsys):
    """Diagnostics reach --json (per cell and per row); a lens dominated by untrusted cells prints
    exactly one warning line on stderr naming the failure and what to try; boundaries ending at L work."""
    assert main(["lens", TEXT, "--model", tiny_llama_dir, "--kind", "joint", "--centres", "mlp.0,mlp.1", "--order", "3", "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    d = out["diagnostics"]
    assert set(d) >= {"decay", "distance", "remainder_share", "cancellation", "trusted", "thresholds"}
    assert len(d["trusted"]) == 3 and all(len(r) == 7 for r in d["trusted"])
    assert [c["trusted"] for c in out["cells"][0]] == d["trusted"][0]
    n_bad = sum(not v for row in d["trusted"] for v in row)
    warn = [ln for ln in cap.err.splitlines() if ln.startswith("warning: ")]
    assert len(warn) == (1 if 2 * n_bad > 21 else 0)
    if warn:
        assert "untrusted" in warn[0] and "try" in warn[0]
    # the iterative lens's split along q is in the JSON and the table
    assert main(["lens", TEXT, "--model", tiny_llama_dir, "--order", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all({"q_coef", "q_share", "rest_cosine", "trusted"} <= set(c) for row in out["cells"] for c in row)
    assert main(["lens", TEXT, "--model", tiny_llama_dir, "--order", "1"]) == 0
    assert "cos⊥q" in capsys.readouterr().out


def test_paths_readable_scale_json(tiny_llama_dir, capsys):
    """Paths are ranked on the unweighted scale by default, with token strings and a share of the
    model's logit; --weighted ranks Algorithm 2's terms, which are smaller by the weights."""
    argv = ["paths", TEXT, "--model", tiny_llama_dir, "--max-len", "2", "--top", "3", "--json"]
    assert main(argv) == 0
    un = json.loads(capsys.readouterr().out)
    assert un["scale"] == "unweighted" and all(isinstance(p["token"], str) and isinstance(p["top_token"], str) for p in un["paths"])
    assert main(argv + ["--weighted"]) == 0
    w = json.loads(capsys.readouterr().out)
    assert w["scale"] == "weighted"
    assert max(abs(p["logit"]) for p in w["paths"]) < max(abs(p["logit"]) for p in un["paths"])


def test_block_names_everywhere(tiny_llama_dir, capsys):
    """Streams and blocks are chosen by name (emb, attn.N, mlp.N, final) or by layer number,
    the same way in lens --layers, lens --centres and paths --use/--avoid."""
    def run(*argv):
        assert main([*argv, "--model", tiny_llama_dir, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("lens", TEXT, "--layers", "emb,attn.1,final")["rows"] == ["emb", "attn.1", "mlp.1"]
    # a number is a transformer layer: its end, the stream after mlp.N
    assert run("lens", TEXT, "--layers", "-1,0-1")["rows"] == ["emb", "mlp.0", "mlp.1"]
    assert run("lens", TEXT, "--kind", "joint", "--centres", "mlp.0,final")["rows"] == ["emb", "attn.0…mlp.0", "attn.1…mlp.1"]
    out = run("paths", TEXT, "--use", "mlp.1", "--avoid", "attn", "--max-len", "2")
    assert out["n_paths"] == 2 and all("mlp.1" in p["path"] and "attn" not in p["path"] for p in out["paths"])
    out = run("paths", TEXT, "--use", "0", "--max-len", "2")  # every block of layer 0
    assert out["n_paths"] == 1 and "attn.0" in out["paths"][0]["path"] and "mlp.0" in out["paths"][0]["path"]


def test_terminal_table_fits_width_escapes_and_keys(tiny_llama_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["lens", "the cat \x1b[31m sat on the mat", "--model", tiny_llama_dir, "--kind", "joint", "--optimize"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and all(len(line) <= 60 for line in out.splitlines())
    assert "colour: P(top-1)" in out and "rows: one term per centre" in out
    assert "·" in out  # weight-0 cells of the optimised joint lens
    for scale, key in (("rank", "rank of the model's top-1"), ("logprob", "log P(top-1)"), ("logit", "top-1 logit")):
        assert main(["lens", TEXT, "--model", tiny_llama_dir, "--color-by", scale]) == 0
        assert key in capsys.readouterr().out


def test_non_utf8_argument_is_one_line(capsys):
    assert main(["predict", "caf\udce9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument 2 is not valid UTF-8 text") and len(err.strip().splitlines()) == 1
