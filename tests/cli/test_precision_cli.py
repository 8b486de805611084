"""``--dtype bfloat16/float16`` on ``jetex lens`` and ``jetex paths``: the readout comes with its
error measured against a float32 recomputation (issue 11, item 2; docs/trust.md)."""

from __future__ import annotations

import json

import pytest
import torch

from jetex.apps.precision import sample_rows
from jetex.cli.main import main
from jetex.expand import PathFilter, exp_jet_expansion
from jetex.lenses import iterative_lens_logits, layer_streams
from jetex.models.load import load
from jetex.ngrams.device import place_model

TEXT = "the cat sat on the mat"


def test_lens_bfloat16_reports_error_of_direct_recomputation(tiny_llama_dir, capsys):
    argv = ["lens", TEXT, "--model", tiny_llama_dir, "--order", "1", "--json"]
    assert main(argv) == 0
    assert "precision" not in json.loads(capsys.readouterr().out)  # float32: nothing to measure
    assert main(argv + ["--dtype", "bfloat16"]) == 0
    p = json.loads(capsys.readouterr().out)["precision"]
    assert p["dtype"] == "bfloat16" and p["reference"] == "float32"
    # the same number, computed directly: every row (the tiny model has 3 <= 8 rows), all positions
    m32 = load(tiny_llama_dir)
    lo = place_model(m32, dtype=torch.bfloat16)
    ids = m32.tokenize(TEXT)
    streams, _ = layer_streams(m32)
    assert sample_rows(len(streams)) == list(range(len(streams)))
    z_lo = iterative_lens_logits(lo, lo.stream(ids), streams, 1).double()
    z32 = iterative_lens_logits(m32, m32.stream(ids), streams, 1).double()
    diff, scale = float((z_lo - z32).abs().max()), float(z32.abs().max())
    assert diff > 0  # bfloat16 does change the readout
    assert p["max_abs_logit_diff"] == pytest.approx(diff, rel=1e-9)
    assert p["max_abs_logit"] == pytest.approx(scale, rel=1e-9)
    assert p["relative_error"] == pytest.approx(diff / scale, rel=1e-9)
    # the table prints it next to the result
    assert main(argv[:-1] + ["--dtype", "bfloat16"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("measured error of bfloat16 vs a float32 recomputation") and "× max|logit|" in line


def test_paths_float16_reports_error_of_shown_paths(tiny_llama_dir, capsys):
    argv = ["paths", TEXT, "--model", tiny_llama_dir, "--max-len", "1", "--top", "3", "--order", "1", "--json"]
    assert main(argv + ["--dtype", "float16"]) == 0
    out = json.loads(capsys.readouterr().out)
    p = out["precision"]
    assert p["dtype"] == "float16" and "3 shown paths" in p["sample"]
    m32 = load(tiny_llama_dir)
    pe32 = exp_jet_expansion(m32, 1)
    pe = exp_jet_expansion(place_model(m32, dtype=torch.float16), 1)
    byname = {q.name(m32): q for q in pe32.paths(PathFilter(max_len=1))}
    shown = [byname[r["path"]] for r in out["paths"]]
    ids = m32.tokenize(TEXT)
    z_lo = pe.evaluate(ids, shown, position=-1, weighted=False).logits.double()
    z32 = pe32.evaluate(ids, shown, position=-1, weighted=False).logits.double()
    assert p["max_abs_logit_diff"] == pytest.approx(float((z_lo - z32).abs().max()), rel=1e-9)
    assert p["relative_error"] == pytest.approx(float((z_lo - z32).abs().max() / z32.abs().max()), rel=1e-9)
    assert main(argv[:-1] + ["--dtype", "float16"]) == 0
    assert "measured error of float16" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["lens", TEXT, "--dtype", "int8"], "dtype"),
        (["lens", TEXT, "--kind", "logit", "--dtype", "bfloat16"], "--dtype applies to the jet lenses"),
        (["lens", TEXT, "--dtype", "bfloat16", "--server", "http://127.0.0.1:9"], "drop --server"),
        (["paths", TEXT, "--dtype", "float16", "--server", "http://127.0.0.1:9"], "drop --server"),
    ],
)
def test_dtype_refusals(tiny_llama_dir, capsys, argv, msg):
    assert main(argv + ["--model", tiny_llama_dir]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and msg in err[0]
