"""An ablation protocol for the roles of MLPs and attention heads (issue 12, item 3).

Question: does a component (the MLP of layer N, or head h of attention layer L) drive the
next tokens of ITS n-grams in real text more than a random component of the same kind?

1. **Patterns from the corpus.** The corpus (default: the standard library's docstrings,
   :mod:`jetex.apps.corpus`) is split into paragraphs and tokenized; every adjacent pair
   (a, b) is a candidate bigram, every (a … c) with a among the ``window`` − 1 tokens before
   the token that precedes c a candidate skip-trigram. The candidates are ranked by the
   component's own jet score (:func:`mlp_pattern_scores`, :func:`head_pattern_scores`),
   the best first; each pattern contributes at most ``per_pattern`` contexts, until
   ``max_contexts``. A context is BOS + the tokens of its paragraph up to the last one
   before the target (at most ``window`` tokens in all); the **target** is the corpus's real
   next token.
2. **Ablation.** ``mean`` (default): the component's output (the MLP branch's contribution
   to the residual stream — after its output norm for sandwich-norm models; a head's slice of
   the input of the attention output projection) is replaced at every position but BOS by
   its mean over the corpus (``n_mean`` paragraphs, BOS positions excluded); ``zero``: by
   zero. Forward hooks on the Hugging Face modules: the model's own forward pass runs.
3. **Effect** on each context i: Δ_i = log P_ablated(target_i) − log P_intact(target_i).
4. **Control**: ``n_controls`` random components of the same kind (other MLPs; other heads,
   of any attention layer), fixed seed, ablated the same way on the same contexts:
   Δ^k_i for control k.
5. **Effect size**: E = mean_i Δ_i − mean_{k,i} Δ^k_i (nats; negative: ablating the
   component lowers its targets more than a random one does), with a percentile bootstrap
   interval that resamples contexts AND controls (``n_boot`` draws, fixed seed); Cohen's d
   = E / sd_i(Δ_i − mean_k Δ^k_i); and the component's rank among the controls:
   p_rank = (1 + #{k : mean_i Δ^k_i ≤ mean_i Δ_i}) / (K + 1) (one-sided: small when the
   component lowers its targets more than every control). Verdict: "lowers its targets" when
   the interval lies below 0, "raises its targets" above 0, else "no effect detected".

Fewer than ``min_contexts`` contexts: :class:`~jetex.errors.InputError` saying how many the
corpus had.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jetex.errors import InputError
from jetex.models.base import ResidualModel

MODES = ("mean", "zero")


# --------------------------------------------------------------------------- components
@dataclass(frozen=True)
class Component:
    """An MLP (``kind='mlp'``, transformer layer ``layer``) or a head (``kind='head'``)."""

    kind: str
    layer: int
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "head"):
            raise ValueError("Component.kind must be 'mlp' or 'head'")
        if (self.kind == "head") != (self.head is not None):
            raise ValueError("Component.head is given exactly for heads")

    @property
    def name(self) -> str:
        return f"mlp.{self.layer}" if self.kind == "mlp" else f"attn.{self.layer}.h{self.head}"

    def __repr__(self) -> str:
        return self.name


def parse_component(spec: str) -> Component:
    """``mlp.N`` or ``attn.L.hH`` (also ``attn.L.H``) → :class:`Component`."""
    m = re.fullmatch(r"mlp\.(\d+)", spec.strip())
    if m:
        return Component("mlp", int(m.group(1)))
    m = re.fullmatch(r"attn\.(\d+)\.h?(\d+)", spec.strip())
    if m:
        return Component("head", int(m.group(1)), int(m.group(2)))
    raise InputError(f"bad component {spec!r}: use mlp.N or attn.L.hH")


def all_components(model: ResidualModel, kind: str) -> list[Component]:
    """Every MLP or every head of the model."""
    from jetex.ngrams.paths import attention_layers, mlp_blocks

    if kind == "mlp":
        return [Component("mlp", n) for n in sorted(mlp_blocks(model))]
    out = []
    for layer, l in sorted(attention_layers(model).items()):
        H = int(model.head_weights(l).W_O.shape[0])
        out += [Component("head", layer, h) for h in range(H)]
    return out


def _mlp_site(model: ResidualModel, layer: int) -> nn.Module:
    """The module whose output the MLP of ``layer`` adds to the stream (its output norm, if any)."""
    from jetex.ngrams.paths import mlp_blocks

    blocks = mlp_blocks(model)
    if layer not in blocks:
        raise InputError(f"MLP layer {layer} out of range; MLP layers are {min(blocks)}..{max(blocks)}")
    g = blocks[layer][1]
    out_norm = getattr(g, "out_norm", None)
    if isinstance(out_norm, nn.Module):
        return out_norm
    mod = getattr(g, "mlp", g)
    if not isinstance(mod, nn.Module):
        raise InputError(f"cannot find the MLP module of layer {layer} to ablate")
    return mod


def _head_site(model: ResidualModel, layer: int, head: int) -> tuple[nn.Module, int]:
    """(the output projection of attention ``layer``, d_head)."""
    from jetex.models.adapters import attention_of
    from jetex.ngrams.paths import attention_layers

    al = attention_layers(model)
    if layer not in al:
        raise InputError(f"attention layer {layer} out of range; layers are {min(al)}..{max(al)}")
    hw = model.head_weights(al[layer])
    H, dh = int(hw.W_O.shape[0]), int(hw.W_O.shape[1])
    if not 0 <= head < H:
        raise InputError(f"head {head} out of range; attention layer {layer} has heads 0..{H - 1}")
    attn = getattr(attention_of(model.block(al[layer])), "attn", None)
    for name in ("o_proj", "c_proj", "dense", "out_proj"):
        mod = getattr(attn, name, None)
        if isinstance(mod, nn.Module):
            return mod, dh
    raise InputError(f"cannot find the output projection of attention layer {layer} to ablate a head")


def check_component(model: ResidualModel, c: Component) -> None:
    """Raise :class:`InputError` when ``c`` does not exist in ``model``."""
    if c.kind == "mlp":
        _mlp_site(model, c.layer)
    else:
        _head_site(model, c.layer, c.head)  # type: ignore[arg-type]


def _out(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


class ablate:
    """Context manager: replace ``component``'s output by ``value`` (``[d]``; a zero vector for
    zero-ablation) at every position ≥ ``start`` (1 skips BOS)."""

    def __init__(self, model: ResidualModel, component: Component, value: Tensor, start: int = 1) -> None:
        self.model, self.c, self.value, self.start = model, component, value, start
        self.handle: Any = None

    def __enter__(self) -> "ablate":
        s, v = self.start, self.value
        if self.c.kind == "mlp":
            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                y = _out(output).clone()
                y[:, s:] = v.to(y.dtype)
                return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y

            self.handle = _mlp_site(self.model, self.c.layer).register_forward_hook(hook)
        else:
            mod, dh = _head_site(self.model, self.c.layer, self.c.head)  # type: ignore[arg-type]
            h = self.c.head

            def pre(module: nn.Module, args: tuple) -> tuple:
                x = args[0].clone()
                x[:, s:, h * dh : (h + 1) * dh] = v.to(x.dtype)  # type: ignore[operator]
                return (x,) + tuple(args[1:])

            self.handle = mod.register_forward_pre_hook(pre)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()


# --------------------------------------------------------------------------- corpus
def bos_ids(model: ResidualModel) -> list[int]:
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    return [] if bos is None else [int(bos)]


def paragraphs(text: str, min_chars: int = 20) -> list[str]:
    """Paragraphs of a text (blank-line separated, whitespace collapsed, short ones dropped)."""
    out = []
    for p in re.split(r"\n\s*\n", text):
        p = " ".join(p.split())
        if len(p) >= min_chars:
            out.append(p)
    return out


def tokenize_docs(model: ResidualModel, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text (no special tokens)."""
    if model.tokenizer is None:
        raise InputError(f"model {model.name!r} has no tokenizer; the ablation needs one for the corpus")
    enc = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [np.asarray(e, dtype=np.int64) for e in enc if len(e) >= 2]


