"""``jetex lens-fit`` (tuned / Jacobian lens), ``jetex lens-merge`` and ``jetex lens-eval``."""

from __future__ import annotations

import click

from jetex.cli.common import common_options, emit_json
from jetex.errors import InputError


def _load(name: str):
    from jetex.models.load import load

    return load(name)


def _slice(spec: str | None, n: int) -> range:
    if spec is None:
        return range(n)
    try:
        a, b = (int(x) if x else None for x in spec.split(":", 1))
    except ValueError:
        raise InputError(f"bad --slice {spec!r}: use START:STOP, e.g. 0:50") from None
    r = range(n)[slice(a, b)]
    if len(r) == 0:
        raise InputError(f"--slice {spec} selects no window of the {n} fit windows")
    return r


def register(group: click.Group) -> None:
    @group.command("lens-fit")
    @click.option("--kind", type=click.Choice(["tuned", "jacobian"]), required=True)
    @click.option("--out", "out", required=True, help="Lens file (safetensors). An existing one from the same fit is resumed.")
    @click.option("--corpus", default="stdlib-docs", show_default=True, help="A UTF-8 text file or 'stdlib-docs'.")
    @click.option("--tokens", type=int, default=32, show_default=True, help="Window length in tokens (BOS included).")
    @click.option("--prompts", type=int, default=None, help="Use at most this many fit windows (after --slice).")
    @click.option("--slice", "slice_", default=None, help="Jacobian: fit windows START:STOP of the seeded order (merge disjoint slices later).")
    @click.option("--steps", type=int, default=100, show_default=True, help="Tuned: Adam steps.")
    @click.option("--batch", type=int, default=4, show_default=True, help="Tuned: windows per step.")
    @click.option("--lr", type=float, default=1e-3, show_default=True, help="Tuned: Adam learning rate.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Order of the fit windows (and of the batches).")
    @click.option("--time-budget", type=float, default=None, help="Stop after this many seconds (the file holds the fit so far).")
    @click.option("--snapshots", default="", help="Jacobian: keep copies OUT.n<k> after k windows, e.g. 1,2,4,8.")
    @common_options
    def fit_cmd(kind, out, corpus, tokens, prompts, slice_, steps, batch, lr, seed, time_budget, snapshots, model, as_json):
        """Fit a tuned lens or a Jacobian lens on a local corpus (checkpointed, resumable)."""
        from jetex.apps.lens_eval import corpus_windows

        if kind == "tuned" and slice_ is not None:
            raise InputError("--slice applies to the Jacobian lens (its fits of disjoint slices merge)")
        if prompts is not None and prompts < 1:
            raise InputError("--prompts must be >= 1")
        snaps = [int(x) for x in snapshots.split(",") if x.strip()] if snapshots else []
        m = _load(model)
        win, settings = corpus_windows(m, corpus, tokens, split="fit", seed=seed)
        idx = _slice(slice_, win.shape[0])
        if prompts is not None:
            idx = idx[:prompts]
        sel = win[list(idx)]

        def progress(i, n, dt):
            if not as_json:
                click.echo(f"{kind}: {i}/{n}  {dt:.1f} s", err=True)

        if kind == "jacobian":
            from jetex.lenses.jacobian import fit_jacobian_lens

            lens = fit_jacobian_lens(m, sel, indices=list(idx), settings=settings, checkpoint=out, snapshots=snaps, time_budget=time_budget, progress=progress)
            summary = {"kind": kind, "out": out, "prompts": len(lens.prompts), "sources": lens.n_sources, "seconds": round(lens.seconds, 2),
                       "seconds_per_prompt": round(lens.seconds / max(1, len(lens.prompts)), 2), "tokens": tokens}
        else:
            from jetex.lenses.tuned import fit_tuned_lens

            lens = fit_tuned_lens(m, sel, steps=steps, batch=batch, lr=lr, seed=seed, settings=settings, checkpoint=out, time_budget=time_budget, progress=progress)
            summary = {"kind": kind, "out": out, "steps": lens.steps, "loss_first": lens.losses[0] if lens.losses else None,
                       "loss_last": lens.losses[-1] if lens.losses else None, "seconds": round(lens.seconds, 2), "tokens": tokens}
        if as_json:
            emit_json(summary)
        else:
            click.echo(" ".join(f"{k}={v}" for k, v in summary.items()))

    @group.command("lens-merge")
    @click.argument("inputs", nargs=-1, required=True)
    @click.option("--out", "out", required=True, help="The merged Jacobian lens file.")
    def merge_cmd(inputs, out):
        """Merge Jacobian-lens fits of disjoint corpus slices into one lens (sums and counts add)."""
        from jetex.lenses.jacobian import JacobianLens

        if len(inputs) < 2:
            raise InputError("give at least two fits to merge")
        lens = JacobianLens.load(inputs[0])
        for p in inputs[1:]:
            lens = lens.merge(JacobianLens.load(p))
        lens.save(out)
        click.echo(f"merged {len(inputs)} fits: {len(lens.prompts)} windows, {lens.n_sources} sources -> {out}")

    @group.command("lens-eval")
    @click.option("--tuned", "tuned_file", default=None, help="A fitted tuned lens file.")
    @click.option("--jacobian", "jacobian_file", default=None, help="A fitted Jacobian lens file.")
    @click.option("--corpus", default="stdlib-docs", show_default=True, help="Held-out windows come from this corpus (every 10th window).")
    @click.option("--tokens", type=int, default=32, show_default=True)
    @click.option("--windows", "n_windows", type=int, default=20, show_default=True, help="Held-out windows evaluated.")
    @click.option("--orders", default="1", show_default=True, help="Orders of the iterative jet lens (>= 1; order 0 is the logit lens).")
    @click.option("--prompt-set", "prompt_file", default=None, help="JSON prompt sets (default: the project's sets).")
    @click.option("--sets", default=None, help="Only these sets, comma-separated.")
    @click.option("--out", "out", default=None, help="Write the full tables to FILE.json.")
    @common_options
    def eval_cmd(tuned_file, jacobian_file, corpus, tokens, n_windows, orders, prompt_file, sets, out, model, as_json):
        """Compare lenses per layer: KL to the model, top-1 agreement, rank; pass@k of intermediate concepts."""
        from jetex.apps.lens_eval import corpus_windows, default_specs, eval_concepts, eval_heldout, load_concepts
        from jetex.lenses.zoo import load_fitted

        if n_windows < 1:
            raise InputError("--windows must be >= 1")
        try:
            ords = [int(x) for x in orders.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"bad --orders {orders!r}: use e.g. 1,2") from None
        if any(k < 1 for k in ords):
            raise InputError("--orders lists jet orders >= 1 (the logit lens is always included)")
        items = load_concepts(prompt_file, sets.split(",") if sets else None)
        m = _load(model)
        tuned = load_fitted("tuned", tuned_file, m) if tuned_file else None
        jac = load_fitted("jacobian", jacobian_file, m) if jacobian_file else None
        specs = default_specs(m, tuned, jac, ords)
        win, settings = corpus_windows(m, corpus, tokens, split="eval")
        held = eval_heldout(m, win[:n_windows], specs, settings)
        conc = eval_concepts(m, items, specs)
        report = {"heldout": held.to_dict(), "concepts": conc.to_dict()}
        if out:
            import json

            from jetex.results import write_atomic

            write_atomic(out, json.dumps(report, indent=1).encode("utf-8"))
        for d in conc.dropped:
            click.echo(f"dropped ({d['set']}): {d['prompt']!r}: {d['reason']}", err=True)
        if as_json:
            emit_json(report)
            return
        _print_eval(held, conc, specs)
        if out:
            click.echo(f"wrote {out}")


