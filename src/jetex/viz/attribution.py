"""Rendering of token attributions: coloured terminal text (rich), JSON, self-contained HTML.

Colours are signed: red backgrounds for positive scores (supporting the target), blue
for negative ones, with intensity ∝ |score| / scale. The scale is the largest |score|
over the tokens other than BOS (a BOS token often carries an outsized norm and would wash
every other colour out); BOS is drawn with its colour clipped at full intensity and its
score still shown. This module takes an :class:`~jetex.attribution.Attribution` and
computes nothing beyond colours.
"""

from __future__ import annotations

import html
import io
import json
from typing import Any

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jetex.attribution.core import Attribution
from jetex.results import register_renderer, write_atomic
from jetex.viz.text import cell, visible

_RED = (214, 39, 40)
_BLUE = (31, 119, 180)


def colour_scale(attr: Attribution) -> float:
    """max |score| over the non-BOS tokens (1.0 if all are zero)."""
    s = attr.scores.tolist()[1 if attr.bos and len(attr) > 1 else 0 :]
    m = max((abs(x) for x in s), default=0.0)
    return m if m > 0 else 1.0


def score_colour(score: float, scale: float) -> tuple[int, int, int]:
    """White blended towards red (score > 0) or blue (score < 0) by min(1, |score|/scale)."""
    a = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    base = _RED if score > 0 else _BLUE
    return tuple(round(255 + (c - 255) * a) for c in base)  # type: ignore[return-value]


def _text_colour(rgb: tuple[int, int, int]) -> str:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "black" if lum > 140 else "white"


def display_token(tok: str) -> str:
    """A token as shown: newlines and tabs made visible, other control characters escaped
    (:func:`jetex.viz.text.visible`), empty tokens as ∅."""
    t = visible(tok.replace("\t", "⇥").replace("\r", ""), newlines="⏎")
    return t if t else "∅"


def _describe(attr: Attribution) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in attr.options.items())
    return f"{attr.method}{f' ({opts})' if opts else ''} → target '{visible(attr.target)}' (id {attr.target_id})"


def to_rich_text(attr: Attribution) -> Text:
    """The tokens as one rich Text, each on its signed colour background."""
    scale = colour_scale(attr)
    out = Text()
    for tok, s in zip(attr.tokens, attr.scores.tolist()):
        rgb = score_colour(s, scale)
        out.append(display_token(tok), style=f"{_text_colour(rgb)} on rgb({rgb[0]},{rgb[1]},{rgb[2]})")
    return out


def render_terminal(attr: Attribution, console: Console | None = None, *, top: int = 5) -> None:
    """Print the coloured tokens, then the ``top`` highest-scoring tokens with their scores."""
    console = console or Console()
    console.print(Text(_describe(attr), style="bold"))
    console.print(to_rich_text(attr))
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("rank", justify="right")
    table.add_column("pos", justify="right")
    table.add_column("token")
    table.add_column("score", justify="right")
    s = attr.scores.tolist()
    for r, i in enumerate(attr.ranking()[:top], 1):
        table.add_row(str(r), str(i), cell(repr(attr.tokens[i])), f"{s[i]:+.4g}")
    console.print(table)
    if "convergence_delta" in attr.extras:
        console.print(f"integrated-gradients convergence delta: {attr.extras['convergence_delta']:+.3g}")


def to_json(attr: Attribution) -> str:
    """The attribution as a JSON document."""
    return json.dumps(attr.to_dict(), indent=2, ensure_ascii=False)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.1em; }
