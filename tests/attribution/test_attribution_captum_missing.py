"""Without Captum (an optional extra), the gradient baselines are a one-line error; the
forward-only methods do not need it."""

from __future__ import annotations

import sys

import pytest

from jetex.attribution import attribute
from jetex.attribution.gradient import CaptumMissingError, import_captum
from jetex.errors import JetexError

TEXT = "The capital of France is"


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_gradient_methods_without_captum(tiny_llama, monkeypatch, method):
    monkeypatch.setitem(sys.modules, "captum", None)  # `import captum` raises ImportError
    with pytest.raises(CaptumMissingError) as e:
        attribute(tiny_llama, TEXT, method=method)
    msg = str(e.value)
    assert msg == f"method {method!r} needs Captum, which is not installed: pip install 'jetex[attribution]'"
    assert isinstance(e.value, JetexError) and "\n" not in msg


def test_forward_methods_without_captum(tiny_llama, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    for method in ("normxlogit", "logat", "norm", "random"):
        assert attribute(tiny_llama, TEXT, method=method).scores.numel() == len(tiny_llama.tokenize(TEXT)[0])
    with pytest.raises(CaptumMissingError, match=r"^gradient methods need Captum"):
        import_captum()


def test_with_captum_the_module_is_returned():
    pytest.importorskip("captum")
    assert hasattr(import_captum(), "IntegratedGradients")
