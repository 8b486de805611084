"""``jetex models`` and ``jetex predict`` through ``jetex.cli.main.main(argv)``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from jetex.cli.main import main

CLI_LOAD_CACHE = False  # these tests exercise loading itself (see tests/cli/conftest.py)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from models_tiny_hf import V, make  # noqa: E402

WORDS = [f"w{i}" for i in range(V - 3)]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny Llama saved as a HF folder with a word-level tokenizer (context 64 tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {"[BOS]": 0, "[EOS]": 1, "[UNK]": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]")
    hf = make("llama")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, hf


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_models_lists_known_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out and ".gguf" in out and "LlamaForCausalLM" in out


def test_models_json(capsys, tiny_folder):
    folder, _ = tiny_folder
    assert main(["models", "--json", "--model", str(folder)]) == 0
    p = _json(capsys)
    assert [r["name"] for r in p["models"]] == ["smollm2-135m", "gemma3-270m"]
    assert {"installed", "cached", "package", "cache"} <= set(p["models"][0])
    assert p["selected"] == {"model": str(folder), "kind": "folder", "source": str(folder)}
    assert "Gemma3ForCausalLM" in p["supported_architectures"]


def test_models_reports_a_bad_model_without_failing(capsys):
    assert main(["models", "--json", "--model", "no-such-model"]) == 0
    assert "unknown model" in _json(capsys)["selected"]["error"]


def test_predict_tiny_folder(capsys, tiny_folder):
    folder, hf = tiny_folder
    assert main(["predict", "w1 w2 w3", "--model", str(folder), "--top", "4", "--json"]) == 0
    p = _json(capsys)
    assert len(p["top"]) == 4 and p["n_tokens"] == 4  # BOS + 3 words
    ids = torch.tensor([[0, 4, 5, 6]])
    with torch.no_grad():
        probs = torch.softmax(hf(input_ids=ids).logits[0, -1], -1)
    top = probs.topk(4)
    assert [r["id"] for r in p["top"]] == top.indices.tolist()
    assert [r["prob"] for r in p["top"]] == pytest.approx(top.values.tolist(), abs=1e-6)
    s = p["structure"]
    assert (s["L"], s["granularity"], s["d"], s["vocab"], s["n_layers"]) == (4, "sublayer", 32, V, 2)
    assert s["first_blocks"] == ["attn.0", "mlp.0"] and s["last_block"] == "mlp.1"


def test_predict_layer_granularity_and_text_output(capsys, tiny_folder):
    folder, _ = tiny_folder
    assert main(["predict", "w7 w8", "--model", str(folder), "--granularity", "layer"]) == 0
    out = capsys.readouterr().out
    assert "L = 2 blocks" in out and "layer.0 … layer.1" in out


@pytest.mark.parametrize("text", ["", "   \n"])
def test_predict_empty_text(capsys, tiny_folder, text):
    folder, _ = tiny_folder
    assert main(["predict", text, "--model", str(folder)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: empty text") and err.count("\n") == 1


def test_predict_too_long(capsys, tiny_folder):
    folder, _ = tiny_folder
    assert main(["predict", " ".join(WORDS[:70]), "--model", str(folder)]) != 0
    err = capsys.readouterr().err
    assert "context window" in err and err.count("\n") == 1


def test_predict_bad_top(capsys, tiny_folder):
    folder, _ = tiny_folder
    assert main(["predict", "w1", "--model", str(folder), "--top", "0"]) != 0
    assert "--top" in capsys.readouterr().err


def test_predict_unknown_model(capsys):
    assert main(["predict", "hello", "--model", "gpt-17"]) != 0
    err = capsys.readouterr().err
    assert "unknown model" in err and "smollm2-135m" in err and err.count("\n") == 1


@pytest.mark.real
def test_predict_smollm2(capsys):
    assert main(["predict", "The capital of France is", "--top", "3", "--json"]) == 0
    p = _json(capsys)
    assert p["model"] == "smollm2-135m" and p["top"][0]["token"] == " Paris"
    assert p["structure"]["L"] == 60 and p["structure"]["last_block"] == "mlp.29"
    assert p["structure"]["d"] == 576 and p["structure"]["vocab"] == 49152


@pytest.mark.real
def test_predict_gemma3_text(capsys):
    assert main(["predict", "The capital of France is", "--model", "gemma3-270m"]) == 0
    out = capsys.readouterr().out
    assert "Gemma3ForCausalLM: L = 36 blocks" in out


# ---- bad model sources and internal errors: one line on stderr, non-zero exit ---------------
def _one_error_line(capsys) -> str:
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("error: ") and "Traceback" not in cap.err
    return lines[0]


def _write_gguf(path: Path, arch: str = "llama", n: int = 4096) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(n * 8, dtype=np.float32).reshape(n, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JETEX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cli_missing_model_file(capsys, tmp_path, empty_cache):
    assert main(["predict", "hello", "--model", str(tmp_path / "nothing-here.gguf")]) != 0
    line = _one_error_line(capsys)
    assert "no such file" in line and "nothing-here.gguf" in line


def test_cli_corrupted_gguf(capsys, tmp_path, empty_cache):
    import os

    p = tmp_path / "random.gguf"
    p.write_bytes(os.urandom(50_000))
    assert main(["predict", "hello", "--model", str(p)]) != 0
    assert "not a GGUF file" in _one_error_line(capsys)
    p.write_bytes(b"GGUF" + os.urandom(50_000))  # right magic, garbage after it
    assert main(["predict", "hello", "--model", str(p)]) != 0
    assert "corrupted or truncated" in _one_error_line(capsys)


@pytest.mark.parametrize("keep", [0.5, 0.003])
def test_cli_truncated_gguf(capsys, tmp_path, empty_cache, keep):
    """A valid GGUF (written with GGUFWriter) cut inside its tensor data / inside its header."""
    full = _write_gguf(tmp_path / "full.gguf").read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(full[: int(len(full) * keep)])
    assert main(["predict", "hello", "--model", str(p)]) != 0
    assert "corrupted or truncated" in _one_error_line(capsys)
    assert not (empty_cache / "models").exists() or not any((empty_cache / "models").iterdir())


def test_cli_unsupported_architecture_folder(capsys, tmp_path, empty_cache):
    unknown = tmp_path / "unknown-arch"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"architectures": ["FrobnicatorForCausalLM"], "model_type": "frobnicator"}))
    assert main(["predict", "hello", "--model", str(unknown)]) != 0
    line = _one_error_line(capsys)
    assert "unknown model type 'frobnicator'" in line and "FrobnicatorForCausalLM" in line
    assert "LlamaForCausalLM" in line  # names what is supported
    known_type = tmp_path / "opt-folder"  # a type transformers knows, without a jetex adapter
    known_type.mkdir()
    (known_type / "config.json").write_text(json.dumps({"architectures": ["OPTForCausalLM"], "model_type": "opt"}))
    assert main(["predict", "hello", "--model", str(known_type)]) != 0
    line = _one_error_line(capsys)
    assert "unsupported architecture OPTForCausalLM" in line and "Gemma3ForCausalLM" in line


def _boom(*args, **kwargs):
    raise ValueError("something\nbroke  inside")


def test_cli_internal_error_is_one_line(capsys, monkeypatch):
    import jetex.models.load as load_mod

    monkeypatch.delenv("JETEX_DEBUG", raising=False)
    monkeypatch.setattr(load_mod, "load", _boom)
    rc = main(["predict", "hello"])
    assert rc == 1
    line = _one_error_line(capsys)
    assert line == "error: internal error (ValueError): something broke inside (set JETEX_DEBUG=1 for the traceback)"


def test_cli_internal_error_traceback_with_jetex_debug(capsys, monkeypatch):
    import jetex.models.load as load_mod

    monkeypatch.setenv("JETEX_DEBUG", "1")
    monkeypatch.setattr(load_mod, "load", _boom)
    assert main(["predict", "hello"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_boom" in err
    assert err.strip().splitlines()[-1] == "error: internal error (ValueError): something broke inside"


def test_cli_jetex_error_traceback_with_jetex_debug(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("JETEX_DEBUG", "1")
    assert main(["predict", "hello", "--model", str(tmp_path / "nothing.gguf")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ModelLoadError" in err and err.strip().splitlines()[-1].startswith("error: no such file")
