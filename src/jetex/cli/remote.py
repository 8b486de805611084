"""``--server URL``: predict / lens / paths / attribute answered by a running ``jetex serve``.

The command sends its options to the server's JSON API (:mod:`jetex.serve.client`, standard
library only) and prints the answer the way the local command does, ``--json`` included.
Nothing here imports torch or loads a model.
"""

from __future__ import annotations

from typing import Any

import click

from jetex.cli.common import emit_json
from jetex.errors import InputError
from jetex.serve.client import ENV, call, server_url

server_option = click.option(
    "--server",
    default=None,
    metavar="URL",
    help=f"Send the request to a running `jetex serve` at URL (or ${ENV}); no model is loaded here.",
)


def url_of(server: str | None) -> str | None:
    """The server URL to use, or None to compute locally."""
    return server_url(server)


def _model(model: str, given: bool) -> str | None:
    # the server's default model unless --model was given explicitly
    return model if given else None


def _cells_logit(d: dict, r: int, i: int) -> float:
    lg = d["cells"][r][i]["logits"]
    return float(lg[0]) if lg else 0.0


def print_lens_dict(d: dict) -> None:
    """The lens table, from a :meth:`LensResult.to_dict` (the local command prints the same)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = f"{d['kind']} jet lens, order {d['order']}" + (" (optimised weights)" if d["optimized"] else "") + f" — {d['model']}"
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("row", style="bold")
    for tok in d["tokens"]:
        table.add_column(repr(tok)[1:-1][:10], overflow="fold")
    table.add_column("cos", justify="right")
    for r, name in enumerate(d["rows"]):
        row = [name]
        for i in range(len(d["tokens"])):
            top = d["cells"][r][i]["top"]
            tok = top[0] if top else ""
            colour = "red" if _cells_logit(d, r, i) > 0 else "blue"
            row.append(f"[{colour}]{repr(tok)[1:-1][:10]}[/{colour}]")
        row.append(f"{float(d['mean_cosine'][r]):+.3f}")
        table.add_row(*row)
    table.add_section()
    table.add_row("model", *[repr(t)[1:-1][:10] for t in d["model_top"]], "")
    if d["kind"] == "joint":
        ec = d["expansion_cosine"]
        table.add_row("expansion", *[repr(t)[1:-1][:10] for t in d["expansion_top"]], f"{sum(ec) / len(ec):+.3f}")
    console.print(table)


def lens(url: str, *, text: str, kind: str, order: int, layers: str | None, centres: str, centres_given: bool,
         optimize: bool, top: int, out: str | None, model: str, model_given: bool, as_json: bool) -> None:
    if out:
        raise InputError("--out writes files from the local model: drop --server (or use --json and save the output)")
    body: dict[str, Any] = {"model": _model(model, model_given), "text": text, "kind": kind, "order": order, "top": top,
                            "probabilities": False}
    if kind == "iterative":
        if layers is not None:
            body["layers"] = layers
    else:
        body["centres"] = centres
        body["optimize"] = optimize
    res = call(url, "/api/lens", body)["result"]
    if as_json:
        emit_json(res)
    else:
        print_lens_dict(res)


PATHS_KEYS = ("model", "order", "split_degrees", "degrees", "target", "n_paths", "paths")


def print_paths_dict(d: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    tgt = d["target"]["token"]
    variant = ", split by Taylor degree" if d["split_degrees"] else ""
    table = Table(title=f"top {len(d['paths'])} of {d['n_paths']} paths for {tgt!r} (order {d['order']}{variant}) — {d['model']}")
    table.add_column("#", justify="right")
    table.add_column("path")
    table.add_column(f"logit[{tgt!r}]", justify="right")
    table.add_column("path's own top-1")
    for i, r in enumerate(d["paths"], 1):
        table.add_row(str(i), r["path"], f"{r['logit']:+.3f}", repr(r["top_token"]))
    Console().print(table)


def paths(url: str, *, text: str, order: int, must_use: str, avoid: str, max_len: int, min_len: int, token: str | None,
          position: int, top: int, split_degrees: bool, degrees: str | None, model: str, model_given: bool, as_json: bool) -> None:
    body = {"model": _model(model, model_given), "text": text, "order": order, "use": must_use, "avoid": avoid,
            "max_len": max_len, "min_len": min_len, "token": token, "position": position, "top": top,
            "split_degrees": split_degrees, "degrees": degrees}
    d = call(url, "/api/paths", body)
    d = {k: d[k] for k in PATHS_KEYS}
    if as_json:
        emit_json(d)
    else:
        print_paths_dict(d)


def predict(url: str, *, text: str, top: int, model: str, model_given: bool, as_json: bool, printer) -> None:
    d = call(url, "/api/predict", {"model": _model(model, model_given), "text": text, "top": top})
    d.pop("timing", None)
    if as_json:
        emit_json(d)
    else:
        printer(d)


def _display_token(tok: str) -> str:
    t = tok.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "")
    return t if t else "∅"


def print_attribution_dict(a: dict, top: int = 5) -> None:
    """The coloured tokens and the top-scoring ones, from an :meth:`Attribution.to_dict`
    (the same rendering as :func:`jetex.viz.attribution.render_terminal`)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    opts = ", ".join(f"{k}={v}" for k, v in a["options"].items())
    console.print(Text(f"{a['method']}{f' ({opts})' if opts else ''} → target {a['target']!r} (id {a['target_id']})", style="bold"))
    s = a["scores"]
    start = 1 if a["bos"] else 0
    rest = s[1 if a["bos"] and len(s) > 1 else 0:]
    scale = max((abs(x) for x in rest), default=0.0) or 1.0
    out = Text()
    for tok, v in zip(a["tokens"], s):
        alpha = min(1.0, abs(v) / scale)
        base = (214, 39, 40) if v > 0 else (31, 119, 180)
        rgb = tuple(round(255 + (c - 255) * alpha) for c in base)
        ink = "black" if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else "white"
        out.append(_display_token(tok), style=f"{ink} on rgb({rgb[0]},{rgb[1]},{rgb[2]})")
    console.print(out)
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for c, j in (("rank", "right"), ("pos", "right"), ("token", "left"), ("score", "right")):
        table.add_column(c, justify=j)  # type: ignore[arg-type]
    ranking = sorted(range(start, len(s)), key=lambda i: (-s[i], i))
    for r, i in enumerate(ranking[:top], 1):
        table.add_row(str(r), str(i), repr(a["tokens"][i]), f"{s[i]:+.4g}")
    console.print(table)
    if "convergence_delta" in a.get("extras", {}):
        console.print(f"integrated-gradients convergence delta: {a['extras']['convergence_delta']:+.3g}")


def attribute(url: str, *, text: str, target: str | None, target_id: int | None, method: str, layer: int | None, order: int,
              steps: int | None, model: str, model_given: bool, as_json: bool) -> None:
    body = {"model": _model(model, model_given), "text": text, "method": method, "target": target, "target_id": target_id,
            "layer": layer, "order": order, "steps": steps, "candidates": 0}
    d = call(url, "/api/attribute", body)
    for w in d.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    if as_json:
        emit_json({"model": model, **d["attribution"]})
    else:
        print_attribution_dict(d["attribution"])
