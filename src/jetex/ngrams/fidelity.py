"""Fidelity of bigram paths: how close a path's P(next | t) is to the model's own.

The model's own next-token distribution for token t is read after the two-token context
[BOS, t] (just [t] for tokenizers without a BOS token), at t's position; the path's is
its softmax over the full vocabulary (see :mod:`jetex.ngrams.paths`; the path sees t alone
at position 0). Per path, over a sample of input tokens:

- ``mean_kl``: mean KL(model ‖ path) = Σ_c p_model(c) (log p_model(c) − log p_path(c)), in nats
- ``top1_agreement``: fraction of tokens where both argmaxes coincide
- ``top10_agreement``: mean |top10(model) ∩ top10(path)| / 10

With ``exclude_self`` both distributions drop c = t and are renormalised, as in the stored
tables. The sample is deterministic: n evenly spaced ids ⌊i·N/n⌋, i = 0..n−1, of the N
input tokens (all of them when n ≥ N).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from jetex.errors import InputError
from jetex.models.base import ResidualModel
from jetex.ngrams.engine import compute_threads
from jetex.ngrams.paths import BigramPath
from jetex.progress import bar

SAMPLE_RULE = "evenly spaced ids floor(i*N/n), i < n"


@dataclass(frozen=True)
class Fidelity:
    """Agreement of one bigram path with the model's next-token distribution after [BOS, t]."""

    path: str
    sample_size: int
    n_inputs: int
    sample_rule: str
    context: str
    mean_kl: float
    top1_agreement: float
    top10_agreement: float

    def __post_init__(self) -> None:
        if self.sample_size < 1:
            raise ValueError("Fidelity.sample_size must be >= 1")
        for f in ("top1_agreement", "top10_agreement"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"Fidelity.{f} must lie in [0, 1]")

    def as_dict(self) -> dict:
        return asdict(self)


def _wide(x: Tensor) -> Tensor:
    """At least float32 (half-precision logits are widened), as a fresh tensor."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x.clone()


def fidelity_sample(n_inputs: int, n: int | None) -> Int[Tensor, "s"]:
    """The deterministic sample of input ids (``n`` None or ≥ n_inputs: all of them)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"fidelity sample size must be a positive integer, got {n!r}")
    if n is None or n >= n_inputs:
        return torch.arange(n_inputs)
    return torch.div(torch.arange(n) * n_inputs, n, rounding_mode="floor")


def path_fidelity(
    model: ResidualModel,
    paths: list[BigramPath],
    *,
    n_inputs: int | None = None,
    sample: int | None = 1024,
    order: int = 0,
    exclude_self: bool = False,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Fidelity]:
    """Fidelity of each path (see the module docstring), one pass over the sample for all paths.
    ``progress``: a bar on stderr when the pass outlasts ~2 s (:func:`jetex.progress.bar`)."""
    N = n_inputs or model.vocab_size
    ids_all = fidelity_sample(N, sample)
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    context = "[BOS, t]" if bos is not None else "[t]"
    acc = {p.name: [0.0, 0.0, 0.0] for p in paths}
    grad_ctx = torch.inference_mode if order == 0 else torch.no_grad
    shown = bar(len(ids_all), "fidelity", enabled=progress, unit="input")
    with shown, compute_threads(), grad_ctx():
        for start in range(0, len(ids_all), batch_size):
            shown.update(min(batch_size, len(ids_all) - start))
            ids = ids_all[start : start + batch_size].to(model.device)
            seq = ids[:, None] if bos is None else torch.stack([torch.full_like(ids, bos), ids], dim=1)
            with torch.inference_mode():
                ref = _wide(model.reference_logits(seq)[:, -1])
            rows = torch.arange(len(ids), device=ref.device)
            if exclude_self:
                ref[rows, ids] = float("-inf")
            lp_m = torch.log_softmax(ref, -1)
            p_m = lp_m.exp()
            top_m = lp_m.topk(10, -1).indices
            for p in paths:
                z = _wide(p.logits(model, ids, order))
                if exclude_self:
                    z[rows, ids] = float("-inf")
                lp_p = torch.log_softmax(z, -1)
                kl = torch.where(p_m > 0, p_m * (lp_m - lp_p), torch.zeros_like(p_m)).sum(-1)
                top_p = lp_p.topk(10, -1).indices
                a = acc[p.name]
                a[0] += float(kl.sum())
                a[1] += float((top_m[:, 0] == top_p[:, 0]).sum())
                a[2] += float((top_m[:, :, None] == top_p[:, None, :]).any(-1).sum()) / 10
    n = len(ids_all)
    return {
        name: Fidelity(name, n, N, SAMPLE_RULE, context, a[0] / n, a[1] / n, a[2] / n)
        for name, a in acc.items()
    }
