"""Pictures of jet lenses (paper Sec. 4, Fig. 3 style): PNG tables, hoverable HTML, cosine curves.

Inputs are the dataclasses of :mod:`jetex.lenses.lens`; nothing here computes model math,
only layout and colours.

- :func:`plot_lens`: the lens table of a :class:`~jetex.lenses.LensResult`. Rows are the
  lens rows (streams h_l for the iterative lens, centres for the joint lens), columns the
  input positions (column i shows what is predicted *after* reading token i). Each cell
  shows the row's top-1 token, coloured (``color_by``, :class:`CellScale`) by its probability
  under the row's softmax (default; fixed scale [0, 1], so figures of several orders or runs
  compare), its log-probability, the rank of the model's top-1 in the row, or its logit;
  bold tokens agree with the model's own top-1 at that position. On the right: the mean
  cosine similarity between the row's logits and the model's logits (and, for the joint
  lens, the mean jet weight w̄ of the row). Bottom rows: the model's top-1 prediction and,
  for the joint lens, the expansion's prediction Σ_i U e_i and its cosine per position.
  For an optimised joint lens each cell also shows its weight w_i; cells whose weight is 0
  carry no term (their logits are all 0) and are drawn blank.
- :func:`lens_html` / :func:`save_lens_html`: the same table as a self-contained HTML page;
  hovering a cell shows its top-k tokens with logits, its cosine and its weight.
- :func:`plot_cosine_curve`: mean cosine vs layer, one line per jet order (k = 0 is the
  logit lens).
- :func:`save_lens`: write a lens as ``.png``, ``.html`` or ``.json``.

Trust (docs/trust.md): cells whose readout fails the trust criteria of the result's
diagnostics (divergent series, remainder larger than the output, cancellation, rounding)
are hatched in grey in the PNG and struck through in the HTML (hover shows the reasons),
and the legend says so. The iterative lens also shows, per row, the mean cosine of the
row's rest (the row without its part along the model's own logits q) and the mean share of
the row taken from q; the cosine curve draws the rest cosine dashed next to the plain one
and hollow markers where most cells are untrusted.

Files are written atomically: everything is rendered in memory first, then written to a
temporary file in the target directory and renamed over the target, so a failure never
destroys an existing file. Library code never touches pyplot's global state.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from functools import lru_cache
from pathlib import Path

import matplotlib
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from jetex.errors import InputError
from jetex.lenses.lens import CosineCurve, LensResult
from jetex.results import register_renderer, write_atomic

# Diverging colormap for logits and cosines (centred at 0), sequential for weights.
LOGIT_CMAP = "RdBu_r"
PROB_CMAP = "YlGnBu"  # sequential: probabilities, log-probabilities, ranks (reversed)
WEIGHT_CMAP = "Greens"
_EXTRA_BG = (0.94, 0.94, 0.94, 1.0)  # background of the model / expansion rows
_BLANK_BG = (0.985, 0.985, 0.985, 1.0)  # cells carrying no term (weight 0)
_ZERO_WEIGHT = 1e-9
MAX_PIXELS = 20000  # largest PNG side plot_lens draws (about 240 positions or 760 rows)

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- tokens


_VISIBLE = {"\n": "⏎", "\r": "␍", "\t": "⇥", " ": "␣"}


def visible_token(tok: str) -> str:
    """A token with whitespace made visible: space ␣, newline ⏎, tab ⇥, CR ␍, other
    control characters as ``\\xNN``; the empty string as ∅."""
    if tok == "":
        return "∅"
    out = []
    for ch in tok:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


@lru_cache(maxsize=1)
def _font_charmap() -> frozenset[int]:
    from matplotlib import font_manager, ft2font

    try:
        path = font_manager.findfont(font_manager.FontProperties())
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except Exception:  # pragma: no cover - font backend problems: draw as is
        return frozenset()


def figure_token(tok: str, max_chars: int = 8) -> str:
    """A token as drawn in a figure: :func:`visible_token`, characters the font lacks as
    ``\\uXXXX``, truncated to ``max_chars`` characters with a trailing …."""
    s = visible_token(tok)
    cmap = _font_charmap()
    if cmap:
        s = "".join(ch if ord(ch) in cmap else (f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}") for ch in s)
    if len(s) > max_chars:
        s = s[: max(1, max_chars - 1)] + "…"
    return s


def _cell_tokens(result: LensResult) -> list[list[str]]:
    """Top-1 string per (row, position); falls back to ``<id>`` when the vocab is missing."""
    if result.vocab:
        return [[cell[0] for cell in row] for row in result.vocab]
    return [[f"<{int(result.top_ids[r, i, 0])}>" for i in range(len(result.tokens))] for r in range(len(result.row_names))]


def _cell_topk(result: LensResult, r: int, i: int) -> list[str]:
    if result.vocab:
        return list(result.vocab[r][i])
    return [f"<{int(x)}>" for x in result.top_ids[r, i]]


def _model_tokens(result: LensResult) -> list[str]:
    return list(result.model_vocab) if result.model_vocab else [f"<{int(x)}>" for x in result.model_top_ids[:, 0]]


def _expansion_tokens(result: LensResult) -> list[str]:
    if result.expansion_vocab:
        return list(result.expansion_vocab)
    assert result.expansion_top_ids is not None
    return [f"<{int(x)}>" for x in result.expansion_top_ids[:, 0]]


# --------------------------------------------------------------------------- titles


def lens_title(result: LensResult) -> str:
    """One line naming the model, the lens kind, the order and the weights."""
    if result.kind in ("logit", "tuned", "jacobian"):
        what = {"logit": "logit lens", "tuned": "tuned lens (affine translators)", "jacobian": "Jacobian lens (J-lens)"}[result.kind]
        return f"{result.model_name} · {what}"
    if result.kind == "iterative":
        what = "logit lens (iterative jet lens, k = 0)" if result.order == 0 else f"iterative jet lens, order k = {result.order}"
        return f"{result.model_name} · {what}"
    n = len(result.row_names)
    w = "weights optimised per position (Remark 3)" if result.optimized else f"uniform weights 1/{n}"
    return f"{result.model_name} · joint jet lens, order k = {result.order}, {n} centres, {w}"


def _fmt(x: float, spec: str = "+.2f") -> str:
    return "nan" if math.isnan(x) else format(x, spec)


def _text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _logit_norm(result: LensResult, active) -> tuple[mcolors.Normalize, str]:
    """The colour scale of the top-1 logits over the cells that carry a term, symmetric about 0.

    Jet lenses of order k ≥ 1 extrapolate the final norm from small-norm centres, so a few
    rows (the embedding, early layers) can have logits orders of magnitude above the rest.
    With m50 and m95 the median and 95th percentile of |logit|: if m95 ≤ 5·m50 the scale is
    linear on [−m95, m95] (larger values saturate); otherwise it is symmetric-logarithmic,
    linear within ±m50 and logarithmic out to the largest |logit|. Returns the norm and
    ``"linear"`` or ``"symlog"``.
    """
    vals = sorted(abs(float(result.top_logits[r, i, 0])) for r, i in active)
    vals = [v for v in vals if math.isfinite(v)]
    if not vals or vals[-1] == 0:
        return mcolors.Normalize(vmin=-1.0, vmax=1.0), "linear"

    def q(p: float) -> float:
        return vals[min(len(vals) - 1, int(round(p * (len(vals) - 1))))]

    m50, m95, mx = q(0.5), q(0.95), vals[-1]
    if m50 > 0 and m95 > 5 * m50:
        return mcolors.SymLogNorm(linthresh=m50, linscale=1.0, vmin=-mx, vmax=mx, base=10), "symlog"
    m = m95 if m95 > 0 else mx
    return mcolors.Normalize(vmin=-m, vmax=m, clip=True), "linear"


def _symlog_ticks(norm: mcolors.SymLogNorm) -> list[float]:
    """0 and ±10^j for decades clearly above the linear range (at most 4 per side)."""
    lo = math.ceil(math.log10(norm.linthresh) + 0.7)
    hi = math.floor(math.log10(norm.vmax))
    decades = list(range(lo, hi + 1))
    step = max(1, math.ceil(len(decades) / 4))
    decades = decades[::-1][::step][::-1]
    if not decades:
        return [-norm.vmax, 0.0, norm.vmax]
    return [-(10.0**j) for j in reversed(decades)] + [0.0] + [10.0**j for j in decades]


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    text = f"{a:.4g}" if 1 <= a < 1e4 else (f"1e{round(math.log10(a))}" if a >= 1e4 else f"{a:.3g}")
    return ("−" if v < 0 else "") + text


#: what a lens cell's colour shows (``color_by``); the default, ``prob``, is comparable across
#: orders, rows and models (a probability in [0, 1], no clipping), unlike raw logits, whose
#: range grows with the order (±35 at k = 0, ±339 at k = 1 on SmolLM2)
COLOR_BY = ("prob", "logprob", "rank", "logit")
LOGPROB_FLOOR = -10.0  # log-probabilities below are clipped (and the clipping is shown)
RANK_CEIL = 1000  # ranks above are clipped (and the clipping is shown)


class CellScale:
    """The colour of each lens cell under ``color_by`` (fixed scales, so figures of several
    orders or runs share one scale): ``value(r, i)``, ``norm``, ``cmap``, a ``label`` for the
    key, and ``clipped``: how many cells lie outside the scale (drawn at its end)."""

    def __init__(self, result: LensResult, color_by: str, active: list[tuple[int, int]]) -> None:
        if color_by not in COLOR_BY:
            raise InputError(f"unknown colour scale {color_by!r}; choose one of: {', '.join(COLOR_BY)}")
        if color_by != "logit" and (result.top_logprobs is None or result.model_rank is None):
            color_by = "logit"  # a result without probabilities (e.g. built by hand): its logits
        self.color_by = color_by
        self.result = result
        self.extend = "neither"
        if color_by == "prob":
            self.norm, self.cmap = mcolors.Normalize(0.0, 1.0), matplotlib.colormaps[PROB_CMAP]
            self.label = "P(top-1) of the row"
        elif color_by == "logprob":
            self.norm = mcolors.Normalize(LOGPROB_FLOOR, 0.0, clip=True)
            self.cmap = matplotlib.colormaps[PROB_CMAP]
            self.label = "log P(top-1) of the row"
        elif color_by == "rank":
            self.norm = mcolors.LogNorm(1, RANK_CEIL, clip=True)
            self.cmap = matplotlib.colormaps[PROB_CMAP + "_r"]
            self.label = "rank of the model's top-1 in the row"
        else:
            self.norm, scale = _logit_norm(result, active)
            self.cmap = matplotlib.colormaps[LOGIT_CMAP]
            self.label = "top-1 logit of the row" + (" (symlog scale)" if scale == "symlog" else "")
            self.symlog = scale == "symlog"
        vals = [self.value(r, i) for r, i in active]
        if color_by == "logprob":
            self.clipped = sum(v < LOGPROB_FLOOR for v in vals)
            self.extend = "min" if self.clipped else "neither"
        elif color_by == "rank":
            self.clipped = sum(v > RANK_CEIL for v in vals)
            self.extend = "max" if self.clipped else "neither"
        elif color_by == "logit" and not self.symlog:
            self.clipped = sum(abs(v) > self.norm.vmax for v in vals)
            self.extend = "both" if self.clipped else "neither"
        else:
            self.clipped = 0
        if self.clipped:
            self.label += f" ({self.clipped} clipped)"

    def value(self, r: int, i: int) -> float:
        res = self.result
        if self.color_by == "prob":
            return math.exp(float(res.top_logprobs[r, i, 0]))  # type: ignore[index]
        if self.color_by == "logprob":
            return float(res.top_logprobs[r, i, 0])  # type: ignore[index]
        if self.color_by == "rank":
            return float(res.model_rank[r, i]) + 1.0  # type: ignore[index]
        return float(res.top_logits[r, i, 0])

    def rgba(self, r: int, i: int):
        return self.cmap(self.norm(self.value(r, i)))

    def ticks(self) -> tuple[list[float], list[str]] | None:
        if self.color_by == "rank":
            vals = [v for v in (1, 10, 100, 1000) if v <= RANK_CEIL]
            return vals, [("≥" if v == RANK_CEIL and self.clipped else "") + str(v) for v in vals]
        if self.color_by == "logprob":
            vals = [LOGPROB_FLOOR, LOGPROB_FLOOR / 2, 0.0]
            return vals, [("≤" if self.clipped else "") + f"{LOGPROB_FLOOR:g}", f"{LOGPROB_FLOOR / 2:g}", "0"]
        if self.color_by == "logit" and getattr(self, "symlog", False):
            ticks = _symlog_ticks(self.norm)  # type: ignore[arg-type]
            return ticks, [_tick_label(v) for v in ticks]
        return None


def _active(result: LensResult, r: int, i: int) -> bool:
    return result.weights is None or float(result.weights[r, i]) > _ZERO_WEIGHT


def _untrusted(result: LensResult, r: int, i: int) -> bool:
    """Whether cell (r, i) fails the trust criteria (False when the result has no diagnostics)."""
    tr = getattr(result, "trusted", None)
    return tr is not None and not bool(tr[r, i])


def _n_untrusted(result: LensResult) -> int:
    tr = getattr(result, "trusted", None)
    return 0 if tr is None else int((~tr).sum())


_UNTRUSTED_NOTE = "hatched: untrusted cell (divergent series, remainder > output, cancellation or rounding; docs/trust.md)"


# --------------------------------------------------------------------------- PNG table


def plot_lens(result: LensResult, path: PathLike | None = None, *, max_token_chars: int = 8, color_by: str = "prob") -> Figure:
    """Draw the lens table of ``result`` (see the module docstring); save a PNG when ``path`` is given.

    The figure grows with the number of rows R and positions t (about 0.8 in per column and
    0.26 in per row; 0.36 in per row for an optimised joint lens, whose cells also print w_i).
    ``color_by``: what a cell's colour shows (:data:`COLOR_BY`; see :class:`CellScale`).
    """
    R, t = len(result.row_names), len(result.tokens)
    joint = result.kind == "joint"
    show_w = joint and result.optimized and result.weights is not None
    cells = _cell_tokens(result)
    active = [(r, i) for r in range(R) for i in range(t) if _active(result, r, i)]
    cs = CellScale(result, color_by, active)
    cmap = matplotlib.colormaps[LOGIT_CMAP]
    wcmap = matplotlib.colormaps[WEIGHT_CMAP]
    cos_norm = mcolors.Normalize(vmin=-1.0, vmax=1.0)

    # Bottom rows: (label, strings, colours or None)
    extra: list[tuple[str, list[str], list | None]] = [("model top-1", [figure_token(s, max_token_chars) for s in _model_tokens(result)], None)]
    if joint:
        assert result.expansion_cosine is not None
        ecos = [float(x) for x in result.expansion_cosine]
        extra.append(("expansion top-1", [figure_token(s, max_token_chars) for s in _expansion_tokens(result)], None))
        extra.append(("expansion cos", [_fmt(c) for c in ecos], [cmap(cos_norm(c)) for c in ecos]))
    B = len(extra)
    n_rows = R + B

    # ---- layout in inches
    cw, ch = 0.82, (0.36 if show_w else 0.26)
    honest = not joint and getattr(result, "rest_cosine", None) is not None and getattr(result, "q_share", None) is not None
    side = [("cos", 0.55)] + ([("w̄", 0.55)] if joint else []) + ([("cos⊥q", 0.6), ("q share", 0.6)] if honest else [])
    label_chars = max(len(s) for s in list(result.row_names) + [e[0] for e in extra])
    left = 0.3 + 0.068 * label_chars
    main_w = t * cw
    side_w = sum(w + 0.06 for _, w in side)
    cbar_gap, cbar_w, right = 0.45, 0.16, 0.85
    top, bottom = 1.3, 0.45
    W = left + main_w + 0.1 + side_w + cbar_gap + cbar_w + right
    grid_h = n_rows * ch
    H = top + grid_h + bottom
    if max(W, H) * 100 > MAX_PIXELS:
        raise InputError(
            f"a lens table of {R} rows × {t} positions is too large for a PNG ({W * 100:.0f}×{H * 100:.0f} px); "
            "save it as .html or .json, or choose fewer layers/centres or a shorter text"
        )
    fig = Figure(figsize=(W, H), dpi=100)

    def box(x0: float, w: float, y0: float = bottom, h: float = grid_h):
        return fig.add_axes((x0 / W, y0 / H, w / W, h / H))

    ax = box(left, main_w)
    # ---- main grid colours
    img = [[_EXTRA_BG] * t for _ in range(n_rows)]
    for r in range(R):
        for i in range(t):
            img[r][i] = cs.rgba(r, i) if _active(result, r, i) else _BLANK_BG
    for b, (_, _, cols) in enumerate(extra):
        if cols is not None:
            img[R + b] = cols
    ax.imshow(img, aspect="auto", interpolation="nearest", extent=(-0.5, t - 0.5, n_rows - 0.5, -0.5))

    model_ids = result.model_top_ids[:, 0]
    fs = 7.0
    for r in range(R):
        for i in range(t):
            if not _active(result, r, i):
                ax.text(i, r, "·", ha="center", va="center", fontsize=fs, color="0.7", parse_math=False)
                continue
            colour = _text_colour(img[r][i])
            agrees = int(result.top_ids[r, i, 0]) == int(model_ids[i])
            y = r - 0.14 if show_w else r
            ax.text(
                i, y, figure_token(cells[r][i], max_token_chars), ha="center", va="center", fontsize=fs,
                color=colour, fontweight="bold" if agrees else "normal", parse_math=False,
            )
            if show_w:
                wv = float(result.weights[r, i])  # type: ignore[index]
                ax.text(i, r + 0.26, f"w={wv:.2f}" if wv >= 0.005 else "w<0.01", ha="center", va="center",  # type: ignore[index]
                        fontsize=5.2, color=colour, parse_math=False)
    from matplotlib.patches import Rectangle

    for r in range(R):
        for i in range(t):
            if _active(result, r, i) and _untrusted(result, r, i):
                ax.add_patch(Rectangle((i - 0.5, r - 0.5), 1, 1, fill=False, hatch="////", edgecolor=(0.35, 0.35, 0.35, 0.8),
                                       linewidth=0))
    for b, (_, strings, cols) in enumerate(extra):
        for i, s in enumerate(strings):
            colour = _text_colour(cols[i]) if cols is not None else "black"
            ax.text(i, R + b, s, ha="center", va="center", fontsize=fs, color=colour, parse_math=False,
                    fontweight="bold" if b == 0 else "normal")

    # input tokens above and below the grid (drawn as texts: tokens may contain "$")
    above = offset_copy(ax.get_xaxis_transform(), fig=fig, y=3, units="points")
    below = offset_copy(ax.get_xaxis_transform(), fig=fig, y=-3, units="points")
    for i, s in enumerate(result.tokens):
        lbl = figure_token(s, max_token_chars)
        ax.text(i, 1.0, lbl, transform=above, ha="center", va="bottom", fontsize=7.5, parse_math=False, clip_on=False,
                fontweight="bold")
        ax.text(i, 0.0, lbl, transform=below, ha="center", va="top", fontsize=7.5, parse_math=False, clip_on=False,
                fontweight="bold")
    ax.set_xticks([])
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(list(result.row_names) + [e[0] for e in extra], fontsize=7.5)
    ax.tick_params(axis="y", length=0)
    for lbl in ax.get_yticklabels()[R:]:
        lbl.set_fontstyle("italic")
    ax.set_xticks([x - 0.5 for x in range(1, t)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, n_rows)], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    ax.axhline(R - 0.5, color="black", linewidth=1.2)
    for s in ax.spines.values():
        s.set_linewidth(0.6)
    ax.set_xlim(-0.5, t - 0.5)
    ax.set_ylim(n_rows - 0.5, -0.5)

    # ---- side columns (per-row means)
    x = left + main_w + 0.1
    mean_cos = [float(c) for c in result.mean_cosine()]
    for name, w in side:
        sax = box(x, w)
        col = [_EXTRA_BG] * n_rows
        texts = [""] * n_rows
        if name == "cos":
            for r in range(R):
                col[r] = cmap(cos_norm(mean_cos[r]))
                texts[r] = _fmt(mean_cos[r])
            if joint:
                ec = sum(ecos) / len(ecos)
                col[R + 1] = cmap(cos_norm(ec))
                texts[R + 1] = _fmt(ec)
        elif name == "cos⊥q":
            rc = [float(c) for c in result.rest_cosine.mean(-1)]  # type: ignore[union-attr]
            for r in range(R):
                col[r] = cmap(cos_norm(rc[r]))
                texts[r] = _fmt(rc[r])
        elif name == "q share":
            qs = [float(c) for c in result.q_share.mean(-1)]  # type: ignore[union-attr]
            for r in range(R):
                col[r] = wcmap(0.85 * min(1.0, max(0.0, qs[r])))
                texts[r] = f"{qs[r]:.2f}"
        else:
            assert result.weights is not None
            mw = [float(v) for v in result.weights.mean(-1)]
            for r in range(R):
                col[r] = wcmap(0.85 * min(1.0, max(0.0, mw[r])))
                texts[r] = f"{mw[r]:.2f}" if mw[r] >= 0.005 or mw[r] == 0 else f"{mw[r]:.0e}"
        sax.imshow([[c] for c in col], aspect="auto", interpolation="nearest", extent=(-0.5, 0.5, n_rows - 0.5, -0.5))
        for r, s in enumerate(texts):
            if s:
                sax.text(0, r, s, ha="center", va="center", fontsize=6.5, color=_text_colour(col[r]), parse_math=False)
        sax.set_xticks([0])
        sax.set_xticklabels([f"mean {name}"], fontsize=7)
        sax.tick_params(axis="x", labeltop=True, labelbottom=False, top=False, bottom=False, length=0)
        sax.set_yticks([])
        sax.axhline(R - 0.5, color="black", linewidth=1.2)
        sax.set_yticks([y - 0.5 for y in range(1, n_rows)], minor=True)
        sax.grid(which="minor", axis="y", color="white", linewidth=0.6)
        sax.tick_params(which="minor", length=0)
        for s in sax.spines.values():
            s.set_linewidth(0.6)
        x += w + 0.06

    # ---- colorbar for the lens logits
    cax = box(x + cbar_gap - 0.06, cbar_w, bottom + grid_h * 0.25, grid_h * 0.5)
    cb = fig.colorbar(ScalarMappable(norm=cs.norm, cmap=cs.cmap), cax=cax, extend=cs.extend)
    ticks = cs.ticks()
    if ticks is not None:
        cb.set_ticks(ticks[0])  # type: ignore[arg-type]
        cb.set_ticklabels(ticks[1])  # type: ignore[arg-type]
    cb.set_label(cs.label, fontsize=7.5)
    cb.ax.tick_params(labelsize=7)

    # ---- titles and notes
    fig.text(left / W, 1 - 0.18 / H, lens_title(result), fontsize=10, fontweight="bold", va="top", ha="left", parse_math=False)
    sub = "cell: top-1 token of the row's logits at each position (column i predicts the token after input i); bold: agrees with the model's top-1"
    fig.text(left / W, 1 - 0.42 / H, sub, fontsize=7, va="top", ha="left", color="0.3", parse_math=False)
    if joint:
        note = "row: term U·w_i·J^k γ_{L+1}(x_i)(h_L) of centre x_i; the terms sum to the expansion; cos: cosine to the model's logits"
        if show_w:
            note += " (0 where w = 0); ·: weight 0 (no term)"
    else:
        note = "row: U·J^k γ_{L+1}(h_l)(h_L) for the stream after the named block; cos: cosine between the row's and the model's logits"
        if honest:
            note += "; cos⊥q: cosine with q of the row minus its part along q; q share: part of the row that is q itself"
    fig.text(left / W, 1 - 0.6 / H, note, fontsize=7, va="top", ha="left", color="0.3", parse_math=False)
    if _n_untrusted(result):
        fig.text(left / W, 1 - 0.78 / H, f"{_UNTRUSTED_NOTE}: {_n_untrusted(result)} of {R * t}", fontsize=7, va="top",
                 ha="left", color="0.3", parse_math=False)

    if path is not None:
        write_atomic(path, _png_bytes(fig))
    return fig


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


# --------------------------------------------------------------------------- HTML


_CSS = """
body { font-family: system-ui, -apple-system, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.1em; margin-bottom: 0.2em; }
p.note { font-size: 0.85em; color: #555; margin: 0.2em 0; }
table.lens { border-collapse: collapse; margin-top: 1em; font-size: 12px; }
table.lens th, table.lens td { border: 1px solid #fff; padding: 2px 4px; text-align: center; }
table.lens thead th { position: sticky; top: 0; background: #fff; font-family: ui-monospace, monospace;
  font-weight: normal; border-bottom: 1px solid #999; white-space: pre; }
table.lens th.row { text-align: right; font-family: ui-monospace, monospace; font-weight: normal; white-space: nowrap; }
td.cell { font-family: ui-monospace, monospace; white-space: pre; max-width: 7em; overflow: hidden;
  text-overflow: ellipsis; cursor: default; }
td.cell:hover { outline: 2px solid #222; }
td.agree { font-weight: bold; }
td.blank { color: #bbb; background: #fbfbfb; }
td.untrusted { text-decoration: line-through; background-image: repeating-linear-gradient(45deg, rgba(90,90,90,.35) 0 2px, transparent 2px 6px) !important; }
td.side { font-family: ui-monospace, monospace; font-size: 11px; }
tr.extra th, tr.extra td { background: #eee; font-style: italic; }
tr.first-extra th, tr.first-extra td { border-top: 2px solid #222; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888; border-radius: 4px;
  box-shadow: 0 2px 8px rgba(0,0,0,.2); padding: 6px 8px; font-size: 12px; z-index: 10; pointer-events: none; }
#tip table { border-collapse: collapse; font-family: ui-monospace, monospace; }
#tip td { padding: 0 6px; text-align: left; white-space: pre; }
#tip td.num { text-align: right; }
#tip .head { font-weight: bold; margin-bottom: 4px; }
.legend { font-size: 0.85em; margin-top: 0.5em; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 2px; font-family: ui-monospace, monospace; }
"""

_JS = """
(function () {
  var D = JSON.parse(document.getElementById('lens-data').textContent);
  var tip = document.getElementById('tip');
  function el(tag, text, cls) { var e = document.createElement(tag); if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls; return e; }
  function fmt(x) { return (x === null || x === undefined) ? 'n/a' : (x >= 0 ? '+' : '') + x.toFixed(3); }
  function show(cell, ev) {
    var r = cell.getAttribute('data-r'), i = parseInt(cell.getAttribute('data-i'), 10), info, head;
    if (r === 'm') { info = D.model[i]; head = 'model'; }
    else if (r === 'e') { info = D.expansion[i]; head = 'expansion Σ terms'; }
    else { info = D.cells[parseInt(r, 10)][i]; head = D.rows[parseInt(r, 10)]; }
    tip.textContent = '';
    tip.appendChild(el('div', head + ' @ position ' + i + ' (input ' + D.tokens[i] + ')', 'head'));
    var meta = [];
    if (info.cos !== undefined) meta.push('cosine ' + fmt(info.cos));
    if (info.w !== undefined) meta.push('weight ' + info.w.toFixed(4));
    if (info.rest_cos !== undefined) meta.push('cos⊥q ' + fmt(info.rest_cos) + '  q share ' + info.q_share.toFixed(3));
    if (info.untrusted) meta.push('UNTRUSTED: ' + info.untrusted.join(', '));
    if (meta.length) tip.appendChild(el('div', meta.join('   ')));
    if (!info.top.length) tip.appendChild(el('div', 'weight 0: this centre carries no term here'));
    var t = el('table');
    for (var j = 0; j < info.top.length; j++) {
      var tr = el('tr');
      tr.appendChild(el('td', String(j + 1), 'num'));
      tr.appendChild(el('td', info.top[j]));
      tr.appendChild(el('td', fmt(info.logits[j]), 'num'));
      t.appendChild(tr);
    }
    tip.appendChild(t);
    tip.style.display = 'block';
    move(ev);
  }
  function move(ev) {
    var x = ev.clientX + 14, y = ev.clientY + 14, w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth) x = ev.clientX - w - 10;
    if (y + h > window.innerHeight) y = Math.max(0, ev.clientY - h - 10);
    tip.style.left = x + 'px'; tip.style.top = y + 'px';
  }
  var cells = document.querySelectorAll('td[data-r]');
  for (var k = 0; k < cells.length; k++) {
    cells[k].addEventListener('mouseenter', function (ev) { show(this, ev); });
    cells[k].addEventListener('mousemove', move);
    cells[k].addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  }
})();
"""


def _css_colour(rgba) -> str:
    return mcolors.to_hex(rgba, keep_alpha=False)


def _json_for_script(obj) -> str:
    """JSON safe to embed in a ``<script type="application/json">`` element: <, >, & are
    written as \\u escapes so no token can close the element or open a comment."""
    s = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _finite(x: float) -> float | None:
    return round(x, 5) if math.isfinite(x) else None


def lens_data(result: LensResult) -> dict:
    """The hover data of :func:`lens_html`: visible token strings, top-k logits, cosines, weights.

    The result stores token strings for the model's and the expansion's top-1 only; their
    further top-k entries are shown as ``id N``. Cells with weight 0 carry no tokens.
    """
    R, t = len(result.row_names), len(result.tokens)
    cells = []
    for r in range(R):
        row = []
        for i in range(t):
            c: dict = {"cos": _finite(float(result.cosine[r, i]))}
            if _active(result, r, i):
                c["top"] = [visible_token(s) for s in _cell_topk(result, r, i)]
                c["logits"] = [_finite(float(x)) for x in result.top_logits[r, i]]
            else:  # weight 0: the term is 0, its "top tokens" are arbitrary ties
                c["top"], c["logits"] = [], []
            if result.weights is not None:
                c["w"] = _finite(float(result.weights[r, i]))
            if getattr(result, "rest_cosine", None) is not None and getattr(result, "q_share", None) is not None:
                c["rest_cos"] = _finite(float(result.rest_cosine[r, i]))  # type: ignore[index]
                c["q_share"] = _finite(float(result.q_share[r, i]))  # type: ignore[index]
            if _untrusted(result, r, i):
                c["untrusted"] = result.diagnostics.reasons(r, i) or ["non-finite diagnostics"]  # type: ignore[union-attr]
            row.append(c)
        cells.append(row)
    model_vocab = _model_tokens(result)
    model = []
    for i in range(t):
        top = [visible_token(model_vocab[i])] + [f"id {int(x)}" for x in result.model_top_ids[i, 1:]]
        model.append({"top": top, "logits": [_finite(float(x)) for x in result.model_top_logits[i]]})
    out = {"rows": list(result.row_names), "tokens": [visible_token(s) for s in result.tokens], "cells": cells, "model": model}
    if result.kind == "joint":
        assert result.expansion_top_ids is not None and result.expansion_top_logits is not None and result.expansion_cosine is not None
        ev = _expansion_tokens(result)
        out["expansion"] = [
            {
                "top": [visible_token(ev[i])] + [f"id {int(x)}" for x in result.expansion_top_ids[i, 1:]],
                "logits": [_finite(float(x)) for x in result.expansion_top_logits[i]],
                "cos": _finite(float(result.expansion_cosine[i])),
            }
            for i in range(t)
        ]
    return out


def lens_html(result: LensResult, *, color_by: str = "prob") -> str:
    """A self-contained HTML page (inline CSS and JS, no external assets) with the lens table.

    Cells are coloured like :func:`plot_lens`; hovering a cell shows its top-k tokens with
    logits, its cosine to the model's logits and (joint lens) its weight. Token strings are
    HTML-escaped in the table and embedded as escaped JSON for the hover data.
    """
    esc = html.escape
    R, t = len(result.row_names), len(result.tokens)
    joint = result.kind == "joint"
    cmap = matplotlib.colormaps[LOGIT_CMAP]
    wcmap = matplotlib.colormaps[WEIGHT_CMAP]
    active = [(r, i) for r in range(R) for i in range(t) if _active(result, r, i)]
    cs = CellScale(result, color_by, active)
    cos_norm = mcolors.Normalize(vmin=-1.0, vmax=1.0)
    cells = _cell_tokens(result)
    model_ids = result.model_top_ids[:, 0]
    mean_cos = [float(c) for c in result.mean_cosine()]
    mean_w = [float(v) for v in result.weights.mean(-1)] if result.weights is not None else []

    def side_cell(v: float, rgba, text: str) -> str:
        return f"<td class='side' style='background:{_css_colour(rgba)};color:{_text_colour(rgba)}'>{esc(text)}</td>"

    head = "".join(f"<th title='position {i}'>{esc(visible_token(s))}</th>" for i, s in enumerate(result.tokens))
    honest = not joint and getattr(result, "rest_cosine", None) is not None and getattr(result, "q_share", None) is not None
    extra_heads = ("<th>mean w</th>" if joint else "") + ("<th>mean cos⊥q</th><th>q share</th>" if honest else "")
    head = f"<thead><tr><th class='row'></th>{head}<th>mean cos</th>{extra_heads}</tr></thead>"
    body = []
    for r in range(R):
        tds = []
        for i in range(t):
            if not _active(result, r, i):
                tds.append(f"<td class='cell blank' data-r='{r}' data-i='{i}'>·</td>")
                continue
            rgba = cs.rgba(r, i)
            cls = "cell agree" if int(result.top_ids[r, i, 0]) == int(model_ids[i]) else "cell"
            if _untrusted(result, r, i):
                cls += " untrusted"
            tds.append(
                f"<td class='{cls}' data-r='{r}' data-i='{i}' style='background:{_css_colour(rgba)};color:{_text_colour(rgba)}'>"
                f"{esc(visible_token(cells[r][i]))}</td>"
            )
        tds.append(side_cell(mean_cos[r], cmap(cos_norm(mean_cos[r])), _fmt(mean_cos[r])))
        if joint:
            tds.append(side_cell(mean_w[r], wcmap(0.85 * min(1.0, max(0.0, mean_w[r]))), f"{mean_w[r]:.3f}"))
        if honest:
            rc = float(result.rest_cosine[r].mean())  # type: ignore[index]
            qs = float(result.q_share[r].mean())  # type: ignore[index]
            tds.append(side_cell(rc, cmap(cos_norm(rc)), _fmt(rc)))
            tds.append(side_cell(qs, wcmap(0.85 * min(1.0, max(0.0, qs))), f"{qs:.2f}"))
        body.append(f"<tr><th class='row'>{esc(result.row_names[r])}</th>{''.join(tds)}</tr>")
    blank_side = "<td></td>" * (1 + (1 if joint else 0) + (2 if honest else 0))
    mt = _model_tokens(result)
    body.append(
        "<tr class='extra first-extra'><th class='row'>model top-1</th>"
        + "".join(f"<td class='cell' data-r='m' data-i='{i}'>{esc(visible_token(mt[i]))}</td>" for i in range(t))
        + blank_side + "</tr>"
    )
    if joint:
        assert result.expansion_cosine is not None
        et = _expansion_tokens(result)
        ecos = [float(x) for x in result.expansion_cosine]
        body.append(
            "<tr class='extra'><th class='row'>expansion top-1</th>"
            + "".join(f"<td class='cell' data-r='e' data-i='{i}'>{esc(visible_token(et[i]))}</td>" for i in range(t))
            + side_cell(sum(ecos) / t, cmap(cos_norm(sum(ecos) / t)), _fmt(sum(ecos) / t)) + "<td></td></tr>"
        )
        body.append(
            "<tr class='extra'><th class='row'>expansion cos</th>"
            + "".join(side_cell(c, cmap(cos_norm(c)), _fmt(c)) for c in ecos)
            + blank_side + "</tr>"
        )
    t_k = cs.ticks()
    if t_k is None:
        lo, hi = cs.norm.vmin, cs.norm.vmax
        vals = [lo + (hi - lo) * f for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
        labels = [f"{v:.3g}" if cs.color_by == "prob" else f"{v:+.3g}" for v in vals]
    else:
        vals, labels = t_k
    legend = "".join(
        f"<span style='background:{_css_colour(cs.cmap(cs.norm(v)))};color:{_text_colour(cs.cmap(cs.norm(v)))}'>{esc(lab)}</span>"
        for v, lab in zip(vals, labels)
    )
    title = esc(lens_title(result))
    notes = (
        "<p class='note'>Cell: top-1 token of the row's logits; column i predicts the token after input i. "
        "Bold: agrees with the model's top-1. Hover a cell for its top-k tokens, logits, cosine"
        + (" and weight" if joint else "") + ". Visible whitespace: ␣ space, ⏎ newline, ⇥ tab.</p>"
    )
    if joint and result.optimized:
        notes += "<p class='note'>· : weight 0 (the centre carries no term at this position).</p>"
    if _n_untrusted(result):
        notes += f"<p class='note'>Hatched and struck through: untrusted cell ({_n_untrusted(result)} of {R * t}): divergent series, remainder larger than the output, cancellation or rounding (docs/trust.md); hover for the reason.</p>"
    honest = not joint and getattr(result, "rest_cosine", None) is not None and getattr(result, "q_share", None) is not None
    if honest:
        notes += "<p class='note'>cos⊥q: mean cosine with q of the row minus its part along the model's own logits q; q share: mean share of the row that is q itself (docs/trust.md).</p>"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<h1>{title}</h1>{notes}<div class='legend'>{esc(cs.label)}: {legend}</div>"
        f"<table class='lens'>{head}<tbody>{''.join(body)}</tbody></table>"
        "<div id='tip'></div>"
        f"<script type='application/json' id='lens-data'>{_json_for_script(lens_data(result))}</script>"
        f"<script>{_JS}</script></body></html>\n"
    )


def save_lens_html(result: LensResult, path: PathLike, *, color_by: str = "prob") -> Path:
    """Write :func:`lens_html` to ``path`` (atomically); returns the path."""
    return write_atomic(path, lens_html(result, color_by=color_by).encode("utf-8"))


# --------------------------------------------------------------------------- cosine curve


def _order_label(k: int) -> str:
    return "logit lens (k = 0)" if k == 0 else f"jet lens, k = {k}"


def plot_cosine_curve(curve: CosineCurve, path: PathLike | None = None) -> Figure:
    """Mean cosine (lens logits vs model logits) per layer, one line per order; PNG when ``path`` is given."""
    R = len(curve.row_names)
    fig = Figure(figsize=(max(6.0, 0.22 * R + 2.0), 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(R))
    markers = "os^Dvx*"
    trusted = getattr(curve, "trusted", None)
    rest = getattr(curve, "rest_cosine", None)
    for oi, k in enumerate(curve.orders):
        ys = [float(v) for v in curve.cosine[oi]]
        (line,) = ax.plot(xs, ys, linewidth=1.4, label=_order_label(k))
        colour, mk = line.get_color(), markers[oi % len(markers)]
        ok = [trusted is None or float(trusted[oi, r]) >= 0.5 for r in range(R)]
        ax.plot([x for x, o in zip(xs, ok) if o], [y for y, o in zip(ys, ok) if o], linestyle="none", marker=mk, markersize=3.5, color=colour)
        ax.plot([x for x, o in zip(xs, ok) if not o], [y for y, o in zip(ys, ok) if not o], linestyle="none", marker=mk,
                markersize=4, markerfacecolor="white", markeredgecolor=colour)
        if rest is not None and k >= 1:
            ax.plot(xs, [float(v) for v in rest[oi]], linestyle="--", linewidth=1.0, color=colour, label=f"{_order_label(k)}, rest (part along q removed)")
    if trusted is not None and bool((trusted < 0.5).any()):
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="0.3", label="hollow: most cells untrusted")
    ax.axhline(0.0, color="black", linewidth=0.8)
    step = max(1, math.ceil(R / 40))
    ax.set_xticks(xs[::step])
    ax.set_xticklabels(curve.row_names[::step], rotation=90, fontsize=7)
    ax.set_xlim(-0.5, R - 0.5)
    ax.set_xlabel("stream h_l after block" if curve.kind == "iterative" else "centre")
    ax.set_ylabel("mean cosine to the model's logits", fontsize=9)
    ax.grid(True, linewidth=0.3, alpha=0.6)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{curve.model_name} · {curve.kind} lens vs model logits, mean over {curve.n_sentences} sentences", fontsize=10)
    fig.subplots_adjust(bottom=0.25, top=0.9, left=0.6 / fig.get_figwidth() + 0.04, right=0.98)
    if path is not None:
        write_atomic(path, _png_bytes(fig))
    return fig


# --------------------------------------------------------------------------- saving


def save_lens(result: LensResult, path: PathLike, *, color_by: str = "prob") -> Path:
    """Write ``result`` to ``path`` by suffix: ``.png`` (:func:`plot_lens`), ``.html``
    (:func:`lens_html`) or ``.json`` (``result.to_dict()``). Rendering happens in memory
    before anything touches the file, which is then replaced atomically."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".png":
        data = _png_bytes(plot_lens(result, color_by=color_by))
    elif suffix in (".html", ".htm"):
        data = lens_html(result, color_by=color_by).encode("utf-8")
    elif suffix == ".json":
        data = (json.dumps(result.to_dict(), ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    else:
        raise InputError(f"cannot save a lens as {suffix or 'a file without suffix'!r} ({p.name}): use .png, .html or .json")
    return write_atomic(p, data)


register_renderer(LensResult, plot=plot_lens, html=lambda result, **kw: lens_html(result))
register_renderer(CosineCurve, plot=plot_cosine_curve)

__all__ = [
    "figure_token",
    "lens_data",
    "lens_html",
    "lens_title",
    "plot_cosine_curve",
    "plot_lens",
    "save_lens",
    "save_lens_html",
    "visible_token",
]
