"""Device and precision placement of n-gram evaluation: dtype/device resolution, the placed
copy, the precision report against float32, and bfloat16 extraction on the CPU."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
import torch

from jetex.errors import InputError
from jetex.ngrams import NgramStore, bigram_table, extract_ngrams, parse_path
from jetex.ngrams.device import PrecisionReport, place_model, precision_report, resolve_device, resolve_dtype
from jetex.ngrams.scores import DEFAULT_SCORE

KW = dict(top_k=4, global_top=30, batch_size=8, fidelity_sample=16, progress=False)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_resolve_dtype_and_device():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("fp16") is torch.float16 and resolve_dtype(None) is torch.float32
    for bad in ("int8", "float64", "int4"):
        with pytest.raises(InputError):
            resolve_dtype(bad)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


@no_cuda
def test_cuda_without_cuda_is_one_line(tiny_llama_dir, tmp_path, capsys):
    with pytest.raises(InputError, match="CUDA is not available") as e:
        resolve_device("cuda")
    assert "\n" not in str(e.value)
    from jetex.cli.main import main

    rc = main(["ngrams", "extract", "--model", tiny_llama_dir, "--db", str(tmp_path / "n.duckdb"), "--device", "cuda", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: --device cuda: CUDA is not available")
    assert not (tmp_path / "n.duckdb").exists()


def test_placed_copy_leaves_the_model_alone(tiny_llama_f32):
    m = tiny_llama_f32
    fp = m.fingerprint()
    assert place_model(m, "cpu", "float32") is m
    b = place_model(m, "cpu", "bfloat16")
    assert b is not m and b.dtype == torch.bfloat16 and m.dtype == torch.float32 and m.fingerprint() == fp
    assert b.tokenizer is m.tokenizer
    # tied embeddings stay tied in the copy, and the copy's weights are the rounded originals
    assert b.unembedding_matrix.data_ptr() == b._embed_tokens.weight.data_ptr()
    assert torch.equal(b.unembedding_matrix, m.unembedding_matrix.to(torch.bfloat16))
    ids = torch.arange(10)[None]
    ref = m.reference_logits(ids)
    got = b.reference_logits(ids).float()
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()


def test_precision_report_is_what_it_says(tiny_llama_f32):
    m = tiny_llama_f32
    (p,) = parse_path(m, "mlp:1")
    same = precision_report(m, place_model(m, "cpu", "float32"), [p], sample=20, top_k=4)["mlp:1"]
    assert same.max_abs_logit_diff == 0 and same.top1_agreement == 1 and same.topk_overlap == 1
    b = place_model(m, "cpu", "bfloat16")
    rep = precision_report(m, b, [p], sample=20, top_k=4)["mlp:1"]
    assert rep.sample_size == 20 and rep.dtype == "bfloat16" and rep.device == "cpu"
    # brute force on the same sample: ⌊i·77/20⌋
    ids = torch.div(torch.arange(20) * m.vocab_size, 20, rounding_mode="floor")
    with torch.inference_mode():
        z32, zlo = p.logits(m, ids), p.logits(b, ids).float()
    assert rep.max_abs_logit_diff == pytest.approx(float((zlo - z32).abs().max()))
    lp = (torch.log_softmax(zlo, -1) - torch.log_softmax(z32, -1)).abs().max()
    assert rep.max_abs_logprob_diff == pytest.approx(float(lp))
    assert rep.top1_agreement == pytest.approx(float((zlo.argmax(-1) == z32.argmax(-1)).float().mean()))
    assert 0 < rep.max_abs_logit_diff < 0.5 and rep.topk_overlap > 0.8
    assert "bfloat16" in rep.line() and "top-4 overlap" in rep.line()
    with pytest.raises(ValueError):
        PrecisionReport("x", "bfloat16", "cpu", 1, 1, 1, 0.0, 0.0, 1.5, 1.0)


def test_bfloat16_extraction_on_cpu(tiny_llama_f32, tmp_path):
    m = tiny_llama_f32
    db = tmp_path / "bf16.duckdb"
    res = extract_ngrams(m, ["direct", "mlp:1", "attn:0.1"], db=db, dtype="bfloat16", precision_sample=32, **KW)
    assert [r.status for r in res] == ["done"] * 3
    for r in res:
        assert r.precision is not None and r.precision["dtype"] == "bfloat16" and r.precision["sample_size"] == 32
    # the store keeps the float32 model's identity; the run records dtype, device and the report
    with NgramStore(db, read_only=True) as s:
        assert s.meta["model_fingerprint"] == m.fingerprint()
        run = [r for r in s.runs() if r["path"] == "mlp:1"][0]
        opts = json.loads(run["options"])
        assert opts["dtype"] == "bfloat16" and opts["device"] == "cpu" and opts["precision"] == res[1].precision
        rows = sorted(s.ngrams(run["run_id"]), key=lambda r: (r["input_id"], r["rank"]))
    # the rows are the engine's on the bfloat16 copy (softmax statistics in float32)
    (p,) = parse_path(m, "mlp:1")
    # as extract_ngrams: self-transitions excluded and rows ranked by the default score
    t = bigram_table(place_model(m, "cpu", "bfloat16"), p, top_k=4, global_top=30, batch_size=8, exclude_self=True,
                     score=DEFAULT_SCORE)
    np.testing.assert_array_equal(np.array([r["output_id"] for r in rows]).reshape(-1, 4), t.top_ids)
    np.testing.assert_allclose([r["logprob"] for r in rows], t.top_logprobs.reshape(-1), rtol=1e-6)
    assert t.top_logprobs.dtype == np.float32
    # and close to float32: the top-1 next token agrees for almost every input
    t32 = bigram_table(m, p, top_k=4, global_top=30, batch_size=8, exclude_self=True, score=DEFAULT_SCORE)
    assert (t.top_ids[:, 0] == t32.top_ids[:, 0]).mean() > 0.9
    # a run computed in bfloat16 is never resumed or reused in float32
    with pytest.raises(InputError, match="computed in bfloat16, not float32"):
        extract_ngrams(m, ["mlp:1"], db=db, **KW)
    (r,) = extract_ngrams(m, ["mlp:1"], db=db, redo=True, **KW)
    assert r.status == "done" and r.precision is None
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert json.loads(con.execute("SELECT options FROM runs WHERE run_id = ?", [r.run_id]).fetchone()[0])["dtype"] == "float32"
    finally:
        con.close()


def test_float16_extraction_on_cpu(tiny_llama_f32, tmp_path):
    """float16 on the CPU: every path gets a precision report (stored with its run), the report
    is the brute-force comparison on its sample, and the rows are the engine's on the float16 copy."""
    m = tiny_llama_f32
    db = tmp_path / "fp16.duckdb"
    res = extract_ngrams(m, ["direct", "mlp:1", "attn:0.1"], db=db, dtype="float16", precision_sample=32, **KW)
    assert [r.status for r in res] == ["done"] * 3
    for r in res:
        rep = r.precision
        assert rep is not None and rep["dtype"] == "float16" and rep["device"] == "cpu" and rep["sample_size"] == 32
        assert rep["top_k"] == 4 and 0 <= rep["max_abs_logit_diff"] and 0 <= rep["top1_agreement"] <= 1
    with NgramStore(db, read_only=True) as s:
        run = [r for r in s.runs() if r["path"] == "mlp:1"][0]
        opts = json.loads(run["options"])
        assert opts["dtype"] == "float16" and opts["precision"] == res[1].precision
        rows = sorted(s.ngrams(run["run_id"]), key=lambda r: (r["input_id"], r["rank"]))
    # the stored report is what it says: the same sample ⌊i·77/32⌋, recomputed by brute force
    (p,) = parse_path(m, "mlp:1")
    h = place_model(m, "cpu", "float16")
    assert h.dtype == torch.float16 and m.dtype == torch.float32
    ids = torch.div(torch.arange(32) * m.vocab_size, 32, rounding_mode="floor")
    with torch.inference_mode():
        z32, zlo = p.logits(m, ids), p.logits(h, ids).float()
    assert res[1].precision["max_abs_logit_diff"] == pytest.approx(float((zlo - z32).abs().max()))
    lp = (torch.log_softmax(zlo, -1) - torch.log_softmax(z32, -1)).abs().max()
    assert res[1].precision["max_abs_logprob_diff"] == pytest.approx(float(lp))
    assert res[1].precision["top1_agreement"] == pytest.approx(float((zlo.argmax(-1) == z32.argmax(-1)).float().mean()))
    # the rows are the engine's on the float16 copy (softmax statistics in float32)
    # as extract_ngrams: self-transitions excluded and rows ranked by the default score
    t = bigram_table(h, p, top_k=4, global_top=30, batch_size=8, exclude_self=True, score=DEFAULT_SCORE)
    np.testing.assert_array_equal(np.array([r["output_id"] for r in rows]).reshape(-1, 4), t.top_ids)
    np.testing.assert_allclose([r["logprob"] for r in rows], t.top_logprobs.reshape(-1), rtol=1e-6)
    assert t.top_logprobs.dtype == np.float32
    # float16 keeps 3 more mantissa bits than bfloat16: its logits are closer to float32
    bf = precision_report(m, place_model(m, "cpu", "bfloat16"), [p], sample=32, top_k=4)["mlp:1"]
    assert 0 < res[1].precision["max_abs_logit_diff"] < bf.max_abs_logit_diff
    assert res[1].precision["topk_overlap"] >= 0.9
    # runs of different dtypes never mix
    with pytest.raises(InputError, match="computed in float16, not bfloat16"):
        extract_ngrams(m, ["mlp:1"], db=db, dtype="bfloat16", **KW)