.tokens { font-family: ui-monospace, monospace; font-size: 1.15em; line-height: 2.2em; }
.tok { padding: 0.15em 0.05em; border-radius: 3px; white-space: pre; position: relative; cursor: default; }
.tok:hover { outline: 2px solid #333; }
.tok .tip { visibility: hidden; position: absolute; bottom: 125%; left: 0; background: #333; color: #fff;
  padding: 0.2em 0.5em; border-radius: 4px; font-size: 0.8em; white-space: nowrap; z-index: 1; }
.tok:hover .tip { visibility: visible; }
.bos { opacity: 0.6; }
.legend span { display: inline-block; padding: 0.1em 0.6em; margin-right: 0.3em; border-radius: 3px; }
table { border-collapse: collapse; margin-top: 1.5em; font-size: 0.9em; }
td, th { padding: 0.2em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-family: ui-monospace, monospace; }
"""


def to_html(attr: Attribution, *, title: str | None = None) -> str:
    """A self-contained HTML page (inline CSS, no scripts); hovering a token shows its score."""
    scale = colour_scale(attr)
    esc = html.escape
    spans = []
    for i, (tok, s) in enumerate(zip(attr.tokens, attr.scores.tolist())):
        rgb = score_colour(s, scale)
        cls = "tok bos" if (attr.bos and i == 0) else "tok"
        tip = f"#{i} {tok!r} id {int(attr.token_ids[i])}: {s:+.5g}"
        spans.append(
            f'<span class="{cls}" style="background: rgb{rgb}; color: {_text_colour(rgb)}" title="{esc(tip)}" '
            f'data-score="{s:.6g}">{esc(display_token(tok))}<span class="tip">{esc(tip)}</span></span>'
        )
    rows = "".join(
        f"<tr><td class='num'>{r}</td><td class='num'>{i}</td><td>{esc(repr(attr.tokens[i]))}</td>"
        f"<td class='num'>{attr.scores[i].item():+.5g}</td></tr>"
        for r, i in enumerate(attr.ranking(), 1)
    )
    legend = (
        f"<div class='legend'><span style='background: rgb{score_colour(scale, scale)}; color: white'>+{scale:.3g}</span>"
        f"<span style='background: #fff; border: 1px solid #ccc'>0</span>"
        f"<span style='background: rgb{score_colour(-scale, scale)}; color: white'>−{scale:.3g}</span></div>"
    )
    heading = esc(title or _describe(attr))
    extras = "".join(f"<li>{esc(str(k))}: {esc(str(v))}</li>" for k, v in attr.extras.items())
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{heading}</title><style>{_CSS}</style></head><body>"
        f"<h1>{heading}</h1>{legend}<p class='tokens'>{''.join(spans)}</p>"
        + (f"<ul>{extras}</ul>" if extras else "")
        + f"<table><tr><th>rank</th><th>pos</th><th>token</th><th>score</th></tr>{rows}</table>"
        "</body></html>\n"
    )


def plot_attribution(attr: Attribution, path: Any = None) -> Figure:
    """One bar per input token (its score; red supports the target, blue opposes it, colour
    scale as in the HTML); a PNG is written when ``path`` is given."""
    n = len(attr)
    fig = Figure(figsize=(max(4.0, 0.45 * n + 1.5), 3.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    scale = colour_scale(attr)
    scores = attr.scores.tolist()
    ax.bar(range(n), scores, color=[tuple(c / 255 for c in score_colour(s, scale)) for s in scores], edgecolor="0.3", linewidth=0.5)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(n))
    ax.set_xticklabels([display_token(t)[:12] for t in attr.tokens], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title(_describe(attr), fontsize=9)
    fig.subplots_adjust(bottom=0.3, top=0.88)
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        write_atomic(path, buf.getvalue())
    return fig


def report_table(report: Any) -> Table:
    """A rich table of a :class:`~jetex.attribution.faithfulness.FaithfulnessReport`."""
    table = Table(title=f"faithfulness over {len(report.prompts)} prompts (ratios {', '.join(f'{r:g}' for r in report.ratios)})")
    table.add_column("method")
    table.add_column("comprehensiveness AOPC ↑", justify="right")
    table.add_column("sufficiency AOPC ↓", justify="right")
    table.add_column("s / prompt", justify="right")
    for s in report.summaries:
        table.add_row(s.label, f"{s.aopc_comprehensiveness:.4f}", f"{s.aopc_sufficiency:.4f}", f"{s.seconds_per_prompt:.4f}")
    return table


__all__ = ["colour_scale", "display_token", "plot_attribution", "render_terminal", "report_table", "score_colour", "to_html", "to_json", "to_rich_text"]


register_renderer(Attribution, plot=plot_attribution, html=to_html)
