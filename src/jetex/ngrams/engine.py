"""Exhaustive evaluation of bigram paths over the whole vocabulary (paper Sec. 4, "jet bi-grams").

For a bigram path (see :mod:`jetex.ngrams.paths`) and every input token t of the
vocabulary (or of ``0..limit_vocab−1``), in fixed batches of consecutive ids:

- logits z(t, ·) = U e(t) (+ bias) ``[B, V]`` with one big matmul into a reused buffer;
- log-sum-exp over the full vocabulary (kept per input: probabilities are P(c | t) =
  exp(z_c − lse)); with ``exclude_self`` the self-transition c = t is removed and the
  softmax is renormalised over the other V − 1 tokens;
- the top-K outputs per input token (ties broken by the lower token id);
- candidates for the global top-N over all (input, output) pairs, ranked by log P(c | t)
  (ties: lower input id, then lower output id). A pair can be in the global top-N only if
  it is in its row's top-N; rows whose K-th log-probability is below the N-th best seen so
  far (θ) cannot contribute beyond their top-K, so only the other rows get a deeper top-N.
  This is exact for any θ that is a lower bound of the final N-th best.
- self-transition statistics (tied embeddings push ``direct`` towards its input token):
  the probability of c = t in the full softmax and whether t is the full argmax.

A V × V matrix is never held: the working memory is one ``[B, V]`` buffer (two when the
global top-N is deeper than K). Results are deterministic: fixed batch order,
stable tie-breaking, and the same arithmetic per batch whether a run is resumed or not.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.models.base import ResidualModel
from jetex.ngrams.paths import BigramPath
from jetex.ngrams.topk import RowChunks, stable_topk, sum_exp

DEFAULT_BUFFER_BYTES = 192 << 20


# ---------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------
@dataclass
class GlobalCandidates:
    """Pairs (input t, output c) ranked by their score (``scores``; log P(c|t) when not given):
    ``[n]`` arrays, best first."""

    input_ids: np.ndarray
    output_ids: np.ndarray
    logits: np.ndarray
    logprobs: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scores is None:
            self.scores = self.logprobs
        n = len(self.input_ids)
        for f in ("output_ids", "logits", "logprobs", "scores"):
            if getattr(self, f).shape != (n,):
                raise ValueError(f"GlobalCandidates.{f} must have shape [{n}]")

    def __len__(self) -> int:
        return len(self.input_ids)

    @staticmethod
    def empty() -> "GlobalCandidates":
        z = np.zeros(0, dtype=np.float32)
        return GlobalCandidates(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), z, z.copy(), z.copy())

    def merged(self, other: "GlobalCandidates", n: int) -> "GlobalCandidates":
        """The best n of both, in the deterministic order (score desc, input, output)."""
        cat = [np.concatenate([getattr(self, f), getattr(other, f)]) for f in ("input_ids", "output_ids", "logits", "logprobs", "scores")]
        o = np.lexsort((cat[1], cat[0], -cat[4].astype(np.float64)))[:n]
        return GlobalCandidates(*(c[o] for c in cat))

    def threshold(self, n: int) -> float:
        """The n-th best score so far (−inf with fewer than n)."""
        return float(self.scores[n - 1]) if len(self) >= n else float("-inf")


@dataclass
class BigramBatch:
    """Results for one batch of consecutive input tokens ``input_ids [B]``.

    ``top_ids / top_logits / top_logprobs [B, K]`` (best first), ``lse [B]`` (log-sum-exp of
    the ranking softmax), ``self_logit / self_logprob [B]`` (c = t in the full softmax),
    ``self_top1 [B]`` (t is the full argmax), ``candidates`` for the global top-N;
    ``mean_logit / std_logit [B]`` (μ, σ of the row over its candidates,
    :mod:`jetex.ngrams.scores`), ``col_lse [V]`` (log Σ_{t in batch} P(c | t), for the mean
    output distribution — or, for the ``zpmi`` column pass, log Σ_t softmax(ζ(t, ·))(c); None
    when not accumulated), ``top_scores [B, K]`` (the run's score of the top-K; the top-K is
    ranked by it), ``lse_z [B]`` (lse_ζ of each row: ``zpmi`` runs and the zpmi column pass only).
    """

    batch_index: int
    input_ids: np.ndarray
    top_ids: np.ndarray
    top_logits: np.ndarray
    top_logprobs: np.ndarray
    lse: np.ndarray
    self_logit: np.ndarray
    self_logprob: np.ndarray
    self_top1: np.ndarray
    candidates: GlobalCandidates
    mean_logit: np.ndarray | None = None
    std_logit: np.ndarray | None = None
    col_lse: np.ndarray | None = None
    top_scores: np.ndarray | None = None
    score: str = "logprob"
    lse_z: np.ndarray | None = None

    def __post_init__(self) -> None:
        B = len(self.input_ids)
        K = self.top_ids.shape[1] if self.top_ids.ndim == 2 else -1
        if self.top_scores is None:
            self.top_scores = self.top_logprobs
        for f in ("top_ids", "top_logits", "top_logprobs", "top_scores"):
            if getattr(self, f).shape != (B, K):
                raise ValueError(f"BigramBatch.{f} must have shape [{B}, K]")
        for f in ("lse", "self_logit", "self_logprob", "self_top1", "mean_logit", "std_logit", "lse_z"):
            v = getattr(self, f)
            if v is not None and v.shape != (B,):
                raise ValueError(f"BigramBatch.{f} must have shape [{B}]")


@dataclass
class BigramTable:
    """A whole bigram path in memory: per-input top-K ``[N, K]`` plus per-input stats ``[N]``
    and the global top-N pairs (see :class:`BigramBatch` for the fields). ``score`` ranks the
    rows and the global top; ``top_scores [N, K]`` are its values; ``logq [V]`` is the log mean
    output distribution (None when not accumulated) — for ``zpmi`` the mean z-scored one, log q_ζ;
    ``lse_z [N]``: lse_ζ per input (``zpmi`` only)."""

    path: str
    order: int
    exclude_self: bool
    input_ids: np.ndarray
    top_ids: np.ndarray
    top_logits: np.ndarray
    top_logprobs: np.ndarray
    lse: np.ndarray
    self_logprob: np.ndarray
    self_top1: np.ndarray
    global_top: GlobalCandidates = field(default_factory=GlobalCandidates.empty)
    score: str = "logprob"
    top_scores: np.ndarray | None = None
    mean_logit: np.ndarray | None = None
    std_logit: np.ndarray | None = None
    logq: np.ndarray | None = None
    lse_z: np.ndarray | None = None

    def __post_init__(self) -> None:
        N = len(self.input_ids)
        K = self.top_ids.shape[1]
        if self.top_scores is None:
            self.top_scores = self.top_logprobs
        for f in ("top_ids", "top_logits", "top_logprobs", "top_scores"):
            if getattr(self, f).shape != (N, K):
                raise ValueError(f"BigramTable.{f} must have shape [{N}, {K}]")
        for f in ("lse", "self_logprob", "self_top1", "mean_logit", "std_logit", "lse_z"):
            v = getattr(self, f)
            if v is not None and v.shape != (N,):
                raise ValueError(f"BigramTable.{f} must have shape [{N}]")

    @property
    def self_transition_rate(self) -> float:
        """Fraction of input tokens whose most likely next token (full softmax) is themselves."""
        return float(self.self_top1.mean()) if len(self.self_top1) else 0.0

    def row(self, token_id: int) -> dict:
        """Top-K of one input token: ids, logits, probabilities."""
        i = int(np.searchsorted(self.input_ids, token_id))
        if i >= len(self.input_ids) or self.input_ids[i] != token_id:
            raise InputError(f"token id {token_id} is not among this table's inputs")
        return dict(output_ids=self.top_ids[i].tolist(), logits=self.top_logits[i].tolist(),
                    probs=np.exp(self.top_logprobs[i].astype(np.float64)).tolist())


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def compute_threads() -> Iterator[int]:
    """Use every CPU this process may run on for torch's intra-op threads (restored after).

    ``$JETEX_NUM_THREADS`` overrides the count (e.g. 1 for stable timings on a shared machine).
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    env = os.environ.get("JETEX_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        n = int(env)
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def check_top_k(top_k: object, n_outputs: int, what: str = "top K", of: str = "possible next tokens") -> int:
    """Validate a top-K size against the number of candidates (one-line :class:`InputError`)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"{what} must be a positive integer, got {top_k!r}")
    if top_k > n_outputs:
        raise InputError(f"{what} = {top_k} is larger than the {n_outputs} {of}")
    return top_k


def check_global_top(global_top: object, n_pairs: int) -> int:
    """Validate the global top-N size (0: no global ranking)."""
    if global_top == 0 or global_top is None:
        return 0
    return check_top_k(global_top, n_pairs, "global top N", "possible (input, output) pairs")


def input_count(model: ResidualModel, limit_vocab: int | None) -> int:
    """Number of input tokens: the vocabulary, or ids 0..limit_vocab−1."""
    V = model.vocab_size
    if limit_vocab is None:
        return V
    if isinstance(limit_vocab, bool) or not isinstance(limit_vocab, int) or limit_vocab < 1:
        raise InputError(f"--limit-vocab must be a positive integer, got {limit_vocab!r}")
    return min(limit_vocab, V)


def default_batch_size(model: ResidualModel, budget_bytes: int = DEFAULT_BUFFER_BYTES) -> int:
    """Largest power of two B ≤ 2048 with a ``[B, V]`` float buffer within ``budget_bytes``."""
    per_row = model.vocab_size * torch.finfo(model.dtype).bits // 8
    b = 1
    while b * 2 <= 2048 and b * 2 * per_row <= budget_bytes:
        b *= 2
    return b


# ---------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------
def iter_bigram_batches(
    model: ResidualModel,
    path: BigramPath,
    *,
    top_k: int = 10,
    order: int = 0,
    exclude_self: bool = False,
    limit_vocab: int | None = None,
    batch_size: int | None = None,
    global_top: int = 100,
    skip: frozenset[int] | set[int] = frozenset(),
    seen: GlobalCandidates | None = None,
    progress: bool = False,
    score: str = "logprob",
    logq: Tensor | np.ndarray | None = None,
    column_stats: bool = False,
    column_of: str = "pmi",
    desc: str | None = None,
) -> Iterator[BigramBatch]:
    """Evaluate ``path`` on every input token, batch after batch (see the module docstring).

    Batch i covers input ids [i·B, (i+1)·B). Batches in ``skip`` are not computed
    (resuming); ``seen`` holds global candidates already known (from committed batches) so
    the deep top-N threshold θ starts where it was. ``score`` (:mod:`jetex.ngrams.scores`)
    ranks the per-row top-K and the global candidates; ``pmi`` needs ``logq`` ``[V]``, the
    path's log mean output distribution, and ``zpmi`` its log mean z-scored output
    distribution log q_ζ (:func:`column_logq` with that score). Every batch carries its rows'
    statistics (lse, μ, σ: what re-scoring into another score of the same row order needs;
    ``zpmi`` also lse_ζ). ``column_stats``: also return each batch's column log-sums
    (``col_lse``) from which the column distribution of ``column_of`` is assembled (``pmi``:
    q, ``zpmi``: q_ζ) — only those scores need it, and it costs a fifth of the matmul, so it
    is off by default and computed by :func:`column_logq`'s own pass. ``desc``: the progress
    bar's label (default: the path's name).
    """
    from jetex.ngrams.scores import COLUMN_SCORES, check_score, missing_columns

    score = check_score(score)
    if score in COLUMN_SCORES and logq is None:
        raise InputError(f"score {score!r} needs {missing_columns(score)}; compute it first")
    if check_score(column_of) not in COLUMN_SCORES:
        raise ValueError(f"column_of must be one of {COLUMN_SCORES}, got {column_of!r}")
    n_out = model.vocab_size - (1 if exclude_self else 0)
    K = check_top_k(top_k, n_out)
    N = input_count(model, limit_vocab)
    G = check_global_top(global_top, N * n_out)
    B = default_batch_size(model) if batch_size is None else batch_size
    if isinstance(B, bool) or not isinstance(B, int) or B < 1:
        raise InputError(f"batch size must be a positive integer, got {B!r}")
    V = model.vocab_size
    dev = model.device
    U = model.unembedding_matrix
    bias = model.unembedding_bias
    best = seen if seen is not None else GlobalCandidates.empty()
    n_batches = (N + B - 1) // B
    bar = None
    if progress:
        from tqdm.auto import tqdm

        done = sum(1 for i in skip if 0 <= i < n_batches)
        bar = tqdm(total=N, initial=min(N, done * B), unit="tok", desc=desc or path.name, file=sys.stderr,
                   dynamic_ncols=True, smoothing=0.1, leave=True)
    grad_ctx = torch.inference_mode if order == 0 else torch.no_grad
    try:
        # the grad mode is entered per batch, never across a ``yield``: a consumer that stops early
        # (an interrupted extraction) must not be left in inference mode until the generator is collected
        with compute_threads():
            # half-precision models (bfloat16/float16) produce their logits in that precision, but the
            # softmax, top-K and statistics are taken in float32 (a 16-bit log-sum-exp is too coarse)
            half = model.dtype in (torch.float16, torch.bfloat16)
            with grad_ctx():
                buf = torch.empty(min(B, N), V, dtype=torch.float32 if half else model.dtype, device=dev)
                # scratch keeps z intact for the row moments, the deeper top-G and the column statistics
                scratch = torch.empty_like(buf)
                lq = None if logq is None else torch.as_tensor(logq).to(device=dev, dtype=buf.dtype)
            for bi in range(n_batches):
                if bi in skip:
                    continue
                with grad_ctx():
                    ids = torch.arange(bi * B, min(N, (bi + 1) * B), device=dev)
                    b = len(ids)
                    e = path.decoded(model, ids, order)
                    out = buf[:b]
                    if half:
                        out.copy_(torch.mm(e.to(U.dtype), U.T))
                    else:
                        torch.mm(e.to(buf.dtype), U.T, out=out)
                    if bias is not None:
                        out.add_(bias)
                    batch = _post(out, ids, bi, K, G, exclude_self, best.threshold(G) if G else float("inf"),
                                  None if scratch is None else scratch[:b], score=score, logq=lq,
                                  column_stats=column_stats, column_of=column_of)
                if G:
                    best = best.merged(batch.candidates, G)
                yield batch
                if bar is not None:
                    bar.update(b)
    finally:
        if bar is not None:
            bar.close()


def _post(
    z: Float[Tensor, "b v"],
    ids: Int[Tensor, "b"],
    batch_index: int,
    K: int,
    G: int,
    exclude_self: bool,
    theta: float,
    scratch: Tensor | None = None,
    *,
    score: str = "logprob",
    logq: Tensor | None = None,
    column_stats: bool = False,
    column_of: str = "pmi",
) -> BigramBatch:
    """Top-K, log-sum-exp, row and column statistics, self statistics and global candidates of
    one batch of logits.

    ``theta``: the G-th best score among the pairs of earlier batches (−inf if none).
    ``scratch`` (shape of z): where exp runs when whole rows are needed (else z is
    overwritten, which is fine without a deeper global top-G or column statistics).

    Ranking key per row: z itself for logprob / logit / zlogit (each an increasing function
    of z within a row), z − log q for pmi, ζ − log q_ζ for zpmi (ζ = (z − μ)/σ); the score of
    an entry is then key − shift(a) (shift = lse, μ, lse_ζ; zlogit also divides by σ).
    ``column_of``: which column distribution ``column_stats`` accumulates (pmi: of P, zpmi:
    of softmax(ζ))."""
    from jetex.ngrams.scores import flat_rows, row_moments, zero_finite, zeta_lse, zeta_rows

    b = z.shape[0]
    rows = torch.arange(b, device=z.device)
    self_logit = z[rows, ids].clone()
    mean, std = row_moments(z, self_logit if exclude_self else None, out=scratch)
    if exclude_self:
        z[rows, ids] = float("-inf")
    chunks = RowChunks.of(z)
    reranks = score in ("pmi", "zpmi")
    zvals, zidx = stable_topk(z, K if not reranks else 1, chunks)
    m = zvals[:, :1]
    # log-sum-exp (jetex.ngrams.topk.sum_exp: chunks far below the max skipped, exp floored;
    # an excluded self-transition, now −inf, adds at most 1.6e−38 to a sum ≥ 1); z stays intact
    lse = m[:, 0] + torch.log(sum_exp(z, m[:, 0], chunks, out=scratch))
    self_ids = ids if exclude_self else None
    lse_z = None
    if score == "zpmi" or (column_stats and column_of == "zpmi"):
        assert scratch is not None
        # lse_ζ: ζ is O(1–10) (unit spread), its floored log-sum-exp is exact to float32
        lse_z = zeta_lse(zeta_rows(z, mean, std, self_ids, out=scratch), out=scratch)

    def build_key() -> Tensor:
        """The ranking key, in scratch for the re-ranking scores (z itself otherwise)."""
        if score == "pmi":
            return torch.sub(z, logq[None, :], out=scratch)  # type: ignore[index]  # −inf stays −inf
        if score == "zpmi":
            return zeta_rows(z, mean, std, self_ids, out=scratch).sub_(logq[None, :])  # type: ignore[index]
        return z

    if reranks:
        assert logq is not None and scratch is not None
        key = build_key()
        kvals, idx = stable_topk(key, K)
        vals = z.gather(1, idx)
    else:
        key, kvals, idx, vals = z, zvals, zidx, zvals
    logprobs = vals - lse[:, None]

    def to_score(kv: Tensor, r: Tensor | None = None) -> Tensor:
        """Scores of key values kv [n, k] of rows r (all rows when None)."""
        sel = (lambda t: t) if r is None else (lambda t: t[r])  # noqa: E731
        if score in ("logprob", "pmi"):
            return kv - sel(lse)[:, None]
        if score == "zpmi":
            return kv - sel(lse_z)[:, None]
        c = kv - sel(mean)[:, None]
        if score == "logit":
            return c
        sd, mu = sel(std)[:, None], sel(mean)[:, None]
        flat = flat_rows(mu, sd)  # a constant row prefers nothing: zlogit 0
        return torch.where(flat, zero_finite(c), c / torch.where(flat, torch.ones_like(sd), sd))

    top_scores = to_score(kvals)
    col_lse = None
    if column_stats:
        from jetex.ngrams.scores import batch_column_lse

        if column_of == "zpmi":  # log Σ_rows softmax(ζ(a, ·)) = log-sum-exp over rows of ζ − lse_ζ
            col_lse = batch_column_lse(zeta_rows(z, mean, std, self_ids, out=scratch), lse_z, out=scratch)
        else:
            col_lse = batch_column_lse(z, lse, out=scratch)
        col_lse = col_lse.cpu().numpy()
        if reranks:  # scratch held the key: rebuild it for the deep search below
            key = build_key()
    # global candidates: every row's top-K, plus a deeper top-G where the row could still reach
    # the top-G: rows whose K-th score is at least θ, the G-th best of the pairs seen so far
    # (earlier batches and this batch's top-K: real pairs, so θ never exceeds the final G-th best)
    deep_rows = deep_vals = deep_idx = None
    if G > K:
        if top_scores.numel() >= G:
            theta = max(theta, float(torch.topk(top_scores.reshape(-1), G).values[-1]))
        deep = (top_scores[:, K - 1] >= theta).nonzero().flatten()
        if len(deep):
            dv, di = stable_topk(key[deep], G)  # at most the whole row
            deep_rows, deep_vals, deep_idx = deep, dv[:, K:], di[:, K:]
    if exclude_self:
        lse_full = torch.logaddexp(lse, self_logit)
        self_top1 = (self_logit > zvals[:, 0]) | ((self_logit == zvals[:, 0]) & (ids < zidx[:, 0]))
    else:
        lse_full = lse
        self_top1 = zidx[:, 0] == ids
    self_logprob = self_logit - lse_full
    cand = GlobalCandidates.empty()
    if G:
        ci, co, cl, cp, cs = [ids[:, None].expand(b, K)], [idx], [vals], [logprobs], [top_scores]
        if deep_rows is not None:
            dz = z[deep_rows].gather(1, deep_idx)
            ci.append(ids[deep_rows][:, None].expand(-1, deep_vals.shape[1]))
            co.append(deep_idx)
            cl.append(dz)
            cp.append(dz - lse[deep_rows][:, None])
            cs.append(to_score(deep_vals, deep_rows))
        flat = [torch.cat([t.reshape(-1) for t in xs]).cpu().numpy() for xs in (ci, co, cl, cp, cs)]
        cand = cand.merged(GlobalCandidates(flat[0].astype(np.int64), flat[1].astype(np.int64), flat[2], flat[3],
                                            flat[4].astype(np.float32)), G)
    np_ = lambda t: t.cpu().numpy()  # noqa: E731
    return BigramBatch(
        batch_index=batch_index,
        input_ids=np_(ids).astype(np.int64),
        top_ids=np_(idx).astype(np.int64),
        top_logits=np_(vals),
        top_logprobs=np_(logprobs),
        lse=np_(lse),
        self_logit=np_(self_logit),
        self_logprob=np_(self_logprob),
        self_top1=np_(self_top1),
        candidates=cand,
        mean_logit=None if mean is None else np_(mean),
        std_logit=None if std is None else np_(std),
        col_lse=col_lse,
        top_scores=np_(top_scores).astype(np.float32),
        score=score,
        lse_z=None if lse_z is None else np_(lse_z),
    )


def column_logq(
    model: ResidualModel,
    path: BigramPath,
    *,
    order: int = 0,
    exclude_self: bool = False,
    limit_vocab: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    score: str = "pmi",
) -> Float[Tensor, "v"]:
    """log q(c) ``[V]`` (float64): the path's mean output distribution over the input tokens,
    q(c) = (1/N) Σ_t P(c | t), by one streamed pass (no top-K). ``score="zpmi"``: the mean
    z-scored output distribution instead, q_ζ(c) = (1/N) Σ_t softmax(ζ(t, ·))(c), ζ the zlogit."""
    from jetex.ngrams.scores import ColumnLSE

    acc = ColumnLSE.empty(model.vocab_size)
    for batch in iter_bigram_batches(model, path, top_k=1, order=order, exclude_self=exclude_self,
                                     limit_vocab=limit_vocab, batch_size=batch_size, global_top=0, progress=progress,
                                     column_stats=True, column_of=score, desc=f"{path.name} first pass ({score})"):
        acc.add_partial(batch.col_lse, len(batch.input_ids))
    return acc.logq()


def bigram_table(
    model: ResidualModel,
    path: BigramPath,
    *,
    top_k: int = 10,
    order: int = 0,
    exclude_self: bool = False,
    limit_vocab: int | None = None,
    batch_size: int | None = None,
    global_top: int = 100,
    progress: bool = False,
    score: str = "logprob",
    logq: Tensor | np.ndarray | None = None,
    column_stats: bool = False,
) -> BigramTable:
    """Evaluate a bigram path on every input token and keep the results in memory.

    ``score`` ranks the rows and the global top (:mod:`jetex.ngrams.scores`); for ``pmi`` the
    mean output distribution (for ``zpmi`` the mean z-scored one, log q_ζ) is computed first
    by one more pass (unless ``logq`` is given). The table's ``logq`` is that distribution: for
    ``pmi`` / ``zpmi``, or for any other score with ``column_stats`` (q, accumulated in the same
    pass); else None."""
    from jetex.ngrams.scores import COLUMN_SCORES, ColumnLSE, check_score

    score = check_score(score)
    if score in COLUMN_SCORES and logq is None:
        logq = column_logq(model, path, order=order, exclude_self=exclude_self, limit_vocab=limit_vocab,
                           batch_size=batch_size, progress=progress, score=score)
    batches = list(iter_bigram_batches(model, path, top_k=top_k, order=order, exclude_self=exclude_self,
                                       limit_vocab=limit_vocab, batch_size=batch_size, global_top=global_top,
                                       progress=progress, score=score, logq=logq,
                                       column_stats=column_stats and logq is None))
    cat = lambda f: np.concatenate([getattr(x, f) for x in batches])  # noqa: E731
    best = GlobalCandidates.empty()
    for x in batches:
        best = best.merged(x.candidates, global_top)
    if logq is None and column_stats:
        acc = ColumnLSE.empty(model.vocab_size)
        for x in batches:
            acc.add_partial(x.col_lse, len(x.input_ids))
        logq = acc.logq()
    return BigramTable(path.name, order, exclude_self, cat("input_ids"), cat("top_ids"), cat("top_logits"),
                       cat("top_logprobs"), cat("lse"), cat("self_logprob"), cat("self_top1"), best, score=score,
                       top_scores=cat("top_scores"), mean_logit=cat("mean_logit"), std_logit=cat("std_logit"),
                       logq=None if logq is None else np.asarray(torch.as_tensor(logq).double().cpu()),
                       lse_z=cat("lse_z") if score == "zpmi" else None)
