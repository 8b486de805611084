"""End-to-end tests of ``jetex attribute`` through ``jetex.cli.main.main(argv)`` on a tiny saved model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attribution"))
from attr_tiny_models import make_hf, make_tokenizer  # noqa: E402

from jetex.cli.main import main  # noqa: E402

TEXT = "The capital of France is"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama with a word-level tokenizer, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-llama-attr")
    tok = make_tokenizer()
    make_hf("llama", len(tok), seed=1).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def loaded(model_dir):
    import jetex

    return jetex.load(model_dir)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_single_attribution_terminal(capsys, model_dir):
    code, out, err = run(capsys, "attribute", TEXT, "--model", model_dir)
    assert code == 0, err
    assert "normxlogit" in out and "capital" in out and "France" in out and "rank" in out


def test_json_matches_library(capsys, model_dir, loaded):
    from jetex.attribution import attribute

    code, out, err = run(capsys, "attribute", TEXT, "--model", model_dir, "--json", "--method", "logat", "--layer", "mlp.0")
    assert code == 0, err
    d = json.loads(out)
    a = attribute(loaded, TEXT, method="logat", layer=2)  # h_2: the stream after blocks attn.0, mlp.0
    assert d["method"] == "logat" and d["options"] == {"layer": 2} and d["stream"] == "mlp.0"
    # a bare number is a transformer layer (the stream at its end): layer 0 ends with mlp.0
    code, out0, err = run(capsys, "attribute", TEXT, "--model", model_dir, "--json", "--method", "logat", "--layer", "0")
    assert code == 0, err
    assert json.loads(out0)["options"] == {"layer": 2}
    assert d["tokens"] == list(a.tokens) and d["target_id"] == a.target_id
    assert d["scores"] == pytest.approx(a.scores.tolist(), rel=1e-6, abs=1e-6)


def test_target_word_and_html(capsys, model_dir, tmp_path, loaded):
    out_html = tmp_path / "attr.html"
    code, out, err = run(
        capsys, "attribute", TEXT, "--model", model_dir, "--target", "Paris", "--method", "integrated_gradients",
        "--steps", "8", "--html", str(out_html), "--json",
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["target"] == "Paris" and d["target_id"] == loaded.tokenizer.convert_tokens_to_ids("Paris")
    assert d["options"]["n_steps"] == 8 and "convergence_delta" in d["extras"]
    page = out_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "France" in page and "<script" not in page


def test_multi_token_target_warns(capsys, model_dir):
    code, out, err = run(capsys, "attribute", TEXT, "--model", model_dir, "--target", "red door", "--json")
    assert code == 0
    assert "warning: target" in err and "first token 'red'" in err
    assert json.loads(out)["target"] == "red"


def test_eval_over_a_prompt_file(capsys, model_dir, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# three prompts\nThe cat sat on the\nThe sun rises in the east and sets in the\nThank you very much for your\n")
    code, out, err = run(
        capsys, "attribute", "--eval", str(f), "--methods", "normxlogit,random,saliency,jetxlogit@mlp.0:2",
        "--model", model_dir, "--json",
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["n_prompts"] == 3 and d["ratios"] == [0.01, 0.05, 0.1, 0.2, 0.5]
    assert [m["method"] for m in d["methods"]] == ["normxlogit", "random", "saliency", "jetxlogit@mlp.0:2"]
    for m in d["methods"]:
        assert m["n_prompts"] == 3 and m["seconds_per_prompt"] > 0
        assert m["aopc_comprehensiveness"] == pytest.approx(sum(m["comprehensiveness"]) / 5)


def test_eval_shipped_set_table(capsys, model_dir):
    code, out, err = run(capsys, "attribute", "--eval", "--limit", "2", "--methods", "normxlogit,norm", "--model", model_dir)
    assert code == 0, err
    assert "faithfulness over 2 prompts" in out and "normxlogit" in out and "sufficiency" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attribute", ""], "empty text"),
        (["attribute", TEXT, "--method", "lime"], "unknown attribution method"),
        (["attribute", TEXT, "--layer", "99"], "out of range"),
        (["attribute", TEXT, "--layer", "mlp.9"], "unknown --layer 'mlp.9'; valid: emb, attn.0"),
        (["attribute", TEXT, "--method", "jetxlogit"], "needs a layer"),
        (["attribute", TEXT, "--method", "saliency", "--layer", "1"], "takes no layer"),
        (["attribute"], "give a TEXT"),
        (["attribute", TEXT, "--eval", "missing-file.txt"], "not both"),
        (["attribute", "--eval", "missing-file.txt"], "not found"),
        (["attribute", TEXT, "--steps", "3"], "integrated_gradients only"),
        (["attribute", "--eval", "--methods", "normxlogit,shap"], "unknown attribution method"),
        (["attribute", TEXT, "--target", "x", "--target-id", "3"], "not both"),
        (["attribute", "--eval", "--target", "x"], "does not apply to --eval"),
    ],
)
def test_errors_are_one_line(capsys, model_dir, argv, message):
    code, out, err = run(capsys, *argv, "--model", model_dir)
    assert code != 0
    last = err.rstrip("\n").split("\n")[-1]  # (a loader progress bar may precede it)
    assert last.startswith("error: ") and message in last and err.count("error:") == 1


def test_model_under_inference_mode_is_a_clear_error(capsys, model_dir):
    with torch.inference_mode():
        code, out, err = run(capsys, "attribute", TEXT, "--model", model_dir, "--method", "saliency")
    # the CLI loads the model inside the caller's inference mode: its weights are inference tensors
    assert code != 0 and "inference tensors" in err and "reload it outside inference mode" in err


@pytest.fixture(scope="module")
def short_context_dir(tmp_path_factory):
    """The tiny Llama with a context window of 8 tokens (max_position_embeddings = 8)."""
    folder = tmp_path_factory.mktemp("tiny-llama-ctx8")
    tok = make_tokenizer()
    hf = make_hf("llama", len(tok), seed=1)
    hf.config.max_position_embeddings = 8
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("method", ["normxlogit", "saliency"])
def test_text_longer_than_the_context_is_one_line(capsys, short_context_dir, method):
    import jetex

    m = jetex.load(short_context_dir)
    assert m.max_length == 8
    fits = "The cat sat on the"  # BOS + 5 words: 6 tokens
    code, out, err = run(capsys, "attribute", fits, "--model", short_context_dir, "--method", method, "--json")
    assert code == 0, err
    assert len(json.loads(out)["tokens"]) == 6
    long = "The sun rises in the east and sets in the"  # BOS + 10 words: 11 tokens > 8
    code, out, err = run(capsys, "attribute", long, "--model", short_context_dir, "--method", method)
    assert code != 0 and out == ""
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and err.count("error:") == 1, err
    assert "11 tokens long" in lines[0] and "context window" in lines[0] and "is 8" in lines[0]


def test_missing_captum_is_one_line(capsys, model_dir, tmp_path, monkeypatch):
    """Without Captum a gradient method is one line and a non-zero exit, before the model is loaded;
    the forward-only methods still work."""
    monkeypatch.setitem(sys.modules, "captum", None)  # `import captum` raises ImportError
    import jetex.models.load as loader

    loads = []
    real_load = loader.load
    monkeypatch.setattr(loader, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    for argv in (["attribute", TEXT, "--method", "integrated_gradients"],
                 ["attribute", "--eval", "--limit", "1", "--methods", "normxlogit,saliency"]):
        code, out, err = run(capsys, *argv, "--model", model_dir)
        assert code != 0 and out == "", argv
        assert err.strip().splitlines() == [
            f"error: method {'integrated_gradients' if '--method' in argv else 'saliency'!r} needs Captum, "
            "which is not installed: pip install 'jetex[attribution]'"], err
    assert not loads  # refused before loading the model
    code, out, err = run(capsys, "attribute", TEXT, "--model", model_dir, "--method", "normxlogit", "--json")
    assert code == 0, err
    assert len(loads) == 1  # the patched loader is the one the command uses