def _rows(db, path: str) -> tuple[dict, list[dict]]:
    """The run of ``path`` in ``db`` and its n-gram rows: by (input, rank) for bigrams (the
    rank within the input's top-K), by rank for trigrams (the rank among all trigrams)."""
    with NgramStore(db, read_only=True) as s:
        (run,) = [r for r in s.runs() if r["path"] == path]
        key = (lambda r: (r["input_id"], r["rank"])) if run["kind"] == "bigram" else (lambda r: r["rank"])
        return run, sorted(s.ngrams(run["run_id"]), key=key)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda), "cpu"])
def test_extraction_on_a_device_float32_and_bfloat16(tiny_llama_f32, tmp_path, device):
    """On the GPU (skipped without CUDA; the ``cpu`` case runs the same checks here, so the test
    itself is exercised): float32 equals the CPU's float32 extraction up to float32 rounding
    (outputs may swap only where two are tied to within it), and bfloat16 gets its precision
    report, with rows that are the engine's on the bfloat16 copy on that device."""
    m = tiny_llama_f32
    paths = ["direct", "mlp:1", "attn:0.1"]
    ref = extract_ngrams(m, paths, db=tmp_path / "cpu.duckdb", **KW)  # the model as it is: float32 on the CPU
    got = extract_ngrams(m, paths, db=tmp_path / "dev.duckdb", device=device, dtype="float32", **KW)
    assert [r.status for r in got] == ["done"] * 3 and all(r.precision is None for r in got)
    tol = 1e-4
    for path in paths:
        run_r, rows_r = _rows(tmp_path / "cpu.duckdb", path)
        run_g, rows_g = _rows(tmp_path / "dev.duckdb", path)
        opts = json.loads(run_g["options"])
        assert opts["device"].startswith(device) and opts["dtype"] == "float32"
        assert len(rows_g) == len(rows_r) > 0
        # rank by rank, the same scores (bigrams: log P(c|t); trigrams: their log-score)
        np.testing.assert_allclose([r["logprob"] for r in rows_g], [r["logprob"] for r in rows_r], rtol=0, atol=tol)
        if run_g["kind"] == "bigram":
            row_of = {}
            for r in rows_r:
                row_of.setdefault(r["input_id"], {})[r["output_id"]] = r["logprob"]
            for a, b in zip(rows_r, rows_g):
                assert (a["input_id"], a["rank"]) == (b["input_id"], b["rank"])
                if a["output_id"] != b["output_id"]:  # only a near-tie may swap (or cut at the K-th rank)
                    lp = row_of[a["input_id"]].get(b["output_id"])
                    assert (lp is not None and abs(lp - a["logprob"]) < tol) or a["rank"] == max(
                        r["rank"] for r in rows_r if r["input_id"] == a["input_id"]), (a, b)
    for r, g in zip(ref, got):
        if r.fidelity is not None:
            assert g.fidelity["mean_kl"] == pytest.approx(r.fidelity["mean_kl"], abs=tol)

    db = tmp_path / "bf16.duckdb"
    res = extract_ngrams(m, paths, db=db, device=device, dtype="bfloat16", precision_sample=32, **KW)
    assert [r.status for r in res] == ["done"] * 3
    for r in res:
        rep = r.precision
        assert rep is not None and rep["dtype"] == "bfloat16" and rep["device"].startswith(device), r.path
        assert rep["sample_size"] == 32 and 0 < rep["max_abs_logit_diff"] < 0.5 and rep["topk_overlap"] > 0.8
    (p,) = parse_path(m, "mlp:1")
    # as extract_ngrams: self-transitions excluded and rows ranked by the default score
    t = bigram_table(place_model(m, device, "bfloat16"), p, top_k=4, global_top=30, batch_size=8, exclude_self=True,
                     score=DEFAULT_SCORE)
    _, rows = _rows(db, "mlp:1")
    np.testing.assert_array_equal(np.array([r["output_id"] for r in rows]).reshape(-1, 4), t.top_ids)
    np.testing.assert_allclose([r["logprob"] for r in rows], t.top_logprobs.reshape(-1), rtol=1e-6)


