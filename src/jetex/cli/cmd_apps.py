"""Applications of jet n-grams (paper Sec. 5): ``jetex diff``, ``jetex index``,
``jetex dynamics``, ``jetex roles``. The math lives in :mod:`jetex.apps`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from jetex.cli.common import DEFAULT_MODEL, address_option, allow_nonfinite_option, check_result, cpus_per_worker_option, emit_json, json_option, with_numbering
from jetex.errors import InputError


def _mlp_layers(m, spec: str | None) -> list[int] | None:
    """Transformer layers of the MLP blocks named by --layers (names, layer numbers, ranges; None: all)."""
    from jetex.models.naming import layers_of, resolve_blocks

    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    kind = "mlp" if any(b.kind == "mlp" for b in m.blocks) else None
    return layers_of(m, resolve_blocks(m, spec, kind=kind, what="--layers entry"))


def _attention_layer(m, spec: str) -> int:
    """The transformer layer of the one attention block --head-layer names (attn.N or N)."""
    from jetex.models.naming import layers_of, resolve_blocks

    kind = "attn" if any(b.kind == "attn" for b in m.blocks) else None
    found = layers_of(m, resolve_blocks(m, spec, kind=kind, what="--head-layer"))
    if len(found) != 1:
        raise InputError(f"--head-layer names one attention block, got {spec!r}")
    return found[0]


SCORE_HELP = ("How bigrams are ranked: logprob (log P(b|a)), logit (logit centred per input), zlogit (centred logit / "
              "its row's spread), pmi (log P(b|a) − log mean_a' P(b|a')), zpmi (pmi of the z-scored logits: "
              "log softmax(zlogit)(b) − log its mean over inputs). Default: zpmi, the measured default (docs/ngram_scores.md).")


def _score(score: str | None) -> str:
    from jetex.ngrams.scores import DEFAULT_SCORE, check_score

    return check_score(DEFAULT_SCORE if score is None else score)


def _warn(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def _is_store(spec: str) -> bool:
    p = Path(spec)
    if p.suffix.lower() in (".duckdb", ".db"):
        return True
    if p.is_file():
        try:
            with p.open("rb") as f:
                head = f.read(16)
            return head[8:12] == b"DUCK"
        except OSError:
            return False
    return False


def _show(s: str, width: int = 14) -> str:
    from jetex.viz.text import cell

    return cell(repr(s)[1:-1], width)


def _rank(r: int | None, exact: bool) -> str:
    return "?" if r is None else (str(r) if exact else f"≥{r}")


def _p(p: float | None) -> str:
    return "?" if p is None else f"{p:.4f}"


def _timed(label: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()
            return self

        def __exit__(self, *exc):
            click.echo(f"jetex: {label} in {time.perf_counter() - self.t:.1f} s", err=True)

    return _T()


# --------------------------------------------------------------------------- printing
def _print_diff(res) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    from jetex.ngrams.scores import score_label

    con.print(f"[bold]jet bigram diff[/bold] — path {res.path}: A = {res.name_a}, B = {res.name_b} "
              f"(tokenizer {res.tokenizer_fp}; ranked by {score_label(res.score)}"
              f"{', self-transitions excluded' if res.exclude_self else ''})")
    if not (res.top_a_exact and res.top_b_exact):
        con.print(f"[yellow]note: a top-{res.top_n} list is not certified exact; raise --k[/yellow]")
    if res.identical:
        con.print("[green]no difference: the two bigram tables are identical[/green]")
    t = Table(title=f"side by side, every {res.step}th rank of the top {res.top_n} (Table 5)")
    for c in ("rank", "A", "score A", "P_A", "B", "score B", "P_B"):
        t.add_column(c, justify="left" if c in ("A", "B") else "right")
    for r, x, y in res.side_by_side:
        t.add_row(str(r), f"{_show(x[0])} → {_show(x[1])}" if x else "", f"{x[3]:.3f}" if x else "", f"{x[2]:.3f}" if x else "",
                  f"{_show(y[0])} → {_show(y[1])}" if y else "", f"{y[3]:.3f}" if y else "", f"{y[2]:.3f}" if y else "")
    con.print(t)

    def moves(title: str, rows: list, n: int = 15) -> None:
        t = Table(title=f"{title} ({len(rows)})")
        for c in ("bigram", "rank A", "rank B", "P_A", "P_B", "ΔP"):
            t.add_column(c, justify="left" if c == "bigram" else "right")
        for d in rows[:n]:
            t.add_row(f"{_show(d.a_text)} → {_show(d.b_text)}", _rank(d.rank_a, d.rank_a_exact), _rank(d.rank_b, d.rank_b_exact),
                      _p(d.p_a), _p(d.p_b), "?" if d.delta is None else f"{d.delta:+.4f}")
        con.print(t)

    moves(f"entered B's top {res.top_n}", res.entered)
    moves(f"left A's top {res.top_n}", res.left)
    moves("largest rank gains", res.gained)
    moves("largest rank losses", res.lost)
    scope = "all pairs" if res.changes_exhaustive else "pairs both tables keep"
    moves(f"largest probability increases ({scope})", res.increases)
    moves(f"largest probability decreases ({scope})", res.decreases)


def _print_index(results) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="jet bigram knowledge index: mean over keyword tokens a of Σ_b∈keywords P(b|a)")
    for c in ("model", "path", "keywords used", "tokens", "index", "index (other words)", "baseline (random sets)", "ratio"):
        t.add_column(c, justify="left" if c in ("model", "path") else "right")
    for r in results:
        base = "—" if r.baseline_mean is None else f"{r.baseline_mean:.3g} ± {r.baseline_std:.2g}"
        t.add_row(r.model_name, r.path, f"{len(r.kept)}/{r.n_keywords}", str(r.n_tokens), f"{r.index:.4g}",
                  f"{r.index_cross:.4g}", base,
                  "—" if r.ratio is None else f"{r.ratio:.3g}×")
    con.print(t)
    for r in results:
        pairs = ", ".join(f"{_show(a)}→{_show(b)} {p:.3f}" for a, b, p in r.top_pairs[:5])
        con.print(f"{r.model_name}: largest keyword bigrams: {pairs}")


def _print_dynamics(res) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"top {len(res.top[0])} {res.path} bigrams per checkpoint by {res.score} (Table 4)")
    t.add_column("rank", justify="right")
    for lab in res.labels:
        t.add_column(lab)
    for r in range(max(len(x) for x in res.top)):
        t.add_row(str(r), *[f"{_show(x[r][0], 10)}→{_show(x[r][1], 10)}" if r < len(x) else "" for x in res.top])
    con.print(t)
    t = Table(title=f"hit ratio of the last checkpoint's top {res.top_n} (Fig. 4a) and pseudo-joint mass (Fig. 4b)")
    for c in ("checkpoint", "step", "hit ratio", "mass (own top)", "mass (corpus top)"):
        t.add_column(c, justify="right")
    for i, lab in enumerate(res.labels):
        t.add_row(lab, "" if res.steps[i] is None else str(res.steps[i]), f"{res.hit_ratio[i]:.3f}",
                  "—" if res.mass_own is None else f"{res.mass_own[i]:.4f}",
                  "—" if res.mass_corpus is None else f"{res.mass_corpus[i]:.4f}")
    con.print(t)
    t = Table(title="trajectories: log P(b|a) (Fig. 5)")
    t.add_column("bigram")
    for lab in res.labels:
        t.add_column(lab, justify="right")
    for key, vals in res.trajectories.items():
        t.add_row(_show(key, 30), *[f"{v:.2f}" for v in vals])
    con.print(t)


def _print_roles(roles) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="component roles from jet n-grams (role: heuristic label)")
    for c in ("component", "suggested role", "characteristic n-grams"):
        t.add_column(c)
    for r in roles:
        if r.kind == "mlp":
            grams = ", ".join(f"{_show(a, 10)}→{_show(b, 10)}" for a, b, *_ in r.added[:4])
        else:
            grams = ", ".join(f"{_show(a, 8)}…{_show(b, 8)}→{_show(c, 8)}" for a, b, c, _ in r.top[:3])
        t.add_row(r.component, r.role, grams)
    con.print(t)
    abl = [r.ablation for r in roles if r.ablation is not None]
    if abl:
        _print_ablations(abl, con)


def _print_ablations(results, con=None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = con or Console()
    x = results[0]
    t = Table(title=f"{x.mode}-ablation on corpus contexts of each component's n-grams ({x.corpus}; "
                    f"Δ = change of log P(real next token); E = Δ − Δ of random components of the same kind, "
                    f"{int(100 * x.effect.level)}% bootstrap interval)")
    for c in ("component", "contexts", "patterns (best)", "Δ", "Δ controls", "E [interval]", "d", "rank p", "verdict"):
        t.add_column(c, justify="left" if c in ("component", "patterns (best)", "verdict") else "right")
    for r in results:
        e = r.effect
        pats = ", ".join(f"{_show(a, 8)}→{_show(c, 8)}" for a, c, *_ in r.patterns[:3])
        t.add_row(r.component, f"{r.n_contexts} ({r.n_patterns} n-grams)", pats, f"{e.delta:+.3f}",
                  f"{e.control_delta:+.3f} ({len(r.controls)})", f"{e.effect:+.3f} [{e.ci_low:+.3f}, {e.ci_high:+.3f}]",
                  f"{e.cohen_d:+.2f}", f"{e.p_rank:.2f}", r.verdict)
    con.print(t)


# --------------------------------------------------------------------------- commands
APPS_HINT = "a model overflows on these bigrams (or its weights are not finite)"


def register(group: click.Group) -> None:
    @group.command("diff")
    @click.argument("a")
    @click.argument("b")
    @click.option("--path", default="direct", show_default=True, help="Bigram path: direct, mlp:N (or mlp.N), mlp:N,M, mlps, attn-free.")
    @click.option("--top", type=int, default=1000, show_default=True, help="N of the global top-N lists.")
    @click.option("--k", "k", type=int, default=128, show_default=True, help="Outputs kept per input token (rank exactness).")
    @click.option("--step", type=int, default=50, show_default=True, help="Rank stride of the side-by-side table.")
    @click.option("--changes", type=int, default=20, show_default=True, help="How many changes/moves to list.")
    @click.option("--keep-self", is_flag=True, help="Keep self-transitions (a → a) in the rankings.")
    @click.option("--score", "score", default=None, help=SCORE_HELP)
    @click.option("--html", "html_out", default=None, help="Also write the diff as an HTML page.")
    @json_option
    @allow_nonfinite_option
    def diff_cmd(a, b, path, top, k, step, changes, keep_self, score, html_out, as_json):
        """Diff the jet bigrams of two models (names, folders, .gguf) or two n-gram databases (.duckdb)."""
        from jetex.apps.diff import diff_bigrams

        if changes < 0:
            raise InputError("--changes must be >= 0")
        asked, score = score, _score(score)
        sa, sb = _is_store(a), _is_store(b)
        if sa != sb:
            raise InputError("give two models or two n-gram databases, not one of each")
        if sa:
            from jetex.apps.tables import check_same_tokenizer, table_from_store

            if keep_self:
                raise InputError("--keep-self does not apply to databases (their runs fix it)")
            # no --score: each store's run is read under the default, or under its own score when it cannot give it
            ta, tb = table_from_store(a, path, score=asked), table_from_store(b, path, score=asked)
            check_same_tokenizer(ta, tb, "diff")
            if ta.exclude_self != tb.exclude_self:
                raise InputError(f"the databases differ in self-transition handling (exclude_self {ta.exclude_self} vs {tb.exclude_self})")
            with _timed("diff"):
                res = diff_bigrams(ta, tb, path, top=top, k=ta.k, step=step, n_changes=changes, n_moves=changes)
        else:
            from jetex.models.load import load

            from jetex.apps.tables import check_same_tokenizer

            ma = load(a)
            mb = ma if b == a else load(b)
            check_same_tokenizer(ma, mb, "diff")
            with _timed("diff"):
                res = diff_bigrams(ma, mb, path, top=top, k=k, step=step, n_changes=changes, n_moves=changes,
                                   exclude_self=not keep_self, score=score)
        check_result(res.to_dict(), "the bigram diff", APPS_HINT)
        if html_out:
            from jetex.viz.apps import save_diff_html

            save_diff_html(res, html_out)
        if as_json:
            emit_json(res.to_dict() | ({"html": html_out} if html_out else {}))
        else:
            _print_diff(res)
            if html_out:
                click.echo(f"wrote {html_out}")

    @group.command("index")
    @click.option("--keywords", default=None, help="Keyword file, one a line (default: the shipped toxic list).")
    @click.option("--model", "-m", "models", multiple=True, default=(DEFAULT_MODEL,), show_default=True,
                  help="Model (repeat to compare several; each gets its own token set).")
    @click.option("--path", default="direct", show_default=True, help="Bigram path.")
    @click.option("--baseline", type=int, default=3, show_default=True, help="Random token sets for the chance level (0: none).")
    @click.option("--keep-self", is_flag=True, help="Count self-transitions a → a (full softmax).")
    @click.option("--show-dropped", is_flag=True, help="List every dropped keyword (default: the first 15).")
    @click.option("--score", "score", default=None, help=SCORE_HELP + " Ranks the listed keyword bigrams; the index itself "
                  "is a probability mass.")
    @json_option
    @allow_nonfinite_option
    def index_cmd(keywords, models, path, baseline, keep_self, show_dropped, score, as_json):
        """Knowledge index: conditional mass of jet bigrams between keyword tokens (paper Table 3)."""
        from jetex.apps.index import DEFAULT_KEYWORDS, knowledge_index, load_keywords
        from jetex.models.load import load

        score = _score(score)
        words = load_keywords(keywords)
        if baseline < 0:
            raise InputError("--baseline must be >= 0")
        results = []
        for name in models:
            m = load(name)
            with _timed(f"index of {m.name}"):
                r = knowledge_index(m, words, path=path, exclude_self=not keep_self, n_baseline=baseline, score=score)
            r.keywords_file = str(keywords or DEFAULT_KEYWORDS)
            check_result(r.to_dict(), f"the knowledge index of {m.name}", APPS_HINT)
            if r.dropped:
                shown = r.dropped if show_dropped else r.dropped[:15]
                more = "" if len(shown) == len(r.dropped) else f", … ({len(r.dropped) - len(shown)} more: --show-dropped or --json)"
                _warn(f"{len(r.dropped)} of {r.n_keywords} keywords are not single tokens of {m.name} and were dropped: "
                      + ", ".join(shown) + more)
            results.append(r)
        if as_json:
            emit_json([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict())
        else:
            _print_index(results)

    @group.command("dynamics")
    @click.argument("checkpoints", nargs=-1, required=True)
    @click.option("--path", default="direct", show_default=True, help="Bigram path.")
    @click.option("--corpus", default=None, help="Text file (or 'stdlib-docs') for unigram frequencies and corpus bigrams.")
    @click.option("--top", type=int, default=1000, show_default=True, help="N of the top-N lists (hit ratio, masses).")
    @click.option("--show", type=int, default=10, show_default=True, help="Top bigrams shown per checkpoint.")
    @click.option("--bigram", "bigrams", nargs=2, multiple=True, help="Trace this bigram: two tokens, e.g. --bigram ' at' ' least'.")
    @click.option("--png", "png", default=None, help="Write PREFIX_hit.png, PREFIX_mass.png, PREFIX_trajectories.png.")
    @click.option("--keep-self", is_flag=True, help="Keep self-transitions in the rankings.")
    @click.option("--score", "score", default=None, help=SCORE_HELP)
    @click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                  help="local: this process; ray: each checkpoint loaded and evaluated by a Ray worker (pip install 'jetex[ray]').")
    @address_option
    @click.option("--workers", type=int, default=None, help="Ray workers (default: one per CPU, at most one per checkpoint).")
    @cpus_per_worker_option
    @click.option("--retries", type=int, default=3, show_default=True, help="Restarts of a dying Ray worker (and retries of its checkpoint) before stopping.")
    @json_option
    @allow_nonfinite_option
    def dynamics_cmd(checkpoints, path, corpus, top, show, bigrams, png, keep_self, score, backend, address, workers,
                     cpus_per_worker, retries, as_json):
        """Training dynamics of jet bigrams over checkpoints of one model (paper Table 4, Fig. 4, Fig. 5)."""
        import re

        from jetex.apps.dynamics import bigram_dynamics
        from jetex.apps.dynamics_ray import bigram_dynamics_ray
        from jetex.models.load import load

        if len(checkpoints) < 2:
            raise InputError("dynamics needs at least two checkpoints")
        score = _score(score)
        if show < 1:
            raise InputError("--show must be >= 1")
        if address is not None and backend != "ray":
            raise InputError("--address needs --backend ray")
        if backend == "ray":  # refuse a missing Ray or an unreachable cluster before loading anything
            from jetex.ngrams.distributed import check_address, import_ray

            import_ray()
            if address is not None:
                check_address(address)
            # the driver holds the last checkpoint only (tokenizer, strings, identity); the workers load each one
            models = [load(checkpoints[-1])]
        else:
            models = [load(c) for c in checkpoints]
        labels = [Path(c).name or c for c in checkpoints]
        steps = []
        for lab in labels:
            m = re.search(r"(\d+)$", lab)
            steps.append(int(m.group(1)) if m else None)
        if len(set(steps)) != len(steps) or None in steps:
            steps = [None] * len(labels)
        unigram = text = None
        if backend == "local":
            from jetex.apps.dynamics import check_series

            check_series(models)
        if corpus is not None:
            from jetex.apps.corpus import read_corpus, unigram_probs

            text = read_corpus(corpus)
            unigram = unigram_probs(models[-1].tokenizer, text, models[-1].vocab_size)
        pairs = None
        if bigrams:
            tok = models[-1].tokenizer
            pairs = []
            for x, y in bigrams:
                ids = []
                for w in (x, y):
                    enc = tok(w, add_special_tokens=False)["input_ids"]
                    if len(enc) != 1:
                        raise InputError(f"--bigram token {w!r} is {len(enc)} tokens, not one (mind the leading space)")
                    ids.append(int(enc[0]))
                pairs.append((ids[0], ids[1]))
        with _timed(f"dynamics of {len(checkpoints)} checkpoints" + (" on Ray" if backend == "ray" else "")):
            common = dict(labels=labels, steps=steps, path=path, top=top, n_show=show, unigram=unigram,
                          corpus_text=text, bigrams=pairs, exclude_self=not keep_self, score=score)
            if backend == "ray":
                res = bigram_dynamics_ray(list(checkpoints), reference=models[-1], address=address, workers=workers,
                                          cpus_per_worker=cpus_per_worker, retries=retries,
                                          progress=sys.stderr.isatty() and not as_json, **common)
            else:
                res = bigram_dynamics(models, **common)
        check_result(res.to_dict(), "the bigram dynamics", APPS_HINT)
        written = []
        if png:
            from jetex.viz.apps import save_dynamics_figures

            written = [str(p) for p in save_dynamics_figures(res, png)]
        if as_json:
            emit_json(res.to_dict() | ({"figures": written} if written else {}))
        else:
            _print_dynamics(res)
            for p in written:
                click.echo(f"wrote {p}")

    @with_numbering
    @group.command("roles")
    @click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Model name, folder or .gguf file.")
    @click.option("--layers", default=None, help="MLP blocks: names or layer numbers, e.g. mlp.0,mlp.29 or 0,5,10 or 0-3 (default: all; 'none': no MLP).")
    @click.option("--limit-vocab", type=int, default=None, help="Only input tokens with ids below N for the n-gram tables (faster).")
    @click.option("--top", type=int, default=10, show_default=True, help="N-grams listed per component.")
    @click.option("--heads", is_flag=True, help="Also the heads of one attention layer, from jet skip-trigrams.")
    @click.option("--head-layer", default="0", show_default=True, help="Attention block for --heads: attn.N or layer number N.")
    @click.option("--head-list", default=None, help="Only these heads of --head-layer, e.g. 0,1,2.")
    @click.option("--corpus", default="stdlib-docs", show_default=True,
                  help="Text for the ablation contexts (UTF-8 file or 'stdlib-docs').")
    @click.option("--ablation", "mode", type=click.Choice(["mean", "zero"]), default="mean", show_default=True,
                  help="Replace the component's output by its corpus mean, or by zero.")
    @click.option("--score", "score", default=None,
                  help=SCORE_HELP + " Ranks each component's n-grams (its table and the corpus patterns it is ablated on).")
    @click.option("--controls", type=int, default=6, show_default=True, help="Random components of the same kind ablated as control.")
    @click.option("--min-contexts", type=int, default=30, show_default=True, help="Fewer contexts in the corpus: an error.")
    @click.option("--max-contexts", type=int, default=48, show_default=True, help="Contexts per component.")
    @click.option("--rows", type=int, default=2048, show_default=True, help="The corpus's most frequent tokens scored as inputs a.")
    @click.option("--window", type=int, default=24, show_default=True, help="Tokens per context (BOS included).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--no-ablate", is_flag=True, help="Skip the ablation.")
    @click.option("--ablate-only", is_flag=True, help="Only the ablation (no n-gram tables, no role labels).")
    @json_option
    @allow_nonfinite_option
    def roles_cmd(model, layers, limit_vocab, top, heads, head_layer, head_list, corpus, mode, score, controls,
                  min_contexts, max_contexts, rows, window, seed, no_ablate, ablate_only, as_json):
        """Roles of MLPs (jet bigrams) and first-layer heads (jet skip-trigrams), with an ablation
        against random components on real-corpus contexts (mean-ablation, effect size with interval)."""
        from jetex.apps.roles import component_roles
        from jetex.models.load import load

        score = _score(score)
        if top < 1:
            raise InputError("--top must be >= 1")
        if no_ablate and ablate_only:
            raise InputError("--no-ablate and --ablate-only exclude each other")
        if min_contexts < 2 or max_contexts < min_contexts:
            raise InputError("need 2 <= --min-contexts <= --max-contexts")
        if controls < 1 or rows < 2 or window < 4:
            raise InputError("--controls must be >= 1, --rows >= 2 and --window >= 4")
        m = load(model)
        mlps = [] if layers is not None and layers.strip() == "none" else _mlp_layers(m, layers)
        head_layer = _attention_layer(m, head_layer)
        hl = _ints(head_list, "head") if head_list else None
        progress = (lambda s: click.echo(f"jetex: {s}", err=True)) if sys.stderr.isatty() or as_json else None
        opts = dict(mode=mode, score=score, rows=rows, n_controls=controls, min_contexts=min_contexts,
                    max_contexts=max_contexts, window=window, seed=seed)
        if ablate_only:
            from jetex.apps.ablation import Component, ablation_study, all_components
            from jetex.apps.roles import corpus_docs

            comps = [Component("mlp", n) for n in (mlps if mlps is not None else
                                                   [c.layer for c in all_components(m, "mlp")])]
            if heads:
                hs = hl if hl is not None else [c.head for c in all_components(m, "head") if c.layer == head_layer]
                comps += [Component("head", head_layer, h) for h in hs]
            with _timed("ablations"):
                res = ablation_study(m, comps, corpus_docs(m, corpus), corpus_name=corpus, progress=progress, **opts)
            if as_json:
                emit_json([r.to_dict() for r in res])
            else:
                _print_ablations(res)
            return
        with _timed("roles"):
            roles = component_roles(m, mlps, head_layer=head_layer if heads else None, heads=hl, limit_vocab=limit_vocab,
                                    n_top=top, corpus=None if no_ablate else corpus, ablation=opts, progress=progress)
        if as_json:
            emit_json([r.to_dict() for r in roles])
        else:
            _print_roles(roles)
