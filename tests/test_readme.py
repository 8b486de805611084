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
