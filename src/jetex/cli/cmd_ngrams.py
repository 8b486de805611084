"""``jetex ngrams``: extract, browse and export jet n-grams (bigrams and skip-trigrams)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import click

from jetex.cli.common import address_option, common_options, cpus_per_worker_option, emit_json, json_option
from jetex.errors import InputError

PATH_HELP = (
    "Path to evaluate (repeatable): direct, mlp:N (block mlp.N; 'mlp.N' works too), mlp:N,M (chain), mlp:all, "
    "mlps (mean of the mlp:N), attn-free, attn:L.H (skip-trigrams of head H of block attn.L), attn:L or attn.L "
    "(every head of layer L), attn (every head of the first attention layer). N, L: 0-based transformer layers."
)


def _show(s: object) -> str:
    """A token string made visible (spaces, newlines, control characters) for rich tables."""
    from jetex.viz.text import cell

    return cell(repr(str(s))[1:-1])


SCORE_HELP = ("How bigrams are ranked: logprob (log P(b|a)), logit (logit centred per input), zlogit (centred logit / "
              "its row's spread), pmi (log P(b|a) − log mean_a' P(b|a')), zpmi (pmi of the z-scored logits: "
              "log softmax(zlogit)(b) − log its mean over inputs). Default: zpmi, the measured default, "
              "see docs/ngram_scores.md.")


def _score_default(score: str | None) -> str:
    from jetex.ngrams.scores import DEFAULT_SCORE, check_score

    return check_score(DEFAULT_SCORE if score is None else score)


def _fidelity_line(fid: dict | None) -> str:
    if not fid:
        return "fidelity: not computed"
    return (f"fidelity vs model after {fid['context']} ({fid['sample_size']} of {fid['n_inputs']} inputs): "
            f"KL {fid['mean_kl']:.3f} nats, top-1 agreement {fid['top1_agreement']:.1%}, top-10 overlap {fid['top10_agreement']:.1%}")


def _run_header(run: dict, fid: dict | None) -> str:
    stats = json.loads(run["stats"] or "{}")
    head = (f"{run['path']} — {run['description']}\n{run['model_name']}, order {run['order']}, K={run['top_k']}, "
            f"{run['n_inputs']} inputs" + (", self-transitions excluded" if run["exclude_self"] else ""))
    if run["kind"] == "bigram":
        head += f", self-transition rate {stats.get('self_transition_rate', 0.0):.1%}\n" + _fidelity_line(fid)
    return head


def _pick_runs(store, path: str | None, run_id: int | None, score: str | None = None) -> list[dict]:
    if run_id is not None:
        run = store.run(run_id)
        return [run]
    runs = store.runs(status="done")
    if score is not None:  # a run ranked by the asked score wins over the latest run of the path
        runs = sorted(runs, key=lambda r: (store.run_score(r) in (score, "trigram"), r["run_id"]))
    if not runs:
        raise InputError(f"{store.path} has no finished run yet; run `jetex ngrams extract` first")
    if path is not None:
        from jetex.ngrams.paths import canonical_spec

        want = canonical_spec(path)
        if want == "attn":  # the heads of the first attention layer, as in `extract --path attn`
            layers = sorted({int(m.group(1)) for r in runs if (m := re.fullmatch(r"attn:(\d+)\.\d+", r["path"]))})
            if layers:
                want = f"attn:{layers[0]}"
        sel = [r for r in runs if r["path"] == want or (want.startswith("attn:") and "." not in want and r["path"].startswith(want + "."))]
        if not sel:
            have = sorted({r["path"] for r in runs})
            raise InputError(f"no finished run of path {path!r} in {store.path}; it has: {', '.join(have)}")
        runs = sel
    latest: dict[str, dict] = {}
    for r in runs:
        latest[r["path"]] = r  # runs are ordered (by score match, then id): keep the best per path
    return sorted(latest.values(), key=lambda r: r["run_id"])


def register(group: click.Group) -> None:
    @group.group("ngrams")
    def ngrams() -> None:
        """Jet n-grams: data-free bigram and skip-trigram statistics (paper Sec. 4), in a DuckDB file."""

    @ngrams.command("extract")
    @common_options
    @click.option("--path", "paths", multiple=True, default=("direct",), show_default=True, help=PATH_HELP)
    @click.option("--top", "top_k", type=int, default=10, show_default=True, help="K: next tokens kept per input token (trigrams: per head).")
    @click.option("--db", required=True, type=click.Path(dir_okay=False), help="DuckDB file to create or extend.")
    @click.option("--order", "-k", type=int, default=0, show_default=True, help="Jet order k of the bigram paths.")
    @click.option("--exclude-self/--keep-self", "exclude_self", default=True, show_default=True,
                  help="Drop the self-transition t → t and renormalise over the other tokens (the default), or keep it.")
    @click.option("--score", "score", default=None, help=SCORE_HELP)
    @click.option("--limit-vocab", type=int, default=None, help="Only input tokens 0..N-1 (trigrams: a, b, c < N), for quick runs.")
    @click.option("--global-top", type=int, default=100, show_default=True, help="N of the global top (input, output) pairs (0: none).")
    @click.option("--batch-size", type=int, default=None, help="Input tokens per batch (default: fits a 192 MiB logits buffer).")
    @click.option("--fidelity-sample", type=int, default=1024, show_default=True, help="Inputs for the fidelity report (0: skip, -1: all).")
    @click.option("--redo", is_flag=True, help="Recompute runs that are already finished.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress on stderr (it is on by default, also with --json).")
    @click.option("--device", default="cpu", show_default=True, help="Where to evaluate: cpu, cuda (or cuda:N), auto (cuda if available).")
    @click.option("--dtype", default="float32", show_default=True, help="Evaluation precision: float32, bfloat16 or float16 "
                  "(below float32 the difference to float32 is measured on a sample and stored with the run).")
    @click.option("--precision-sample", type=int, default=256, show_default=True, help="Inputs for the precision report (0: skip).")
    @click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                  help="local: this process; ray: shards on Ray workers (pip install 'jetex[ray]'), one writer here.")
    @address_option
    @click.option("--workers", type=int, default=None, help="Ray workers (actors), each loading the model once (default: one per CPU, or per GPU).")
    @cpus_per_worker_option
    @click.option("--shard-batches", type=int, default=1, show_default=True, help="Engine batches per Ray task.")
    @click.option("--retries", type=int, default=3, show_default=True, help="Restarts of a dying Ray worker (and retries of its shard) before stopping.")
    def extract(model, as_json, paths, top_k, db, order, exclude_self, score, limit_vocab, global_top, batch_size,
                fidelity_sample, redo, quiet, device, dtype, precision_sample, backend, address, workers, cpus_per_worker,
                shard_batches, retries) -> None:
        """Evaluate n-gram paths on the whole vocabulary and store them (resumable: rerun to continue)."""
        from jetex.models.load import load
        from jetex.ngrams.extract import extract_ngrams
        from jetex.ngrams.paths import parse_paths

        from jetex.orders import check_max_order

        check_max_order(order)  # before loading the model
        if fidelity_sample is not None and fidelity_sample < -1:
            raise InputError(f"--fidelity-sample must be -1 (all), 0 (skip) or positive, got {fidelity_sample}")
        if precision_sample < 0:
            raise InputError(f"--precision-sample must be 0 (skip) or positive, got {precision_sample}")
        if address is not None and backend != "ray":
            raise InputError("--address needs --backend ray")
        from jetex.ngrams.device import resolve_device, resolve_dtype

        resolve_dtype(dtype)
        score = _score_default(score)
        if backend == "local":
            resolve_device(device)  # refuse --device cuda without CUDA before loading the model
        else:  # refuse a missing Ray or an unreachable cluster before loading the model
            from jetex.ngrams.distributed import check_address, import_ray

            import_ray()
            if address is not None:
                check_address(address)
        m = load(model)
        plist = parse_paths(m, list(paths))
        res = extract_ngrams(m, plist, db=db, top_k=top_k, order=order, exclude_self=exclude_self, score=score,
                             limit_vocab=limit_vocab, global_top=global_top, batch_size=batch_size,
                             fidelity_sample=None if fidelity_sample == -1 else fidelity_sample,
                             progress=not quiet, redo=redo, device=device, dtype=dtype,
                             precision_sample=precision_sample, backend=backend, address=address, workers=workers,
                             load_spec=model, shard_batches=shard_batches, retries=retries, cpus_per_worker=cpus_per_worker)
        if as_json:
            emit_json({"db": str(db), "model": m.name, "runs": [asdict(r) for r in res]})
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"jet n-grams of {m.name} → {db}", header_style="bold")
        for c in ("run", "path", "status", "rows", "seconds", "self rate", "KL", "top-1", "top-10"):
            t.add_column(c, justify="right" if c not in ("path", "status") else "left")
        for r in res:
            f = r.fidelity or {}
            t.add_row(str(r.run_id), r.path, r.status + (f" (resumed after {r.resumed_batches} batches)" if r.resumed_batches else ""),
                      str(r.stats.get("n_rows", "")), f"{r.seconds:.1f}",
                      f"{r.stats['self_transition_rate']:.1%}" if "self_transition_rate" in r.stats else "",
                      f"{f['mean_kl']:.3f}" if f else "", f"{f['top1_agreement']:.1%}" if f else "",
                      f"{f['top10_agreement']:.1%}" if f else "")
        Console().print(t)
        from jetex.ngrams.device import PrecisionReport

        for r in res:
            if r.precision:
                click.echo("precision: " + PrecisionReport(**r.precision).line())

    @ngrams.command("top")
    @json_option
    @click.option("--db", required=True, type=click.Path(dir_okay=False), help="The n-gram DuckDB file.")
    @click.option("--path", default=None, help="Only this path (attn:L: every head of layer L; attn: every head of the "
                  "lowest attention layer stored). Default: every path.")
    @click.option("--token", default=None, help="Show this input token's top next tokens (its string, e.g. ' the', or #ID).")
    @click.option("-n", "n", type=int, default=20, show_default=True, help="Rows per path.")
    @click.option("--run", "run_id", type=int, default=None, help="A run id (default: the latest run of each path).")
    @click.option("--score", "score", default=None, help=SCORE_HELP + " A run ranked by another score of the same row "
                  "order (logprob, logit, zlogit) is re-scored from the stored statistics; pmi and zpmi need their own extraction. "
                  "Without --score, a run that cannot give the default is shown by its own score.")
    def top(as_json, db, path, token, n, run_id, score) -> None:
        """Show the top bigrams (global, or of one input token) and top trigrams per head."""
        from jetex.ngrams.store import NgramStore

        if n < 1:
            raise InputError(f"-n must be a positive integer, got {n}")
        asked, score = score, _score_default(score)
        from jetex.ngrams.scores import row_family, score_label

        with NgramStore(db, read_only=True) as store:
            runs = _pick_runs(store, path, run_id, score)
            token_ids: list[tuple[int, str]] = []
            if token is not None:
                if token.startswith("#") and token[1:].isdigit():
                    token_ids = [(int(token[1:]), store.token(int(token[1:])))]
                else:
                    token_ids = store.find_tokens(token)
                if not token_ids:
                    raise InputError(f"token {token!r} is not in the vocabulary; give its exact string (e.g. ' the') or #ID")
            out = []
            for run in runs:
                fid = store.fidelity(run["run_id"])
                score = _score_default(asked)
                if asked is None and run["kind"] == "bigram" and row_family(store.run_score(run)) != row_family(score):
                    score = store.run_score(run)  # no --score: a run that cannot give the default shows its own
                if run["kind"] == "trigram":
                    rows = store.ngrams(run["run_id"], n=n)
                    section = "top trigrams (a … b → c)"
                elif token_ids:
                    store.check_readable(run, score)  # refused before any row is read
                    rows = [r for tid, _ in token_ids for r in store.ngrams(run["run_id"], input_id=tid, n=n)]
                    vals = store.entry_scores(run, score, [r["input_id"] for r in rows], [r["output_id"] for r in rows],
                                              [r["logit"] for r in rows])
                    for r, v in zip(rows, vals.tolist()):
                        r["score"] = float(v)
                    section = "next tokens of " + ", ".join(f"{_show(s)!r} (#{i})" for i, s in token_ids)
                else:
                    rows = store.top_pairs(run["run_id"], n, score=score)
                    note = "" if not rows or rows[0].get("exact", True) else (
                        " (re-scored from each input's stored top-K; not certified exact: extract with --score "
                        f"{score} for the exact list)")
                    section = f"global top {n} bigrams by {score_label(score)}" + note
                out.append({"run": {k: (str(v) if k in ("created_at", "finished_at") else v) for k, v in run.items()},
                            "fidelity": fid, "section": section, "rows": rows, "score": score if run["kind"] == "bigram" else None})
        if as_json:
            emit_json({"db": str(db), "paths": out})
            return
        from rich.console import Console
        from rich.table import Table

        console = Console()
        for item in out:
            run = item["run"]
            console.print(f"[bold]{_run_header(run, item['fidelity'])}[/bold]\n{item['section']}", highlight=False, markup=True)
            t = Table(header_style="bold")
            if run["kind"] == "trigram":
                for c in ("rank", "a (earlier)", "b (current)", "c (next)", "score", "p(a|b)", "OV logit"):
                    t.add_column(c, justify="right" if c in ("rank", "score", "p(a|b)", "OV logit") else "left")
                for r in item["rows"]:
                    t.add_row(str(r["rank"]), _show(r["context"]), _show(r["input"]), _show(r["output"]),
                              f"{r['prob']:.3g}", f"{r['attn_prob']:.3f}", f"{r['logit']:.2f}")
            else:
                for c in ("rank", "token", "next", item["score"], "P(next|token)", "logit"):
                    t.add_column(c, justify="left" if c in ("token", "next") else "right")
                for r in item["rows"]:
                    t.add_row(str(r["rank"]), _show(r["input"]), _show(r["output"]), f"{r['score']:.4f}", f"{r['prob']:.4f}",
                              f"{r['logit']:.2f}")
            console.print(t)

    @ngrams.command("rescore")
    @json_option
    @click.option("--db", required=True, type=click.Path(dir_okay=False), help="The n-gram DuckDB file.")
    @click.option("--path", default=None, help="Only this path (default: every bigram path).")
    @click.option("--score", "score", required=True, help=SCORE_HELP)
    def rescore(as_json, db, path, score) -> None:
        """Add runs re-scored under another score from the stored statistics (no model; one transaction per run)."""
        import time

        from jetex.ngrams.scores import check_score
        from jetex.ngrams.store import NgramStore

        score = check_score(score)
        with NgramStore(db, read_only=True) as store:
            runs = [r for r in _pick_runs(store, path, None) if r["kind"] == "bigram"]
            if not runs:
                raise InputError(f"{db} has no finished bigram run" + (f" of path {path!r}" if path else ""))
            for r in runs:
                store.check_rescorable(r, score)  # refuse before writing anything
            ids = [r["run_id"] for r in runs]
        out = []
        with NgramStore(db, model=None, read_only=False, check_model=False) as store:
            for rid in ids:
                t0 = time.perf_counter()
                new = store.rescore_run(rid, score)
                stats = json.loads(new["stats"] or "{}")
                out.append({"from_run": rid, "run": new["run_id"], "path": new["path"], "score": score,
                            "top_exact": stats.get("top_exact", True), "seconds": time.perf_counter() - t0})
        if as_json:
            emit_json({"db": str(db), "runs": out})
        else:
            for o in out:
                click.echo(f"{o['path']}: run {o['from_run']} re-scored by {score} as run {o['run']} in {o['seconds']:.2f} s"
                           + ("" if o["top_exact"] else " (global top not certified exact)"))

    @ngrams.command("export")
    @json_option
    @click.option("--db", required=True, type=click.Path(dir_okay=False), help="The n-gram DuckDB file.")
    @click.option("--parquet", "parquet", required=True, type=click.Path(dir_okay=False), help="Output Parquet file.")
    def export(as_json, db, parquet) -> None:
        """Export every finished run's n-grams (with run options and model fingerprints) to Parquet."""
        from jetex.ngrams.store import NgramStore

        with NgramStore(db, read_only=True) as store:
            n = store.export_parquet(parquet)
        if as_json:
            emit_json({"db": str(db), "parquet": str(parquet), "rows": n})
        else:
            click.echo(f"wrote {n} n-gram rows to {parquet}")

    @ngrams.command("paths")
    @common_options
    def paths_cmd(model, as_json) -> None:
        """List the n-gram paths a model supports."""
        from jetex.models.load import load
        from jetex.ngrams.paths import available_paths

        m = load(model)
        avail = available_paths(m)
        if as_json:
            emit_json({"model": m.name, "paths": avail})
        else:
            for p in avail:
                click.echo(p)