@dataclass
class Context:
    """BOS + tokens, and the real next token (target) after the last one; ``pattern``: index."""

    ids: list[int]
    target: int
    pattern: int


def frequent_tokens(docs: Sequence[np.ndarray], vocab_size: int, n: int) -> Int[Tensor, "n"]:
    """The ``n`` most frequent token ids of the corpus (ties by id)."""
    counts = np.bincount(np.concatenate(list(docs)), minlength=vocab_size)
    order = np.argsort(-counts, kind="stable")[:n]
    order = order[counts[order] > 0]
    return torch.as_tensor(np.sort(order))


def _occurrences(docs: Sequence[np.ndarray], kind: str, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a, c, doc, pos) of every candidate: pos = index of the target c in its doc.

    ``bigram``: a = the token before c. ``skip``: every a among the ``window`` − 2 tokens
    before the token that precedes c (a skip-trigram a … b → c with b = the token before c).
    """
    A, C, D, P = [], [], [], []
    for d, t in enumerate(docs):
        n = len(t)
        if kind == "bigram":
            pos = np.arange(1, n)
            A.append(t[:-1]); C.append(t[1:]); D.append(np.full(n - 1, d)); P.append(pos)
        else:
            for off in range(2, window):
                if n <= off:
                    break
                pos = np.arange(off, n)
                A.append(t[: n - off]); C.append(t[off:]); D.append(np.full(n - off, d)); P.append(pos)
    if not A:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, z
    return np.concatenate(A), np.concatenate(C), np.concatenate(D), np.concatenate(P)


def select_contexts(
    model: ResidualModel,
    docs: Sequence[np.ndarray],
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    rows: Tensor,
    *,
    kind: str,
    window: int = 24,
    per_pattern: int = 4,
    max_contexts: int = 48,
) -> tuple[list[Context], list[tuple[int, int, float, int]]]:
    """Contexts of the best-scoring corpus patterns (module doc, step 1).

    ``score(a, c)`` → the component's score of each candidate (a in ``rows``). Returns the
    contexts and the patterns used: (a, c, score, occurrences in the corpus).
    """
    a, c, d, p = _occurrences(docs, kind, window)
    keep = np.isin(a, rows.numpy())
    a, c, d, p = a[keep], c[keep], d[keep], p[keep]
    if a.size == 0:
        return [], []
    V = model.vocab_size
    key = a * V + c
    uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
    ua, uc = uniq // V, uniq % V
    s = score(ua, uc)
    order = np.lexsort((uniq, -s))
    bos = bos_ids(model)
    contexts: list[Context] = []
    used: list[tuple[int, int, float, int]] = []
    by_key: dict[int, list[int]] | None = None
    taken: set[tuple[int, int]] = set()  # (doc, pos): a context is used once
    for j in order:
        if len(contexts) >= max_contexts:
            break
        if not np.isfinite(s[j]):
            continue
        if by_key is None:
            srt = np.argsort(key, kind="stable")
            by_key = {}
            starts = np.searchsorted(key[srt], uniq)
            ends = np.searchsorted(key[srt], uniq, side="right")
            by_key = {int(u): srt[st:en].tolist() for u, st, en in zip(uniq, starts, ends)}
        occ = by_key[int(uniq[j])]
        seen_docs: set[int] = set()
        n_added = 0
        for i in occ:
            if n_added >= per_pattern or len(contexts) >= max_contexts:
                break
            doc, pos = int(d[i]), int(p[i])
            if doc in seen_docs or (doc, pos) in taken:
                continue
            seen_docs.add(doc)
            taken.add((doc, pos))
            toks = docs[doc][max(0, pos - (window - len(bos))) : pos].tolist()
            if kind == "skip" and int(a[i]) not in toks[:-1]:
                continue
            contexts.append(Context(bos + toks, int(c[i]), len(used)))
            n_added += 1
        if n_added:
            used.append((int(ua[j]), int(uc[j]), float(s[j]), int(counts[j])))
    return contexts, used


# --------------------------------------------------------------------------- pattern scores
def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def mlp_pattern_scores(model: ResidualModel, layer: int, rows: Int[Tensor, "r"], score: str | None = None,
                       batch: int = 256) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Score of bigrams (a, b) on the ``mlp:layer`` path, for a in ``rows``, under one of the
    n-gram scores of :mod:`jetex.ngrams.scores` (``logprob``, ``logit``, ``zlogit``, ``pmi``,
    ``zpmi``; default :data:`~jetex.ngrams.scores.DEFAULT_SCORE`), self-transitions excluded
    (−inf); the mean output distribution of ``pmi`` (of ``zpmi``: the mean z-scored one) is the
    mean over ``rows``."""
    from jetex.apps.tables import bigram_path

    return _table_scores(model, lambda ids: bigram_path(model, f"mlp:{layer}").logits(model, ids, 0), rows, score,
                         batch, exclude_self=True)


