"""``jetex lens --kind logit|tuned|jacobian``, ``lens-fit``, ``lens-merge`` and ``lens-eval`` on a tiny model."""

from __future__ import annotations

import json

import pytest

from jetex.cli.main import main

TEXT = "the cat sat on the mat"
WORDS = ("the cat sat on the mat . the dog ran in the room . the king and the queen walk to the city . "
         "paris is the capital of france . rome is the capital of italy . ") * 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "c.txt"
    p.write_text(WORDS)
    return str(p)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "p.json"
    p.write_text(json.dumps({"sets": {"toy": [
        {"prompt": "the capital of the country of paris is", "intermediate": "france", "target": "paris"},
        {"prompt": "the capital of italy is", "intermediate": "italy", "target": "rome"},
        {"prompt": "the capital of italy is", "intermediate": "italia", "target": "rome"},
    ]}}))
    return str(p)


def test_fit_lens_eval_end_to_end(tiny_llama_dir, corpus, prompts, tmp_path, capsys):
    j = tmp_path / "j.safetensors"
    t = tmp_path / "t.safetensors"
    assert main(["lens-fit", "--kind", "jacobian", "--model", tiny_llama_dir, "--corpus", corpus, "--tokens", "6", "--prompts", "3", "--out", str(j), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == 3
    assert main(["lens-fit", "--kind", "tuned", "--model", tiny_llama_dir, "--corpus", corpus, "--tokens", "6", "--steps", "3", "--batch", "2", "--out", str(t), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    for kind, extra in (("logit", []), ("tuned", ["--lens", str(t)]), ("jacobian", ["--lens", str(j)])):
        assert main(["lens", TEXT, "--model", tiny_llama_dir, "--kind", kind, *extra, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["kind"] == kind and out["rows"] == ["emb", "mlp.0", "mlp.1"]
    argv = ["lens-eval", "--model", tiny_llama_dir, "--tuned", str(t), "--jacobian", str(j), "--corpus", corpus, "--tokens", "6",
            "--windows", "2", "--prompt-set", prompts, "--json"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert "italia" in cap.err  # the dropped item is named
    held, conc = rep["heldout"], rep["concepts"]
    assert {r["lens"] for r in held["table"]} == {"logit", "tuned", "jacobian", "jet-1", "joint-1"}
    assert {r["group"] for r in held["table"] if r["lens"] in ("logit", "tuned", "jacobian")} == {"h_l"}
    assert all(r["own_share"] is not None for r in held["table"] if r["group"] == "h_L")
    last = [r for r in held["table"] if r["row"] == "mlp.1" and r["lens"] in ("logit", "jet-1")]
    assert all(r["kl"] < 1e-6 and r["top1"] == 1.0 and r["rank_median"] == 1 for r in last)  # h_L read by the model's decoder
    assert conc["n_items"] == 2 and len(conc["dropped"]) == 1
    assert main(argv) == 0  # same seed, same tables (timings aside)
    again = json.loads(capsys.readouterr().out)
    assert again["heldout"]["table"] == held["table"] and again["concepts"] == conc


def test_lens_fit_errors_one_line(tiny_llama_dir, corpus, tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from _tiny import save_tiny

    other = str(save_tiny(tmp_path / "other", "llama", seed=1))
    j = tmp_path / "j.safetensors"
    assert main(["lens-fit", "--kind", "jacobian", "--model", tiny_llama_dir, "--corpus", corpus, "--tokens", "6", "--prompts", "1", "--out", str(j)]) == 0
    capsys.readouterr()
    small = tmp_path / "small.txt"
    small.write_text("the cat sat")
    cases = [
        (["lens-fit", "--kind", "tuned", "--model", tiny_llama_dir, "--corpus", str(small), "--out", str(tmp_path / "x")], "too small"),
        (["lens", TEXT, "--model", tiny_llama_dir, "--kind", "tuned", "--lens", str(j)], "not a 'tuned' lens"),
        (["lens", TEXT, "--model", tiny_llama_dir, "--kind", "jacobian"], "needs --lens"),
        (["lens", TEXT, "--model", other, "--kind", "jacobian", "--lens", str(j)], "fitted for model"),
        (["lens-merge", str(j), str(j), "--out", str(tmp_path / "m")], "share"),
    ]
    for argv, msg in cases:
        assert main(argv) != 0
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
        assert len(err) == 1 and msg in err[0], (argv, err)
