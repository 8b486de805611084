"""Lens pictures: PNG tables, HTML pages, JSON, cosine curves (jetex.viz.lens).

Lens results come from a toy model (token strings ``<id>``) through the real lens
functions, plus hand-built results whose token strings need escaping.
"""

from __future__ import annotations

import html
import json
import re
import struct

import pytest
import torch
from matplotlib.figure import Figure

from jetex.errors import InputError, JetexError
from jetex.lenses import CosineCurve, LensResult, iterative_lens, joint_lens, lens_cosine_curve
from jetex.models import ToyResidualNet
from jetex.viz.lens import (
    figure_token,
    lens_data,
    lens_html,
    plot_cosine_curve,
    plot_lens,
    save_lens,
    save_lens_html,
    visible_token,
)

IDS = torch.tensor([1, 2, 3, 4, 5, 6, 7])


@pytest.fixture(scope="module")
def toy4():
    return ToyResidualNet(depth=4, d=12, vocab_size=19, hidden=24, seed=1)


@pytest.fixture(scope="module")
def toy10():
    return ToyResidualNet(depth=10, d=12, vocab_size=19, hidden=24, seed=1)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def hand_result(tokens: list[str], vocab_top1: list[list[str]], *, joint: bool = False) -> LensResult:
    """A LensResult built by hand (R rows, t positions, K = 3) with the given strings."""
    R, t, K = len(vocab_top1), len(tokens), 3
    g = torch.Generator().manual_seed(0)
    top_ids = torch.randint(0, 50, (R, t, K), generator=g)
    top_logits = torch.randn(R, t, K, generator=g).sort(-1, descending=True).values
    vocab = [[[vocab_top1[r][i], f"alt{r}{i}", "x"] for i in range(t)] for r in range(R)]
    extra = {}
    if joint:
        w = torch.rand(R, t, generator=g)
        w[0, 0] = 0.0
        extra = dict(
            weights=w / w.sum(0, keepdim=True),
            expansion_top_ids=torch.randint(0, 50, (t, K), generator=g),
            expansion_top_logits=torch.randn(t, K, generator=g),
            expansion_cosine=torch.rand(t, generator=g),
            expansion_vocab=[f"e&{i}" for i in range(t)],
            optimized=True,
        )
    return LensResult(
        kind="joint" if joint else "iterative",
        order=1,
        model_name="hand<made>",
        tokens=tokens,
        input_ids=torch.arange(t),
        row_names=[f"row{r}" for r in range(R)],
        top_ids=top_ids,
        top_logits=top_logits,
        cosine=torch.rand(R, t, generator=g) * 2 - 1,
        model_top_ids=torch.randint(0, 50, (t, K), generator=g),
        model_top_logits=torch.randn(t, K, generator=g),
        remainder_norm=torch.rand(1 if joint else R, t, generator=g),
        vocab=vocab,
        model_vocab=[f"m\"{i}'" for i in range(t)],
        **extra,
    )


NASTY = ["<script>alert(1)</script>", "a & b", "\"quoted\" 'x'", "line\nbreak", " lead", "</script><!--", "$x^2$"]


# ---------------------------------------------------------------------------- tokens


def test_visible_token_makes_whitespace_visible():
    assert visible_token(" the") == "␣the"
    assert visible_token("a\nb\tc\r") == "a⏎b⇥c␍"
    assert visible_token("") == "∅"
    assert visible_token("\x00") == "\\x00"


def test_figure_token_truncates_and_replaces_missing_glyphs():
    assert figure_token("abcdefghijkl", 8) == "abcdefg…"
    assert len(figure_token("abcdefghijkl", 8)) == 8
    assert figure_token(" ab", 8) == "␣ab"
    # a private-use code point no font draws is written as an escape
    assert figure_token("\ue000", 12) == "\\ue000"


# ---------------------------------------------------------------------------- PNG


def test_plot_lens_png_grows_with_rows_and_columns(toy4, toy10, tmp_path):
    small = iterative_lens(toy4, IDS, order=1)
    tall = iterative_lens(toy10, IDS, order=1)
    wide = iterative_lens(toy4, torch.arange(1, 15), order=1)
    sizes = {}
    for name, res in [("small", small), ("tall", tall), ("wide", wide)]:
        p = tmp_path / f"{name}.png"
        fig = plot_lens(res, p)
        assert isinstance(fig, Figure)
        sizes[name] = png_size(p.read_bytes())
    w0, h0 = sizes["small"]
    assert 400 < w0 < 4000 and 200 < h0 < 4000
    assert sizes["tall"][1] > h0 + 6 * 20  # 6 more rows, at least ~20 px each
    assert sizes["tall"][0] == w0
    assert sizes["wide"][0] > w0 + 7 * 60  # 7 more columns, at least ~60 px each