def test_cli_dtype_json(tiny_llama_dir, tmp_path, capsys):
    from jetex.cli.main import main

    db = tmp_path / "n.duckdb"
    rc = main(["ngrams", "extract", "--model", tiny_llama_dir, "--db", str(db), "--path", "direct", "--top", "3",
               "--dtype", "bfloat16", "--precision-sample", "16", "--batch-size", "16", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    (run,) = out["runs"]
    assert run["precision"]["dtype"] == "bfloat16" and run["precision"]["top_k"] == 3
    rc = main(["ngrams", "extract", "--model", tiny_llama_dir, "--db", str(db), "--dtype", "int4", "-q"])
    assert rc != 0 and "unknown dtype" in capsys.readouterr().err


@pytest.mark.real
def test_bfloat16_precision_on_smollm2(smollm2):
    """SmolLM2's direct and mlp:0 paths in bfloat16 stay close to float32 on a sample."""
    paths = [p for s in ("direct", "mlp:0") for p in parse_path(smollm2, s)]
    reps = precision_report(smollm2, place_model(smollm2, "cpu", "bfloat16"), paths, sample=64, top_k=10)
    for r in reps.values():
        assert 0 < r.max_abs_logit_diff < 3 and r.top1_agreement >= 0.9 and r.topk_overlap >= 0.9, r.line()
    assert smollm2.dtype == torch.float32
