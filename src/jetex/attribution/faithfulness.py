"""Faithfulness of token attributions by erasure (ERASER-style comprehensiveness and sufficiency).

For a prompt z with target t (the model's own next-token prediction after z) and an
attribution ranking the input tokens, let p(z') = softmax(q(z')[last])[t], the target's
probability after the (possibly shortened) sequence z'. For each ratio r in
:data:`DEFAULT_RATIOS` = {1, 5, 10, 20, 50}% the top k_r = max(1, ceil(r·n)) tokens are
selected, n being the number of rankable tokens:

- comprehensiveness(r) = p(z) − p(z without the top-k_r tokens)    (higher: more faithful)
- sufficiency(r)       = p(z) − p(only the top-k_r tokens of z)     (lower: more faithful)
- AOPC = the mean over the ratios, for each of the two.

Removal strategy: tokens are **deleted** from the sequence (the rest keep their order and
are re-positioned), never replaced. A causal LM has no mask token, and a pad/unk
stand-in is itself an out-of-distribution input whose own effect would be measured;
deletion keeps every remaining input a genuine text (as in ERASER). A BOS token is
always kept and is never ranked (its score is ignored), so "only the top-k tokens"
still starts with BOS and "removing everything" leaves BOS alone, which the model can
still read. Without a BOS at least one token must remain: the comprehensiveness k is
capped at n − 1 (and such a text needs n ≥ 2 tokens). Ranking is by signed score,
highest first (ties: earlier position first): tokens that push against the target are
ranked last, as a faithful ordering should do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jetex.attribution.core import (
    LAYERWISE_METHODS,
    METHODS,
    Attribution,
    as_input_ids,
    attribute,
    has_bos,
    predicted_target,
    run_stream,
)
from jetex.errors import InputError
from jetex.models.base import ResidualModel

#: The erasure ratios (fractions of the rankable tokens).
DEFAULT_RATIOS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.50)

#: The shipped evaluation set (one prompt a line; ``#`` comments and blank lines skipped).
SENTENCES_RESOURCE = "data/attribution_sentences.txt"


def n_selected(ratio: float, n: int) -> int:
    """k_r = max(1, ceil(r·n)) (rounded first so that 0.1·10 counts as exactly 1)."""
    return max(1, math.ceil(round(ratio * n, 9)))


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Comprehensiveness and sufficiency of one attribution at each erasure ratio.

    ``k[j]`` tokens are removed (comprehensiveness) / kept (sufficiency) at ``ratios[j]``;
    ``full_prob`` is p(z), ``removed_prob[j]`` and ``kept_prob[j]`` the probabilities of
    the target after the erasures.
    """

    ratios: tuple[float, ...]
    k: tuple[int, ...]
    full_prob: float
    removed_prob: tuple[float, ...]
    kept_prob: tuple[float, ...]

    def __post_init__(self) -> None:
        m = len(self.ratios)
        if m == 0 or not (len(self.k) == len(self.removed_prob) == len(self.kept_prob) == m):
            raise ValueError("FaithfulnessCurve: ratios, k, removed_prob and kept_prob must have the same non-zero length")

    @property
    def comprehensiveness(self) -> tuple[float, ...]:
        return tuple(self.full_prob - p for p in self.removed_prob)

    @property
    def sufficiency(self) -> tuple[float, ...]:
        return tuple(self.full_prob - p for p in self.kept_prob)

    @property
    def aopc_comprehensiveness(self) -> float:
        return sum(self.comprehensiveness) / len(self.ratios)

    @property
    def aopc_sufficiency(self) -> float:
        return sum(self.sufficiency) / len(self.ratios)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratios": list(self.ratios),
            "k": list(self.k),
            "full_prob": self.full_prob,
            "comprehensiveness": list(self.comprehensiveness),
            "sufficiency": list(self.sufficiency),
            "aopc_comprehensiveness": self.aopc_comprehensiveness,
            "aopc_sufficiency": self.aopc_sufficiency,
        }


def check_ratios(ratios: Iterable[float]) -> tuple[float, ...]:
    out = tuple(float(r) for r in ratios)
    if not out or any(not 0.0 < r <= 1.0 for r in out):
        raise InputError(f"erasure ratios must be fractions in (0, 1], got {list(out)}")
    return out


