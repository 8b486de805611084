"""Jet skip-trigrams through one self-attention head (paper Sec. 4, Table 2; METHODS.md §4).

A trigram path goes η → (one head h of the attention of layer ℓ, with a single isolated
query–key product) → υ. Fix the two-token context [a, b]: a at position 0 (the key), b at
position 1 (the query). With x_t = norm_ℓ(η(t)) the attention block's input norm of the
one-token embedding (η at that token's position), q, k, v the head's projections
(``ResidualModel.head_weights``; q/k norms and rotary embeddings applied at the fixed
positions 1 and 0 — rotary makes the score depend on the offset 1 only):

- attention logit   s(b, a) = q(b@1) · k(a@0) · scale,   s(b, b) = q(b@1) · k(b@1) · scale
- attention prob    p(a | b) = softmax over the two keys = σ(s(b, a) − s(b, b))
- isolated OV term  o(a) = (x_a W_V[h] + b_V[h]) W_O[h]   (then the block's output norm,
  for sandwich-norm models such as Gemma 3)
- path logits       z(a, ·) = U γ_{L+1}(o(a))   (order 0, unit weight; γ_{L+1} is a norm,
  so the factor p(a|b) multiplying the term would only rescale it before the norm)
- OV probability    P_OV(c | a) = softmax_c z(a, c)   over the full vocabulary

Score of the skip-trigram (a … b → c):

    S(a, b, c) = p(a | b) · P_OV(c | a),     log S = log p(a|b) + log P_OV(c|a)

"b attends to the earlier a, and the head then promotes c". The score factors into a
query–key table T[b, a] = log p(a|b) and an OV table O[a, c] = log P_OV(c|a) that share
only a, so the exact top-K over all V³ triples is found without enumerating them: for
every a, the top-K of T[·, a] over b and of O[a, ·] over c (sorted lists A, C), then the
top-K of A_i + C_j lies among the pairs with (i+1)(j+1) ≤ K (entry (i, j) is dominated by
the (i+1)(j+1) entries above-left of it in the sorted grid); merging those candidates over
all a gives the exact top-K. Cost O(V² (d_h + d)) for the tables instead of O(V³).

The b_O bias of the attention block belongs to no head and is left out.

**Key-specific trigrams in the head's real context** (:func:`top_keyed_trigrams`; see
``docs/ngram_scores.md``). The score above has two weaknesses on real models: the 2-key
softmax over [a, b] ignores the BOS token every real context starts with (the attention
sink: in SmolLM2's first layer it takes a third or more of b's attention), so p(a|b) is
≈ 1 almost everywhere; and P_OV(c|a) is dominated by what the head outputs for ANY key
(its default output), so most "trigrams" share one c. The keyed score places the context
as the model sees it, [BOS, a, b] (BOS at position 0, a at 1, b at 2; just [a, b] at 0, 1
for tokenizers without a BOS token), and centres the OV logits over the keys:

    p(a | b)  = softmax over the keys {BOS@0, a@1, b@2} of q(b@2)·k(·)·scale, entry a@1
    ΔO(a, c)  = z(a, c) − mean_{a'} z(a', c)      (z as above, a' over the N key tokens)
    K(a, b, c) = p(a | b) · ΔO(a, c)

i.e. how much the head, attending to a from b in the real context, moves the logit of c
beyond its default output. K factors like S (a non-negative query–key table times an OV
table sharing a), so the same staircase search finds the exact top-K among the triples
with K > 0 (for ΔO < 0 the product's order reverses and the staircase bound does not
apply; such triples are never in a top list while K positive triples exist).
``limit_vocab=N`` restricts a, b and c to ids 0..N−1 (P_OV is still normalised over the
whole vocabulary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.models.base import ResidualModel
from jetex.ngrams.engine import check_top_k, input_count
from jetex.ngrams.paths import TrigramPath
from jetex.ngrams.topk import stable_topk  # noqa: F401  (re-exported)
from jetex.expand.numerics import logsumexp


@dataclass
class TrigramTable:
    """Top-K skip-trigrams (a … b → c) of one head, best first.

    ``context_ids`` a, ``input_ids`` b, ``output_ids`` c: ``[K]``; ``logscore`` = log S,
    ``attn_logprob`` = log p(a|b), ``ov_logprob`` = log P_OV(c|a), ``ov_logit`` = z(a, c): ``[K]``.
    """

    path: str
    layer: int
    head: int
    context_ids: np.ndarray
    input_ids: np.ndarray
    output_ids: np.ndarray
    logscore: np.ndarray
    attn_logprob: np.ndarray
    ov_logprob: np.ndarray
    ov_logit: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.context_ids)
        for f in ("input_ids", "output_ids", "logscore", "attn_logprob", "ov_logprob", "ov_logit"):
            if getattr(self, f).shape != (n,):
                raise ValueError(f"TrigramTable.{f} must have shape [{n}]")

    def __len__(self) -> int:
        return len(self.context_ids)

    @property
    def score(self) -> np.ndarray:
        """S = p(a|b) · P_OV(c|a)."""
        return np.exp(self.logscore.astype(np.float64))

    def rows(self, model: ResidualModel | None = None) -> list[dict]:
        """One dict per trigram (with token strings when a model with a tokenizer is given)."""
        strs = (lambda ids: model.token_strings(ids)) if model is not None else (lambda ids: [f"<{i}>" for i in ids])
        a, b, c = strs(self.context_ids.tolist()), strs(self.input_ids.tolist()), strs(self.output_ids.tolist())
        return [
            dict(rank=i + 1, context_id=int(self.context_ids[i]), context=a[i], input_id=int(self.input_ids[i]),
                 input=b[i], output_id=int(self.output_ids[i]), output=c[i], score=float(self.score[i]),
                 attn_prob=float(math.exp(self.attn_logprob[i])), ov_prob=float(math.exp(self.ov_logprob[i])),
                 ov_logit=float(self.ov_logit[i]))
            for i in range(len(self))
        ]


@dataclass
class TrigramChunk:
    """The top-K trigram candidates whose key token a lies in one chunk of the vocabulary."""

    batch_index: int
    table: TrigramTable


# ---------------------------------------------------------------------------------------
# the head's pieces
# ---------------------------------------------------------------------------------------
class _Head:
    """Per-head tensors of one attention block used by trigram paths."""

    def __init__(self, model: ResidualModel, path: TrigramPath) -> None:
        from jetex.models.adapters import attention_of

        self.model = model
        self.path = path
        self.block = attention_of(model.block(path.block))
        if self.block is None:  # pragma: no cover - parse_path checked it
            raise InputError(f"block {model.block(path.block).name} has no attention")
        window = getattr(self.block, "window", None)
        if window is not None and int(window) < 2:
            raise InputError(f"{path.name}: sliding window {window} hides position 0 from position 1; no trigram exists")
        hw = model.head_weights(path.block)
        h = path.head
        self.hw = hw
        self.W_Q, self.W_K, self.W_V, self.W_O = hw.W_Q[h], hw.W_K[h], hw.W_V[h], hw.W_O[h]
        self.b_Q = None if hw.b_Q is None else hw.b_Q[h]
        self.b_K = None if hw.b_K is None else hw.b_K[h]
        self.b_V = None if hw.b_V is None else hw.b_V[h]
        self.scale = float(hw.scale)
        self.in_norm = getattr(self.block, "in_norm", None)
        self.out_norm = getattr(self.block, "out_norm", None)
        self._pe: tuple[Tensor, Tensor] | None = None

    def normed(self, ids: Int[Tensor, "n"], pos: int) -> Float[Tensor, "n d"]:
        """x_t = norm(η(t)) for ``ids`` placed at position ``pos``."""
        seq = ids.reshape(-1, 1).repeat(1, pos + 1).to(self.model.device)
        x = self.model.embed(seq)[:, pos]
        return self.in_norm(x) if self.in_norm is not None else x

    def _rotate(self, v: Tensor, pos: int) -> Tensor:
        if not self.hw.rotary:
            return v
        from jetex.models.adapters import apply_rotary

        if self._pe is None:
            like = self.W_Q.new_zeros(1, 2, self.W_Q.shape[0])
            cos, sin = self.block.position_embeddings(3, like)
            self._pe = (cos[0].to(v.dtype), sin[0].to(v.dtype))  # [3, r]: positions 0, 1, 2
        cos, sin = self._pe[0][pos], self._pe[1][pos]
        r = cos.shape[-1]
        return torch.cat((apply_rotary(v[..., :r], cos, sin), v[..., r:]), dim=-1)

    def q(self, x: Float[Tensor, "n d"], pos: int) -> Float[Tensor, "n e"]:
        q = x @ self.W_Q
        if self.b_Q is not None:
            q = q + self.b_Q
        if self.hw.q_norm is not None:
            q = self.hw.q_norm(q)
        return self._rotate(q, pos)

    def k(self, x: Float[Tensor, "n d"], pos: int) -> Float[Tensor, "n e"]:
        k = x @ self.W_K
        if self.b_K is not None:
            k = k + self.b_K
        if self.hw.k_norm is not None:
            k = self.hw.k_norm(k)
        return self._rotate(k, pos)

    def ov(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        """o(a) = (x_a W_V + b_V) W_O, through the block's output norm where it has one."""
        v = x @ self.W_V
        if self.b_V is not None:
            v = v + self.b_V
        o = v @ self.W_O
        return self.out_norm(o) if self.out_norm is not None else o

    def query_side(self, b_ids: Int[Tensor, "n"]) -> tuple[Float[Tensor, "n e"], Float[Tensor, "n"]]:
        """(q(b@1), s(b, b)) for the query tokens."""
        xb = self.normed(b_ids, 1)
        qb = self.q(xb, 1)
        sbb = (qb * self.k(xb, 1)).sum(-1) * self.scale
        return qb, sbb

    def ov_logits(self, a_ids: Int[Tensor, "n"]) -> Float[Tensor, "n v"]:
        """z(a, ·) = U γ_{L+1}(o(a)) (+ bias) over the full vocabulary."""
        o = self.ov(self.normed(a_ids, 0))
        return self.model.unembed(self.model.final_norm(o[:, None, :]))[:, 0]


