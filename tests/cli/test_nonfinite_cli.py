"""Non-finite weights and results, and unsupported orders: one line, non-zero exit, nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import jetex
from jetex.cli.main import main
from jetex.errors import InputError, NonFiniteResultError, NonFiniteWeightsError
from jetex.finite import allow_nonfinite, check_finite, check_finite_weights
from jetex.jets import MAX_ORDER

TEXT = "the cat sat on the mat"
BAD = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def nan_llama_dir(tmp_path_factory):
    """The tiny Llama with one NaN in layer 1's down projection (and two Inf in a later norm)."""
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from _tiny import save_tiny

    folder = save_tiny(tmp_path_factory.mktemp("nan-llama"), "llama")
    (wfile,) = folder.glob("*.safetensors")
    tensors = load_file(str(wfile))
    tensors[BAD][3, 5] = float("nan")
    tensors["model.norm.weight"][:2] = float("inf")
    save_file(tensors, str(wfile), metadata={"format": "pt"})
    return str(folder)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_load_refuses_nan_weights_naming_the_first_tensor(nan_llama_dir):
    with pytest.raises(NonFiniteWeightsError) as e:
        jetex.load(nan_llama_dir)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{BAD} holds 1 NaN of " in msg  # the first bad tensor in parameter order, and its count
    assert "2 non-finite tensors in all" in msg and "allow_nonfinite=True" in msg
    m = jetex.load(nan_llama_dir, allow_nonfinite=True)  # the debugging opt-out
    assert torch.isnan(dict(m.hf.named_parameters())[BAD]).sum() == 1


def test_from_hf_refuses_nan_weights(tiny_llama_dir):
    from jetex.models.hf import HFResidualModel

    m = jetex.load(tiny_llama_dir)
    hf = m.hf
    with torch.no_grad():
        w = dict(hf.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
        old = w[0, 0].item()
        w[0, 0] = float("-inf")
        try:
            with pytest.raises(NonFiniteWeightsError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight holds 1 Inf of 1024 values"):
                HFResidualModel.from_hf(hf)
            assert HFResidualModel.from_hf(hf, allow_nonfinite=True).n_blocks == m.n_blocks
            with allow_nonfinite():
                HFResidualModel.from_hf(hf)
        finally:
            w[0, 0] = old
    check_finite_weights(hf)  # restored: passes


@pytest.mark.parametrize("cmd", [["predict", TEXT], ["lens", TEXT], ["paths", TEXT, "--max-len", "1"]])
def test_commands_refuse_a_nan_model_in_one_line(nan_llama_dir, capsys, cmd):
    assert main([*cmd, "--model", nan_llama_dir]) != 0
    line = _one_error_line(capsys)
    assert "non-finite weights" in line and BAD in line and "--allow-nonfinite" in line
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("cmd", [["predict", TEXT], ["lens", TEXT]])
def test_allow_nonfinite_loads_it_then_refuses_the_nan_result(nan_llama_dir, capsys, cmd):
    """--allow-nonfinite gets past the load; the NaN readout is then printed, not refused, for debugging."""
    assert main([*cmd, "--model", nan_llama_dir, "--allow-nonfinite", "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" in out
    # the flag does not leak into the next command
    assert main([*cmd, "--model", nan_llama_dir]) != 0
    assert "non-finite weights" in _one_error_line(capsys)


def test_nonfinite_result_is_one_line_and_nothing_is_written(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """A lens whose readout is NaN (here: forced by a NaN final-norm output) exits non-zero in one line and writes no file."""
    import jetex.lenses as lenses

    real = lenses.iterative_lens

    def nan_lens(*a, **kw):
        res = real(*a, **kw)
        res.cosine[1, 2] = float("nan")
        return res

    monkeypatch.setattr(lenses, "iterative_lens", nan_lens)
    out = tmp_path / "lens.json"
    out.write_text("old")
    assert main(["lens", TEXT, "--model", tiny_llama_dir, "--out", str(out)]) != 0
    line = _one_error_line(capsys)
    assert "order-1 iterative jet lens (cosine) is not finite at [1, 2]" in line and "lower --order" in line
    assert out.read_text() == "old"  # nothing half-written, the old file kept


@pytest.mark.parametrize(
    "cmd",
    [
        ["lens", TEXT, "--order", "100"],
        ["lens", TEXT, "--kind", "joint", "--order", str(MAX_ORDER + 1)],
        ["paths", TEXT, "--order", "100"],
        ["attribute", TEXT, "--method", "jetxlogit", "--layer", "1", "--order", "100"],
        ["ngrams", "extract", "--db", "never.duckdb", "--order", "100"],
    ],
)
def test_order_beyond_the_supported_maximum_is_refused_up_front(capsys, cmd, tmp_path, monkeypatch):
    """Refused before any model is loaded (the model does not even exist)."""
    monkeypatch.chdir(tmp_path)
    assert main([*cmd, "--model", str(tmp_path / "no-such-model")]) != 0
    line = _one_error_line(capsys)
    assert f"beyond the supported maximum {MAX_ORDER}" in line
    assert not (tmp_path / "never.duckdb").exists()


def test_orders_up_to_the_maximum_are_accepted(tiny_llama_dir, capsys):
    assert main(["lens", TEXT, "--model", tiny_llama_dir, "--order", str(MAX_ORDER), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["order"] == MAX_ORDER


def test_library_order_check():
    from jetex.expand.algorithm import check_order

    assert check_order(MAX_ORDER) == MAX_ORDER
    with pytest.raises(InputError, match="beyond the supported maximum"):
        check_order(MAX_ORDER + 1)


def test_check_finite_names_the_first_bad_entry():
    payload = {"rows": [{"cos": 0.5}, {"cos": 0.25, "top": torch.tensor([[1.0, 2.0], [float("nan"), float("inf")]])}]}
    with pytest.raises(NonFiniteResultError, match=r"the thing is not finite at rows\[1\]\.top\[1, 0\] \(1 NaN and 1 Inf of 4 values\); try this"):
        check_finite(payload, "the thing", "try this")
    with pytest.raises(NonFiniteResultError, match=r"at rows\[0\]\.cos \(-inf\)"):
        check_finite({"rows": [{"cos": float("-inf")}]}, "x")
    assert check_finite(payload | {"rows": []}, "x") is not None
    with allow_nonfinite():
        check_finite(payload, "x")