def erasure_curve(
    ids: Sequence[int],
    ranking: Sequence[int],
    prob: Callable[[list[int]], float],
    ratios: Iterable[float] = DEFAULT_RATIOS,
    *,
    keep: Sequence[int] = (),
) -> FaithfulnessCurve:
    """Comprehensiveness/sufficiency of a ranking of positions of ``ids``.

    ``ranking``: the rankable positions, most important first (every position not in
    ``keep`` exactly once). ``keep``: positions never removed (BOS). ``prob(ids')``: the
    target's probability after the sequence ``ids'``. Identical erased sequences are
    scored once.
    """
    ratios = check_ratios(ratios)
    ids = [int(i) for i in ids]
    keep_set = {int(i) for i in keep}
    rank = [int(i) for i in ranking]
    if sorted(rank + sorted(keep_set)) != list(range(len(ids))):
        raise InputError("ranking and kept positions must together cover every position exactly once")
    n = len(rank)
    if n == 0:
        raise InputError("nothing to rank: the text has no token besides BOS")
    if not keep_set and n < 2:
        raise InputError("a text without BOS needs at least 2 tokens for the erasure metrics")
    cache: dict[tuple[int, ...], float] = {}

    def p(positions: Iterable[int]) -> float:
        seq = tuple(ids[i] for i in sorted(positions))
        if seq not in cache:
            cache[seq] = float(prob(list(seq)))
        return cache[seq]

    full = p(range(len(ids)))
    ks, removed, kept = [], [], []
    for r in ratios:
        k = n_selected(r, n)
        k_rm = min(k, n - 1) if not keep_set else k
        top_rm = set(rank[:k_rm])
        removed.append(p(i for i in range(len(ids)) if i not in top_rm))
        kept.append(p(keep_set | set(rank[:k])))
        ks.append(k)
    return FaithfulnessCurve(ratios, tuple(ks), full, tuple(removed), tuple(kept))


def target_prob_fn(model: ResidualModel, target: int) -> Callable[[list[int]], float]:
    """ids → softmax(q(ids)[last])[target], with the model's own forward pass."""

    def prob(ids: list[int]) -> float:
        x = torch.tensor([ids], dtype=torch.long, device=model.device)
        with torch.no_grad():
            logits = model.reference_logits(x)[0, -1].double()
        return float(torch.softmax(logits, -1)[target])

    return prob


def faithfulness(
    model: ResidualModel,
    attribution: Attribution,
    ratios: Iterable[float] = DEFAULT_RATIOS,
    prob: Callable[[list[int]], float] | None = None,
) -> FaithfulnessCurve:
    """The erasure curve of an :class:`Attribution` on ``model`` (BOS kept, never ranked)."""
    prob = prob or target_prob_fn(model, attribution.target_id)
    keep = [0] if attribution.bos else []
    return erasure_curve(attribution.token_ids.tolist(), attribution.ranking(), prob, ratios, keep=keep)


# ---- evaluation over a set of prompts ---------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """A method with its layer/order: parsed from ``name[@layer[:order]]``."""

    method: str
    layer: int | None = None
    order: int = 1
    layer_name: str | None = None  # how the stream is shown in labels (e.g. ``mlp.14``); default its index

    @classmethod
    def parse(cls, spec: str, layer: int | None = None, order: int = 1) -> MethodSpec:
        spec = spec.strip()
        name, _, rest = spec.partition("@")
        if name not in METHODS:
            raise InputError(f"unknown attribution method {name!r}; choose one of: {', '.join(METHODS)}")
        if rest:
            lay, _, k = rest.partition(":")
            try:
                layer = int(lay)
                order = int(k) if k else order
            except ValueError:
                raise InputError(f"bad method spec {spec!r}: write name, name@layer or name@layer:order") from None
        elif name not in LAYERWISE_METHODS:
            layer = None
        return cls(name, layer, order)

    @property
    def label(self) -> str:
        if self.layer is None:
            return self.method
        where = self.layer if self.layer_name is None else self.layer_name
        return f"{self.method}@{where}" + (f":{self.order}" if self.method == "jetxlogit" else "")


@dataclass(frozen=True)
class MethodSummary:
    """Mean erasure metrics of one method over the prompts."""

    label: str
    n_prompts: int
    aopc_comprehensiveness: float
    aopc_sufficiency: float
    comprehensiveness: tuple[float, ...]
    sufficiency: tuple[float, ...]
    seconds_per_prompt: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.label,
            "n_prompts": self.n_prompts,
            "aopc_comprehensiveness": self.aopc_comprehensiveness,
            "aopc_sufficiency": self.aopc_sufficiency,
            "comprehensiveness": list(self.comprehensiveness),
            "sufficiency": list(self.sufficiency),
            "seconds_per_prompt": self.seconds_per_prompt,
        }


