"""Roles of components from their jet n-grams (paper Sec. 5.1, Tables 1 and 2), with the
intervention check.

**MLPs.** For the MLP of transformer layer N, the bigram path ``mlp:N`` (η → MLP_N → υ) is
evaluated over the input vocabulary (all tokens, or ids below ``limit_vocab``) next to the
``direct`` path (η → υ); self-transitions are excluded and renormalised (the jetex
convention). Per MLP:

- ``top``: its global top bigrams by a score of (a, b) on ``mlp:N`` (``score``,
  :mod:`jetex.ngrams.scores`; default: the measured default; ``logprob``: by P_mlp(b | a));
- ``added`` — what the MLP adds: among the MLP path's most probable output per input token
  (its argmax b*(a)), the pairs with the largest Δ = log P_mlp(b* | a) − log P_direct(b* | a),
  restricted to P_mlp(b* | a) ≥ ``min_prob``. The direct log-probabilities come from the
  direct path's decoded term and log-sum-exp, computed once per input token.
- ``role``: a suggested label from a simple, documented HEURISTIC on the ``n_label`` top
  "added" bigrams (:func:`label_role`): a shared output suffix ("-ing": ≥ 20% of outputs are
  word continuations that equal or end with the same string of ≥ 2 letters), same-word
  copying (output = input up to case/leading space, ≥ 20%), word completion (≥ 60% of
  outputs continue the input word), numbers or punctuation (≥ 50%), else next-word
  prediction. It is a hint for a human reader, not a classifier.

**Intervention** (:mod:`jetex.apps.ablation`): the component's n-grams that occur in a real
corpus (default: the Python standard library's docstrings, :mod:`jetex.apps.corpus`), ranked
by the component's own jet score, give ≥ ``min_contexts`` contexts; the component is
mean-ablated (default; zero-ablation as an option) and the change of log P of the corpus's
real next token is compared with random components of the same kind, with an effect size and
a bootstrap interval. For MLPs the n-grams are the bigrams of the ``mlp:N`` path, for the
heads of attention layer L the skip-trigrams (a … b → c) scored from the head's isolated OV
output (``attn:L.H``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jetex.apps.ablation import AblationResult, Component, ablation_study, paragraphs, tokenize_docs
from jetex.apps.tables import bigram_path, default_batch, row_topk
from jetex.errors import InputError
from jetex.models.base import ResidualModel
from jetex.expand.numerics import logsumexp



# --------------------------------------------------------------------------- heuristic labeller
def _is_continuation(s: str) -> bool:
    """A token that continues the previous word (no leading space / word-start marker)."""
    return bool(s) and not s[0].isspace() and s[0] not in "ĠĊ▁"


def _norm(s: str) -> str:
    return s.strip().lstrip("Ġ▁").lower()


def label_role(pairs: Sequence[tuple[str, str]], min_share: float = 0.2) -> tuple[str, str]:
    """A suggested role (label, evidence) for bigrams (a_text, b_text) — a HEURISTIC (module doc)."""
    n = len(pairs)
    if n == 0:
        return "none", "no bigram"
    outs = [b for _, b in pairs]
    cont = [b for b in outs if _is_continuation(b) and any(ch.isalpha() for ch in b)]
    # shared suffix among word continuations
    best, best_n = "", 0
    for L in (4, 3, 2):
        ends = Counter(b.lower()[-L:] for b in cont if len(b) >= L and b[-L:].isalpha())
        if ends:
            s, c = ends.most_common(1)[0]
            if c > best_n:
                best, best_n = s, c
    if best and best_n >= max(2, min_share * n):
        return f"suffix -{best}", f"{best_n}/{n} outputs are word continuations ending in '{best}'"
    copies = sum(1 for a, b in pairs if _norm(a) and _norm(a) == _norm(b))
    if copies >= max(2, min_share * n):
        return "copy (same word, other form)", f"{copies}/{n} outputs repeat the input word"
    if len(cont) >= 0.6 * n:
        common = ", ".join(repr(s) for s, _ in Counter(cont).most_common(3))
        return "word completion", f"{len(cont)}/{n} outputs continue the input word (e.g. {common})"
    digits = sum(1 for b in outs if b.strip() and b.strip().isdigit())
    if digits >= 0.5 * n:
        return "numbers", f"{digits}/{n} outputs are digits"
    punct = sum(1 for b in outs if b.strip() and not any(ch.isalnum() for ch in b))
    if punct >= 0.5 * n:
        common = ", ".join(repr(s) for s, _ in Counter(b.strip() for b in outs).most_common(3))
        return "punctuation / code symbols", f"{punct}/{n} outputs are symbols (e.g. {common})"
    common = ", ".join(repr(s) for s, _ in Counter(outs).most_common(3))
    return "next-word prediction (mixed)", f"most common outputs: {common}"


# --------------------------------------------------------------------------- results
@dataclass
class ComponentRole:
    """A component's characteristic n-grams and suggested role. ``top`` / ``added`` rows:
    (a_text, b_text, P_component, P_direct, Δ log P) for MLPs; (a, b, c, score) for heads."""

    component: str
    kind: str
    top: list[tuple]
    added: list[tuple]
    role: str
    evidence: str
    ablation: AblationResult | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "head"):
            raise ValueError("ComponentRole.kind must be 'mlp' or 'head'")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ablation"] = None if self.ablation is None else self.ablation.to_dict()
        return d


# --------------------------------------------------------------------------- bigram statistics
def _direct_stats(
    model: ResidualModel, rows: Int[Tensor, "n"], batch_size: int
) -> tuple[Float[Tensor, "n d"], Float[Tensor, "n"]]:
    """The direct path's decoded term e(a) ``[n, d]`` and its self-excluded log-sum-exp ``[n]``."""
    p = bigram_path(model, "direct")
    es, lses = [], []
    with torch.no_grad():
        for s in range(0, rows.numel(), batch_size):
            ids = rows[s : s + batch_size]
            e = p.decoded(model, ids.to(model.device), 0)
            logits = model.unembed(e).float().cpu()
            logits[torch.arange(len(ids)), ids] = float("-inf")
            es.append(e.float().cpu())
            lses.append(logsumexp(logits, dim=-1))
    return torch.cat(es), torch.cat(lses)