def _print_eval(held, conc, specs) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    names = [s.name for s in specs]
    t = Table(title=f"held-out text: KL(model ‖ lens) nats / top-1 agreement — {held.model_name}, {held.n_tokens} tokens")
    t.add_column("layer", style="bold")
    for s in specs:
        t.add_column(s.name + (" (reads h_L)" if s.reads_final else ""), justify="right")
    by = {(r["lens"], r["row"]): r for r in held.table}
    for row in held.rows:
        t.add_row(row, *[f"{by[(n, row)]['kl']:.2f} / {by[(n, row)]['top1']:.2f}" for n in names])
    console.print(t)
    b = Table(title=f"two-hop prompts: best layer per lens ({conc.n_items} items, {len(conc.dropped)} dropped; model's own target@1 {conc.model_target_at1:.2f})")
    b.add_column("lens", style="bold")
    for k in ("int@1", "int@5", "int@10", "tgt@1", "tgt@5", "tgt@10"):
        b.add_column(k, justify="right")
    best = {(r["lens"], r["metric"]): r for r in conc.best}
    for n in names:
        b.add_row(n, *[f"{best[(n, k)]['value']:.2f} ({best[(n, k)]['layer']})" for k in ("int@1", "int@5", "int@10", "tgt@1", "tgt@5", "tgt@10")])
    console.print(b)
    shares = [r for r in held.table if r["own_share"] is not None]
    if shares:
        console.print("lenses reading h_L: mean share of the readout that is the model's own output q(z): " + ", ".join(
            f"{n} {sum(r['own_share'] for r in shares if r['lens'] == n) / max(1, sum(1 for r in shares if r['lens'] == n)):.2f}"
            for n in names if any(r["lens"] == n for r in shares)))
