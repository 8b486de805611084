"""``jetex attribute``: token attribution of a next-token prediction, and its faithfulness.

    jetex attribute "The capital of France is"                  # NormXLogit, coloured tokens
    jetex attribute "The capital of France is" --target Paris --method integrated_gradients
    jetex attribute "…" --method jetxlogit --layer mlp.14 --order 2 --html out.html
    jetex attribute --eval prompts.txt --methods normxlogit,saliency,random
    jetex attribute --eval                                       # the shipped evaluation set
"""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from jetex.cli import remote
from jetex.cli.common import common_options, emit_json, numbered, read_texts, texts_option, with_numbering
from jetex.errors import InputError, JetexError

SHIPPED = "shipped"


def _load(model: str):
    from jetex.models.load import load

    return load(model)


def _need_captum(methods: list[str]) -> None:
    """Refuse a gradient method without Captum (one line) before the model is loaded."""
    from jetex.attribution.core import GRADIENT_METHODS

    grad = [m for m in methods if m in GRADIENT_METHODS]
    if grad:
        from jetex.attribution.gradient import import_captum

        import_captum(grad[0])


def _split_spec(spec: str, layer: str | None, order: int) -> tuple[str, str | None, int]:
    """``name[@STREAM[:order]]`` -> (name, stream text or --layer, order), before the model is loaded."""
    name, _, rest = spec.strip().partition("@")
    if not rest:
        from jetex.attribution import LAYERWISE_METHODS

        return name, layer if name in LAYERWISE_METHODS else None, order
    lay, _, k = rest.partition(":")
    try:
        order = int(k) if k else order
    except ValueError:
        raise InputError(f"bad method spec {spec!r}: write name, name@STREAM or name@STREAM:order (e.g. jetxlogit@mlp.14:1)") from None
    if not lay.strip():
        raise InputError(f"bad method spec {spec!r}: the stream after @ is empty")
    return name, lay.strip(), order


def _stream(m, spec: str) -> int:
    from jetex.models.naming import resolve_stream

    return resolve_stream(m, spec, what="--layer")


def stream_name(m, l: int) -> str:
    from jetex.models.naming import stream_names

    return stream_names(m)[l]


def _method_spec(m, name: str, lay: str | None, order: int):
    """A MethodSpec whose stream index is resolved on the model, labelled with the stream's name."""
    from jetex.attribution import LAYERWISE_METHODS, MethodSpec
    from jetex.models.naming import stream_names

    if lay is None:
        return MethodSpec.parse(name, None, order)
    if name not in LAYERWISE_METHODS:
        raise InputError(f"method {name!r} takes no layer; layer-wise methods are: {', '.join(LAYERWISE_METHODS)}")
    l = _stream(m, lay)
    return MethodSpec(name, l, order, layer_name=stream_names(m)[l])


def _ratios(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) / 100 for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--ratios must be comma-separated percentages like 1,5,10,20,50; got {text!r}") from None


