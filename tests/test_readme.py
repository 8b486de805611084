"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_two_block_walkthrough():
    code = _blocks()[0]
    assert "jet_expand" in code
    exec(compile(code, "README quick start", "exec"), {})


@pytest.mark.real
def test_real_model_example(smollm2):
    code = _blocks()[1]
    exec(compile(code, "README real-model example", "exec"), {})


@pytest.mark.real
def test_own_model_batch_example(smollm2, tmp_path, monkeypatch):
    pytest.importorskip("pandas", reason="the README's DataFrame example needs the jetex[pandas] extra")
    code = _blocks()[2]
    assert "from_hf" in code and "to_dataframe" in code
    monkeypatch.chdir(tmp_path)  # the example writes lens.png into the current directory
    ns: dict = {}
    exec(compile(code, "README own-model example", "exec"), ns)
    assert len(ns["lenses"]) == 2 and len(ns["df"]) > 0
    assert (tmp_path / "lens.png").stat().st_size > 0