def attention_logprob_table(model: ResidualModel, path: TrigramPath, a_ids: Int[Tensor, "na"], b_ids: Int[Tensor, "nb"]) -> Float[Tensor, "nb na"]:
    """T[b, a] = log p(a | b) for the context [a, b] (a at position 0, b at 1)."""
    head = _Head(model, path)
    with torch.inference_mode():
        qb, sbb = head.query_side(b_ids)
        ka = head.k(head.normed(a_ids, 0), 0)
        return torch.nn.functional.logsigmoid(qb @ ka.T * head.scale - sbb[:, None]).clone()


def ov_logprob_table(model: ResidualModel, path: TrigramPath, a_ids: Int[Tensor, "na"]) -> tuple[Float[Tensor, "na v"], Float[Tensor, "na v"]]:
    """(O[a, c] = log P_OV(c | a), z(a, c)) over the full vocabulary."""
    head = _Head(model, path)
    with torch.inference_mode():
        z = head.ov_logits(a_ids)
        return torch.log_softmax(z, -1).clone(), z.clone()


# ---------------------------------------------------------------------------------------
# exact factored top-K search
# ---------------------------------------------------------------------------------------
def _staircase(k: int, na: int, nc: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Index pairs (i, j), i < na, j < nc, with (i+1)(j+1) ≤ k: where the top-k of a sorted sum grid lies."""
    ii, jj = [], []
    for i in range(min(k, na)):
        for j in range(min(k // (i + 1), nc)):
            ii.append(i)
            jj.append(j)
    return torch.tensor(ii, dtype=torch.long, device=device), torch.tensor(jj, dtype=torch.long, device=device)


def _order(a: np.ndarray, b: np.ndarray, c: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Indices sorting by (score desc, a, b, c): the deterministic order of trigram tables."""
    return np.lexsort((c, b, a, -s.astype(np.float64)))


def _select(tables: list[TrigramTable], k: int, path: TrigramPath) -> TrigramTable:
    cat = {f: np.concatenate([getattr(t, f) for t in tables]) for f in
           ("context_ids", "input_ids", "output_ids", "logscore", "attn_logprob", "ov_logprob", "ov_logit")}
    o = _order(cat["context_ids"], cat["input_ids"], cat["output_ids"], cat["logscore"])[:k]
    return TrigramTable(path.name, path.layer, path.head, **{f: v[o] for f, v in cat.items()})


def trigram_chunk_size(model: ResidualModel, budget_bytes: int = 256 << 20) -> int:
    """Rows of a per chunk so the [chunk, V] OV logits stay within ``budget_bytes``."""
    per_row = model.vocab_size * 4 * 2
    return int(max(1, min(4096, budget_bytes // per_row)))


def iter_trigram_chunks(
    model: ResidualModel,
    path: TrigramPath,
    *,
    top_k: int,
    limit_vocab: int | None = None,
    chunk_size: int | None = None,
    skip: frozenset[int] | set[int] = frozenset(),
) -> Iterator[TrigramChunk]:
    """Exact factored search, one chunk of key tokens a at a time (chunks in id order).

    Each yielded chunk holds the top-K trigrams whose a lies in that chunk; the top-K of the
    union of all chunks is the exact top-K over all N³ triples. Chunks in ``skip`` are not
    computed (resuming).
    """
    N = input_count(model, limit_vocab)
    check_top_k(top_k, N**3, of="possible trigrams")
    cs = chunk_size or trigram_chunk_size(model)
    head = _Head(model, path)
    dev = model.device
    # inference mode is entered per chunk, never across a ``yield`` (a consumer that stops early
    # must not be left in inference mode until the generator is collected)
    with torch.inference_mode():
        all_ids = torch.arange(N, device=dev)
        qb, sbb = head.query_side(all_ids)  # [N, e], [N]
        kb = min(top_k, N)
        si, sj = _staircase(top_k, kb, kb, dev)
    for bi, start in enumerate(range(0, N, cs)):
        if bi in skip:
            continue
        with torch.inference_mode():
            a_ids = all_ids[start : start + cs]
            ka = head.k(head.normed(a_ids, 0), 0)
            D = ka @ qb.T * head.scale - sbb[None, :]  # [Ca, N]: s(b,a) − s(b,b)
            Dv, Bi = stable_topk(D, kb)
            A = torch.nn.functional.logsigmoid(Dv)
            z = head.ov_logits(a_ids)  # [Ca, V]
            lse = logsumexp(z, -1, keepdim=True)
            Zv, Ci = stable_topk(z[:, :N], kb)
            C = Zv - lse
            cand = A[:, si] + C[:, sj]  # [Ca, P]
            flat = cand.reshape(-1)
            kk = min(top_k, flat.numel())
            top = torch.topk(flat, kk).indices
            # ties at the cut are resolved in _select by (score, a, b, c); include all equal to the cut
            cut = flat[top].min()
            top = (flat >= cut).nonzero().flatten()
            r, p = top // cand.shape[1], top % cand.shape[1]
            i, j = si[p], sj[p]
            t = TrigramTable(
                path.name, path.layer, path.head,
                context_ids=a_ids[r].cpu().numpy(),
                input_ids=Bi[r, i].cpu().numpy(),
                output_ids=Ci[r, j].cpu().numpy(),
                logscore=cand[r, p].float().cpu().numpy(),
                attn_logprob=A[r, i].float().cpu().numpy(),
                ov_logprob=C[r, j].float().cpu().numpy(),
                ov_logit=Zv[r, j].float().cpu().numpy(),
            )
            chunk = TrigramChunk(bi, _select([t], top_k, path))
        yield chunk


def n_trigram_chunks(model: ResidualModel, limit_vocab: int | None, chunk_size: int | None = None) -> int:
    N = input_count(model, limit_vocab)
    cs = chunk_size or trigram_chunk_size(model)
    return (N + cs - 1) // cs


def top_trigrams(
    model: ResidualModel,
    path: TrigramPath,
    *,
    top_k: int = 10,
    limit_vocab: int | None = None,
    chunk_size: int | None = None,
) -> TrigramTable:
    """The exact top-K skip-trigrams of one head by S(a, b, c), found by the factored search."""
    chunks = [c.table for c in iter_trigram_chunks(model, path, top_k=top_k, limit_vocab=limit_vocab, chunk_size=chunk_size)]
    return _select(chunks, top_k, path)


def merge_trigram_tables(tables: list[TrigramTable], top_k: int, path: TrigramPath) -> TrigramTable:
    """The top-K of several candidate tables of one head, in the deterministic order."""
    return _select(tables, top_k, path)


def top_trigrams_brute_force(
    model: ResidualModel,
    path: TrigramPath,
    *,
    top_k: int = 10,
    limit_vocab: int | None = None,
) -> TrigramTable:
    """The oracle: S(a, b, c) for every one of the N³ triples, then the top-K.

    p(a|b) comes from the full two-token attention of the head on each context [a, b]
    (query–key scores for both keys, causal mask, softmax); P_OV from the decoded OV term.
    Only for small N.
    """
    from jetex.models.adapters import apply_rotary

    N = input_count(model, limit_vocab)
    head = _Head(model, path)
    hw = head.hw
    dev = model.device
    tables: list[TrigramTable] = []
    with torch.inference_mode():
        ids = torch.arange(N, device=dev)
        x0, x1 = head.normed(ids, 0), head.normed(ids, 1)
        z = head.ov_logits(ids)
        O = torch.log_softmax(z, -1)[:, :N]  # O[a, c]
        causal = torch.ones(2, 2, dtype=torch.bool, device=dev).triu(1)
        ca = max(1, (1 << 22) // (N * N))
        for start in range(0, N, ca):
            a_ids = ids[start : start + ca]
            a = a_ids.repeat_interleave(N)  # pairs (a, b), b fastest
            b = ids.repeat(len(a_ids))
            X = torch.stack([x0[a], x1[b]], dim=1)  # [Ca·N, 2, d]: the context [a, b]
            q = X @ head.W_Q + (0 if head.b_Q is None else head.b_Q)
            k = X @ head.W_K + (0 if head.b_K is None else head.b_K)
            if hw.q_norm is not None:
                q = hw.q_norm(q)
            if hw.k_norm is not None:
                k = hw.k_norm(k)
            if hw.rotary:
                cos, sin = head.block.position_embeddings(2, X)
                r = cos.shape[-1]
                q = torch.cat((apply_rotary(q[..., :r], cos, sin), q[..., r:]), dim=-1)
                k = torch.cat((apply_rotary(k[..., :r], cos, sin), k[..., r:]), dim=-1)
            scores = (q @ k.transpose(-1, -2) * hw.scale).masked_fill(causal, float("-inf"))
            logp = torch.log_softmax(scores, -1)[:, 1, 0].reshape(len(a_ids), N)  # log p(a | b)
            S = logp[:, :, None] + O[a_ids][:, None, :]  # [Ca, b, c]
            flat = S.reshape(-1)
            cut = torch.topk(flat, min(top_k, flat.numel())).values.min()
            sel = (flat >= cut).nonzero().flatten()
            ai, rem = sel // (N * N), sel % (N * N)
            bi, ci = rem // N, rem % N
            tables.append(TrigramTable(
                path.name, path.layer, path.head,
                context_ids=a_ids[ai].cpu().numpy(), input_ids=bi.cpu().numpy(), output_ids=ci.cpu().numpy(),
                logscore=S[ai, bi, ci].float().cpu().numpy(), attn_logprob=logp[ai, bi].float().cpu().numpy(),
                ov_logprob=O[a_ids[ai], ci].float().cpu().numpy(), ov_logit=z[a_ids[ai], ci].float().cpu().numpy(),
            ))
    return _select(tables, top_k, path)


def head_summaries(
    model: ResidualModel,
    layer: int = 0,
    *,
    top_k: int = 5,
    limit_vocab: int | None = None,
) -> list[TrigramTable]:
    """Top trigrams of every head of one attention layer (the paper's Table 2 view)."""
    from jetex.ngrams.paths import parse_path

    return [top_trigrams(model, p, top_k=top_k, limit_vocab=limit_vocab) for p in parse_path(model, f"attn:{layer}")]  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# key-specific trigrams in the head's real context
# ---------------------------------------------------------------------------------------
@dataclass
class KeyedTrigramTable:
    """Top-K key-specific skip-trigrams (a … b → c) of one head (module doc), best first.

    ``context``: the context the head sees (``"[BOS, a, b]"`` or ``"[a, b]"``);
    ``context_ids`` a, ``input_ids`` b, ``output_ids`` c, ``score`` K = ``attn_prob`` ·
    ``ov_centred``, ``attn_prob`` p(a | b) in that context, ``ov_centred`` z(a, c) − mean_a' z(a', c),
    ``ov_logit`` z(a, c): ``[K]`` each.
    """

    path: str
    layer: int
    head: int
    context: str
    context_ids: np.ndarray
    input_ids: np.ndarray
    output_ids: np.ndarray
    score: np.ndarray
    attn_prob: np.ndarray
    ov_centred: np.ndarray
    ov_logit: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.context_ids)
        for f in ("input_ids", "output_ids", "score", "attn_prob", "ov_centred", "ov_logit"):
            if getattr(self, f).shape != (n,):
                raise ValueError(f"KeyedTrigramTable.{f} must have shape [{n}]")

    def __len__(self) -> int:
        return len(self.context_ids)

    def __repr__(self) -> str:
        return f"KeyedTrigramTable({self.path}, {len(self)} trigrams, context {self.context})"

    def rows(self, model: ResidualModel | None = None) -> list[dict]:
        """One dict per trigram (with token strings when a model with a tokenizer is given)."""
        strs = (lambda ids: model.token_strings(ids)) if model is not None else (lambda ids: [f"<{i}>" for i in ids])
        a, b, c = strs(self.context_ids.tolist()), strs(self.input_ids.tolist()), strs(self.output_ids.tolist())
        return [
            dict(rank=i + 1, context_id=int(self.context_ids[i]), context=a[i], input_id=int(self.input_ids[i]),
                 input=b[i], output_id=int(self.output_ids[i]), output=c[i], score=float(self.score[i]),
                 attn_prob=float(self.attn_prob[i]), ov_centred=float(self.ov_centred[i]), ov_logit=float(self.ov_logit[i]))
            for i in range(len(self))
        ]

    def to_dict(self) -> dict:
        return {"path": self.path, "layer": self.layer, "head": self.head, "context": self.context, "rows": self.rows()}


def _bos_id(model: ResidualModel) -> int | None:
    tok = getattr(model, "tokenizer", None)
    bos = getattr(tok, "bos_token_id", None) if tok is not None else None
    return None if bos is None else int(bos)


def keyed_attention_logprob_table(
    model: ResidualModel, path: TrigramPath, a_ids: Int[Tensor, "na"], b_ids: Int[Tensor, "nb"], bos: int | None = None,
) -> Float[Tensor, "nb na"]:
    """log p(a | b) ``[nb, na]`` in the context [BOS, a, b] (positions 0, 1, 2; without ``bos``:
    [a, b] at 0, 1, the paper's two keys): the head's softmax over all keys, entry a."""
    head = _Head(model, path)
    with torch.inference_mode():
        return _keyed_attention(head, a_ids, b_ids, bos).clone()


def _keyed_attention(head: _Head, a_ids: Tensor, b_ids: Tensor, bos: int | None) -> Tensor:
    pa, pb = (1, 2) if bos is not None else (0, 1)
    xb = head.normed(b_ids, pb)
    qb = head.q(xb, pb)  # [nb, e]
    sbb = (qb * head.k(xb, pb)).sum(-1) * head.scale  # [nb]
    ka = head.k(head.normed(a_ids, pa), pa)  # [na, e]
    sab = qb @ ka.T * head.scale  # [nb, na]
    others = sbb[:, None]
    if bos is not None:
        kbos = head.k(head.normed(torch.tensor([bos], device=b_ids.device), 0), 0)  # [1, e]
        sbos = (qb @ kbos.T)[:, 0] * head.scale
        others = torch.logaddexp(sbb, sbos)[:, None]
    return sab - torch.logaddexp(sab, others)


def top_keyed_trigrams(
    model: ResidualModel,
    path: TrigramPath,
    *,
    top_k: int = 10,
    limit_vocab: int | None = None,
    chunk_size: int | None = None,
    bos: int | None | str = "model",
) -> KeyedTrigramTable:
    """The exact top-K key-specific skip-trigrams of one head by K(a, b, c) (module doc), over
    a, b, c < N (N = ``limit_vocab`` or V). ``bos``: the BOS token id placed at position 0
    (``"model"``: the tokenizer's; None: the two-key context [a, b])."""
    N = input_count(model, limit_vocab)
    check_top_k(top_k, N**3, of="possible trigrams")
    b0 = _bos_id(model) if bos == "model" else bos
    cs = chunk_size or trigram_chunk_size(model)
    head = _Head(model, path)
    dev = model.device
    tables = []
    with torch.inference_mode():
        all_ids = torch.arange(N, device=dev)
        # mean OV logit over the N keys, per output c < N
        zbar = torch.zeros(N, dtype=torch.float64, device=dev)
        for start in range(0, N, cs):
            zbar += head.ov_logits(all_ids[start : start + cs])[:, :N].double().sum(0)
        zbar /= N
        kb = min(top_k, N)
        si, sj = _staircase(top_k, kb, kb, dev)
        for start in range(0, N, cs):
            a_ids = all_ids[start : start + cs]
            T = _keyed_attention(head, a_ids, all_ids, b0).T.exp()  # [Ca, N]: p(a | b)
            Tv, Bi = stable_topk(T, kb)
            z = head.ov_logits(a_ids)[:, :N]
            O = z.double() - zbar[None, :]
            Ov, Ci = stable_topk(O, kb)
            cand = Tv.double()[:, si] * Ov[:, sj]  # [Ca, P]
            flat = cand.reshape(-1)
            kk = min(top_k, flat.numel())
            cut = torch.topk(flat, kk).values.min()
            top = (flat >= cut).nonzero().flatten()
            r, p = top // cand.shape[1], top % cand.shape[1]
            i, j = si[p], sj[p]
            tables.append(dict(context_ids=a_ids[r].cpu().numpy(), input_ids=Bi[r, i].cpu().numpy(),
                               output_ids=Ci[r, j].cpu().numpy(), score=cand[r, p].cpu().numpy(),
                               attn_prob=Tv[r, i].double().cpu().numpy(), ov_centred=Ov[r, j].cpu().numpy(),
                               ov_logit=z.gather(1, Ci)[r, j].double().cpu().numpy()))
    return _select_keyed(tables, top_k, path, "[BOS, a, b]" if b0 is not None else "[a, b]")


def _select_keyed(tables: list[dict], k: int, path: TrigramPath, context: str) -> KeyedTrigramTable:
    cat = {f: np.concatenate([t[f] for t in tables]) for f in tables[0]}
    o = _order(cat["context_ids"], cat["input_ids"], cat["output_ids"], cat["score"])[:k]
    return KeyedTrigramTable(path.name, path.layer, path.head, context, **{f: v[o] for f, v in cat.items()})


def top_keyed_trigrams_brute_force(
    model: ResidualModel,
    path: TrigramPath,
    *,
    top_k: int = 10,
    limit_vocab: int | None = None,
    bos: int | None | str = "model",
) -> KeyedTrigramTable:
    """The oracle of :func:`top_keyed_trigrams`: K(a, b, c) for every one of the N³ triples, the
    attention p(a | b) read from the full head attention on each context (all its keys,
    causal mask, softmax). Only for small N."""
    from jetex.models.adapters import apply_rotary

    N = input_count(model, limit_vocab)
    b0 = _bos_id(model) if bos == "model" else bos
    head = _Head(model, path)
    hw = head.hw
    dev = model.device
    with torch.inference_mode():
        ids = torch.arange(N, device=dev)
        z = head.ov_logits(ids)[:, :N].double()
        O = z - z.mean(0, keepdim=True)  # [a, c]
        a = ids.repeat_interleave(N)
        b = ids.repeat(N)
        cols = ([torch.full_like(a, b0)] if b0 is not None else []) + [a, b]
        T = len(cols)
        X = torch.stack([head.normed(c, p) for p, c in enumerate(cols)], dim=1)  # [N·N, T, d]
        q = X @ head.W_Q + (0 if head.b_Q is None else head.b_Q)
        k = X @ head.W_K + (0 if head.b_K is None else head.b_K)
        if hw.q_norm is not None:
            q = hw.q_norm(q)
        if hw.k_norm is not None:
            k = hw.k_norm(k)
        if hw.rotary:
            cos, sin = head.block.position_embeddings(T, X)
            r = cos.shape[-1]
            q = torch.cat((apply_rotary(q[..., :r], cos, sin), q[..., r:]), dim=-1)
            k = torch.cat((apply_rotary(k[..., :r], cos, sin), k[..., r:]), dim=-1)
        causal = torch.ones(T, T, dtype=torch.bool, device=dev).triu(1)
        scores = (q @ k.transpose(-1, -2) * hw.scale).masked_fill(causal, float("-inf"))
        p = torch.softmax(scores, -1)[:, T - 1, T - 2].reshape(N, N).double()  # [a, b]: p(a | b)
        S = p[:, :, None] * O[:, None, :]  # [a, b, c]
        flat = S.reshape(-1)
        o = _order(np.repeat(np.arange(N), N * N), np.tile(np.repeat(np.arange(N), N), N), np.tile(np.arange(N), N * N),
                   flat.cpu().numpy())[:top_k]
        ai, rem = o // (N * N), o % (N * N)
        bi, ci = rem // N, rem % N
        return KeyedTrigramTable(path.name, path.layer, path.head, "[BOS, a, b]" if b0 is not None else "[a, b]",
                                 context_ids=ai, input_ids=bi, output_ids=ci, score=flat.cpu().numpy()[o],
                                 attn_prob=p.cpu().numpy()[ai, bi], ov_centred=O.cpu().numpy()[ai, ci],
                                 ov_logit=z.cpu().numpy()[ai, ci])
