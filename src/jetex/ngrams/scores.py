"""Scores that rank bigrams (a → b) of a jet path (``docs/ngram_scores.md``).

For a bigram path with logits z(a, ·) ``[V]`` for input token a (see
:mod:`jetex.ngrams.paths`), let C(a) be the candidate outputs: all V tokens, or the V − 1
tokens b ≠ a when self-transitions are excluded (``exclude_self``). Over C(a):

- ``logprob``: log P(b | a) = z(a, b) − log Σ_{b' ∈ C(a)} exp z(a, b')   (the softmax,
  renormalised without the self-transition);
- ``logit``: the path's logit centred per input row, z(a, b) − μ(a), with
  μ(a) = mean_{b' ∈ C(a)} z(a, b');
- ``zlogit``: the centred logit in units of the row's spread, (z(a, b) − μ(a)) / σ(a), with
  σ(a) the (population) standard deviation of z(a, ·) over C(a) (0 for a constant row,
  σ(a) ≤ 1e−12·(1 + |μ(a)|): such a row prefers nothing);
- ``pmi``: log P(b | a) − log q(b), with q(b) = (1/N) Σ_{a'} P(b | a') the path's mean
  output distribution over the N input tokens of the table (P as in ``logprob``);
- ``zpmi``: pmi of the path after each row is brought to unit logit spread. With
  ζ(a, b) = (z(a, b) − μ(a)) / σ(a) the zlogit over C(a) (ζ ≡ 0 on a flat row, as for
  ``zlogit``: its softmax is uniform over C(a)),

      zpmi(a, b) = log softmax_{C(a)}(ζ(a, ·))(b) − log q_ζ(b)
                 = ζ(a, b) − lse_ζ(a) − log q_ζ(b),
      lse_ζ(a) = log Σ_{b' ∈ C(a)} exp ζ(a, b'),   q_ζ(b) = (1/N) Σ_{a'} softmax(ζ(a', ·))(b).

  The softmax is tempered by σ(a), so a row whose logits span 100+ nats no longer puts
  P ≈ 1 on one output: zpmi shares pmi's bound log N (q_ζ(b) ≥ softmax(ζ(a, ·))(b) / N)
  but its top pairs do not pile up at it.

``logprob``, ``logit`` and ``zlogit`` are increasing functions of z within one row, so they
rank the outputs of one input token identically (the same per-row top-K); they differ in how
rows compare with each other, i.e. in every global ranking. ``pmi`` and ``zpmi`` re-rank
within rows too (they favour outputs the path gives to few inputs): each has its own per-row
top-K, different from the others' and from each other's. Both need their column distribution
(q or q_ζ: :data:`COLUMN_SCORES`) before ranking, i.e. a first pass over all inputs.

What re-scoring and reading need (kept by the n-gram database, :mod:`jetex.ngrams.store`):
per input token lse(a) (log-sum-exp over C(a)), μ(a), σ(a), and for ``zpmi`` lse_ζ(a); per
output token log q(b) (``pmi``) or log q_ζ(b) (``zpmi``): the run's score's column
distribution, called ``logq`` in the functions below.

The default score is :data:`DEFAULT_SCORE`, chosen by measurement (``docs/ngram_scores.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.expand.numerics import logsumexp

#: the scores, in the order they are listed
SCORES: dict[str, str] = {
    "logprob": "log P(b|a), the path's softmax over the candidate outputs",
    "logit": "the path's logit centred per input row, z(a,b) − mean_b' z(a,b')",
    "zlogit": "the centred logit divided by the row's standard deviation",
    "pmi": "log P(b|a) − log mean_a' P(b|a'), against the path's mean output distribution",
    "zpmi": "pmi of the z-scored logits: log softmax(ζ(a,·))(b) − log mean_a' softmax(ζ(a',·))(b), ζ the zlogit",
}
#: the measured default (docs/ngram_scores.md)
DEFAULT_SCORE = "zpmi"
#: a row whose logit spread is at most FLAT·(1 + |mean|) is constant: its zlogit is 0
FLAT = 1e-12
#: scores whose per-row ranking is the ranking of the raw logits (same per-row top-K)
ROW_ORDER_Z = ("logprob", "logit", "zlogit")
#: scores that need the path's column distribution over all inputs first (q for pmi, q_ζ for zpmi)
COLUMN_SCORES = ("pmi", "zpmi")


def zero_finite(x: Tensor) -> Tensor:
    """0 where x is finite, x elsewhere (an excluded −inf entry stays −inf): the zlogit of a constant row."""
    return torch.where(torch.isfinite(x), torch.zeros_like(x), x)


#: names used before the scores were unified (``jetex roles`` had pmi|centred|logprob): refused with a hint
RENAMED = {"centred": "logit", "centered": "logit"}


def check_score(name: object) -> str:
    """The canonical score name, or a one-line :class:`InputError` (an old name says its new one)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key in RENAMED:
        raise InputError(f"score {name!r} is now called {RENAMED[key]!r} (the logit centred per input row); "
                         f"use one of: {', '.join(SCORES)}")
    if not isinstance(key, str) or key not in SCORES:
        raise InputError(f"unknown score {name!r}; use one of: {', '.join(SCORES)}")
    return key