def head_pattern_scores(model: ResidualModel, layer: int, head: int, rows: Int[Tensor, "r"], score: str | None = None,
                        batch: int = 256) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Score of skip-trigrams (a … → c) of a head from its isolated OV logits z(a, c) (the
    ``attn:L.H`` path of :mod:`jetex.ngrams.trigrams`), for keys a in ``rows``, under one of
    the n-gram scores (as :func:`mlp_pattern_scores`, the rows being z(a, ·); no exclusion):
    e.g. ``pmi`` = log P_OV(c|a) − log mean_{a'∈rows} P_OV(c|a'), what this key makes the head
    promote beyond its default output. The query side is not scored: the real attention of
    the context decides how much b attends to a."""
    from jetex.ngrams.paths import parse_path
    from jetex.ngrams.trigrams import ov_logprob_table

    path = parse_path(model, f"attn:{layer}.{head}")[0]
    return _table_scores(model, lambda ids: ov_logprob_table(model, path, ids)[1], rows, score, batch, exclude_self=False)


def _table_scores(model: ResidualModel, logits_of: Callable[[Tensor], Tensor], rows: Tensor, score: str | None, batch: int,
                  exclude_self: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from jetex.ngrams.scores import COLUMN_SCORES, DEFAULT_SCORE, check_score, column_logprobs, score_rows

    sc = check_score(DEFAULT_SCORE if score is None else score)
    rows = rows.long()
    R, V = rows.numel(), model.vocab_size
    row_of = torch.full((V,), -1, dtype=torch.long)
    row_of[rows] = torch.arange(R)
    log_mean = None
    if sc in COLUMN_SCORES:  # pass 1: log mean_{a'} P(b|a') (zpmi: of softmax(ζ(a', ·))(b))
        acc = torch.zeros(V, dtype=torch.float64)
        with torch.no_grad():
            for sl in _chunks(R, batch):
                ids = rows[sl]
                z = logits_of(ids.to(model.device)).float().cpu()
                acc += column_logprobs(sc, z, ids, exclude_self=exclude_self).double().exp().sum(0)
        log_mean = (acc / R).log()

    def fn(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        out = np.full(a.shape, -np.inf, dtype=np.float64)
        ri = row_of[torch.as_tensor(a)].numpy()
        order = np.argsort(ri, kind="stable")
        with torch.no_grad():
            for sl in _chunks(R, batch):
                ids = rows[sl]
                lo, hi = np.searchsorted(ri[order], [sl.start, sl.stop])
                sel = order[lo:hi]
                if sel.size == 0:
                    continue
                z = logits_of(ids.to(model.device)).float().cpu()
                v = score_rows(sc, z, ids, exclude_self=exclude_self, logq=log_mean)[0]
                out[sel] = v[torch.as_tensor(ri[sel] - sl.start), torch.as_tensor(c[sel])].double().numpy()
        return out

    return fn


# --------------------------------------------------------------------------- evaluation
def target_logprobs(model: ResidualModel, contexts: Sequence[Context], batch: int = 16) -> Float[Tensor, "n"]:
    """log P(target | context) under the model's own forward pass ``[n]`` (right-padded
    batches; causal attention never lets a real position see the padding after it)."""
    out = torch.empty(len(contexts))
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i].ids))
    hf = model.hf
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            T = max(len(contexts[i].ids) for i in idx)
            ids = torch.zeros(len(idx), T, dtype=torch.long)
            for r, i in enumerate(idx):
                c = contexts[i].ids
                ids[r, : len(c)] = torch.tensor(c)
                ids[r, len(c) :] = c[-1]
            last = torch.tensor([len(contexts[i].ids) - 1 for i in idx])
            keep = torch.unique(last)
            lg = hf(input_ids=ids.to(model.device), logits_to_keep=keep.to(model.device)).logits.float().cpu()
            col = torch.searchsorted(keep, last)
            lp = torch.log_softmax(lg[torch.arange(len(idx)), col], -1)
            tg = torch.tensor([contexts[i].target for i in idx])
            out[torch.tensor(idx)] = lp[torch.arange(len(idx)), tg]
    return out


def mean_activations(model: ResidualModel, components: Sequence[Component], docs: Sequence[np.ndarray],
                     n_docs: int = 64, window: int = 24, seed: int = 0) -> dict[Component, Tensor]:
    """Mean output of each component over ``n_docs`` corpus paragraphs (random, fixed seed; at
    most ``window`` tokens each, BOS in front and not counted) ``{component: [d]}``."""
    rng = random.Random(seed)
    pick = rng.sample(range(len(docs)), min(n_docs, len(docs)))
    bos = bos_ids(model)
    s0 = len(bos)
    seqs = [bos + docs[i][: window - s0].tolist() for i in pick]
    sums: dict[Component, Tensor] = {}
    count = [0]
    handles = []
    lengths: list[int] = []

    def mask_sum(y: Tensor) -> Tensor:
        m = torch.zeros(y.shape[:2], dtype=y.dtype, device=y.device)
        for r, L in enumerate(lengths):
            m[r, s0:L] = 1
        return (y * m[..., None]).sum((0, 1)).double().cpu()

    for c in components:
        if c.kind == "mlp":
            def hook(module, args, output, c=c):
                sums[c] = sums.get(c, 0) + mask_sum(_out(output))
            handles.append(_mlp_site(model, c.layer).register_forward_hook(hook))
        else:
            mod, dh = _head_site(model, c.layer, c.head)  # type: ignore[arg-type]

            def pre(module, args, c=c, dh=dh):
                sl = args[0][..., c.head * dh : (c.head + 1) * dh]  # type: ignore[operator]
                sums[c] = sums.get(c, 0) + mask_sum(sl)
            handles.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for s in range(0, len(seqs), 16):
                part = seqs[s : s + 16]
                T = max(len(x) for x in part)
                ids = torch.zeros(len(part), T, dtype=torch.long)
                for r, x in enumerate(part):
                    ids[r, : len(x)] = torch.tensor(x)
                    ids[r, len(x) :] = x[-1]
                lengths[:] = [len(x) for x in part]
                count[0] += sum(L - s0 for L in lengths)
                model.hf(input_ids=ids.to(model.device), logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    if count[0] == 0:
        raise InputError("the corpus has no token to average a component's output over")
    return {c: (v / count[0]).float() for c, v in sums.items()}


# --------------------------------------------------------------------------- statistics
@dataclass
class EffectSize:
    """Effect of ablating a component vs random controls (module doc, step 5)."""

    n_contexts: int
    n_controls: int
    delta: float
    control_delta: float
    effect: float
    ci_low: float
    ci_high: float
    cohen_d: float
    p_rank: float
    level: float = 0.95

    @property
    def verdict(self) -> str:
        if self.ci_high < 0:
            return "lowers its targets"
        if self.ci_low > 0:
            return "raises its targets"
        return "no effect detected"


def effect_size(delta: Float[Tensor, "n"], controls: Float[Tensor, "k n"], *, n_boot: int = 2000, level: float = 0.95,
                seed: int = 0) -> EffectSize:
    """E = mean(Δ) − mean(Δ_controls), a bootstrap interval resampling contexts and controls,
    Cohen's d of the paired differences and the rank of the component among the controls."""
    d = delta.double()
    C = controls.double()
    n, K = d.numel(), C.shape[0]
    if n < 2 or K < 1 or C.shape[1] != n:
        raise InputError(f"effect size needs >= 2 contexts and >= 1 control with the same contexts (got {n}, {tuple(C.shape)})")
    cbar = C.mean(0)
    E = float(d.mean() - cbar.mean())
    diff = d - cbar
    sd = float(diff.std())
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (n_boot, n), generator=g)
    k = torch.randint(0, K, (n_boot, K), generator=g)
    boot_d = d[i].mean(1)
    # mean over resampled controls (rows k) and resampled contexts (columns i)
    Ck = C[k]                                         # [B, K, n]
    boot_c = torch.gather(Ck, 2, i[:, None, :].expand(-1, K, -1)).mean((1, 2))
    boot = (boot_d - boot_c).numpy()
    lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
    ctl_means = C.mean(1)
    p_rank = (1 + int((ctl_means <= d.mean()).sum())) / (K + 1)
    return EffectSize(n, K, float(d.mean()), float(cbar.mean()), E, float(lo), float(hi),
                      E / sd if sd > 0 else (0.0 if E == 0 else math.copysign(math.inf, E)), p_rank, level)