def mlp_bigrams(
    model: ResidualModel,
    layer: int,
    *,
    direct: tuple[Tensor, Tensor] | None = None,
    limit_vocab: int | None = None,
    n_top: int = 20,
    min_prob: float = 0.05,
    batch_size: int | None = None,
    score: str | None = None,
) -> tuple[list[tuple[int, int, float, float]], list[tuple[int, int, float, float]]]:
    """(top, added) bigrams (a, b, log P_mlp, log P_direct) of the MLP of ``layer`` (module doc);
    ``top`` is ranked by ``score``."""
    from jetex.ngrams.engine import column_logq
    from jetex.ngrams.scores import COLUMN_SCORES, DEFAULT_SCORE, check_score, score_rows

    sc = check_score(DEFAULT_SCORE if score is None else score)
    V = model.vocab_size
    n_in = V if limit_vocab is None else min(V, limit_vocab)
    rows = torch.arange(n_in)
    p = bigram_path(model, f"mlp:{layer}")
    e_dir, lse_dir = direct if direct is not None else _direct_stats(model, rows, batch_size or default_batch(V))
    U = model.unembedding_matrix.detach().float().cpu()
    bias = model.unembedding_bias
    bias = None if bias is None else bias.detach().float().cpu()
    bs = batch_size or default_batch(V)
    top_v: list[Tensor] = []
    top_a: list[Tensor] = []
    top_b: list[Tensor] = []
    top_lp: list[Tensor] = []
    arg_b, arg_lp = [], []
    logq = column_logq(model, p, exclude_self=True, limit_vocab=n_in, score=sc).cpu() if sc in COLUMN_SCORES else None
    with torch.no_grad():
        for s in range(0, n_in, bs):
            ids = rows[s : s + bs]
            sv, lp = score_rows(sc, p.logits(model, ids.to(model.device), 0).float().cpu(), ids, exclude_self=True, logq=logq)
            v, i = row_topk(sv, min(n_top, V - 1))
            top_v.append(v.flatten())
            top_a.append(ids.repeat_interleave(v.shape[1]))
            top_b.append(i.flatten())
            top_lp.append(lp.gather(1, i).flatten())
            lv, li = row_topk(lp, 1)
            arg_b.append(li[:, 0])
            arg_lp.append(lv[:, 0])
    tv, ta, tb, tl = torch.cat(top_v), torch.cat(top_a), torch.cat(top_b), torch.cat(top_lp)
    order = torch.sort(tv, descending=True, stable=True).indices[:n_top]
    b_star, lp_star = torch.cat(arg_b), torch.cat(arg_lp)

    def direct_lp(a: Tensor, b: Tensor) -> Tensor:
        z = (e_dir[a] * U[b]).sum(-1)
        if bias is not None:
            z = z + bias[b]
        return z - lse_dir[a]

    top = [(int(a), int(b), float(v), float(d))
           for a, b, v, d in zip(ta[order], tb[order], tl[order], direct_lp(ta[order], tb[order]))]
    d_star = direct_lp(rows, b_star)
    gain = lp_star - d_star
    if min_prob > 0:
        gain[lp_star < math.log(min_prob)] = float("-inf")
    order = torch.sort(gain, descending=True, stable=True).indices[:n_top]
    added = [(int(rows[i]), int(b_star[i]), float(lp_star[i]), float(d_star[i])) for i in order.tolist()
             if gain[i] > float("-inf")]
    return top, added


