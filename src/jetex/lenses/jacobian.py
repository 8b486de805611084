"""The Jacobian lens (J-lens): decode U γ_{L+1}(J_l h_l) with J_l an averaged Jacobian.

Estimator (what :func:`fit_jacobian_lens` computes). For a corpus of token windows
z^(p) of t tokens, with streams h_l^(p)[s] (stream l, position s) of the residual view,

    J_l = (1 / N) Σ_p Σ_{s ∈ S} Σ_{j ∈ S, j ≥ s}  ∂h_L^(p)[j] / ∂h_l^(p)[s]        (d × d)

where S = {1, …, t−1} (the first position, the BOS token, is neither a source nor a
target) and N = Σ_p |S| is the number of (window, source position) pairs. That is: the
total effect of the stream at one position on the final streams at that position and
every later one, averaged over source positions of the corpus. For a position-wise
network (no attention) the cross-position terms vanish and J_l is the ordinary Jacobian
∂h_L/∂h_l averaged over tokens (exact for a linear residual net).

Cost: one reverse-mode pass per output coordinate i (the cotangent e_i placed at every
target position gives, in one backward pass, row i of Σ_{j ≥ s} ∂h_L[j]/∂h_l[s] for every
source s and every layer l at once), so d backward passes per window, batched ``chunk``
cotangents at a time (``torch.autograd.grad(..., is_grads_batched=True)``) through the
Hugging Face modules themselves. The running sums Σ (float64) and N are what a fit stores,
so fits of disjoint corpus slices merge exactly (:meth:`JacobianLens.merge`), and a fit
checkpoints after every window and resumes from its last checkpoint.

Readout: logits_l = U γ_{L+1}(J_l h_l) (:meth:`JacobianLens.logits`), one d × d product
per layer and position before the unembedding.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.lenses.fitted import as_tensor_ids, check_fingerprint, load_lens_file, save_lens_file
from jetex.models.base import ResidualModel

KIND = "jacobian"


def windows_id(windows: Tensor) -> str:
    """A short hash of the token windows a fit runs over (to refuse resuming on other data)."""
    return hashlib.sha256(as_tensor_ids(windows).cpu().numpy().tobytes()).hexdigest()[:16]


@dataclass
class JacobianLens:
    """A (possibly partial) J-lens fit: per fitted stream the running sum and the count.

    - ``streams``: stream indices l (h_l) with a fitted J_l, ``row_names`` their names;
    - ``sums``: ``[R, d, d]`` float64, Σ over (window, source) of Σ_{j ≥ s} ∂h_L[j]/∂h_l[s]
      (rows: output coordinate of h_L, columns: input coordinate of h_l);
    - ``n_sources``: N, the number of (window, source position) pairs summed;
    - ``prompts``: the corpus indices of the windows summed (for resume and merge);
    - ``settings``: what the windows were (corpus id, window length, seed, slice); fits
      merge only with equal settings.
    """

    model_name: str
    fingerprint: str
    streams: list[int]
    row_names: list[str]
    sums: Tensor
    n_sources: int = 0
    prompts: list[int] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        R = len(self.streams)
        if len(self.row_names) != R or self.sums.ndim != 3 or self.sums.shape[0] != R or self.sums.shape[1] != self.sums.shape[2]:
            raise ValueError("JacobianLens: sums must be [R, d, d] for R streams")

    def __repr__(self) -> str:
        return (
            f"JacobianLens(model={self.model_name!r}, rows={len(self.streams)}, d={self.sums.shape[-1]}, "
            f"prompts={len(self.prompts)}, sources={self.n_sources})"
        )

    @property
    def matrices(self) -> Float[Tensor, "r d d"]:
        """J_l = sums / N per fitted stream, float64 ``[R, d, d]``."""
        if self.n_sources == 0:
            raise InputError("the Jacobian lens has no fitted window yet (N = 0)")
        return self.sums / self.n_sources

    def translate(self, h: Float[Tensor, "r *b t d"], streams: Sequence[int]) -> Float[Tensor, "r *b t d"]:
        """J_l h_l for each of the given ``streams`` (rows of ``h``)."""
        rows = [self._row(l) for l in streams]
        Js = self._cast(h.dtype, h.device)[rows]  # [r, d, d]
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        return torch.bmm(flat, Js.transpose(1, 2)).reshape(h.shape)

    def _cast(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """All J_l in ``dtype`` on ``device``, kept until the sums or the count change (a
        readout then costs one gather, not a division and copy of all R d × d float64 sums)."""
        key = (id(self.sums), self.sums._version, self.n_sources, dtype, str(device))
        cache = getattr(self, "_cast_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, self.matrices.to(device=device, dtype=dtype))
            self._cast_cache = cache
        return cache[1]

    def _row(self, l: int) -> int:
        if l not in self.streams:
            raise InputError(f"stream h_{l} has no fitted Jacobian in this lens (fitted: {self.row_names})")
        return self.streams.index(l)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "streams": self.streams,
            "rows": self.row_names,
            "n_sources": self.n_sources,
            "n_prompts": len(self.prompts),
            "prompts": self.prompts,
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
        }

    def save(self, path: str | Path) -> Path:
        """Write the fit (sums, counts, metadata) atomically to a safetensors file."""
        meta = self.to_dict()
        meta.pop("kind")
        return save_lens_file(path, KIND, {"sums": self.sums}, meta)

    @classmethod
    def load(cls, path: str | Path, model: ResidualModel | None = None) -> "JacobianLens":
        """Read a fit; with ``model``, refuse one fitted for another model (fingerprint)."""
        tensors, meta = load_lens_file(path, KIND, model)
        return cls(
            model_name=meta["model"],
            fingerprint=meta["fingerprint"],
            streams=[int(x) for x in meta["streams"]],
            row_names=list(meta["rows"]),
            sums=tensors["sums"].double(),
            n_sources=int(meta["n_sources"]),
            prompts=[int(x) for x in meta["prompts"]],
            settings=dict(meta.get("settings", {})),
            seconds=float(meta.get("seconds", 0.0)),
        )

    def merge(self, other: "JacobianLens") -> "JacobianLens":
        """The fit over the union of two disjoint corpus slices (sums and counts add)."""
        if other.fingerprint != self.fingerprint:
            raise InputError(f"cannot merge J-lens fits of different models ({self.model_name} vs {other.model_name})")
        if other.streams != self.streams:
            raise InputError("cannot merge J-lens fits of different layer sets")
        keys = ("corpus", "tokens", "seed")
        a = {k: self.settings.get(k) for k in keys}
        b = {k: other.settings.get(k) for k in keys}
        if a != b:
            raise InputError(f"cannot merge J-lens fits with different corpus settings ({a} vs {b})")
        both = set(self.prompts) & set(other.prompts)
        if both:
            raise InputError(f"cannot merge: the fits share {len(both)} window(s) (e.g. #{min(both)}); slices must be disjoint")
        return JacobianLens(
            self.model_name,
            self.fingerprint,
            list(self.streams),
            list(self.row_names),
            self.sums + other.sums,
            self.n_sources + other.n_sources,
            sorted(self.prompts + other.prompts),
            dict(self.settings) | {"slice": "merged"},
            self.seconds + other.seconds,
        )


def jacobian_sums(
    model: ResidualModel, ids: Int[Tensor, "1 t"], streams: Sequence[int], chunk: int = 64
) -> tuple[Float[Tensor, "r d d"], int]:
    """Σ_{s ∈ S} Σ_{j ≥ s, j ∈ S} ∂h_L[j]/∂h_l[s] for each stream l in ``streams``, one window.

    S = {1, …, t−1}. Returns the sums ``[R, d, d]`` (float64) and |S|. ⌈d / chunk⌉ batched
    reverse passes (``chunk`` cotangents each) through the model's own blocks.
    """
    t = ids.shape[-1]
    if t < 2:
        raise InputError("a J-lens window needs at least 2 tokens (the first is not a source)")
    L = model.n_blocks
    d = model.d_model
    out = torch.zeros(len(streams), d, d, dtype=torch.float64)
    with torch.enable_grad():
        h = model.embed(ids).detach().requires_grad_(True)
        hs = [h]
        for blk in model.blocks:
            h = h + blk(h)
            hs.append(h)
        inputs = [hs[l] for l in streams]
        mask = torch.ones(t, dtype=h.dtype, device=h.device)
        mask[0] = 0
        for a in range(0, d, chunk):
            c = min(chunk, d - a)
            V = torch.zeros(c, *hs[L].shape, dtype=h.dtype, device=h.device)  # [c, 1, t, d]
            V[torch.arange(c), 0, :, a + torch.arange(c)] = mask
            grads = torch.autograd.grad(hs[L], inputs, grad_outputs=V, is_grads_batched=True, retain_graph=True, allow_unused=True)
            for r, g in enumerate(grads):
                if g is not None:
                    out[r, a : a + c] = g[:, 0, 1:, :].sum(1).double().cpu()
    return out, t - 1


def fit_jacobian_lens(
    model: ResidualModel,
    windows: Int[Tensor, "n t"],
    *,
    indices: Sequence[int] | None = None,
    streams: Sequence[int] | None = None,
    row_names: Sequence[str] | None = None,
    settings: dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    snapshots: Sequence[int] = (),
    time_budget: float | None = None,
    chunk: int = 64,
    progress: Callable[[int, int, float], None] | None = None,
) -> JacobianLens:
    """Fit J_l over the token ``windows`` (``[n, t]``, one window per row), see module doc.

    ``indices``: the corpus index of each window (default 0..n−1; fits of disjoint index
    sets merge). ``streams``/``row_names``: which h_l to fit (default: the embedding and the
    end of every transformer layer, :func:`jetex.lenses.layer_streams`). ``checkpoint``: a
    file written atomically after every window; if it exists, the fit resumes from it
    (same model, same settings required) and skips the windows already summed.
    ``snapshots``: window counts at which a copy ``<checkpoint>.n<k>`` is kept (for the
    saturation curve). ``time_budget``: seconds after which the fit stops (after the current
    window) and returns the partial lens.
    """
    from jetex.lenses.lens import layer_streams

    windows = as_tensor_ids(windows)
    n, t = windows.shape
    if int(windows.min()) < 0 or int(windows.max()) >= model.vocab_size:
        raise InputError(f"token ids must lie in 0..{model.vocab_size - 1}")
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(idx) != n or len(set(idx)) != n:
        raise InputError("indices must give one distinct corpus index per window")
    if streams is None:
        streams, names = layer_streams(model)
    else:
        streams = list(streams)
        names = list(row_names) if row_names is not None else [f"h{l}" for l in streams]
    settings = dict(settings or {}) | {"tokens": t, "windows": windows_id(windows)}
    fp = model.fingerprint()
    lens: JacobianLens | None = None
    if checkpoint is not None and Path(checkpoint).expanduser().is_file():
        lens = JacobianLens.load(checkpoint)
        check_fingerprint(lens.to_dict(), model, checkpoint)
        if lens.settings != settings or lens.streams != list(streams):
            raise InputError(f"checkpoint {checkpoint} was fitted with other settings; remove it or use another path")
    if lens is None:
        d = model.d_model
        lens = JacobianLens(model.name, fp, list(streams), list(names), torch.zeros(len(streams), d, d, dtype=torch.float64), 0, [], settings)
    done = set(lens.prompts)
    todo = [i for i in range(n) if idx[i] not in done]
    snaps = set(int(k) for k in snapshots)
    start = time.perf_counter()
    for count, i in enumerate(todo, 1):
        if time_budget is not None and time.perf_counter() - start >= time_budget:
            break
        t0 = time.perf_counter()
        s, m = jacobian_sums(model, windows[i : i + 1].to(model.device), streams, chunk)
        lens.sums += s
        lens.n_sources += m
        lens.prompts.append(idx[i])
        lens.seconds += time.perf_counter() - t0
        if checkpoint is not None:
            lens.save(checkpoint)
            if len(lens.prompts) in snaps:
                lens.save(f"{checkpoint}.n{len(lens.prompts)}")
        if progress is not None:
            progress(len(lens.prompts), len(done) + len(todo), time.perf_counter() - t0)
    return lens
