"""``--texts FILE`` on predict, lens, paths and attribute: one model load, one result per text
(each equal to the command run on that text alone), and one-line errors for bad files."""

from __future__ import annotations

import json

import pytest

import jetex
import jetex.models.load as load_module
from jetex.cli.main import main

TEXTS = ["the cat sat on the mat", "a dog ran", "the king of france said"]


@pytest.fixture()
def texts_file(tmp_path):
    p = tmp_path / "texts.txt"
    p.write_text(TEXTS[0] + "\n\n" + TEXTS[1] + "\r\n" + TEXTS[2] + "\n", encoding="utf-8")  # blank line skipped
    return str(p)


@pytest.fixture()
def loads(monkeypatch):
    """Counts model loads."""
    calls = []
    real = load_module.load

    def counting(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(load_module, "load", counting)
    monkeypatch.setattr(jetex, "load", counting)  # attribute loads through jetex.load
    return calls


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--top", "3"],
        ["lens", "--order", "1", "--top", "3"],
        ["lens", "--kind", "joint", "--optimize", "--top", "3"],
        ["paths", "--max-len", "1", "--top", "3"],
        ["attribute", "--method", "normxlogit"],
    ],
    ids=["predict", "lens", "joint", "paths", "attribute"],
)
def test_texts_give_each_text_its_own_result(tiny_llama_dir, texts_file, loads, capsys, argv):
    many = _json(capsys, [*argv, "--texts", texts_file, "--model", tiny_llama_dir, "--json"])
    assert len(loads) == 1 and len(many["results"]) == len(TEXTS)
    for text, res in zip(TEXTS, many["results"]):
        one = _json(capsys, [*argv, text, "--model", tiny_llama_dir, "--json"])
        assert res["text"] == text
        for key in ("top", "cells", "rows", "paths", "scores", "target", "expansion_top"):
            if key in one:
                got, want = json.dumps(res[key]), json.dumps(one[key])
                if key in ("top", "paths", "scores", "cells"):  # a batch may reassociate float32 sums
                    assert _close(res[key], one[key]), key
                else:
                    assert got == want, key


#: ill-conditioned by construction: the cosine of the lens's "rest" along q, which is pure
#: rounding (~1e-7) on the row of the model itself, so any reassociation changes it at O(1)
_ILL_CONDITIONED = {"rest_cosine"}


def _close(a, b, tol: float = 1e-4) -> bool:
    """Structures equal, floats within tol (float32 batched vs single; values are O(1..10))."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a if k not in _ILL_CONDITIONED)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def test_lens_texts_out_writes_one_file_per_text(tiny_llama_dir, texts_file, tmp_path, capsys):
    out = tmp_path / "lens.json"
    res = _json(capsys, ["lens", "--texts", texts_file, "--model", tiny_llama_dir, "--out", str(out), "--json"])
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("lens."))
    assert names == ["lens.0.json", "lens.1.json", "lens.2.json"]
    assert [r["out"] for r in res["results"]] == [str(tmp_path / n) for n in names]
    assert json.loads((tmp_path / "lens.1.json").read_text())["tokens"] == res["results"][1]["tokens"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "has no text"),
        (b"\n  \n", "has no text"),
        (b"the cat\nthe \xff dog\n", r"line 2 is not UTF-8 \(byte 0xff at column 5\)"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "lens", "paths", "attribute"])
def test_bad_texts_files_are_one_line_errors(tiny_llama_dir, tmp_path, capsys, loads, command, content, message):
    p = tmp_path / "t.txt"
    p.write_bytes(content)
    assert main([command, "--texts", str(p), "--model", tiny_llama_dir]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(p) in err
    assert __import__("re").search(message, err), err
    assert loads == []  # refused before the model is loaded


@pytest.mark.parametrize("command", ["predict", "lens", "paths", "attribute"])
def test_text_and_texts_together_or_neither(tiny_llama_dir, texts_file, capsys, command):
    assert main([command, "hello", "--texts", texts_file, "--model", tiny_llama_dir]) != 0
    assert "not both" in capsys.readouterr().err
    assert main([command, "--texts", texts_file + ".missing", "--model", tiny_llama_dir]) != 0
    assert "no file" in capsys.readouterr().err
