"""The tuned lens (Belrose et al. 2023): an affine translator per layer, then the decoder.

For each fitted stream h_l the translator is T_l(h) = h + A_l h + b_l (``A_l`` ``[d, d]``,
``b_l`` ``[d]``), initialised at A_l = 0, b_l = 0 (the identity, so the untrained tuned
lens *is* the logit lens), and the readout is

    logits_l = U γ_{L+1}(T_l(h_l))

with the model's own final norm γ_{L+1} and unembedding U (frozen). :func:`fit_tuned_lens`
trains all translators jointly with Adam to minimise the mean over corpus tokens (BOS
excluded) of Σ_l KL(p_model ‖ p_lens,l), p_model = softmax(q(z)) the model's own final
distribution at the same position — the published objective (distillation towards the
final layer). Layers are independent problems; the loss is summed so one optimiser step
updates them all. Checkpoints (translators + Adam state + step) are written atomically
and a killed fit resumes exactly from the last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.lenses.fitted import as_tensor_ids, check_fingerprint, load_lens_file, save_lens_file
from jetex.lenses.jacobian import windows_id
from jetex.models.base import ResidualModel

KIND = "tuned"


@dataclass
class TunedLens:
    """Trained affine translators T_l(h) = h + A_l h + b_l for the streams ``streams``.

    ``A`` ``[R, d, d]``, ``b`` ``[R, d]`` (float32); ``steps`` optimiser steps done,
    ``losses`` the training loss per step (mean over tokens of Σ_l KL, nats);
    ``settings`` the training data and hyper-parameters.
    """

    model_name: str
    fingerprint: str
    streams: list[int]
    row_names: list[str]
    A: Tensor
    b: Tensor
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        R = len(self.streams)
        if len(self.row_names) != R or self.A.ndim != 3 or self.A.shape[0] != R or tuple(self.b.shape) != (R, self.A.shape[-1]):
            raise ValueError("TunedLens: A must be [R, d, d] and b [R, d] for R streams")

    def __repr__(self) -> str:
        return f"TunedLens(model={self.model_name!r}, rows={len(self.streams)}, d={self.A.shape[-1]}, steps={self.steps})"

    @classmethod
    def identity(cls, model: ResidualModel, streams: Sequence[int] | None = None, row_names: Sequence[str] | None = None) -> "TunedLens":
        """Untrained translators (A = 0, b = 0): the logit lens."""
        from jetex.lenses.lens import layer_streams

        if streams is None:
            streams, row_names = layer_streams(model)
        streams = list(streams)
        names = list(row_names) if row_names is not None else [f"h{l}" for l in streams]
        d = model.d_model
        z = dict(dtype=model.dtype)
        return cls(model.name, model.fingerprint(), streams, names, torch.zeros(len(streams), d, d, **z), torch.zeros(len(streams), d, **z))

    def _row(self, l: int) -> int:
        if l not in self.streams:
            raise InputError(f"stream h_{l} has no translator in this tuned lens (fitted: {self.row_names})")
        return self.streams.index(l)

    def translate(self, h: Float[Tensor, "r *b t d"], streams: Sequence[int]) -> Float[Tensor, "r *b t d"]:
        """T_l(h_l) = h_l + A_l h_l + b_l for each of the given ``streams`` (rows of ``h``)."""
        rows = [self._row(l) for l in streams]
        A = self.A[rows].to(h.dtype).to(h.device)
        b = self.b[rows].to(h.dtype).to(h.device)
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        return (flat + torch.bmm(flat, A.transpose(1, 2)) + b[:, None, :]).reshape(h.shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "streams": self.streams,
            "rows": self.row_names,
            "steps": self.steps,
            "losses": [round(x, 5) for x in self.losses],
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
        }

    def save(self, path: str | Path, optimizer_state: dict[str, Tensor] | None = None) -> Path:
        """Write the translators (and, for a checkpoint, the Adam state) atomically."""
        meta = self.to_dict()
        meta.pop("kind")
        return save_lens_file(path, KIND, {"A": self.A, "b": self.b} | (optimizer_state or {}), meta)

    @classmethod
    def load(cls, path: str | Path, model: ResidualModel | None = None) -> "TunedLens":
        """Read a trained lens; with ``model``, refuse one trained for another model."""
        lens, _ = _load_with_state(path, model)
        return lens


def _load_with_state(path: str | Path, model: ResidualModel | None) -> tuple[TunedLens, dict[str, Tensor]]:
    tensors, meta = load_lens_file(path, KIND, model)
    lens = TunedLens(
        model_name=meta["model"],
        fingerprint=meta["fingerprint"],
        streams=[int(x) for x in meta["streams"]],
        row_names=list(meta["rows"]),
        A=tensors.pop("A"),
        b=tensors.pop("b"),
        steps=int(meta["steps"]),
        losses=[float(x) for x in meta.get("losses", [])],
        settings=dict(meta.get("settings", {})),
        seconds=float(meta.get("seconds", 0.0)),
    )
    return lens, tensors


def _batch(n: int, step: int, batch: int, seed: int) -> list[int]:
    """Window indices of optimiser step ``step``: a seeded permutation per epoch, read in order."""
    out = []
    for k in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(k, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(n, generator=g)[pos]))
    return out


def tuned_kl(
    model: ResidualModel, lens: TunedLens, h: Float[Tensor, "l1 b t d"], streams: Sequence[int], A: Tensor, b: Tensor
) -> Float[Tensor, "r"]:
    """Mean over positions 1.. of KL(p_model ‖ p_lens,l) per stream, differentiable in A, b."""
    target = F.log_softmax(model.decode(h[-1][:, 1:]).float(), dim=-1)  # [b, t-1, V]
    p = target.exp()
    out = []
    for r, l in enumerate(streams):
        x = h[l][:, 1:]
        y = x + x @ A[r].T + b[r]
        logq = F.log_softmax(model.decode(y).float(), dim=-1)
        out.append((p * (target - logq)).sum(-1).mean())
    return torch.stack(out)


def fit_tuned_lens(
    model: ResidualModel,
    windows: Int[Tensor, "n t"],
    *,
    steps: int = 100,
    batch: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    streams: Sequence[int] | None = None,
    row_names: Sequence[str] | None = None,
    settings: dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    time_budget: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    checkpoint_every: float = 60.0,
) -> TunedLens:
    """Train translators on the token ``windows`` ``[n, t]``: ``steps`` Adam steps of
    ``batch`` windows each (seeded order), minimising Σ_l mean KL(p_model ‖ p_lens,l).

    ``checkpoint``: written atomically (translators + Adam moments) after the first step, then
    whenever ``checkpoint_every`` seconds have passed since the last write (0: after every
    step), and after the last step; a fit killed in between resumes from the last write.
    An existing checkpoint with the same model and settings is resumed. ``time_budget``: stop after
    this many seconds (the lens trained so far is returned, its ``steps`` says how far).
    """
    windows = as_tensor_ids(windows)
    n, t = windows.shape
    if steps < 1 or batch < 1 or not lr > 0:
        raise InputError("steps and batch must be >= 1 and lr > 0")
    if n < batch:
        raise InputError(f"the corpus gives {n} window(s) of {t} tokens; a batch needs {batch}: use a larger corpus or a smaller --batch")
    if int(windows.min()) < 0 or int(windows.max()) >= model.vocab_size:
        raise InputError(f"token ids must lie in 0..{model.vocab_size - 1}")
    settings = dict(settings or {}) | {"tokens": t, "windows": windows_id(windows), "batch": batch, "lr": lr, "seed": seed}
    lens = TunedLens.identity(model, streams, row_names)
    lens.settings = settings
    state: dict[str, Tensor] = {}
    if checkpoint is not None and Path(checkpoint).expanduser().is_file():
        lens, state = _load_with_state(checkpoint, None)
        check_fingerprint(lens.to_dict(), model, checkpoint)
        if lens.settings != settings or (streams is not None and lens.streams != list(streams)):
            raise InputError(f"checkpoint {checkpoint} was trained with other settings; remove it or use another path")
    A = lens.A.clone().to(device=model.device, dtype=model.dtype).requires_grad_(True)
    b = lens.b.clone().to(device=model.device, dtype=model.dtype).requires_grad_(True)
    opt = torch.optim.Adam([A, b], lr=lr)
    if state:
        opt.state[A] = {"step": state["opt_step"].clone(), "exp_avg": state["m_A"].clone(), "exp_avg_sq": state["v_A"].clone()}
        opt.state[b] = {"step": state["opt_step"].clone(), "exp_avg": state["m_b"].clone(), "exp_avg_sq": state["v_b"].clone()}
    model.requires_grad_(False)
    start = time.perf_counter()
    last_save: float | None = None

    def save() -> None:
        sa, sb = opt.state[A], opt.state[b]
        lens.save(
            checkpoint,  # type: ignore[arg-type]
            {"m_A": sa["exp_avg"], "v_A": sa["exp_avg_sq"], "m_b": sb["exp_avg"], "v_b": sb["exp_avg_sq"], "opt_step": torch.as_tensor(sa["step"]).reshape(1)},
        )

    saved_at = lens.steps
    while lens.steps < steps:
        if time_budget is not None and time.perf_counter() - start >= time_budget:
            break
        t0 = time.perf_counter()
        ids = windows[_batch(n, lens.steps, batch, seed)].to(model.device)
        with torch.no_grad():
            h = model.stream(ids)
        opt.zero_grad(set_to_none=True)
        loss = tuned_kl(model, lens, h, lens.streams, A, b).sum()
        loss.backward()
        opt.step()
        lens.steps += 1
        lens.losses.append(float(loss.detach()))
        lens.A, lens.b = A.detach().cpu().clone(), b.detach().cpu().clone()
        lens.seconds += time.perf_counter() - t0
        if checkpoint is not None and (last_save is None or time.perf_counter() - last_save >= checkpoint_every):
            save()
            last_save, saved_at = time.perf_counter(), lens.steps
        if progress is not None:
            progress(lens.steps, steps, time.perf_counter() - t0)
    if checkpoint is not None and saved_at != lens.steps:
        save()
    return lens
