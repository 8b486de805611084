"""Device and precision placement for n-gram evaluation (``--device``, ``--dtype``).

The n-gram database identifies a model by the fingerprint of its weights as loaded
(float32; :meth:`~jetex.models.base.ResidualModel.fingerprint`). Evaluating in another
precision or on a GPU therefore uses a *placed copy* of the model
(:func:`place_model`), whose parameters are converted directly to the target device and
dtype without an intermediate CPU copy; the float32 model stays the reference.

When a lower precision is requested, :func:`precision_report` measures what it costs on a
deterministic sample of input tokens s (evenly spaced ids ⌊i·N/n⌋, i < n), per path, by
comparing the path's logits z(t, ·) ``[n, V]`` in the low precision (widened to float32)
with the float32 logits of the reference model:

- ``max_abs_logit_diff``  = max_{t∈s, c} |z_low(t, c) − z_32(t, c)|
- ``max_abs_logprob_diff`` = the same for log P(c | t) (softmax over the full vocabulary,
  taken in float32 in both cases, as the engine does)
- ``top1_agreement``  = fraction of t whose argmax_c agrees
- ``topk_overlap``    = mean |topK_low(t) ∩ topK_32(t)| / K, with K the run's top K

Trigram paths are compared on their OV logits z(a, ·) (the table their scores are built on).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.models.base import ResidualModel
from jetex.models.dtypes import DTYPES, dtype_name, resolve_dtype  # noqa: F401  (re-exported)

DEVICES = ("cpu", "cuda", "auto")


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda`` / ``cuda:N`` (refused with one line when CUDA is absent) or ``auto``
    (``cuda`` when a GPU is visible, else ``cpu``). None means ``cpu``."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip().lower()
    else:
        raise InputError(f"device must be cpu, cuda or auto, got {device!r}")
    if text == "auto":
        return torch.device("cuda") if cuda_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
        if not cuda_available():
            built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}, but no GPU is visible"
            raise InputError(f"--device {text}: CUDA is not available here (torch {torch.__version__} is built {built}); use --device cpu or auto")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InputError(f"--device {text}: only {n} CUDA device(s) are visible (cuda:0..cuda:{n - 1})")
        return dev
    raise InputError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)} (or cuda:N)")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def place_model(model: ResidualModel, device: str | torch.device | None = None,
                dtype: str | torch.dtype | None = None) -> ResidualModel:
    """The model on ``device`` in ``dtype``: the model itself when it already is, else a copy.

    The copy shares the tokenizer and converts every parameter and buffer straight to the
    target (floating tensors to ``dtype``, the others only moved), keeping tied weights tied;
    the original model is left untouched (it stays the store's float32 identity).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    if _same_device(model.device, dev) and model.dtype == dt:
        return model
    memo: dict[int, object] = {}
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        memo[id(tok)] = tok
    for p in model.parameters():
        if id(p) not in memo:
            q = p.detach().to(device=dev, dtype=dt if p.is_floating_point() else p.dtype)
            memo[id(p)] = torch.nn.Parameter(q, requires_grad=False)
    for b in model.buffers():
        if id(b) not in memo:
            memo[id(b)] = b.detach().to(device=dev, dtype=dt if b.is_floating_point() else b.dtype)
    placed = copy.deepcopy(model, memo)
    placed.eval()
    return placed


# ---------------------------------------------------------------------------------------
# numerical difference to float32
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionReport:
    """How far a path's logits in ``dtype`` on ``device`` are from float32, on ``sample_size``
    of the ``n_inputs`` input tokens (see the module docstring for the quantities)."""

    path: str
    dtype: str
    device: str
    sample_size: int
    n_inputs: int
    top_k: int
    max_abs_logit_diff: float
    max_abs_logprob_diff: float
    top1_agreement: float
    topk_overlap: float

    def __post_init__(self) -> None:
        if self.sample_size < 1 or self.top_k < 1:
            raise ValueError("PrecisionReport: sample_size and top_k must be >= 1")
        for f in ("top1_agreement", "topk_overlap"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"PrecisionReport.{f} must lie in [0, 1]")
        if self.max_abs_logit_diff < 0 or self.max_abs_logprob_diff < 0:
            raise ValueError("PrecisionReport: differences must be >= 0")

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One readable line."""
        return (f"{self.path} in {self.dtype} on {self.device} vs float32 ({self.sample_size} of {self.n_inputs} inputs): "
                f"max |Δlogit| {self.max_abs_logit_diff:.3g}, max |Δlog p| {self.max_abs_logprob_diff:.3g}, "
                f"top-1 agreement {self.top1_agreement:.1%}, top-{self.top_k} overlap {self.topk_overlap:.1%}")


def sample_ids(n_inputs: int, n: int | None) -> Int[Tensor, "s"]:
    """Evenly spaced input ids ⌊i·N/n⌋, i < n (all N when n is None or ≥ N)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"precision sample size must be a positive integer, got {n!r}")
    if n is None or n >= n_inputs:
        return torch.arange(n_inputs)
    return torch.div(torch.arange(n) * n_inputs, n, rounding_mode="floor")


def _path_logits(model: ResidualModel, path: object, ids: Int[Tensor, "s"], order: int) -> Float[Tensor, "s v"]:
    """Logits of a bigram path z(t, ·), or of a trigram path's OV table z(a, ·), as float32 on the CPU."""
    ids = ids.to(model.device)
    if getattr(path, "is_trigram", False):
        from jetex.ngrams.trigrams import ov_logprob_table

        z = ov_logprob_table(model, path, ids)[1]  # type: ignore[arg-type]
    else:
        grad_ctx = torch.inference_mode if order == 0 else torch.no_grad
        with grad_ctx():
            z = path.logits(model, ids, order)  # type: ignore[attr-defined]
    return z.detach().float().cpu()


def precision_report(
    reference: ResidualModel,
    placed: ResidualModel,
    paths: Sequence[object],
    *,
    n_inputs: int | None = None,
    sample: int | None = 256,
    top_k: int = 10,
    order: int = 0,
    batch_size: int = 64,
) -> dict[str, PrecisionReport]:
    """Compare each path's logits under ``placed`` (lower precision, any device) with the
    float32 ``reference`` on the deterministic sample (module docstring); {path name: report}."""
    if reference.dtype != torch.float32:
        raise InputError(f"the precision reference must be float32, got {dtype_name(reference.dtype)}")
    N = n_inputs or reference.vocab_size
    ids_all = sample_ids(N, sample)
    K = max(1, min(int(top_k), reference.vocab_size))
    out: dict[str, PrecisionReport] = {}
    for p in paths:
        dz = dlp = 0.0
        top1 = overlap = 0.0
        for start in range(0, len(ids_all), batch_size):
            ids = ids_all[start : start + batch_size]
            z32 = _path_logits(reference, p, ids, order)
            zlo = _path_logits(placed, p, ids, order)
            dz = max(dz, float((zlo - z32).abs().max()))
            dlp = max(dlp, float((torch.log_softmax(zlo, -1) - torch.log_softmax(z32, -1)).abs().max()))
            t32 = z32.topk(K, -1).indices
            tlo = zlo.topk(K, -1).indices
            top1 += float((t32[:, 0] == tlo[:, 0]).sum())
            overlap += float((t32[:, :, None] == tlo[:, None, :]).any(-1).sum()) / K
        n = len(ids_all)
        out[getattr(p, "name")] = PrecisionReport(getattr(p, "name"), dtype_name(placed.dtype), str(placed.device), n, N, K,
                                                  dz, dlp, top1 / n, overlap / n)
    return out
