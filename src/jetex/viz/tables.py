"""Pictures of ranked results: jet paths (:class:`~jetex.expand.PathRanking`) and n-gram
tables (:class:`~jetex.ngrams.table.NgramTable`): a horizontal bar chart and a
self-contained HTML table each. Layout only; nothing here computes model math.
"""

from __future__ import annotations

import html
import io
import os
from typing import Any

from matplotlib.figure import Figure

from jetex.expand.paths import PathRanking
from jetex.ngrams.table import NgramTable
from jetex.results import register_renderer, write_atomic

PathLike = str | os.PathLike

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.2em 0.8em; text-align: left; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-family: ui-monospace, monospace; }
.bar { display: inline-block; height: 0.8em; vertical-align: middle; }
"""


def _shown(tok: Any) -> str:
    s = str(tok)
    return s.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "") or "∅"


def _bars(labels: list[str], values: list[float], title: str, xlabel: str, path: PathLike | None) -> Figure:
    n = len(labels)
    fig = Figure(figsize=(7.5, max(2.0, 0.28 * n + 1.2)), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(n))[::-1]
    ax.barh(ys, values, color=["#d62728" if v > 0 else "#1f77b4" for v in values], edgecolor="0.3", linewidth=0.5)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.45, right=0.97, top=1 - 0.5 / fig.get_figheight(), bottom=0.6 / fig.get_figheight())
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        write_atomic(path, buf.getvalue())
    return fig


def _page(title: str, head: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    esc = html.escape
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class='num'>{esc(v)}</td>" if num else f"<td>{esc(v)}</td>" for v, num in r) + "</tr>" for r in rows)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"
        f"<table><tr>{th}</tr>{body}</table></body></html>\n"
    )


def _path_title(r: PathRanking) -> str:
    return f"top {len(r)} of {r.n_ranked} paths for {r.target!r} at position {r.position} (order {r.order}) — {r.model_name}"


def plot_paths(ranking: PathRanking, path: PathLike | None = None) -> Figure:
    """Each ranked path's logit of the target, best at the top."""
    labels = [p.name.replace(" → ", "→") for p in ranking]
    return _bars(labels, [p.logit for p in ranking], _path_title(ranking), f"logit of {ranking.target!r}", path)


def paths_html(ranking: PathRanking) -> str:
    """The ranking as an HTML table (rank, path, logit, the path's own top-1 token)."""
    rows = [
        [(str(i), True), (p.name, False), (f"{p.logit:+.4g}", True), (repr(tok), False)]
        for i, (p, tok) in enumerate(zip(ranking, ranking.top_tokens), 1)
    ]
    return _page(_path_title(ranking), ["#", "path", f"logit[{ranking.target!r}]", "path's own top-1"], rows)


def _ngram_label(t: NgramTable, r: dict) -> str:
    head = f"{_shown(r['context'])} … " if t.kind == "trigram" else ""
    return f"{head}{_shown(r['input'])} → {_shown(r['output'])}"


def plot_ngrams(table: NgramTable, path: PathLike | None = None) -> Figure:
    """Each n-gram's probability (bigrams: P(next | token); trigrams: the score S)."""
    recs = table.records()
    xlabel = "P(next | token)" if table.kind == "bigram" else "score S = p(a|b)·P_OV(c|a)"
    return _bars([_ngram_label(table, r) for r in recs], [float(r["prob"] or 0.0) for r in recs],
                 f"{table.path}: {table.section} — {table.model_name}", xlabel, path)


def ngrams_html(table: NgramTable) -> str:
    """The n-grams as an HTML table with every column."""
    rows = [[(repr(v) if isinstance(v, str) else ("" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)),
              not isinstance(v, str)) for v in r] for r in table.rows]
    return _page(f"{table.path}: {table.section} — {table.model_name}", list(table.columns), rows)


register_renderer(PathRanking, plot=plot_paths, html=lambda r, **kw: paths_html(r))
register_renderer(NgramTable, plot=plot_ngrams, html=lambda t, **kw: ngrams_html(t))

__all__ = ["ngrams_html", "paths_html", "plot_ngrams", "plot_paths"]