@with_numbering
@click.command("attribute")
@click.argument("text", required=False)
@click.option("--target", help="Target word/token to explain (default: the model's predicted next token).")
@click.option("--target-id", type=int, help="Target token id (instead of --target).")
@click.option("--method", default="normxlogit", show_default=True, help="normxlogit, logat, norm, jetxlogit, saliency, input_x_gradient, integrated_gradients, random.")
@click.option("--layer", help="Stream read by the layer-wise methods (emb, attn.N, mlp.N, final, or layer number N); required by jetxlogit.")
@click.option("--order", type=int, default=1, show_default=True, help="Jet order k of jetxlogit.")
@click.option("--steps", type=int, help="Integrated-gradients steps (default 50).")
@click.option("--baseline", type=click.Choice(["pad", "zero"]), help="Integrated-gradients baseline (default pad).")
@click.option("--seed", type=int, help="Seed of the random method (default 0).")
@click.option(
    "--eval",
    "eval_file",
    is_flag=False,
    flag_value=SHIPPED,
    default=None,
    help="Faithfulness evaluation over the prompts of FILE (one a line); bare --eval uses the shipped set.",
)
@click.option("--methods", help="Comma-separated methods for --eval; name@STREAM[:order] (e.g. jetxlogit@mlp.14:1) sets stream/order per method.")
@click.option("--limit", type=int, help="Evaluate only the first N prompts.")
@click.option("--ratios", help="Erasure ratios in percent for --eval (default 1,5,10,20,50).")
@click.option("--progress", is_flag=True, help="Also print one line per evaluated prompt on stderr (a progress bar appears anyway after ~2 s).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write a self-contained HTML page of the attribution (with --texts: FILE.i.html per text).")
@texts_option
@common_options
@remote.server_option
def attribute_cmd(text, target, target_id, method, layer, order, steps, baseline, seed, eval_file, methods, limit, ratios, progress, html_out, texts_file, model, as_json, server):
    """Attribute the next-token prediction after TEXT to its input tokens."""
    from jetex.orders import check_max_order

    check_max_order(order)  # before loading the model
    if target is not None and target_id is not None:
        raise InputError("give either --target or --target-id, not both")
    kw: dict = {}
    if steps is not None:
        kw["n_steps"] = steps
    if baseline is not None:
        kw["baseline"] = baseline

    if eval_file is not None:
        if remote.url_of(server) is not None:
            raise InputError("--eval runs on the local model: drop --server")
        if texts_file is not None:
            raise InputError("--texts attributes each text; --eval FILE evaluates faithfulness: give one of them")
        if html_out is not None:
            raise InputError("--html renders a single attribution; it does not apply to --eval")
        from jetex.attribution import MethodSpec, evaluate_faithfulness, load_prompts
        if text is not None:
            raise InputError("give either TEXT or --eval FILE, not both")
        if target is not None or target_id is not None:
            raise InputError("--target does not apply to --eval: each prompt's target is the model's own prediction")
        if limit is not None and limit < 1:
            raise InputError(f"--limit must be at least 1, got {limit}")
        path = None if eval_file == SHIPPED and not Path(SHIPPED).exists() else eval_file
        prompts = load_prompts(path)[:limit]
        names = [m for m in (methods or method).split(",") if m.strip()]
        parsed = [_split_spec(n, layer, order) for n in names]  # validate before loading the model
        for name, _, k in parsed:
            MethodSpec.parse(name, None, k)
        _need_captum([name for name, _, _ in parsed])
        erasure_ratios = _ratios(ratios) or (0.01, 0.05, 0.10, 0.20, 0.50)
        options = {"integrated_gradients": kw} if kw else {}
        if seed is not None:
            options["random"] = {"seed": seed}
        m = _load(model)
        specs = [_method_spec(m, name, lay, k) for name, lay, k in parsed]
        from jetex.progress import bar

        shown = bar(len(prompts), "faithfulness", unit="prompt")  # on stderr after ~2 s, also with --json

        def report_progress(i: int, n: int) -> None:
            shown.update(1)
            if progress:
                click.echo(f"{i}/{n} prompts", err=True)

        with shown:
            report = evaluate_faithfulness(
                m, prompts, specs, erasure_ratios,
                order=order, method_options=options, progress=report_progress,
            )
        if as_json:
            emit_json({"model": model, **report.to_dict()})
        else:
            from rich.console import Console

            from jetex.viz.attribution import report_table

            Console().print(report_table(report))
        return

    if text is not None and texts_file is not None:
        raise InputError("give either TEXT or --texts FILE, not both")
    texts = read_texts(texts_file) if texts_file is not None else None
    if text is None and texts is None:
        raise InputError("give a TEXT to attribute (or --texts FILE, or --eval FILE for the faithfulness evaluation)")
    if text is not None and not text.strip():
        raise InputError("empty text: give at least one non-blank character")
    if remote.url_of(server) is None:  # a server checks the method itself (the client imports no torch)
        from jetex.attribution import METHODS

        if method not in METHODS:
            raise InputError(f"unknown attribution method {method!r}; choose one of: {', '.join(METHODS)}")
    if methods is not None or limit is not None or ratios is not None:
        raise InputError("--methods, --limit and --ratios apply to --eval only")
    if kw and method != "integrated_gradients":
        raise InputError("--steps and --baseline apply to integrated_gradients only")
    if seed is not None:
        if method != "random":
            raise InputError("--seed applies to the random method only")
        kw["seed"] = seed
    url = remote.url_of(server)
    if url is not None:
        if texts is not None:
            raise InputError("--texts runs on the local model: drop --server")
        if html_out is not None or baseline is not None or seed is not None:
            raise InputError("--html, --baseline and --seed need the local model: drop --server")
        ctx = click.get_current_context()
        given = ctx.get_parameter_source("model") not in (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
        return remote.attribute(url, text=text, target=target, target_id=target_id, method=method, layer=layer, order=order,
                                steps=steps, model=model, model_given=given, as_json=as_json)
    _need_captum([method])
    from jetex.attribution import METHODS, attribute
    from jetex.results import write_atomic

    m = _load(model)
    stream = None if layer is None else _stream(m, layer)
    from jetex.progress import step

    with warnings.catch_warnings(record=True) as caught, step(f"{method} attribution"):
        warnings.simplefilter("always")
        attr = attribute(
            m,
            texts if texts is not None else text,
            target=target_id if target_id is not None else target,
            method=method,
            layer=stream,
            order=order,
            **kw,
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.echo(f"warning: {w.message}", err=True)
    if texts is not None:
        from jetex.viz.attribution import render_terminal, to_html

        outs = [numbered(html_out, i) for i in range(len(attr))] if html_out else [None] * len(attr)
        for a, o in zip(attr, outs):
            if o:
                write_atomic(o, to_html(a).encode("utf-8"))
        if as_json:
            emit_json({"model": model, "results": [{"text": t, **a.to_dict()} | ({"html": o} if o else {}) for t, a, o in zip(texts, attr, outs)]})
        else:
            for a, o in zip(attr, outs):
                render_terminal(a)
                if o:
                    click.echo(f"wrote {o}", err=True)
        return
    if html_out is not None:
        from jetex.viz.attribution import to_html

        write_atomic(html_out, to_html(attr).encode("utf-8"))
    if as_json:
        extra = {} if stream is None else {"stream": stream_name(m, stream)}
        emit_json({"model": model, **attr.to_dict(), **extra})
    else:
        from jetex.viz.attribution import render_terminal

        render_terminal(attr)
        if html_out is not None:
            click.echo(f"wrote {html_out}", err=True)


def register(group: click.Group) -> None:
    group.add_command(attribute_cmd)