def row_family(score: str) -> str:
    """``"z"`` for the scores that rank a row like its logits; ``pmi`` and ``zpmi`` re-rank rows,
    each in its own order, so each is its own family (named by itself)."""
    s = check_score(score)
    return "z" if s in ROW_ORDER_Z else s


def score_label(score: str) -> str:
    """A short readable name of a score, for table headers."""
    return {"logprob": "log P(b|a)", "logit": "centred logit", "zlogit": "z-scored logit", "pmi": "PMI",
            "zpmi": "PMI of z-scored logits"}[check_score(score)]


def missing_columns(score: str) -> str:
    """What a column score lacks when its distribution is not given (the end of an error line)."""
    return ("the path's mean output distribution (log q)" if check_score(score) == "pmi"
            else "the path's mean z-scored output distribution (log q_ζ)")


# ---------------------------------------------------------------------------------------
# per-row statistics
# ---------------------------------------------------------------------------------------
def row_moments(
    z: Float[Tensor, "b v"], self_logit: Float[Tensor, "b"] | None = None, out: Tensor | None = None
) -> tuple[Float[Tensor, "b"], Float[Tensor, "b"]]:
    """(μ, σ) ``[B]`` of each row of z over its candidates: all V entries, or, with
    ``self_logit`` (the self-transition's logit, excluded), the other V − 1.

    ``z`` must hold the full rows (self entry included, finite). Two passes: μ from the row
    sums, then σ from the norm of z − μ (written into ``out``, shape of z, when given; z is
    left intact) — no cancellation, and ~8x faster on the CPU than ``torch.var_mean``, whose
    one-pass update costs a third of the matmul that made z. Removing one value from
    (n, mean, M2) uses Welford's update, so no catastrophic cancellation either."""
    n = z.shape[1]
    mean = z.sum(dim=1) / n
    dev = torch.sub(z, mean[:, None], out=out) if out is not None else z - mean[:, None]
    var = torch.linalg.vector_norm(dev, dim=1).square() / n
    if self_logit is None:
        return mean, var.clamp_min(0).sqrt()
    x = self_logit.to(mean.dtype)
    mean2 = (n * mean - x) / (n - 1)
    m2 = var * n - (x - mean) * (x - mean2)
    return mean2, (m2 / (n - 1)).clamp_min(0).sqrt()


@dataclass
class ColumnLSE:
    """Streamed log Σ_a P(b | a) over input rows, per output b: ``value [V]`` (−inf before any row),
    ``n_rows`` rows added. log q(b) = value − log n_rows."""

    value: Tensor
    n_rows: int = 0

    @staticmethod
    def empty(V: int) -> "ColumnLSE":
        return ColumnLSE(torch.full((V,), float("-inf"), dtype=torch.float64))

    def add_logprobs(self, logp: Float[Tensor, "b v"]) -> None:
        """Add rows of log P(· | a) ``[B, V]`` (−inf for an excluded self-transition)."""
        part = logsumexp(logp.float(), dim=0).double().cpu()
        self.value = torch.logaddexp(self.value, part)
        self.n_rows += int(logp.shape[0])

    def add_partial(self, part: np.ndarray | Tensor, n_rows: int) -> None:
        """Add a batch's log Σ_{a ∈ batch} P(b | a) ``[V]`` over ``n_rows`` rows."""
        part = np.array(part.cpu() if isinstance(part, Tensor) else part, dtype=np.float64)  # a writable copy
        self.value = torch.logaddexp(self.value, torch.from_numpy(part))
        self.n_rows += int(n_rows)

    def logq(self) -> Float[Tensor, "v"]:
        """log q(b) ``[V]`` (float64)."""
        if self.n_rows < 1:
            raise ValueError("ColumnLSE.logq needs at least one row")
        return self.value - math.log(self.n_rows)