def test_plot_lens_joint_png(toy4, tmp_path):
    for opt in (False, True):
        res = joint_lens(toy4, IDS, order=1, optimize=opt)
        p = tmp_path / f"joint{opt}.png"
        plot_lens(res, p)
        w, h = png_size(p.read_bytes())
        assert w > 400 and h > 200
    # the joint figure has three extra bottom rows and a weight column: taller, and wider than an
    # iterative figure without its two split-along-q columns (cos⊥q, q share), which add width
    import dataclasses

    it = tmp_path / "it.png"
    res_it = iterative_lens(toy4, IDS, order=1)
    plot_lens(dataclasses.replace(res_it, rest_cosine=None, q_share=None), it)
    wi, hi = png_size(it.read_bytes())
    assert w > wi and h > hi
    plot_lens(res_it, it)
    wi2, hi2 = png_size(it.read_bytes())
    assert wi2 > wi + 2 * 50 and hi2 == hi


def test_plot_lens_draws_every_cell_token(toy4):
    res = iterative_lens(toy4, IDS, order=0)
    fig = plot_lens(res)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    for row in res.top1:
        for tok in row:
            assert figure_token(tok) in texts
    assert any("logit lens" in t.get_text() for t in fig.texts)


def test_plot_lens_does_not_parse_dollars_as_math(tmp_path):
    res = hand_result(NASTY, [NASTY, list(reversed(NASTY))], joint=True)
    plot_lens(res, tmp_path / "nasty.png")  # "$x^2$" would be mathtext; unbalanced "$" would raise
    res2 = hand_result(["a$b", "$"], [["$", "c$"]])
    plot_lens(res2, tmp_path / "dollar.png")
    assert png_size((tmp_path / "dollar.png").read_bytes())[0] > 0


# ---------------------------------------------------------------------------- HTML


def _script_data(page: str) -> dict:
    m = re.search(r"<script type='application/json' id='lens-data'>(.*?)</script>", page, re.S)
    assert m
    return json.loads(m.group(1))


def test_html_contains_every_top1_token_and_hover_data(toy4):
    res = joint_lens(toy4, IDS, order=1, optimize=False)
    page = lens_html(res)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for row in res.top1:
        for tok in row:
            assert f">{html.escape(visible_token(tok))}</td>" in page
    data = _script_data(page)
    assert data == json.loads(json.dumps(lens_data(res)))
    R, t = len(res.row_names), len(res.tokens)
    assert len(data["cells"]) == R and all(len(r) == t for r in data["cells"])
    c = data["cells"][2][3]
    assert c["top"] == [visible_token(s) for s in res.vocab[2][3]]
    assert c["logits"] == pytest.approx(res.top_logits[2, 3].tolist(), abs=1e-4)
    assert c["cos"] == pytest.approx(float(res.cosine[2, 3]), abs=1e-4)
    assert c["w"] == pytest.approx(float(res.weights[2, 3]), abs=1e-4)
    assert len(data["expansion"]) == t and "cos" in data["expansion"][0]
    # every lens cell and every bottom-row cell is hoverable
    assert len(re.findall(r"data-r='\d+' data-i='\d+'", page)) == R * t
    assert len(re.findall(r"data-r='m'", page)) == t and len(re.findall(r"data-r='e'", page)) == t


def test_html_escapes_hostile_tokens(tmp_path):
    res = hand_result(NASTY, [NASTY, list(reversed(NASTY))], joint=True)
    page = lens_html(res)
    # exactly our own two script elements; no token opens or closes one, or opens a comment
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<!--" not in page
    assert "alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a␣&amp;␣b" in page
    assert "&quot;quoted&quot;␣&#x27;x&#x27;" in page
    assert "line⏎break" in page
    assert "hand&lt;made&gt;" in page
    # the hover data decodes back to the visible strings
    data = _script_data(page)
    assert data["cells"][0][1]["top"][0] == visible_token(NASTY[1])
    assert data["tokens"] == [visible_token(s) for s in NASTY]
    assert data["model"][0]["top"][0] == visible_token("m\"0'")
    # the zero-weight cell carries no tokens and is drawn blank
    assert data["cells"][0][0]["top"] == [] and data["cells"][0][0]["w"] == 0.0
    assert "<td class='cell blank' data-r='0' data-i='0'>" in page
    p = save_lens_html(res, tmp_path / "x.html")
    assert p.read_text(encoding="utf-8") == page


def test_html_has_no_external_assets(toy4):
    page = lens_html(iterative_lens(toy4, IDS, order=2))
    assert not re.search(r"""(src|href)\s*=""", page)
    assert "http://" not in page and "https://" not in page


# ---------------------------------------------------------------------------- JSON, save_lens


