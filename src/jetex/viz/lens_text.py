"""A jet lens in the terminal (``jetex lens``): a rich table that fits the terminal's width,
cells coloured on the same fixed scales as the figures (:data:`jetex.viz.lens.COLOR_BY`),
with a key for every colour and a legend of what the rows are. Needs rich only (no
matplotlib), and escapes every token (control characters, rich markup).
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jetex.viz.text import visible

COLOR_BY = ("prob", "logprob", "rank", "logit")
LOGPROB_FLOOR = -10.0
RANK_CEIL = 1000
_LO = (255, 255, 217)  # light end of the sequential scale (YlGnBu-like)
_HI = (8, 29, 88)  # dark end
_RED, _BLUE = (214, 39, 40), (31, 119, 180)
_ZERO_WEIGHT = 1e-9


def _blend(a: tuple[int, int, int], b: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    f = min(1.0, max(0.0, f))
    return tuple(round(x + (y - x) * f) for x, y in zip(a, b))  # type: ignore[return-value]


def _style(rgb: tuple[int, int, int]) -> str:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return f"{'black' if lum > 140 else 'white'} on rgb({rgb[0]},{rgb[1]},{rgb[2]})"


class TextScale:
    """Fraction in [0, 1] (or signed, for logits) of each cell on the ``color_by`` scale."""

    def __init__(self, res: Any, color_by: str) -> None:
        if color_by != "logit" and (getattr(res, "top_logprobs", None) is None or getattr(res, "model_rank", None) is None):
            color_by = "logit"
        self.res, self.color_by = res, color_by
        self.clipped = 0
        if color_by == "logit":
            act = [abs(float(res.top_logits[r, i, 0])) for r, i in _cells(res) if _active(res, r, i)]
            self.max = max(act, default=1.0) or 1.0

    def raw(self, r: int, i: int) -> float:
        res = self.res
        if self.color_by == "prob":
            return math.exp(float(res.top_logprobs[r, i, 0]))
        if self.color_by == "logprob":
            return float(res.top_logprobs[r, i, 0])
        if self.color_by == "rank":
            return float(res.model_rank[r, i]) + 1.0
        return float(res.top_logits[r, i, 0])

    def rgb(self, r: int, i: int) -> tuple[int, int, int]:
        v = self.raw(r, i)
        if self.color_by == "prob":
            return _blend(_LO, _HI, v)
        if self.color_by == "logprob":
            self.clipped += v < LOGPROB_FLOOR
            return _blend(_LO, _HI, (v - LOGPROB_FLOOR) / -LOGPROB_FLOOR)
        if self.color_by == "rank":
            self.clipped += v > RANK_CEIL
            return _blend(_LO, _HI, 1.0 - math.log10(v) / math.log10(RANK_CEIL))
        return _blend((255, 255, 255), _RED if v > 0 else _BLUE, abs(v) / self.max)

    def key(self) -> Text:
        """The colour key, one line."""
        out = Text("colour: ")
        if self.color_by == "prob":
            out.append("P(top-1) under the row's softmax ")
            stops = [(f"{f:g}", _blend(_LO, _HI, f)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
        elif self.color_by == "logprob":
            out.append("log P(top-1) under the row's softmax ")
            stops = [(f"{LOGPROB_FLOOR * (1 - f):g}" if f else f"≤{LOGPROB_FLOOR:g}", _blend(_LO, _HI, f)) for f in (0.0, 0.5, 1.0)]
        elif self.color_by == "rank":
            out.append("rank of the model's top-1 in the row ")
            stops = [(("≥" if v == RANK_CEIL else "") + str(v), _blend(_LO, _HI, 1 - math.log10(v) / math.log10(RANK_CEIL)))
                     for v in (1, 10, 100, RANK_CEIL)]
        else:
            out.append("top-1 logit of the row (scaled to the largest |logit| shown) ")
            stops = [(f"{-self.max:+.3g}", _BLUE), ("0", (255, 255, 255)), (f"{self.max:+.3g}", _RED)]
        for label, rgb in stops:
            out.append(f" {label} ", style=_style(rgb))
            out.append(" ")
        if self.clipped:
            out.append(f"({self.clipped} cell{'s' if self.clipped != 1 else ''} clipped at the end of the scale)")
        return out


def _cells(res: Any) -> list[tuple[int, int]]:
    return [(r, i) for r in range(len(res.row_names)) for i in range(len(res.tokens))]


def _active(res: Any, r: int, i: int) -> bool:
    return res.weights is None or float(res.weights[r, i]) > _ZERO_WEIGHT


def _cut(s: str, w: int) -> str:
    s = visible(s)
    return s if len(s) <= w else s[: max(1, w - 1)] + "…"


def _tok(s: str) -> str:
    """A token with its spaces shown (␣), control characters escaped."""
    return visible(s).replace(" ", "␣") or "∅"


def render_lens(res: Any, *, color_by: str = "prob", console: Console | None = None) -> None:
    """Print the lens table of ``res`` (a :class:`~jetex.lenses.LensResult`) to fit the console width.

    Columns are input positions (column i: what is read after token i); when they do not
    all fit at a readable width, the last positions are shown and the rest named in a note.
    """
    console = console or Console()
    scale = TextScale(res, color_by)
    R, t = len(res.row_names), len(res.tokens)
    width = max(40, console.width)
    label_w = max(len(n) for n in [*res.row_names, "expansion", "model"])
    extra_cols = 2 if getattr(res, "rest_cosine", None) is not None and getattr(res, "q_share", None) is not None else 0
    fixed = label_w + 4 + 8 + 9 * extra_cols  # row label, borders, cos (and cos⊥q, q share) columns
    col_w = min(10, max(4, (width - fixed) // max(1, t) - 3))
    fit = max(1, (width - fixed) // (col_w + 3))
    shown = list(range(t))[-fit:]
    title = ((f"{res.kind} lens" if res.kind in ("logit", "tuned", "jacobian") else f"{res.kind} jet lens, order {res.order}")
             + (" (optimised weights)" if res.optimized else "")
             + f" — {visible(res.model_name)}")
    table = Table(title=title, header_style="bold", pad_edge=False, expand=False)
    table.add_column("row", style="bold", no_wrap=True)
    for i in shown:
        table.add_column(Text(_cut(_tok(res.tokens[i]), col_w)), no_wrap=True, max_width=col_w, overflow="ellipsis")
    table.add_column("cos", justify="right", no_wrap=True)
    honest = getattr(res, "rest_cosine", None) is not None and getattr(res, "q_share", None) is not None
    if honest:
        table.add_column("cos⊥q", justify="right", no_wrap=True)
        table.add_column("q share", justify="right", no_wrap=True)
    trusted = getattr(res, "trusted", None)
    for r, name in enumerate(res.row_names):
        row: list[Any] = [Text(name)]
        for i in shown:
            if not _active(res, r, i):
                row.append(Text("·", style="dim"))  # weight 0: this centre carries no term here
                continue
            ok = trusted is None or bool(trusted[r, i])
            tok = _cut(_tok(res.vocab[r][i][0]), col_w - (0 if ok else 1)) + ("" if ok else "†")
            bold = " bold" if res.vocab[r][i][0] == res.model_vocab[i] else ""  # the model's top-1 (by its string)
            row.append(Text(tok, style=_style(scale.rgb(r, i)) + bold + ("" if ok else " dim strike")))
        row.append(f"{float(res.cosine[r].mean()):+.3f}")
        if honest:
            row.append(f"{float(res.rest_cosine[r].mean()):+.3f}")
            row.append(f"{float(res.q_share[r].mean()):.2f}")
        table.add_row(*row)
    table.add_section()
    pad = [""] * (2 if honest else 0)
    table.add_row("model", *[Text(_cut(_tok(res.model_vocab[i]), col_w)) for i in shown], "", *pad)
    if res.kind == "joint":
        table.add_row("expansion", *[Text(_cut(_tok(res.expansion_vocab[i]), col_w)) for i in shown],
                      f"{float(res.expansion_cosine.mean()):+.3f}", *pad)
    console.print(table)
    if len(shown) < t:
        console.print(Text(f"positions 0..{shown[0] - 1} of {t} do not fit {width} columns; write the whole table "
                           "with --out FILE.html (or widen the terminal)", style="yellow"))
    console.print(scale.key())
    if trusted is not None and not bool(trusted.all()):
        console.print(Text(f"†: untrusted cell ({int((~trusted).sum())} of {R * t}; see docs/trust.md)", style="dim"))
    if honest:
        console.print(Text("cos⊥q: cosine with q of each row minus its part along the model's own logits q; "
                           "q share: part of the row that is q", style="dim"))
    if res.kind == "joint":
        rows = ("rows: one term per centre — emb: the embedding; attn.N…mlp.N: the contribution of those blocks "
                "(N = transformer layer); the terms sum to the expansion")
        if res.weights is not None:
            rows += "; ·: weight 0 at that position (no term)"
    else:
        rows = ("rows: emb = the embedding stream; attn.N / mlp.N = the residual stream right after layer N's "
                "attention / MLP block, read through the lens")
    console.print(Text(rows + ". cells: the row's top-1 token after reading the column's token (bold: the model's "
                       "top-1 too); model: the model's own top-1; cos: mean cosine between the row's and the model's "
                       "logits; ␣ = space.", style="dim"))


def lens_summary(res: Any, out: str) -> str:
    """The short line printed instead of the table when the lens went to a file."""
    R, t = len(res.row_names), len(res.tokens)
    last = res.row_names[-1]
    return (f"wrote {out}: {res.kind} jet lens, order {res.order}, {R} rows × {t} positions of {visible(res.model_name)}; "
            f"model's next token '{visible(res.model_vocab[-1])}'; row {last}: '{visible(res.vocab[-1][-1][0])}', "
            f"mean cosine {float(res.cosine[-1].mean()):+.3f}")


class DictLens:
    """A lens read back from :meth:`LensResult.to_dict` (or a ``jetex serve`` answer), with the
    attributes :func:`render_lens` reads, as NumPy arrays: no torch needed.

    The command line prints every lens table through this view, for a local result and for a
    server's answer alike, so both print the same text (the dict's values are rounded to 4
    decimals; a server writes non-finite numbers as null, read back as NaN).
    """

    def __init__(self, d: dict) -> None:
        import numpy as np

        def arr(key: str, dtype: Any = float) -> Any:
            cells = d["cells"]
            if not cells or not cells[0] or key not in cells[0][0]:
                return None
            nan = float("nan")
            return np.array([[nan if c.get(key) is None else c[key] for c in row] for row in cells], dtype=dtype)

        self.kind, self.order, self.optimized = d["kind"], d["order"], d["optimized"]
        self.model_name, self.tokens, self.row_names = d["model"], d["tokens"], d["rows"]
        self.vocab = [[c["top"] for c in row] for row in d["cells"]]
        self.model_vocab = d["model_top"]
        nan = float("nan")
        self.top_logits = np.array([[[nan if x is None else x for x in c["logits"]] or [nan] for c in row] for row in d["cells"]], dtype=float)
        lp = d["cells"][0][0].get("logprobs") if d["cells"] and d["cells"][0] else None
        self.top_logprobs = (np.array([[[nan if x is None else x for x in c["logprobs"]] or [nan] for c in row] for row in d["cells"]], dtype=float)
                             if lp is not None else None)
        self.model_rank = arr("model_rank")
        self.weights = arr("weight")
        self.cosine = arr("cosine")
        self.rest_cosine = arr("rest_cosine")
        self.q_share = arr("q_share")
        self.trusted = arr("trusted", dtype=bool)
        self.expansion_vocab = d.get("expansion_top")
        ec = d.get("expansion_cosine")
        self.expansion_cosine = None if ec is None else np.array([nan if x is None else x for x in ec], dtype=float)