def batch_column_lse(z: Float[Tensor, "b v"], lse: Float[Tensor, "b"], out: Tensor | None = None) -> Float[Tensor, "v"]:
    """log Σ_{rows a} P(b | a) ``[V]`` of one batch: log-sum-exp over rows of z − lse.

    ``z`` holds the ranking logits (−inf where a self-transition is excluded); ``out`` (shape
    of z) is scratch space (z is left intact)."""
    x = torch.sub(z, lse[:, None], out=out) if out is not None else z - lse[:, None]
    return logsumexp(x, dim=0, out=x)  # −inf for a column every row excludes


def flat_rows(mean: Tensor, std: Tensor) -> Tensor:
    """Which rows are constant (σ ≤ FLAT·(1 + |μ|)): their zlogit (ζ) is 0."""
    return std <= FLAT * (1 + mean.abs())


def zeta_rows(
    z: Float[Tensor, "b v"],
    mean: Float[Tensor, "b"],
    std: Float[Tensor, "b"],
    self_ids: Int[Tensor, "b"] | None = None,
    out: Tensor | None = None,
) -> Float[Tensor, "b v"]:
    """ζ = (z − μ) / σ of rows z (the zlogit; 0 on a flat row), written into ``out`` when given
    (z is left intact). ``self_ids``: the excluded self-transition of each row, set to −inf
    (whatever z holds there). One subtraction and one division, the arithmetic of the
    engine's zlogit, so ζ equals its zlogit values."""
    sd = torch.where(flat_rows(mean, std), torch.full_like(std, float("inf")), std)  # finite / inf = 0
    x = torch.sub(z, mean[:, None], out=out) if out is not None else z - mean[:, None]
    x.div_(sd[:, None])
    if self_ids is not None:
        x[torch.arange(x.shape[0], device=x.device), self_ids] = float("-inf")
    return x


def zeta_lse(zeta: Float[Tensor, "b v"], out: Tensor | None = None) -> Float[Tensor, "b"]:
    """lse_ζ(a) = log Σ_{b ∈ C(a)} exp ζ(a, b) ``[B]`` (floored log-sum-exp; ``out``: scratch,
    may be ζ itself, which is then overwritten)."""
    return logsumexp(zeta, dim=1, out=out)


def column_logprobs(score: str, z: Float[Tensor, "b v"], ids: Int[Tensor, "b"], *, exclude_self: bool = True) -> Float[Tensor, "b v"]:
    """log of the per-row distribution whose mean over the inputs is the column distribution of
    ``score`` (:data:`COLUMN_SCORES`): log P(· | a) for ``pmi``, log softmax(ζ(a, ·)) for
    ``zpmi`` (float32, an excluded self-transition −inf)."""
    s = check_score(score)
    if s not in COLUMN_SCORES:
        raise ValueError(f"score {s!r} has no column distribution")
    if s == "pmi":
        return score_rows("logprob", z, ids, exclude_self=exclude_self)[0]
    return torch.log_softmax(score_rows("zlogit", z, ids, exclude_self=exclude_self)[0], dim=-1)


# ---------------------------------------------------------------------------------------
# scores of given entries
# ---------------------------------------------------------------------------------------
def score_values(
    score: str,
    logit: Tensor | np.ndarray | float,
    lse: Tensor | np.ndarray | float,
    mean: Tensor | np.ndarray | float | None = None,
    std: Tensor | np.ndarray | float | None = None,
    logq: Tensor | np.ndarray | float | None = None,
    lse_z: Tensor | np.ndarray | float | None = None,
) -> np.ndarray:
    """The score of entries (a, b) from their logit z(a, b), the row's lse / μ / σ / lse_ζ and
    the score's column statistic ``logq`` of b (log q(b) for ``pmi``, log q_ζ(b) for ``zpmi``)
    (all broadcastable; numpy float64 out). Raises :class:`InputError` when a needed statistic is None."""
    s = check_score(score)
    f = lambda x: np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)  # noqa: E731
    z = f(logit)
    if s == "logprob":
        return z - f(lse)
    if s in ("logit", "zlogit"):
        if mean is None or (s == "zlogit" and std is None):
            raise InputError(f"score {s!r} needs the per-input logit mean{' and spread' if s == 'zlogit' else ''}")
        c = z - f(mean)
        if s == "logit":
            return c
        sd = np.broadcast_to(f(std), np.broadcast(c, f(std)).shape)
        flat = sd <= FLAT * (1 + np.abs(f(mean)))
        return np.where(flat, np.where(np.isfinite(c), 0.0, c), c / np.where(flat, 1.0, sd))
    if logq is None:
        raise InputError(f"score {s!r} needs {missing_columns(s)}")
    if s == "pmi":
        return z - f(lse) - f(logq)
    if mean is None or std is None or lse_z is None:
        raise InputError("score 'zpmi' needs the per-input logit mean, spread and z-scored log-sum-exp (lse_ζ)")
    return score_values("zlogit", z, lse, mean, std) - f(lse_z) - f(logq)