# --------------------------------------------------------------------------- ablation
def mlp_module(model: ResidualModel, layer: int) -> nn.Module:
    """The module whose output is the MLP of ``layer`` (the HF MLP module where there is one)."""
    from jetex.ngrams.paths import mlp_blocks

    blocks = mlp_blocks(model)
    if layer not in blocks:
        raise InputError(f"MLP layer {layer} out of range; MLP layers are {sorted(blocks)}")
    fn = blocks[layer][1]
    return getattr(fn, "mlp", fn)


def _zero_output(module: nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]),) + tuple(output[1:])
    return torch.zeros_like(output)


class ablated:
    """Context manager: zero the output of ``module`` (forward hook) or, with ``head``, zero
    that head's slice of the input of ``module`` (an attention output projection)."""

    def __init__(self, module: nn.Module | None, head: int | None = None, head_dim: int | None = None) -> None:
        self.module, self.head, self.head_dim = module, head, head_dim
        self.handle: Any = None

    def __enter__(self) -> "ablated":
        if self.module is None:
            return self
        if self.head is None:
            self.handle = self.module.register_forward_hook(_zero_output)
        else:
            h, dh = self.head, self.head_dim

            def pre(module: nn.Module, args: tuple) -> tuple:
                x = args[0].clone()
                x[..., h * dh : (h + 1) * dh] = 0
                return (x,) + tuple(args[1:])

            self.handle = self.module.register_forward_pre_hook(pre)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()


