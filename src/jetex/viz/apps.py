"""Pictures and pages of the jet n-gram applications (:mod:`jetex.apps`).

- :func:`plot_hit_ratio`, :func:`plot_mass`, :func:`plot_trajectories`,
  :func:`save_dynamics_figures`: the training-dynamics figures (paper Fig. 4a, 4b, 5) of a
  :class:`~jetex.apps.dynamics.DynamicsResult`. The x axis is the training step when every
  checkpoint has one, else the checkpoint order.
- :func:`diff_html` / :func:`save_diff_html`: a self-contained HTML page of a
  :class:`~jetex.apps.diff.DiffResult` (side-by-side table, entered/left, ranks gained/lost,
  largest probability changes); bigrams can be highlighted (e.g. code-related ones).

Only layout: no model math. Files are rendered in memory and written atomically.
"""

from __future__ import annotations

import html
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from jetex.apps.diff import BigramDelta, DiffResult
from jetex.apps.dynamics import DynamicsResult

PathLike = str | os.PathLike


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    return buf.getvalue()


def _x(res: DynamicsResult) -> tuple[list[float], str]:
    if all(s is not None for s in res.steps):
        return [float(s) for s in res.steps], "training step"  # type: ignore[arg-type]
    return list(range(len(res.labels))), "checkpoint"


def plot_hit_ratio(res: DynamicsResult) -> Figure:
    """Fig. 4a: hit ratio of the last checkpoint's top-N bigrams per checkpoint (+ loss if known)."""
    x, xl = _x(res)
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, res.hit_ratio, "o-", color="tab:red", label="hit ratio")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xl)
    ax.set_ylabel(f"hit ratio of final top-{res.top_n}", color="tab:red")
    if res.losses:
        ax2 = ax.twinx()
        ax2.plot(x, res.losses, "s--", color="tab:blue", label="loss", markersize=4)
        ax2.set_ylabel("held-out loss", color="tab:blue")
    ax.set_title(f"Jet bigram hit ratio ({res.path})")
    ax.grid(alpha=0.3)
    return fig


def plot_mass(res: DynamicsResult) -> Figure:
    """Fig. 4b: pseudo-joint mass Σ p(a)·P(b|a) of the top-N bigrams per checkpoint."""
    x, xl = _x(res)
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    if res.mass_own is not None:
        ax.plot(x, res.mass_own, "o-", label=f"checkpoint's own top-{res.top_n}")
    if res.mass_corpus is not None:
        ax.plot(x, res.mass_corpus, "s-", label=f"corpus's top-{res.top_n} bigrams")
    ax.set_xlabel(xl)
    ax.set_ylabel("pseudo-joint mass")
    ax.set_title(f"Jet bigram pseudo-joint mass ({res.path})")
    ax.grid(alpha=0.3)
    if res.mass_own is not None or res.mass_corpus is not None:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no corpus given", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_trajectories(res: DynamicsResult) -> Figure:
    """Fig. 5: log P(b|a) of the traced bigrams across checkpoints."""
    x, xl = _x(res)
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for key, vals in res.trajectories.items():
        ax.plot(x, vals, "o-", markersize=3, label=key)
    ax.set_xlabel(xl)
    ax.set_ylabel("log P(b | a)")
    ax.set_title(f"Promotion and suppression of jet bigrams ({res.path})")
    ax.grid(alpha=0.3)
    if res.trajectories:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def save_dynamics_figures(res: DynamicsResult, prefix: PathLike) -> list[Path]:
    """Write ``PREFIX_hit.png``, ``PREFIX_mass.png``, ``PREFIX_trajectories.png``; return the paths."""
    prefix = Path(prefix)
    out = []
    for name, fn in (("hit", plot_hit_ratio), ("mass", plot_mass), ("trajectories", plot_trajectories)):
        p = prefix.with_name(f"{prefix.name}_{name}.png")
        _write_atomic(p, _png(fn(res)))
        out.append(p)
    return out