def test_save_lens_dispatches_on_suffix_and_json_round_trips(toy4, tmp_path):
    res = joint_lens(toy4, IDS, order=1, optimize=True)
    pj = save_lens(res, tmp_path / "lens.json")
    assert json.loads(pj.read_text(encoding="utf-8")) == json.loads(json.dumps(res.to_dict()))
    ph = save_lens(res, tmp_path / "lens.HTML")
    assert ph.read_text(encoding="utf-8") == lens_html(res)
    pp = save_lens(res, tmp_path / "lens.png")
    png_size(pp.read_bytes())
    assert sorted(f.name for f in tmp_path.iterdir()) == ["lens.HTML", "lens.json", "lens.png"]  # no temp files left


def test_save_lens_unknown_suffix(toy4, tmp_path):
    res = iterative_lens(toy4, IDS, order=0)
    for name in ("lens.svg", "lens"):
        with pytest.raises(InputError) as e:
            save_lens(res, tmp_path / name)
        assert "\n" not in str(e.value) and ".png, .html or .json" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(JetexError, match="does not exist"):
        save_lens(res, tmp_path / "missing" / "lens.json")


def test_save_lens_keeps_existing_file_when_rendering_fails(toy4, tmp_path, monkeypatch):
    res = iterative_lens(toy4, IDS, order=1)
    target = tmp_path / "lens.png"
    target.write_bytes(b"precious")

    import jetex.viz.lens as lv

    def boom(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(lv, "plot_lens", boom)
    with pytest.raises(RuntimeError):
        save_lens(res, target)
    monkeypatch.setattr(lv, "lens_html", boom)
    with pytest.raises(RuntimeError):
        save_lens(res, tmp_path / "lens.html")
    assert target.read_bytes() == b"precious"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["lens.png"]


def test_save_lens_keeps_existing_file_when_writing_fails(toy4, tmp_path, monkeypatch):
    res = iterative_lens(toy4, IDS, order=0)
    target = tmp_path / "lens.json"
    target.write_text("old")

    import os as _os

    def fail_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_os, "replace", fail_replace)
    with pytest.raises(InputError, match="No space left"):
        save_lens(res, target)
    assert target.read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["lens.json"]


# ---------------------------------------------------------------------------- cosine curve


def test_plot_cosine_curve_one_line_per_order(toy4, tmp_path):
    # the toy has no tokenizer (lens_cosine_curve reads text): build the curve from lens cosines
    cos = torch.stack([iterative_lens(toy4, IDS, order=k).mean_cosine() for k in (0, 1, 2)])
    names = iterative_lens(toy4, IDS, order=0).row_names
    curve = CosineCurve("iterative", [0, 1, 2], names, cos, 1, toy4.name)
    p = tmp_path / "curve.png"
    fig = plot_cosine_curve(curve, p)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
    assert len(lines) == 3
    assert [ln.get_label() for ln in lines] == ["logit lens (k = 0)", "jet lens, k = 1", "jet lens, k = 2"]
    for ln, k in zip(lines, range(3)):
        assert list(ln.get_ydata()) == pytest.approx(cos[k].tolist())
    # horizontal line at 0
    assert any(list(ln.get_ydata()) == [0.0, 0.0] for ln in ax.get_lines())
    assert "1 sentences" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [ln.get_label() for ln in lines]
    png_size(p.read_bytes())


def test_lens_cosine_curve_needs_a_tokenizer(toy4):
    # documents why the test above builds its curve by hand
    with pytest.raises(JetexError):
        lens_cosine_curve(toy4, ["hello"], orders=(0,))


def test_plot_lens_refuses_huge_tables(toy4, tmp_path):
    res = iterative_lens(toy4, torch.randint(0, 19, (300,)), order=0)
    with pytest.raises(InputError, match="too large for a PNG"):
        save_lens(res, tmp_path / "big.png")
    assert list(tmp_path.iterdir()) == []
    save_lens(res, tmp_path / "big.html")  # the HTML page has no size limit


def test_colour_scale_switches_to_symlog_for_outlier_rows(tmp_path):
    from matplotlib.colors import SymLogNorm

    from jetex.viz.lens import _logit_norm

    res = hand_result(["a", "b", "c", "d"], [["x"] * 4 for _ in range(6)])
    cells = [(r, i) for r in range(6) for i in range(4)]
    res.top_logits[..., 0] = torch.linspace(5.0, 8.0, 24).reshape(6, 4)
    norm, scale = _logit_norm(res, cells)
    assert scale == "linear" and norm.vmin == -norm.vmax and 7.5 < norm.vmax <= 8.0
    res.top_logits[0, :, 0] = 1e6  # one row extrapolated far out (as jets from the embedding are)
    res.top_logits[1, :, 0] = -3e4
    norm, scale = _logit_norm(res, cells)
    assert scale == "symlog" and isinstance(norm, SymLogNorm) and norm.vmax == pytest.approx(1e6)
    assert norm(0.0) == pytest.approx(0.5)
    plot_lens(res, tmp_path / "symlog.png")
