"""``jetex lens`` (iterative / joint jet lenses) and ``jetex paths`` (ranked jet paths)."""

from __future__ import annotations

import click

from jetex.cli import remote
from jetex.cli.common import check_result, common_options, emit_json, numbered, texts_of, texts_option, with_numbering
from jetex.errors import InputError
from jetex.orders import check_max_order


def _parse_ints(spec: str | None, what: str) -> list[int] | None:
    if spec is None or spec.strip() in ("", "all"):
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else ("-1", part[1:].split("-", 1)[1])
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InputError(f"bad {what} list {spec!r}: use e.g. 0,5,10 or 0-29") from None
    return out


def _stream_rows(m, spec: str | None) -> list[str] | None:
    """The iterative lens's rows from --layers: stream names (numbers are transformer layers)."""
    from jetex.models.naming import resolve_streams, stream_names

    idx = resolve_streams(m, spec, what="--layers entry")
    if idx is None:
        return None
    names = stream_names(m)
    return [names[l] for l in idx]


def _layer_numbers(m, spec: str | None, kind: str) -> list[int] | None:
    """--layers for the logit / tuned / Jacobian lenses: layer ends only (emb = -1, mlp.N or N = N)."""
    from jetex.models.naming import layer_ends, resolve_streams, stream_names

    idx = resolve_streams(m, spec, what="--layers entry")
    if idx is None:
        return None
    end_of = {l: n for n, l in layer_ends(m).items()}
    out = []
    for l in idx:
        if l != 0 and l not in end_of:
            raise InputError(f"the {kind} lens reads the stream at the end of a layer; {stream_names(m)[l]} is inside one "
                             "(use emb, mlp.N or a layer number)")
        out.append(-1 if l == 0 else end_of[l])
    return out


def _centres(m, spec: str) -> str | int | list[int]:
    """The joint lens's centres from --centres: blocks, layers, a count, or the streams ending each group."""
    from jetex.models.naming import resolve_streams, valid_streams_line

    key = spec.strip().lower()
    if key in ("blocks", "layers"):
        return key
    if key.isdigit():
        return int(key)
    try:
        chosen = resolve_streams(m, spec, what="--centres entry") or []
    except InputError:
        if "," in spec:
            raise
        raise InputError(f"unknown centres {spec!r}: use 'blocks', 'layers', a number of centres, or the streams "
                         f"that end each group ({valid_streams_line(m)})") from None
    ends = [l for l in chosen if l > 0]  # emb is always a centre
    return sorted(set(ends))  # the joint lens refuses groups that do not end at the final stream