@dataclass(frozen=True)
class FaithfulnessReport:
    """Per-method summaries over a prompt set (all methods explain the same targets)."""

    ratios: tuple[float, ...]
    prompts: tuple[str, ...]
    summaries: tuple[MethodSummary, ...]
    curves: dict[str, list[FaithfulnessCurve]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for s in self.summaries:
            if len(s.comprehensiveness) != len(self.ratios) or len(s.sufficiency) != len(self.ratios):
                raise ValueError(f"FaithfulnessReport: summary {s.label} does not match the ratios")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratios": list(self.ratios),
            "n_prompts": len(self.prompts),
            "methods": [s.to_dict() for s in self.summaries],
        }


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts of a text file, one a line (blank lines and ``#`` comments skipped).

    ``None`` reads the shipped evaluation set ``jetex/data/attribution_sentences.txt``.
    """
    if path is None:
        text = resources.files("jetex").joinpath(SENTENCES_RESOURCE).read_text(encoding="utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"prompt file not found: {p}")
        text = p.read_text(encoding="utf-8")
    prompts = [ln.rstrip("\n") for ln in text.splitlines()]
    prompts = [ln for ln in prompts if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"no prompts in {path or SENTENCES_RESOURCE}")
    return prompts


def evaluate_faithfulness(
    model: ResidualModel,
    prompts: Sequence[str | Tensor | list[int]],
    methods: Sequence[str | MethodSpec] = ("normxlogit", "random"),
    ratios: Iterable[float] = DEFAULT_RATIOS,
    *,
    layer: int | None = None,
    order: int = 1,
    method_options: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FaithfulnessReport:
    """Mean comprehensiveness/sufficiency AOPC of each method over ``prompts``.

    The target of each prompt is the model's own argmax next token; every method explains
    that same target. ``layer``/``order`` apply to the layer-wise methods given by bare
    name; ``name@layer[:order]`` specs set them per method. ``seconds_per_prompt`` times the
    attribution alone (not the erasure forward passes).
    """
    ratios = check_ratios(ratios)
    specs = [m if isinstance(m, MethodSpec) else MethodSpec.parse(m, layer, order) for m in methods]
    if not specs:
        raise InputError("no attribution methods to evaluate")
    if not prompts:
        raise InputError("no prompts to evaluate")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise InputError(f"duplicate methods: {labels}")
    method_options = method_options or {}
    curves: dict[str, list[FaithfulnessCurve]] = {s.label: [] for s in specs}
    seconds: dict[str, float] = {s.label: 0.0 for s in specs}
    for j, prompt in enumerate(prompts):
        ids = as_input_ids(model, prompt)
        with torch.no_grad():
            target = predicted_target(model, run_stream(model, ids, {model.n_blocks})[model.n_blocks][-1])
        prob = target_prob_fn(model, target)
        cache: dict[tuple[int, ...], float] = {}

        def cached_prob(seq: list[int]) -> float:
            key = tuple(seq)
            if key not in cache:
                cache[key] = prob(seq)
            return cache[key]

        for s in specs:
            t0 = time.perf_counter()
            a = attribute(model, ids, target=target, method=s.method, layer=s.layer, order=s.order, **method_options.get(s.method, {}))
            seconds[s.label] += time.perf_counter() - t0
            keep = [0] if has_bos(model, ids) else []
            curves[s.label].append(erasure_curve(ids.tolist(), a.ranking(), cached_prob, ratios, keep=keep))
        if progress is not None:
            progress(j + 1, len(prompts))
    n = len(prompts)
    summaries = []
    for s in specs:
        cs = curves[s.label]
        summaries.append(
            MethodSummary(
                label=s.label,
                n_prompts=n,
                aopc_comprehensiveness=sum(c.aopc_comprehensiveness for c in cs) / n,
                aopc_sufficiency=sum(c.aopc_sufficiency for c in cs) / n,
                comprehensiveness=tuple(sum(c.comprehensiveness[j] for c in cs) / n for j in range(len(ratios))),
                sufficiency=tuple(sum(c.sufficiency[j] for c in cs) / n for j in range(len(ratios))),
                seconds_per_prompt=seconds[s.label] / n,
            )
        )
    return FaithfulnessReport(ratios, tuple(p if isinstance(p, str) else str(p) for p in prompts), tuple(summaries), curves)


__all__ = [
    "DEFAULT_RATIOS",
    "FaithfulnessCurve",
    "FaithfulnessReport",
    "MethodSpec",
    "MethodSummary",
    "erasure_curve",
    "evaluate_faithfulness",
    "faithfulness",
    "load_prompts",
    "n_selected",
    "target_prob_fn",
]
