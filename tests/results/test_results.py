"""Result objects: short reprs, exact dict / file round-trips, tables, figures, HTML."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jetex  # noqa: E402
from _tiny import make_hf, make_tokenizer  # noqa: E402
from jetex.errors import InputError, JetexError  # noqa: E402
from jetex.models.hf import HFResidualModel  # noqa: E402
from jetex.results import Result, ResultList  # noqa: E402

TEXT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def model():
    return HFResidualModel.from_hf(make_hf("llama"), make_tokenizer())


@pytest.fixture(scope="module")
def results(model):
    pe = jetex.exp_jet_expansion(model, 1)
    return {
        "iterative": jetex.iterative_lens(model, TEXT, order=1, top_k=3),
        "joint": jetex.joint_lens(model, "the cat sat", order=2, optimize=True, top_k=4),
        "attribution": jetex.attribute(model, TEXT, method="jetxlogit", layer=2, order=1),
        "paths": pe.rank(model.tokenize("the cat sat"), list(pe.paths()), top=5),
        "curve": jetex.lens_cosine_curve(model, ["the cat", "a dog ran"], orders=(0, 1), kind="joint"),
        "ngrams": jetex.NgramTable(kind="bigram", path="direct", run_id=3, model_name="tiny", section="top",
                                   columns=["rank", "input", "output", "prob"],
                                   rows=[(1, "the", "cat", 0.5), (2, "a", "dog", float("nan"))]),
    }


def _same(a, b) -> None:
    """Every field equal, tensors bit for bit (dtype included); NaN equals NaN."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            assert torch.equal(x.view(torch.uint8) if x.is_floating_point() else x, y.view(torch.uint8) if y.is_floating_point() else y), f.name
        else:
            assert json.dumps(x, default=repr) == json.dumps(y, default=repr), f.name


@pytest.mark.parametrize("kind", ["iterative", "joint", "attribution", "paths", "curve", "ngrams"])
def test_round_trips_are_exact(results, kind, tmp_path):
    r = results[kind]
    _same(type(r).from_dict(json.loads(json.dumps(r.to_dict()))), r)  # through JSON text
    for suffix in (".json", ".safetensors"):
        p = r.save(tmp_path / f"r{suffix}")
        _same(type(r).load(p), r)
        _same(jetex.load_result(p), r)


def test_load_refuses_other_types_and_bad_files(results, tmp_path):
    p = results["iterative"].save(tmp_path / "lens.safetensors")
    with pytest.raises(InputError, match="LensResult result, not a Attribution"):
        jetex.Attribution.load(p)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(InputError, match="not a jetex result file"):
        jetex.load_result(bad)
    with pytest.raises(InputError, match="use .json or .safetensors"):
        results["iterative"].save(tmp_path / "lens.pkl")
    with pytest.raises(InputError, match="does not exist"):
        results["iterative"].save(tmp_path / "nope" / "lens.json")
    evil = {"type": "LensResult", "fields": {"kind": {"__dataclass__": "os:system", "fields": {}}}}
    with pytest.raises(InputError, match="not a jetex class"):
        jetex.LensResult.from_dict(evil)


def test_failed_save_keeps_the_old_file(results, tmp_path, monkeypatch):
    p = tmp_path / "lens.json"
    p.write_text("old")
    monkeypatch.setattr(jetex.results, "_encode", lambda v: (_ for _ in ()).throw(TypeError("boom")))
    with pytest.raises(TypeError):
        results["iterative"].save(p)
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["lens.json"]


def test_reprs_are_short(model, results):
    assert "\n" not in repr(model) and len(repr(model)) < 200
    assert "attn.0" in repr(model) and "V=77" in repr(model)
    for r in results.values():
        s = repr(r)
        assert "\n" not in s and len(s) < 400 and "tensor(" not in s, s
    rl = ResultList([results["iterative"]] * 5)
    assert "\n" not in repr(rl) and repr(rl).count("LensResult(") == 3


def test_lens_table_matches_the_tensors(results):
    r = results["joint"]
    cols = r._columns()
    R, t, K = r.top_ids.shape
    assert len(cols["logit"]) == R * t * K
    for n in (0, 7, R * t * K - 1):
        ri, i, j = cols["row_index"][n], cols["position"][n], cols["rank"][n] - 1
        assert cols["row"][n] == r.row_names[ri] and cols["input_token"][n] == r.tokens[i]
        assert cols["token_id"][n] == int(r.top_ids[ri, i, j]) and cols["logit"][n] == float(r.top_logits[ri, i, j])
        assert cols["weight"][n] == float(r.weights[ri, i]) and cols["cosine"][n] == float(r.cosine[ri, i])
        assert cols["token"][n] == r.vocab[ri][i][j]
    assert all(w is None for w in results["iterative"]._columns()["weight"])


def test_dataframes_and_parquet(results, tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas (the jetex[pandas] extra) is not installed")
    import pyarrow.parquet as pq

    a = results["attribution"]
    df = a.to_dataframe()
    assert list(df.columns) == ["position", "token", "token_id", "score", "rank", "bos", "method", "target", "target_id"]
    assert df["score"].tolist() == a.scores.tolist()
    ranked = df.dropna(subset=["rank"]).sort_values("rank")["position"].tolist()
    assert ranked == a.ranking()
    p = results["paths"]
    assert p.to_dataframe()["logit"].tolist() == [x.logit for x in p] == sorted((x.logit for x in p), reverse=True)
    rl = ResultList([results["iterative"], results["joint"]])
    df = rl.to_dataframe()
    assert df.columns[0] == "item" and set(df["item"]) == {0, 1}
    assert len(df) == sum(len(r.to_dataframe()) for r in rl)
    out = rl.to_parquet(tmp_path / "lens.parquet")
    back = pq.read_table(out).to_pandas()
    assert back.shape == df.shape and back["logit"].tolist() == df["logit"].tolist()
    assert isinstance(df, pd.DataFrame)


def test_missing_pandas_is_one_line(results, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(JetexError) as e:
        results["paths"].to_dataframe()
    assert "\n" not in str(e.value) and "jetex[pandas]" in str(e.value)


@pytest.mark.parametrize("kind", ["iterative", "joint", "attribution", "paths", "curve", "ngrams"])
def test_plot_and_html(results, kind, tmp_path):
    from matplotlib.figure import Figure

    r = results[kind]
    fig = r.plot(tmp_path / "f.png")
    assert isinstance(fig, Figure) and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    page = r.to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_result_list_plots_one_figure_per_item(results, tmp_path):
    rl = ResultList([results["attribution"], results["paths"]])
    figs = rl.plot(tmp_path / "x.png")
    assert len(figs) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["x.0.png", "x.1.png"]
    assert rl.to_html().count("<iframe") == 2


def test_result_types_are_exported():
    for name in ("LensResult", "Attribution", "Expansion", "PathExpansion", "Path", "PathRanking", "RankedPath",
                 "CosineCurve", "NgramTable", "ResultList", "load_result"):
        assert getattr(jetex, name) is not None and name in jetex.__all__
    assert issubclass(jetex.LensResult, Result) and issubclass(jetex.Attribution, Result)
