"""Training dynamics through jet bigrams (paper Sec. 5.2: Table 4, Fig. 4a, Fig. 4b, Fig. 5).

Given checkpoints c_1..c_T of ONE model (same architecture and tokenizer; refused
otherwise) and one bigram path p (default ``direct``), every checkpoint's bigram table is
evaluated over the whole vocabulary (:mod:`jetex.apps.tables`; self-transitions excluded and
renormalised by default) and compared:

- **top bigrams** (Table 4): the global top-``n_show`` (a, b) per checkpoint, ranked by a
  score of (a, b) (``score``, :mod:`jetex.ngrams.scores`; default: the measured default
  :data:`~jetex.ngrams.scores.DEFAULT_SCORE`; ``logprob`` ranks by P_c(b | a)); every top-N
  list below is by that score;
- **hit ratio** (Fig. 4a): with G the last checkpoint's global top-N (N = ``top``, 1000 by
  default) and S_c checkpoint c's, hit(c) = |S_c ∩ G| / |G| (so hit(c_T) = 1);
- **pseudo-joint mass** (Fig. 4b): with p(a) the unigram frequency of token a in a corpus
  (:func:`jetex.apps.corpus.unigram_probs`), the pseudo-joint probability of a bigram is
  p(a)·P_c(b | a), and

      mass_own(c)    = Σ_{(a,b) ∈ S_c} p(a)·P_c(b | a)     (the checkpoint's own top-N)
      mass_corpus(c) = Σ_{(a,b) ∈ C}   p(a)·P_c(b | a)     (C: the corpus's N most frequent
                                                            bigrams of adjacent tokens, a ≠ b
                                                            when self-transitions are excluded)

  mass_corpus measures how much of the real data's frequent bigrams the model has learnt;
  mass_own how much unigram-weighted mass its own top list carries;
- **trajectories** (Fig. 5): log P_c(b | a) of chosen bigrams across checkpoints (by default
  the last checkpoint's top 3, the first checkpoint's top 2 — usually random associations
  of the initialisation — and the 2 bigrams of the union of all top lists whose probability
  peaked before the end and fell the most since).

The work splits in two passes over the checkpoints: :func:`checkpoint_summary` (the full
table read as a global top-N, and the corpus bigrams: the expensive part) and
:func:`pair_logprobs` of the traced bigrams (chosen from all the top lists: cheap); the rest
is assembled from those. :func:`bigram_dynamics` runs both here on loaded models;
:func:`jetex.apps.dynamics_ray.bigram_dynamics_ray` runs them on Ray workers that each load a
checkpoint from its path (:class:`~jetex.apps.dynamics_ray.CheckpointBackend`), with the same numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from jetex.apps.tables import bigram_path, row_logprobs, topk_table
from jetex.errors import InputError
from jetex.models.base import ResidualModel


@dataclass
class DynamicsResult:
    """Bigram dynamics over checkpoints (definitions in the module doc). Lists are per
    checkpoint, in the given order; ``top`` rows are (a_text, b_text, P); trajectories map
    a label "a → b" to log P per checkpoint."""

    labels: list[str]
    steps: list[int | None]
    path: str
    top_n: int
    exclude_self: bool
    top: list[list[tuple[str, str, float]]]
    top_exact: list[bool]
    hit_ratio: list[float]
    mass_own: list[float] | None
    mass_corpus: list[float] | None
    trajectories: dict[str, list[float]]
    losses: list[float] | None = None
    model_names: list[str] = field(default_factory=list)
    score: str = "logprob"

    def __post_init__(self) -> None:
        T = len(self.labels)
        for name in ("steps", "top", "top_exact", "hit_ratio"):
            if len(getattr(self, name)) != T:
                raise ValueError(f"DynamicsResult.{name} must have one entry per checkpoint ({T})")
        for name in ("mass_own", "mass_corpus", "losses"):
            v = getattr(self, name)
            if v is not None and len(v) != T:
                raise ValueError(f"DynamicsResult.{name} must have one entry per checkpoint ({T})")
        for key, traj in self.trajectories.items():
            if len(traj) != T:
                raise ValueError(f"trajectory {key!r} must have one value per checkpoint ({T})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def arch_signature(m: ResidualModel) -> tuple:
    """What two checkpoints of one model share: (model type, L, d, V, block names)."""
    cfg = getattr(m, "config", None)
    mtype = getattr(cfg, "model_type", type(m).__name__)
    return (mtype, m.n_blocks, m.d_model, m.vocab_size, tuple(m.block_names))


def check_compatible(ref_name: str, ref_sig: tuple, ref_tfp: str, name: str, sig: tuple, tfp: str) -> None:
    """Refuse (one-line :class:`InputError`) checkpoint ``name`` (architecture signature ``sig``,
    tokenizer fingerprint ``tfp``) against the reference checkpoint ``ref_name``."""
    if tuple(sig) != tuple(ref_sig):
        raise InputError(
            f"checkpoints {ref_name} and {name} have different architectures "
            f"({ref_sig[0]}, {ref_sig[1]} blocks, d={ref_sig[2]}, V={ref_sig[3]} vs "
            f"{sig[0]}, {sig[1]} blocks, d={sig[2]}, V={sig[3]}); give checkpoints of one model"
        )
    if tfp != ref_tfp:
        raise InputError(f"checkpoints {ref_name} and {name} have different tokenizers; give checkpoints of one model")


def check_series(models: Sequence[ResidualModel]) -> None:
    """Refuse (one-line :class:`InputError`) checkpoints of different architectures or tokenizers."""
    if len(models) < 2:
        raise InputError("dynamics needs at least two checkpoints")
    ref = models[0]
    sig, tfp = arch_signature(ref), ref.tokenizer_fingerprint()
    for m in models[1:]:
        check_compatible(ref.name, sig, tfp, m.name, arch_signature(m), m.tokenizer_fingerprint())


def corpus_bigrams(tokenizer: Any, text: str, n: int, exclude_self: bool = True) -> list[tuple[int, int, int]]:
    """The ``n`` most frequent adjacent token pairs (a, b, count) of ``text`` (paragraph by paragraph)."""
    counts: Counter[tuple[int, int]] = Counter()
    for para in text.split("\n\n"):
        if not para.strip():
            continue
        ids = tokenizer(para, add_special_tokens=False)["input_ids"]
        counts.update(zip(ids, ids[1:]))
    pairs = [(a, b, c) for (a, b), c in counts.items() if not (exclude_self and a == b)]
    pairs.sort(key=lambda x: (-x[2], x[0], x[1]))
    return pairs[:n]


def pair_logprobs(
    model: ResidualModel, path: str, pairs: Sequence[tuple[int, int]], exclude_self: bool = True, order: int = 0
) -> Float[Tensor, "n"]:
    """log P_p(b | a) for each pair (rows evaluated once per distinct a)."""
    p = bigram_path(model, path)
    rows = sorted({a for a, _ in pairs})
    out = torch.empty(len(pairs), dtype=torch.float64)
    pos = {a: i for i, a in enumerate(rows)}
    lps = []
    for s in range(0, len(rows), 256):
        lps.append(row_logprobs(model, p, torch.tensor(rows[s : s + 256]), order, exclude_self))
    lp = torch.cat(lps) if lps else torch.zeros(0, model.vocab_size)
    for i, (a, b) in enumerate(pairs):
        out[i] = float(lp[pos[a], b])
    return out


@dataclass
class CheckpointSummary:
    """What the dynamics need from one checkpoint's full bigram table (the expensive part):
    its global top-N ``top`` (a, b, log P(b|a)) by ``score`` (``top_scores``: the score values)
    and whether that list is ``exact``, and
    log P(b|a) of the corpus bigrams (``corpus_logprobs``, or None). ``signature``,
    ``tokenizer_fp`` and ``fingerprint`` identify what was evaluated. Small enough to send
    back from a Ray worker (no table, no model)."""

    name: str
    signature: tuple
    tokenizer_fp: str
    fingerprint: str
    top: list[tuple[int, int, float]]
    exact: bool
    corpus_logprobs: Float[Tensor, "n"] | None = None
    score: str = "logprob"
    top_scores: list[float] = field(default_factory=list)


def checkpoint_summary(
    model: ResidualModel,
    path: str = "direct",
    *,
    top: int = 1000,
    k: int = 128,
    exclude_self: bool = True,
    order: int = 0,
    corpus_pairs: Sequence[tuple[int, int]] | None = None,
    score: str | None = None,
) -> CheckpointSummary:
    """One checkpoint's part of :func:`bigram_dynamics`: the table of ``path`` over the whole
    vocabulary, read as a global top-``top``, plus the corpus bigrams' log-probabilities.
    Local and Ray runs both call this, so they compute the same numbers."""
    from jetex.ngrams.scores import DEFAULT_SCORE, check_score

    sc = check_score(DEFAULT_SCORE if score is None else score)
    k = min(k, model.vocab_size - int(exclude_self))
    tbl = topk_table(model, path, k, exclude_self=exclude_self, order=order, score=sc)
    g, ex = tbl.global_top(top)
    lps = [tbl.lookup(a, b) for a, b, _ in g]
    corpus = pair_logprobs(model, path, corpus_pairs, exclude_self, order) if corpus_pairs else None
    return CheckpointSummary(model.name, arch_signature(model), model.tokenizer_fingerprint(), model.fingerprint(),
                             [(a, b, float(lp)) for (a, b, _), lp in zip(g, lps)], ex, corpus, sc, [v for _, _, v in g])


def _check_args(T: int, labels, steps, losses, top: int) -> None:
    if T < 2:
        raise InputError("dynamics needs at least two checkpoints")
    if (labels is not None and len(labels) != T) or (steps is not None and len(steps) != T):
        raise InputError("give one label and one step per checkpoint")
    if losses is not None and len(losses) != T:
        raise InputError("give one loss per checkpoint")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"top must be a positive integer, got {top!r}")


def _corpus_pairs(reference: ResidualModel, unigram, corpus_text: str | None, top: int,
                  exclude_self: bool) -> list[tuple[int, int]] | None:
    V = reference.vocab_size
    if unigram is not None and tuple(unigram.shape) != (V,):
        raise InputError(f"unigram frequencies must have shape [{V}], got {tuple(unigram.shape)}")
    if unigram is None or corpus_text is None:
        return None
    cb = corpus_bigrams(reference.tokenizer, corpus_text, top, exclude_self)
    if not cb:
        raise InputError("the corpus has no bigram of two tokens")
    return [(a, b) for a, b, _ in cb]


def _assemble(
    summaries: Sequence[CheckpointSummary],
    pair_values: Callable[[list[tuple[int, int]]], Float[Tensor, "T n"]],
    reference: ResidualModel,
    *,
    labels: Sequence[str] | None,
    steps: Sequence[int | None] | None,
    path: str,
    top: int,
    n_show: int,
    unigram: Float[Tensor, "v"] | None,
    corpus_pairs: list[tuple[int, int]] | None,
    bigrams: Sequence[tuple[int, int]] | None,
    losses: Sequence[float] | None,
    exclude_self: bool,
) -> DynamicsResult:
    """The dynamics from the per-checkpoint summaries. ``pair_values(pairs)`` returns
    log P_c(b | a) ``[T, n]`` of the given pairs at every checkpoint (ONE call: a second
    pass over the checkpoints); ``reference`` (the last checkpoint) gives the token strings."""
    T = len(summaries)
    V = reference.vocab_size
    labels = list(labels) if labels is not None else [s.name for s in summaries]
    steps = list(steps) if steps is not None else [None] * T
    tops = [s.top for s in summaries]
    exact = [s.exact for s in summaries]
    final = {(a, b) for a, b, _ in tops[-1]}
    hit = [len({(a, b) for a, b, _ in g} & final) / max(1, len(final)) for g in tops]

    ids_needed: set[int] = set()
    for g in tops:
        for a, b, _ in g[:n_show]:
            ids_needed |= {a, b}

    mass_own = mass_corpus = None
    if unigram is not None:
        u = unigram.double()
        mass_own = [float(sum(float(u[a]) * math.exp(lp) for a, b, lp in g)) for g in tops]
        if corpus_pairs is not None:
            w = torch.tensor([float(u[a]) for a, _ in corpus_pairs], dtype=torch.float64)
            mass_corpus = [float((w * s.corpus_logprobs.exp()).sum()) for s in summaries]  # type: ignore[union-attr]

    # the pairs traced: given, or chosen from the top lists (module doc); their log P at every
    # checkpoint come from one second pass (pair_values)
    pool: list[tuple[int, int]] = []
    if bigrams is None:
        chosen: list[tuple[int, int]] = [(a, b) for a, b, _ in tops[-1][:3]]
        chosen += [(a, b) for a, b, _ in tops[0][:2] if (a, b) not in chosen]
        if T > 2:
            pool = list(dict.fromkeys((a, b) for g in tops for a, b, _ in g[:n_show]))
            pool = [pq for pq in pool if pq not in chosen]
    else:
        chosen = [(int(a), int(b)) for a, b in bigrams]
        for a, b in chosen:
            if not (0 <= a < V and 0 <= b < V):
                raise InputError(f"bigram ({a}, {b}) has a token id outside 0..{V - 1}")
    asked = chosen + pool
    values = pair_values(asked) if asked else torch.zeros(T, 0, dtype=torch.float64)  # [T, n]
    if pool:
        traj = values[:, len(chosen):]
        fall = traj[:-1].max(0).values - traj[-1]
        picked = [i for i in torch.argsort(fall, descending=True, stable=True)[:2].tolist() if float(fall[i]) > 0]
        chosen = chosen + [pool[i] for i in picked]
        values = torch.cat([values[:, : len(asked) - len(pool)], traj[:, picked]], dim=1)
    for a, b in chosen:
        ids_needed |= {a, b}
    strings = dict(zip(sorted(ids_needed), reference.token_strings(sorted(ids_needed))))
    trajectories: dict[str, list[float]] = {}
    for j, (a, b) in enumerate(chosen):
        trajectories[f"{strings[a]!r} → {strings[b]!r}"] = [float(v) for v in values[:, j]]
    top_rows = [[(strings[a], strings[b], math.exp(lp)) for a, b, lp in g[:n_show]] for g in tops]
    return DynamicsResult(
        labels=labels,
        steps=steps,
        path=path,
        top_n=top,
        exclude_self=exclude_self,
        top=top_rows,
        top_exact=exact,
        hit_ratio=hit,
        mass_own=mass_own,
        mass_corpus=mass_corpus,
        trajectories=trajectories,
        losses=list(losses) if losses is not None else None,
        model_names=[s.name for s in summaries],
        score=summaries[0].score if summaries else "logprob",
    )


def bigram_dynamics(
    models: Sequence[ResidualModel],
    *,
    labels: Sequence[str] | None = None,
    steps: Sequence[int | None] | None = None,
    path: str = "direct",
    top: int = 1000,
    k: int = 128,
    n_show: int = 10,
    unigram: Float[Tensor, "v"] | None = None,
    corpus_text: str | None = None,
    bigrams: Sequence[tuple[int, int]] | None = None,
    losses: Sequence[float] | None = None,
    exclude_self: bool = True,
    order: int = 0,
    score: str | None = None,
) -> DynamicsResult:
    """Bigram dynamics of the checkpoints ``models`` (module doc).

    ``unigram``: p(a) ``[V]`` for the pseudo-joint masses (None: not computed);
    ``corpus_text``: the text whose most frequent bigrams give mass_corpus (needs ``unigram``);
    ``bigrams``: (a, b) id pairs to trace (None: chosen automatically).
    For checkpoints evaluated on a Ray cluster see :func:`jetex.apps.dynamics_ray.bigram_dynamics_ray`.
    """
    models = list(models)
    check_series(models)
    _check_args(len(models), labels, steps, losses, top)
    cpairs = _corpus_pairs(models[-1], unigram, corpus_text, top, exclude_self)
    summaries = [checkpoint_summary(m, path, top=top, k=k, exclude_self=exclude_self, order=order, corpus_pairs=cpairs,
                                    score=score) for m in models]

    def pair_values(pairs: list[tuple[int, int]]) -> Tensor:
        return torch.stack([pair_logprobs(m, path, pairs, exclude_self, order) for m in models])

    return _assemble(summaries, pair_values, models[-1], labels=labels, steps=steps, path=path, top=top, n_show=n_show,
                     unigram=unigram, corpus_pairs=cpairs, bigrams=bigrams, losses=losses, exclude_self=exclude_self)


def _md_token(s: str) -> str:
    return repr(s)[1:-1].replace("|", "\\|").replace("`", "'")


def dynamics_markdown(res: DynamicsResult) -> str:
    """Table 4 (top bigrams per checkpoint) and the per-checkpoint numbers, as Markdown."""
    lines = [f"Top-{len(res.top[0]) if res.top else 0} `{res.path}` bigrams per checkpoint by {res.score} "
             "(Table 4 style; a→b P(b|a)):", ""]
    lines.append("| rank | " + " | ".join(res.labels) + " |")
    lines.append("|---:|" + "---|" * len(res.labels))
    n = max((len(t) for t in res.top), default=0)
    for r in range(n):
        cells = []
        for t in res.top:
            if r < len(t):
                a, b, p = t[r]
                cells.append(f"`{_md_token(a)}`→`{_md_token(b)}` {p:.2f}")
            else:
                cells.append("")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines += ["", f"Per checkpoint (hit ratio of the last checkpoint's top-{res.top_n}; pseudo-joint masses):", ""]
    head = ["checkpoint", "step", "hit ratio", "mass (own top)", "mass (corpus top)"] + (["loss"] if res.losses else [])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---:|" * len(head))
    for i, lab in enumerate(res.labels):
        row = [
            lab,
            "" if res.steps[i] is None else str(res.steps[i]),
            f"{res.hit_ratio[i]:.3f}",
            "" if res.mass_own is None else f"{res.mass_own[i]:.4f}",
            "" if res.mass_corpus is None else f"{res.mass_corpus[i]:.4f}",
        ] + ([f"{res.losses[i]:.3f}"] if res.losses else [])
        lines.append("| " + " | ".join(row) + " |")
    if res.trajectories:
        lines += ["", "Trajectories of log P(b|a):", ""]
        lines.append("| bigram | " + " | ".join(res.labels) + " |")
        lines.append("|---|" + "---:|" * len(res.labels))
        for key, vals in res.trajectories.items():
            lines.append(f"| `{_md_token(key)}` | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    if not all(res.top_exact):
        lines += ["", "Note: some top lists are not certified exact (a row's kept top-K was too short)."]
    return "\n".join(lines) + "\n"