# --------------------------------------------------------------------------- diff page
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f0f0f0} td.n{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f6f6f6;padding:0 2px} .hl{background:#ffe0b0}
h2{font-size:17px;margin-top:1.2em}
"""


def _tok(s: str) -> str:
    return html.escape(repr(s)[1:-1])


def _pair(a: str, b: str) -> str:
    return f"(<code>{_tok(a)}</code>, <code>{_tok(b)}</code>)"


def _rank(r: int | None, exact: bool) -> str:
    if r is None:
        return "?"
    return f"{r}" if exact else f"≥{r}"


def _p(p: float | None) -> str:
    return "?" if p is None else f"{p:.4f}"


def diff_html(res: DiffResult, highlight: Callable[[str, str], bool] | None = None) -> str:
    """The diff as one self-contained HTML page; ``highlight(a_text, b_text)`` marks bigrams."""
    hl = highlight or (lambda a, b: False)

    def cls(a: str, b: str) -> str:
        return ' class="hl"' if hl(a, b) else ""

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>jet bigram diff: {html.escape(res.name_a)} vs {html.escape(res.name_b)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Jet bigram diff — path <code>{html.escape(res.path)}</code></h1>",
        f"<p>A = <b>{html.escape(res.name_a)}</b>, B = <b>{html.escape(res.name_b)}</b>; tokenizer "
        f"<code>{res.tokenizer_fp}</code>; bigrams ranked by <b>{html.escape(res.score)}</b>"
        + (" (self-transitions excluded, renormalised)" if res.exclude_self else "")
        + f"; top-{res.top_n} lists from the top-{res.k} of every input token"
        + ("" if res.top_a_exact and res.top_b_exact else " (<b>not certified exact</b>)")
        + ". “≥r”: a lower bound of the rank.</p>",
    ]
    if res.identical:
        parts.append("<p><b>No difference</b>: the two bigram tables are identical.</p>")
    parts.append(f"<h2>Side by side (every {res.step}th rank, Table 5 style)</h2><table><tr><th>rank</th>"
                 f"<th>A: {html.escape(res.name_a)}</th><th>score</th><th>P</th><th>B: {html.escape(res.name_b)}</th>"
                 "<th>score</th><th>P</th></tr>")
    empty = "<td></td><td></td><td></td>"
    for r, x, y in res.side_by_side:
        cx = (f"<td{cls(x[0], x[1])}>{_pair(x[0], x[1])}</td><td class='n'>{x[3]:.3f}</td><td class='n'>{x[2]:.3f}</td>"
              if x else empty)
        cy = (f"<td{cls(y[0], y[1])}>{_pair(y[0], y[1])}</td><td class='n'>{y[3]:.3f}</td><td class='n'>{y[2]:.3f}</td>"
              if y else empty)
        parts.append(f"<tr><td class='n'>{r}</td>{cx}{cy}</tr>")
    parts.append("</table>")

    def table(title: str, rows: list[BigramDelta], limit: int = 50) -> None:
        parts.append(f"<h2>{html.escape(title)} ({len(rows)})</h2>")
        if not rows:
            parts.append("<p>none</p>")
            return
        parts.append("<table><tr><th>bigram</th><th>rank A</th><th>rank B</th><th>P A</th><th>P B</th><th>ΔP</th></tr>")
        for d in rows[:limit]:
            delta = "?" if d.delta is None else f"{d.delta:+.4f}"
            parts.append(
                f"<tr><td{cls(d.a_text, d.b_text)}>{_pair(d.a_text, d.b_text)}</td>"
                f"<td class='n'>{_rank(d.rank_a, d.rank_a_exact)}</td><td class='n'>{_rank(d.rank_b, d.rank_b_exact)}</td>"
                f"<td class='n'>{_p(d.p_a)}</td><td class='n'>{_p(d.p_b)}</td><td class='n'>{delta}</td></tr>"
            )
        parts.append("</table>")

    table(f"Entered B's top-{res.top_n}", res.entered)
    table(f"Left A's top-{res.top_n}", res.left)
    table("Largest rank gains (A → B)", res.gained)
    table("Largest rank losses (A → B)", res.lost)
    scope = "over all pairs" if res.changes_exhaustive else "over pairs both tables keep"
    table(f"Largest probability increases ({scope})", res.increases)
    table(f"Largest probability decreases ({scope})", res.decreases)
    parts.append("</body></html>")
    return "\n".join(parts)


def save_diff_html(res: DiffResult, out: PathLike, highlight: Callable[[str, str], bool] | None = None) -> Path:
    """Write :func:`diff_html` to ``out`` (atomically) and return the path."""
    p = Path(out)
    _write_atomic(p, diff_html(res, highlight).encode("utf-8"))
    return p
