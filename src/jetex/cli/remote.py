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


def lens(url: str, *, text: str, kind: str, order: int, layers: str | None, centres: str, centres_given: bool,
         optimize: bool, top: int, out: str | None, model: str, model_given: bool, as_json: bool, printer) -> None:
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
    answer = call(url, "/api/lens", body)
    if answer.get("warning"):
        click.echo(f"warning: {answer['warning']}", err=True)
    if as_json:
        emit_json(answer["result"])
    else:
        printer(answer["result"])


PATHS_KEYS = ("model", "order", "split_degrees", "degrees", "scale", "target", "n_paths", "paths")


def paths(url: str, *, text: str, order: int, must_use: str, avoid: str, max_len: int, min_len: int, token: str | None,
          position: int, top: int, split_degrees: bool, degrees: str | None, model: str, model_given: bool, as_json: bool,
          printer, warning) -> None:
    body = {"model": _model(model, model_given), "text": text, "order": order, "use": must_use, "avoid": avoid,
            "max_len": max_len, "min_len": min_len, "token": token, "position": position, "top": top,
            "split_degrees": split_degrees, "degrees": degrees}
    d = call(url, "/api/paths", body)
    d = {k: d[k] for k in PATHS_KEYS}
    line = warning(d)
    if line:
        click.echo(f"warning: {line}", err=True)
    if as_json:
        emit_json(d)
    else:
        printer(d)


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


def attribute(url: str, *, text: str, target: str | None, target_id: int | None, method: str, layer: str | None, order: int,
              steps: int | None, model: str, model_given: bool, as_json: bool) -> None:
    body = {"model": _model(model, model_given), "text": text, "method": method, "target": target, "target_id": target_id,
            "layer": layer, "order": order, "steps": steps, "candidates": 0}
    d = call(url, "/api/attribute", body)
    for w in d.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    if as_json:
        emit_json({"model": model, **d["attribution"], **({"stream": d["stream"]} if d.get("stream") else {})})
    else:
        print_attribution_dict(d["attribution"])