# --------------------------------------------------------------------------- the protocol
@dataclass
class AblationResult:
    """One component's ablation on the contexts of its corpus patterns, against controls.
    ``patterns`` rows: (a_text, c_text, score, corpus occurrences, contexts used, mean Δ)."""

    component: str
    mode: str
    score: str
    corpus: str
    n_contexts: int
    n_patterns: int
    controls: list[str]
    control_deltas: list[float]
    effect: EffectSize
    patterns: list[tuple[str, str, float, int, int, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return self.effect.verdict

    def __repr__(self) -> str:
        e = self.effect
        return (f"AblationResult({self.component}, {self.mode}: Δ={e.delta:+.3f} vs controls {e.control_delta:+.3f}, "
                f"E={e.effect:+.3f} [{e.ci_low:+.3f}, {e.ci_high:+.3f}], n={self.n_contexts}, {self.verdict})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AblationResult":
        d = {k: v for k, v in d.items() if k != "verdict"}
        d["effect"] = EffectSize(**d["effect"])
        d["patterns"] = [tuple(p) for p in d.get("patterns", [])]
        return cls(**d)


def ablation_study(
    model: ResidualModel,
    components: Sequence[Component],
    docs: Sequence[np.ndarray],
    *,
    corpus_name: str = "corpus",
    mode: str = "mean",
    score: str | None = None,
    rows: int = 2048,
    n_controls: int = 6,
    min_contexts: int = 30,
    max_contexts: int = 48,
    per_pattern: int = 4,
    window: int = 24,
    n_mean: int = 64,
    n_boot: int = 2000,
    seed: int = 0,
    scores: dict[Component, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[AblationResult]:
    """Run the protocol (module doc) for each component. All contexts are found first, so a
    component with fewer than ``min_contexts`` stops the study before any model run.
    ``scores``: optional pattern scorers per component (default: the jet path scores)."""
    import time

    from jetex.ngrams.scores import DEFAULT_SCORE, check_score

    score = check_score(DEFAULT_SCORE if score is None else score)
    if mode not in MODES:
        raise InputError(f"unknown ablation mode {mode!r}; use mean or zero")
    if n_controls < 1:
        raise InputError("the ablation needs >= 1 control component")
    if not docs:
        raise InputError(f"the corpus {corpus_name} has no paragraph of 2 tokens or more")
    for c in components:
        check_component(model, c)
    V = model.vocab_size
    row_ids = frequent_tokens(docs, V, rows)
    plan = []
    for c in components:
        if progress:
            progress(f"{c.name}: scoring its corpus patterns")
        fn = (scores or {}).get(c)
        if fn is None:
            fn = (mlp_pattern_scores(model, c.layer, row_ids, score) if c.kind == "mlp"
                  else head_pattern_scores(model, c.layer, c.head, row_ids, score))  # type: ignore[arg-type]
        ctx, used = select_contexts(model, docs, fn, row_ids, kind="bigram" if c.kind == "mlp" else "skip",
                                    window=window, per_pattern=per_pattern, max_contexts=max_contexts)
        if len(ctx) < min_contexts:
            raise InputError(f"{c.name}: the corpus {corpus_name} has {len(ctx)} contexts containing its top n-grams "
                             f"({len(used)} patterns), {min_contexts} needed (a larger corpus, or --min-contexts)")
        pool = [x for x in all_components(model, c.kind) if x != c]
        rng = random.Random(f"{seed}:{c.name}")
        ctls = rng.sample(pool, min(n_controls, len(pool)))
        if not ctls:
            raise InputError(f"{c.name}: no other component of the same kind to use as control")
        plan.append((c, ctx, used, ctls))
    needed = sorted({x for c, _, _, ctls in plan for x in [c, *ctls]}, key=lambda x: (x.kind, x.layer, x.head or 0))
    if mode == "mean":
        if progress:
            progress(f"mean activations of {len(needed)} components")
        values = mean_activations(model, needed, docs, n_docs=n_mean, window=window, seed=seed)
    else:
        values = {}
    start = len(bos_ids(model))
    results = []
    for c, ctx, used, ctls in plan:
        t0 = time.perf_counter()
        if progress:
            progress(f"{c.name}: ablating it and {len(ctls)} controls on {len(ctx)} contexts")
        base = target_logprobs(model, ctx)

        def run(x: Component) -> Tensor:
            v = values.get(x)
            if v is None:
                v = torch.zeros(_width(model, x))
            with ablate(model, x, v.to(model.device), start=start):
                return target_logprobs(model, ctx) - base

        d = run(c)
        C = torch.stack([run(x) for x in ctls])
        eff = effect_size(d, C, n_boot=n_boot, seed=seed)
        pat_idx = torch.tensor([x.pattern for x in ctx])
        strings = dict(zip(sorted({t for a, b, _, _ in used for t in (a, b)}),
                           model.token_strings(sorted({t for a, b, _, _ in used for t in (a, b)}))))
        pats = []
        for j, (a, b, s, n_occ) in enumerate(used):
            m = pat_idx == j
            pats.append((strings[a], strings[b], s, n_occ, int(m.sum()), float(d[m].mean())))
        results.append(AblationResult(c.name, mode, score, corpus_name, len(ctx), len(used), [x.name for x in ctls],
                                      [float(v) for v in C.mean(1)], eff, pats, time.perf_counter() - t0))
    return results


def _width(model: ResidualModel, c: Component) -> int:
    if c.kind == "mlp":
        return model.d_model
    return _head_site(model, c.layer, c.head)[1]  # type: ignore[arg-type]