def last_logits(model: ResidualModel, contexts: Sequence[Sequence[int]]) -> Float[Tensor, "n v"]:
    """The model's logits after the last token of each context ``[n, V]`` (right-padded batch:
    causal attention never lets a real position see the padding after it)."""
    if not contexts:
        return torch.zeros(0, model.vocab_size)
    T = max(len(c) for c in contexts)
    ids = torch.zeros(len(contexts), T, dtype=torch.long)
    for i, c in enumerate(contexts):
        ids[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        ids[i, len(c) :] = int(c[-1])  # padding after the last token (never seen by it)
    last = torch.tensor([len(c) - 1 for c in contexts])
    with torch.no_grad():
        out = []
        for s in range(0, len(contexts), 32):
            lg = model.reference_logits(ids[s : s + 32].to(model.device)).float().cpu()
            out.append(lg[torch.arange(lg.shape[0]), last[s : s + 32]])
    return torch.cat(out)


# --------------------------------------------------------------------------- MLP roles
def mlp_roles(
    model: ResidualModel,
    layers: Sequence[int] | None = None,
    *,
    limit_vocab: int | None = None,
    n_top: int = 20,
    n_label: int = 50,
    min_prob: float = 0.05,
    progress: Callable[[str], None] | None = None,
    score: str | None = None,
) -> list[ComponentRole]:
    """Characteristic bigrams and a suggested role of each MLP in ``layers`` (default: all);
    the ablation is attached by :func:`component_roles`."""
    all_layers = _mlp_layers(model, layers)
    layers = all_layers if layers is None else list(layers)
    V = model.vocab_size
    if limit_vocab is not None and (isinstance(limit_vocab, bool) or not isinstance(limit_vocab, int) or limit_vocab < 2):
        raise InputError(f"limit_vocab must be an integer >= 2, got {limit_vocab!r}")
    n_in = V if limit_vocab is None else min(V, limit_vocab)
    direct = _direct_stats(model, torch.arange(n_in), default_batch(V))
    out = []
    for n in layers:
        if progress:
            progress(f"mlp.{n}: characteristic bigrams")
        top, added_long = mlp_bigrams(model, n, direct=direct, limit_vocab=limit_vocab, n_top=max(n_top, n_label),
                                      min_prob=min_prob, score=score)
        ids = sorted({x for t in top + added_long for x in t[:2]})
        st = dict(zip(ids, model.token_strings(ids)))
        role, evidence = label_role([(st[a], st[b]) for a, b, _, _ in added_long[:n_label]])

        def row(t: tuple[int, int, float, float]) -> tuple[str, str, float, float, float]:
            a, b, lm, ld = t
            return (st[a], st[b], math.exp(lm), math.exp(ld), lm - ld)

        out.append(ComponentRole(f"mlp.{n}", "mlp", [row(t) for t in top[:n_top]], [row(t) for t in added_long[:n_top]],
                                 role, evidence, None))
    return out


def _mlp_layers(model: ResidualModel, layers: Sequence[int] | None) -> list[int]:
    from jetex.ngrams.paths import mlp_blocks

    all_layers = sorted(mlp_blocks(model))
    if not all_layers:
        raise InputError(f"model {model.name} has no MLP blocks")
    for n in layers or []:
        if n not in all_layers:
            raise InputError(f"MLP layer {n} out of range; this model's MLP layers are {all_layers[0]}..{all_layers[-1]}")
    return all_layers


# --------------------------------------------------------------------------- head roles
def _o_proj(model: ResidualModel, layer: int) -> tuple[nn.Module, int]:
    """The output projection of the attention of ``layer`` (input = concatenated heads) and d_head."""
    from jetex.models.adapters import attention_of
    from jetex.ngrams.paths import attention_layers

    attn_l = attention_layers(model)
    if layer not in attn_l:
        raise InputError(f"attention layer {layer} out of range; layers are {sorted(attn_l)}")
    blk = attention_of(model.block(attn_l[layer]))
    attn = getattr(blk, "attn", None)
    for name in ("o_proj", "c_proj", "dense", "out_proj"):
        mod = getattr(attn, name, None)
        if isinstance(mod, nn.Module):
            hw = model.head_weights(attn_l[layer])
            return mod, int(hw.W_O.shape[1])
    raise InputError(f"cannot find the output projection of attention layer {layer} to ablate a head")


def _head_list(model: ResidualModel, layer: int, heads: Sequence[int] | None) -> list[int]:
    from jetex.ngrams.paths import parse_path

    H = len(parse_path(model, f"attn:{layer}"))
    heads = list(range(H)) if heads is None else list(heads)
    for h in heads:
        if not 0 <= h < H:
            raise InputError(f"head {h} out of range; layer {layer} has heads 0..{H - 1}")
    return heads


def head_roles(
    model: ResidualModel,
    layer: int = 0,
    heads: Sequence[int] | None = None,
    *,
    limit_vocab: int | None = None,
    n_top: int = 10,
) -> list[ComponentRole]:
    """Top skip-trigrams (a … b → c) and a suggested role of each head of attention layer
    ``layer`` (exact factored search of :mod:`jetex.ngrams.trigrams`); the ablation is
    attached by :func:`component_roles`."""
    from jetex.ngrams.paths import parse_path
    from jetex.ngrams.trigrams import top_trigrams

    paths = parse_path(model, f"attn:{layer}")
    out = []
    for h in _head_list(model, layer, heads):
        t = top_trigrams(model, paths[h], top_k=n_top, limit_vocab=limit_vocab)  # type: ignore[arg-type]
        rows = t.rows(model)
        top = [(r["context"], r["input"], r["output"], r["score"]) for r in rows]
        role, evidence = label_role([(r["context"], r["output"]) for r in rows])
        out.append(ComponentRole(f"attn.{layer}.h{h}", "head", top, [], role, evidence, None))
    return out


# --------------------------------------------------------------------------- together
def corpus_docs(model: ResidualModel, spec: str) -> list:
    """Token ids of the paragraphs of a corpus spec (a UTF-8 file or ``stdlib-docs``)."""
    from jetex.apps.corpus import read_corpus

    docs = tokenize_docs(model, paragraphs(read_corpus(spec)))
    if not docs:
        raise InputError(f"the corpus {spec} has no paragraph of 2 tokens or more")
    return docs


def component_roles(
    model: ResidualModel,
    layers: Sequence[int] | None = None,
    *,
    head_layer: int | None = None,
    heads: Sequence[int] | None = None,
    limit_vocab: int | None = None,
    n_top: int = 10,
    corpus: str | None = "stdlib-docs",
    ablation: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ComponentRole]:
    """Roles of the MLPs in ``layers`` (``[]``: none) and of the heads of ``head_layer`` (None:
    none), each with the ablation of :func:`jetex.apps.ablation.ablation_study` on ``corpus``
    (None: no ablation; ``ablation``: its keyword options; its ``score`` also ranks the MLP
    tables). The contexts of every component
    are found before any role is computed, so too small a corpus fails at once."""
    mlps = _mlp_layers(model, layers) if layers is None else list(layers)
    _mlp_layers(model, mlps)
    hl = [] if head_layer is None else _head_list(model, head_layer, heads)
    comps = [Component("mlp", n) for n in mlps] + [Component("head", head_layer, h) for h in hl]  # type: ignore[arg-type]
    results: dict[str, AblationResult] = {}
    if corpus is not None and comps:
        docs = corpus_docs(model, corpus)
        for r in ablation_study(model, comps, docs, corpus_name=corpus, progress=progress, **(ablation or {})):
            results[r.component] = r
    # one score for the MLP tables and the ablation's patterns (``ablation["score"]``; None: the default)
    score = (ablation or {}).get("score")
    roles = mlp_roles(model, mlps, limit_vocab=limit_vocab, n_top=n_top, progress=progress, score=score) if mlps else []
    if head_layer is not None and hl:
        roles += head_roles(model, head_layer, hl, limit_vocab=limit_vocab, n_top=n_top)
    for r in roles:
        r.ablation = results.get(r.component)
    return roles