def _given(param: str) -> bool:
    """Whether option ``param`` of the running command was given on the command line (not its default)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    src = ctx.get_parameter_source(param)
    return src is not None and src not in (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def _load(name: str):
    from jetex.models.load import load

    return load(name)


DTYPE_HELP = ("Model precision: float32, bfloat16 or float16. Below float32 the readout's measured error against a "
              "float32 recomputation (max |Δlogit| / max|logit| on a sample) is printed next to it and put in --json "
              "as 'precision' (docs/trust.md).")


def _dtype(dtype: str, server) -> "object":
    """The --dtype as a torch dtype (checked before loading the model); refused with --server.
    With --server (float32 only) nothing imports torch: the client stays torch-free."""
    if remote.url_of(server) is not None:
        if dtype.strip().lower().replace("torch.", "") not in ("float32", "fp32", "f32"):
            raise InputError("--dtype below float32 runs on the local model: drop --server")
        return None
    from jetex.models.dtypes import resolve_dtype  # (not jetex.ngrams: 0.4 s of imports a lens does not need)

    return resolve_dtype(dtype)


def _placed(m, dt):
    """The model in ``dt`` (the float32 model itself, or a converted copy that leaves it untouched)."""
    import torch

    if dt == torch.float32:
        return m
    from jetex.ngrams.device import place_model

    return place_model(m, dtype=dt)


LENS_HINT = "the expansion diverges or overflows here: try a lower --order or other centres"


def _check_lens(res) -> None:
    """The lens readouts (cosines, top logits) are finite, else one line (before anything is printed or written)."""
    order, kind = getattr(res, "order", None), getattr(res, "kind", "")
    what = f"the order-{order} {kind} jet lens" if order is not None else f"the {kind} lens"
    for field in ("cosine", "top_logits", "expansion_cosine"):
        value = getattr(res, field, None)
        if value is not None:
            check_result(value, f"{what} ({field.replace('_', ' ')})", LENS_HINT)


def _compute_lens(m, text, kind, order, layers, centres, optimize, top, lens_file):
    """The lens result of one text (block names resolved on the model)."""
    from jetex.lenses import iterative_lens, joint_lens

    if kind in ("logit", "tuned", "jacobian"):
        from jetex.lenses.zoo import load_fitted, zoo_lens

        fitted = load_fitted(kind, lens_file, m) if lens_file else None
        return zoo_lens(m, text, kind, lens=fitted, layers=_layer_numbers(m, layers, kind), top_k=top)
    if kind == "iterative":
        return iterative_lens(m, text, order=order, layers=_stream_rows(m, layers), top_k=top)
    return joint_lens(m, text, order=order, centres=_centres(m, centres), optimize=optimize, top_k=top)


def _print_lens(d: dict, color_by: str = "prob") -> None:
    """The lens table from :meth:`LensResult.to_dict` (the same for a local result and for the
    answer of a ``jetex serve`` server, so both print the same text)."""
    from jetex.viz.lens_text import DictLens, render_lens

    render_lens(DictLens(d), color_by=color_by)


def paths_warning(d: dict) -> str | None:
    """One line when most of the top paths are untrusted (their order-k series diverges)."""
    ranked = d["paths"]
    n_bad = sum(not r["trusted"] for r in ranked)
    if n_bad * 2 <= len(ranked):
        return None
    dist = max((r["distance"] for r in ranked if r["distance"] is not None), default=float("nan"))
    return (f"{n_bad} of the top {len(ranked)} paths are untrusted: the order-{d['order']} series along them diverges "
            f"(centre→variate distance up to {dist:.3g} ≥ 1); try --order 0")


def _print_paths(d: dict) -> None:
    """The ranked paths table from the ``jetex paths --json`` dict (local, or a server's answer)."""
    from rich.console import Console
    from rich.table import Table

    tgt_str = d["target"]["token"]
    scale = "weighted (Algorithm 2 terms)" if d["scale"] == "weighted" else "unweighted paths"
    variant = ", split by Taylor degree" if d["split_degrees"] else ""
    table = Table(title=f"top {len(d['paths'])} of {d['n_paths']} paths for {tgt_str!r} (order {d['order']}{variant}, {scale}) — {d['model']}")
    table.add_column("#", justify="right")
    table.add_column("path")
    table.add_column(f"logit[{tgt_str!r}]", justify="right")
    table.add_column("of model's", justify="right")
    table.add_column("path's own top-1")
    table.add_column("trusted")
    for i, r in enumerate(d["paths"], 1):
        share = "nan%" if r["share"] is None else f"{r['share']:+.1%}"
        dist = "nan" if r["distance"] is None else f"{r['distance']:.3g}"
        table.add_row(str(i), r["path"], f"{r['logit']:+.4g}", share, repr(r["top_token"]), "yes" if r["trusted"] else f"no (distance {dist})")
    Console().print(table)


def _lens_warning(res) -> str | None:
    """One line when the lens's main readout is dominated by divergence, remainder or cancellation."""
    d = res.diagnostics
    if d is None:
        return None
    if res.kind == "iterative":
        hint = "try a lower --order (0 or 1) and read the rows near the output (distance < 1)"
        return d.warning("cells", hint)
    hint = "try a lower --order or fewer, larger centres (--centres layers, or a number)"
    return d.warning("cells", hint)


def register(group: click.Group) -> None:
    @with_numbering
    @group.command("lens")
    @click.argument("text", required=False)
    @texts_option
    @click.option(
        "--kind",
        type=click.Choice(["iterative", "joint", "logit", "tuned", "jacobian"]),
        default="iterative",
        show_default=True,
        help="Jet lenses (iterative, joint), the logit lens, or a fitted tuned / Jacobian lens (--lens FILE).",
    )
    @click.option("--order", "-k", type=int, default=1, show_default=True, help="Jet order k (0 = logit lens).")
    @click.option("--layers", default=None, help="Iterative lens: the streams shown as rows, e.g. emb,attn.3,mlp.14,final or 0,5,10 or 0-29 (default: emb and every layer's end).")
    @click.option(
        "--centres",
        default="layers",
        show_default=True,
        help="Joint lens centres: 'blocks', 'layers', a number of centres (embedding included), "
        "or the streams that end each group, the last one final, e.g. mlp.9,mlp.19,final.",
    )
    @click.option("--optimize", is_flag=True, help="Joint lens: optimise weights per position (exact, Remark 3).")
    @click.option("--top", type=int, default=10, show_default=True, help="Top tokens kept per cell.")
    @click.option("--out", "out", default=None, help="Write the lens to FILE.png, FILE.html or FILE.json (then only a summary is printed).")
    @click.option("--lens", "lens_file", default=None, help="Tuned / Jacobian lens: the fitted lens file (`jetex lens-fit`).")
    @click.option(
        "--color-by",
        type=click.Choice(["prob", "logprob", "rank", "logit"]),
        default="prob",
        show_default=True,
        help="Cell colour: P(top-1) under the row's softmax (fixed scale 0..1, comparable across orders), its log, "
        "the rank of the model's top-1 in the row, or the raw top-1 logit.",
    )
    @click.option("--dtype", default="float32", show_default=True, help=DTYPE_HELP)
    @common_options
    @remote.server_option
    def lens_cmd(text, texts_file, kind, order, layers, centres, optimize, top, out, lens_file, color_by, dtype, model, as_json, server):
        """Read the model's computation through a jet lens, the logit lens, or a fitted tuned / Jacobian lens
        (of TEXT, or of every line of --texts FILE: one model load; with --out, FILE.i.png per text).

        Rows: emb is the embedding stream; mlp.N (attn.N) the residual stream right after
        layer N's MLP (attention) block."""
        check_max_order(order)  # before loading the model

        texts = texts_of(text, texts_file)
        if texts is not None and remote.url_of(server) is not None:
            raise InputError("--texts runs on the local model: drop --server")

        if top < 1:
            raise InputError("--top must be >= 1")
        if kind == "iterative" and optimize:
            raise InputError("--optimize applies to the joint lens only")
        if kind == "joint" and layers is not None:
            raise InputError("--layers applies to the iterative lens only; the joint lens takes --centres (blocks, layers or a number)")
        if kind == "iterative" and _given("centres"):
            raise InputError("--centres applies to the joint lens only (--kind joint); the iterative lens takes --layers")
        if kind in ("tuned", "jacobian") and lens_file is None:
            raise InputError(f"--kind {kind} needs --lens FILE (fit one with `jetex lens-fit --kind {kind}`)")
        if lens_file is not None and kind not in ("tuned", "jacobian"):
            raise InputError("--lens applies to --kind tuned or --kind jacobian")
        if kind in ("logit", "tuned", "jacobian") and (_given("order") or optimize):
            raise InputError(f"--order and --optimize apply to the jet lenses, not to the {kind} lens")
        dt = _dtype(dtype, server)
        if kind not in ("iterative", "joint") and _given("dtype"):
            raise InputError(f"--dtype applies to the jet lenses (iterative, joint), not to the {kind} lens")
        url = remote.url_of(server)
        if url is not None:
            if kind not in ("iterative", "joint"):
                raise InputError(f"--server serves the jet lenses (iterative, joint); run the {kind} lens locally")
            return remote.lens(url, text=text, kind=kind, order=order, layers=layers, centres=centres, centres_given=_given("centres"),
                               optimize=optimize, top=top, out=out, model=model, model_given=_given("model"), as_json=as_json,
                               printer=lambda d: _print_lens(d, color_by))
        from jetex.progress import step

        m32 = _load(model)
        m = _placed(m32, dt)
        with step(f"{kind} lens" + (f" of order {order}" if kind in ("iterative", "joint") else "")):
            if texts is not None and kind in ("logit", "tuned", "jacobian"):
                from jetex.results import ResultList

                res = ResultList(_compute_lens(m, x, kind, order, layers, centres, optimize, top, lens_file) for x in texts)
            else:
                res = _compute_lens(m, texts if texts is not None else text, kind, order, layers, centres, optimize, top, lens_file)
        for r in (res if texts is not None else [res]):
            _check_lens(r)  # every readout, before anything is printed or written
        precision = None
        if m is not m32:  # reduced precision: the readout's measured error against float32, next to it
            from jetex.apps.precision import lens_error

            with step(f"measuring the {dtype} error against float32"):
                precision = [lens_error(m, m32, r.input_ids[None], kind, order, layers=_stream_rows(m32, layers),
                                        centres=_centres(m32, centres), optimize=optimize, n_rows=len(r.row_names))
                             for r in (res if texts is not None else [res])]
        if texts is not None:
            from jetex.viz.lens import save_lens
            from jetex.viz.lens_text import lens_summary

            outs = [numbered(out, i) for i in range(len(res))] if out else [None] * len(res)
            for i, (r, o) in enumerate(zip(res, outs)):
                if o:
                    save_lens(r, o, color_by=color_by)
                warn = _lens_warning(r)
                if warn:
                    click.echo(f"warning: text {i + 1}: {warn}", err=True)
            precs = precision or [None] * len(res)
            if as_json:
                emit_json({"model": m.name, "results": [{"text": t, **r.to_dict()} | ({"out": o} if o else {})
                                                        | ({"precision": p.to_dict()} if p else {})
                                                        for t, r, o, p in zip(texts, res, outs, precs)]})
            else:
                for r, o, p in zip(res, outs, precs):
                    if o:
                        click.echo(lens_summary(r, o))
                    else:
                        _print_lens(r.to_dict(), color_by)
                    if p:
                        click.echo(p.line())
            return
        if out:
            from jetex.viz.lens import save_lens

            save_lens(res, out, color_by=color_by)
        warn = _lens_warning(res)
        if warn:
            click.echo(f"warning: {warn}", err=True)
        if as_json:
            emit_json(res.to_dict() | ({"out": out} if out else {}) | ({"precision": precision[0].to_dict()} if precision else {}))
            return
        if out:
            from jetex.viz.lens_text import lens_summary

            click.echo(lens_summary(res, out))
        else:
            _print_lens(res.to_dict(), color_by)
        if precision:
            click.echo(precision[0].line())

    @with_numbering
    @group.command("paths")
    @click.argument("text", required=False)
    @texts_option
    @click.option("--order", "-k", type=int, default=1, show_default=True)
    @click.option("--use", "must_use", default="", help="Blocks every path must go through (names or kinds, comma-separated).")
    @click.option("--avoid", default="", help="Blocks (or kinds: attn, mlp) paths must avoid.")
    @click.option("--max-len", type=int, default=2, show_default=True, help="Longest path (number of blocks).")
    @click.option("--min-len", type=int, default=0, show_default=True)
    @click.option("--token", default=None, help="Rank by this token's logit (default: the model's prediction).")
    @click.option("--position", type=int, default=-1, show_default=True)
    @click.option("--top", "-n", type=int, default=10, show_default=True)
    @click.option("--limit", type=int, default=5000, show_default=True, help="Refuse to evaluate more paths than this.")
    @click.option(
        "--split-degrees",
        "--super",
        "split_degrees",
        is_flag=True,
        help="Super-exponential expansion (order >= 1): split every jet into its Taylor degrees; path steps read block[j].",
    )
    @click.option(
        "--degrees",
        default=None,
        help="With --split-degrees: Taylor degrees a path may take at each block and at the decoder, e.g. 0 or 0,1 (default: all).",
    )
    @click.option(
        "--weighted",
        is_flag=True,
        help="Rank by Algorithm 2's weighted terms (the summands of Eq. 11, ~2^-L each) instead of the unweighted paths.",
    )
    @click.option("--dtype", default="float32", show_default=True, help=DTYPE_HELP)
    @common_options
    @remote.server_option
    def paths_cmd(text, texts_file, order, must_use, avoid, max_len, min_len, token, position, top, limit, split_degrees, degrees, weighted, dtype, model,
                  as_json, server):
        """Rank input-to-output jet paths (Algorithm 2) by their logit for the predicted token
        (after TEXT, or after every line of --texts FILE with one model load).

        The scale is the unweighted path (its own jets composed, every 1/|ξ| weight set to 1);
        --weighted ranks Algorithm 2's terms, which all shrink like 2^-L. docs/trust.md."""
        texts = texts_of(text, texts_file)
        if texts is not None and remote.url_of(server) is not None:
            raise InputError("--texts runs on the local model: drop --server")

        check_max_order(order)  # before loading the model
        if top < 1:
            raise InputError("--top must be >= 1")
        if degrees is not None and not split_degrees:
            raise InputError("--degrees filters the super-exponential expansion: add --split-degrees")
        if split_degrees and order == 0:
            raise InputError("--split-degrees needs --order >= 1 (an order-0 jet has a single degree)")
        degs = _parse_ints(degrees, "degree") if degrees is not None else None  # None: every degree ("all")
        dt = _dtype(dtype, server)
        url = remote.url_of(server)
        if url is not None and weighted:
            raise InputError("--weighted is not available with --server; run the command locally")
        if url is not None:
            return remote.paths(url, text=text, order=order, must_use=must_use, avoid=avoid, max_len=max_len, min_len=min_len,
                                token=token, position=position, top=top, split_degrees=split_degrees, degrees=degrees,
                                model=model, model_given=_given("model"), as_json=as_json, printer=_print_paths,
                                warning=paths_warning)
        from jetex.expand import PathFilter, exp_jet_expansion

        m32 = _load(model)
        m = _placed(m32, dt)
        all_ids = [m.tokenize(x) for x in (texts if texts is not None else [text])]
        for x, ids in zip(texts or [text], all_ids):
            t = ids.shape[-1]
            if not -t <= position < t:
                raise InputError(f"position {position} out of range for {t} tokens" + (f" of {x!r}" if texts else ""))
        from jetex.models.naming import resolve_blocks

        flt = PathFilter(
            must_use=tuple(resolve_blocks(m, must_use, what="block", kinds=True)),
            avoid=tuple(resolve_blocks(m, avoid, what="block", kinds=True)),
            min_len=min_len,
            max_len=max_len,
            degrees=tuple(degs) if degs is not None else None,
        )
        pe = exp_jet_expansion(m, order, split_degrees=split_degrees)
        n = pe.count(flt)
        if n == 0:
            raise InputError("no path matches these filters")
        if n > limit:
            raise InputError(f"{n} paths match; narrow the filters (--max-len, --use, --avoid) or raise --limit")
        tok_id = None
        if token is not None:
            enc = m.tokenizer(token, add_special_tokens=False)["input_ids"]
            if not enc:
                raise InputError(f"token {token!r} is empty after tokenization")
            if len(enc) > 1:
                pieces = ", ".join(repr(p) for p in m.token_strings(enc))
                raise InputError(
                    f"--token {token!r} is {len(enc)} tokens ({pieces}); give a single token, e.g. {m.token_strings(enc[:1])[0]!r}"
                )
            tok_id = enc[0]
        chosen = list(pe.paths(flt))
        from jetex.progress import step

        with step(f"evaluating {n} paths" + (f" on {len(all_ids)} texts" if len(all_ids) > 1 else "")):
            rankings = [pe.rank(ids, chosen, token=tok_id, position=position, top=top, weighted=weighted, progress=True) for ids in all_ids]
        head = {"model": m.name, "order": order, "split_degrees": split_degrees, "degrees": degs, "scale": "weighted" if weighted else "unweighted"}
        payloads = []
        for ids, ranked in zip(all_ids, rankings):
            check_result([r.logit for r in ranked], f"the order-{order} path contributions", LENS_HINT)
            payload = head | {"target": {"id": ranked[0].token, "token": ranked[0].token_str}, "n_paths": n,
                              "paths": [p.to_dict() for p in ranked]}
            if m is not m32:  # reduced precision: the shown paths' measured error against float32, next to them
                from jetex.apps.precision import paths_error

                pe32 = exp_jet_expansion(m32, order, split_degrees=split_degrees)
                with step(f"measuring the {dtype} error against float32"):
                    payload["precision"] = paths_error(pe, pe32, ids, [r.path for r in ranked], position=position,
                                                       weighted=weighted).to_dict()
            warn = paths_warning(payload)
            if warn:
                click.echo(f"warning: {warn}", err=True)
            payloads.append(payload)
        if as_json:
            if texts is None:
                emit_json(payloads[0])
            else:
                keys = ("target", "n_paths", "paths", "precision")
                emit_json(head | {"n_paths": n, "results": [{"text": x} | {k: p[k] for k in keys if k in p} for x, p in zip(texts, payloads)]})
            return
        for payload in payloads:
            _print_paths(payload)
            if "precision" in payload:
                from jetex.apps.precision import MeasuredError

                click.echo(MeasuredError.from_dict(payload["precision"]).line())