def score_matrix(
    score: str,
    z: Float[Tensor, "b v"],
    ids: Int[Tensor, "b"],
    *,
    exclude_self: bool = True,
    logq: Float[Tensor, "v"] | None = None,
) -> Float[Tensor, "b v"]:
    """The score of every (a, b) of full logit rows z ``[B, V]`` for input ids ``[B]``
    (float64; an excluded self-transition is −inf); ``logq``: the score's column statistic
    (``pmi``: log q, ``zpmi``: log q_ζ). A reference implementation (tests, oracles)."""
    s = check_score(score)
    z = z.double()
    rows = torch.arange(z.shape[0])
    zc = z.clone()
    if exclude_self:
        zc[rows, ids] = float("-inf")
    lse = torch.logsumexp(zc, dim=1, keepdim=True)
    if s in COLUMN_SCORES and logq is None:
        raise InputError(f"score {s!r} needs {missing_columns(s)}")
    if s == "logprob":
        return zc - lse
    if s == "pmi":
        return zc - lse - logq.double()[None, :]
    if s == "zpmi":
        zeta = score_matrix("zlogit", z, ids, exclude_self=exclude_self)
        return torch.log_softmax(zeta, dim=1) - logq.double()[None, :]
    mask = torch.ones_like(z, dtype=torch.bool)
    if exclude_self:
        mask[rows, ids] = False
    n = mask.sum(1, keepdim=True)
    mean = (z * mask).sum(1, keepdim=True) / n
    std = (((z - mean) ** 2) * mask).sum(1, keepdim=True).div(n).sqrt()
    out = zc - mean
    if s == "logit":
        return out
    flat = std <= FLAT * (1 + mean.abs())
    return torch.where(flat, zero_finite(out), out / torch.where(flat, torch.ones_like(std), std))


def score_rows(
    score: str,
    z: Float[Tensor, "b v"],
    ids: Int[Tensor, "b"],
    *,
    exclude_self: bool = True,
    logq: Float[Tensor, "v"] | None = None,
) -> tuple[Float[Tensor, "b v"], Float[Tensor, "b v"]]:
    """(score, log P) ``[B, V]`` (float32) of full logit rows z for input ids (an excluded
    self-transition is −inf in both): the fast form of :func:`score_matrix` for streamed tables
    (``logq``: the score's column statistic, as there)."""
    s = check_score(score)
    z = z.float()
    rows = torch.arange(z.shape[0])
    self_logit = z[rows, ids].clone()
    if s in COLUMN_SCORES and logq is None:
        raise InputError(f"score {s!r} needs {missing_columns(s)}")
    mean = std = None
    if s in ("logit", "zlogit", "zpmi"):
        mean, std = row_moments(z, self_logit if exclude_self else None)
    zc = z.clone()
    if exclude_self:
        zc[rows, ids] = float("-inf")
    lp = torch.log_softmax(zc, dim=-1)
    if s == "logprob":
        return lp, lp
    if s == "pmi":
        return lp - logq.float()[None, :], lp
    if s == "zpmi":
        zeta = zeta_rows(z, mean, std, ids if exclude_self else None)
        return torch.log_softmax(zeta, dim=-1) - logq.float()[None, :], lp
    c = zc - mean[:, None]
    if s == "logit":
        return c, lp
    flat = flat_rows(mean, std)
    return torch.where(flat[:, None], zero_finite(c), c / torch.where(flat, torch.ones_like(std), std)[:, None]), lp
