"""Fitting and evaluating the lens zoo (logit, tuned, Jacobian, iterative and joint jet lenses).

- :func:`corpus_windows`: a corpus cut into token windows, split into a *fit* part and a
  held-out *eval* part (every 10th window is held out), deterministic for a corpus, a
  tokenizer and a window length; the fit windows are shuffled with a seed.
- :func:`eval_heldout`: per lens and layer on held-out windows: KL(model ‖ lens), top-1
  agreement with the model and the rank of the model's top-1 token in the lens's logits.
- :func:`eval_concepts`: on two-hop prompts with an intermediate concept and a target
  (single tokens of the model's vocabulary; items that are not are dropped and named):
  pass@1/5/10 of the intermediate and of the target per layer, and the best layer.

Lenses that read h_l alone (logit, tuned, Jacobian) and lenses that read the final stream
h_L too (jet lenses of order ≥ 1) are reported in separate groups; for the latter the
share of the readout that is the model's own output is reported (see
:func:`own_output_share`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.lenses.jacobian import JacobianLens
from jetex.lenses.tuned import TunedLens
from jetex.expand.numerics import unembed
from jetex.lenses.lens import iterative_lens_terms, joint_centres, joint_lens_terms, layer_streams
from jetex.lenses.zoo import check_lens, lens_logits, own_output_share, reads_final
from jetex.models.base import ResidualModel
from jetex.apps.corpus import read_corpus

HOLDOUT_EVERY = 10


def corpus_windows(
    model: ResidualModel, corpus: str | Path, tokens: int = 32, *, split: str = "fit", seed: int = 0, max_chars: int | None = 400_000
) -> tuple[Int[Tensor, "n t"], dict[str, Any]]:
    """Token windows ``[n, tokens]`` of a corpus: BOS + (tokens − 1) consecutive corpus tokens.

    The corpus (a text file or ``stdlib-docs``; the first ``max_chars`` characters) is
    tokenized without special tokens and cut into consecutive non-overlapping pieces;
    piece w is held out (``split="eval"``) when w % 10 == 9, else it belongs to the fit
    split, whose order is a permutation seeded by ``seed`` (the eval split keeps corpus
    order). Returns the windows and the settings that identify them.
    """
    if split not in ("fit", "eval"):
        raise InputError(f"unknown split {split!r}: use 'fit' or 'eval'")
    if tokens < 2:
        raise InputError("windows need at least 2 tokens")
    text = read_corpus(corpus)
    if max_chars is not None:
        text = text[:max_chars]
    if not text.strip():
        raise InputError(f"corpus {corpus} is empty")
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_piece = len(ids) // (tokens - 1)
    pieces = [ids[w * (tokens - 1) : (w + 1) * (tokens - 1)] for w in range(n_piece)]
    keep = [w for w in range(n_piece) if (w % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == (split == "eval")]
    if not keep:
        raise InputError(
            f"corpus {corpus} is too small: {len(ids)} tokens give no {split} window of {tokens} tokens "
            f"(need at least {HOLDOUT_EVERY * (tokens - 1)} tokens)"
        )
    if split == "fit":
        g = torch.Generator().manual_seed(seed)
        keep = [keep[i] for i in torch.randperm(len(keep), generator=g).tolist()]
    bos = getattr(model.tokenizer, "bos_token_id", None)
    if bos is None:
        bos = ids[0]
    win = torch.tensor([[bos] + pieces[w] for w in keep], dtype=torch.long)
    cid = hashlib.sha256(text.encode()).hexdigest()[:12]
    name = str(corpus) if str(corpus) == "stdlib-docs" else Path(corpus).name
    return win, {"corpus": f"{name}:{cid}", "seed": seed, "split": split}


@dataclass
class LensSpec:
    """One lens to evaluate: a display ``name``, its ``kind`` (logit, tuned, jacobian,
    iterative, joint), the fitted ``lens`` (tuned, jacobian) and the jet ``order``."""

    name: str
    kind: str
    lens: TunedLens | JacobianLens | None = None
    order: int = 0

    @property
    def reads_final(self) -> bool:
        return reads_final(self.kind, self.order)


def default_specs(model: ResidualModel, tuned: TunedLens | None = None, jacobian: JacobianLens | None = None, orders: Sequence[int] = (1,)) -> list[LensSpec]:
    """logit, tuned (if given), jacobian (if given), iterative jet lens of each order ≥ 1, joint lens of order 1."""
    specs = [LensSpec("logit", "logit")]
    if tuned is not None:
        specs.append(LensSpec("tuned", "tuned", tuned))
    if jacobian is not None:
        specs.append(LensSpec("jacobian", "jacobian", jacobian))
    specs += [LensSpec(f"jet-{k}", "iterative", None, k) for k in orders if k >= 1]
    specs.append(LensSpec("joint-1", "joint", None, 1))
    return specs


def _rows_logits(model: ResidualModel, spec: LensSpec, h: Tensor, streams: list[int]) -> tuple[Tensor, Tensor | None]:
    """The lens's logits per row ``[R, t, V]`` for one sequence (``h`` ``[L+1, 1, t, d]``) and,
    for lenses that read h_L, the share of each readout that is q(z) ``[R, t]`` (the
    definition of ``LensResult.q_share``, :func:`jetex.lenses.zoo.own_output_share`)."""
    hs = h[:, 0]
    if spec.kind == "joint":
        segs, _ = joint_centres(model, "layers")
        coeffs, W, _ = joint_lens_terms(model, hs, segs, spec.order)
        terms = W[..., None] * coeffs.sum(0)
        logits = unembed(model, terms.to(model.dtype))  # the rows of joint_lens_logits
        if not spec.reads_final:
            return logits, None
        return logits, own_output_share(model, terms, W[..., None] * coeffs[0], hs[-1], logits)
    if spec.kind == "iterative" and spec.reads_final:
        coeffs = iterative_lens_terms(model, hs[:, None], streams, spec.order)[:, :, 0]  # [k+1, R, t, d]
        terms = coeffs.sum(0)
        logits = unembed(model, terms.to(model.dtype), bias=True)  # the rows of iterative_lens_logits
        return logits, own_output_share(model, terms, coeffs[0], hs[-1], logits)
    return lens_logits(model, spec.kind, h, streams, lens=spec.lens, order=spec.order)[:, 0], None


@dataclass
class HeldoutEval:
    """Per lens and layer on held-out windows (positions 1.. of each window, BOS excluded).

    ``table``: one dict per (lens, layer) with ``kl`` (mean KL(p_model ‖ p_lens), nats),
    ``top1`` (share of positions where the lens's top-1 is the model's top-1),
    ``rank_median``/``rank_mean`` (1-based rank of the model's top-1 token in the lens's
    logits), ``own_share`` (lenses reading h_L: mean share of the readout that is q(z)),
    and ``group`` (``h_l`` or ``h_L``). ``n_windows``, ``n_tokens``, ``seconds`` per lens.
    """

    model_name: str
    rows: list[str]
    table: list[dict[str, Any]]
    n_windows: int
    n_tokens: int
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        lenses = sorted({r["lens"] for r in self.table})
        return f"HeldoutEval(model={self.model_name!r}, lenses={lenses}, rows={len(self.rows)}, tokens={self.n_tokens})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "rows": self.rows, "n_windows": self.n_windows, "n_tokens": self.n_tokens,
                "seconds": self.seconds, "settings": self.settings, "table": self.table}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeldoutEval":
        return cls(d["model"], list(d["rows"]), list(d["table"]), int(d["n_windows"]), int(d["n_tokens"]), dict(d.get("seconds", {})), dict(d.get("settings", {})))

    def best(self, lens: str, metric: str = "kl") -> dict[str, Any]:
        """The row of ``lens`` with the best ``metric`` (lowest kl / rank, highest top1)."""
        rows = [r for r in self.table if r["lens"] == lens]
        if not rows:
            raise InputError(f"no lens {lens!r} in this evaluation")
        sign = -1 if metric == "top1" else 1
        return min(rows, key=lambda r: sign * r[metric])


@torch.no_grad()
def eval_heldout(
    model: ResidualModel, windows: Int[Tensor, "n t"], specs: Sequence[LensSpec], settings: dict[str, Any] | None = None, *, row_chunk: int = 4
) -> HeldoutEval:
    """KL(model ‖ lens), top-1 agreement and rank of the model's top-1, per lens and layer.

    Every window is read at positions 1..t−1; all metrics are means over those positions
    of all windows (ranks: median and mean). Deterministic: no sampling anywhere. The
    float64 statistics are computed ``row_chunk`` lens rows at a time (memory: ``row_chunk``
    × t × V float64 values per temporary; the result does not depend on it).
    """
    if row_chunk < 1:
        raise InputError("row_chunk must be >= 1")
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise InputError("held-out evaluation needs windows [n >= 1, t >= 2]")
    for s in specs:
        check_lens(model, s.kind, s.lens)
    streams, names = layer_streams(model)
    R = len(streams)
    acc = {s.name: {"kl": torch.zeros(R, dtype=torch.float64), "top1": torch.zeros(R, dtype=torch.float64),
                    "ranks": [], "share": torch.zeros(R, dtype=torch.float64)} for s in specs}
    secs = {s.name: 0.0 for s in specs}
    n_tok = 0
    for w in windows:
        ids = w[None].to(model.device)
        h = model.stream(ids)
        logp = F.log_softmax(model.decode(h[-1][0]).double(), -1)[1:]  # [t-1, V]
        top = logp.argmax(-1)
        p = logp.exp()
        for s in specs:
            t0 = time.perf_counter()
            lg, share = _rows_logits(model, s, h, streams)
            secs[s.name] += time.perf_counter() - t0
            a = acc[s.name]
            ranks = []
            for r0 in range(0, R, row_chunk):  # float64 [rows, t-1, V] a few rows at a time (Gemma 3: V = 262,144)
                x = lg[r0 : r0 + row_chunk, 1:].double()
                logq = F.log_softmax(x, -1)
                a["kl"][r0 : r0 + row_chunk] += (p * (logp - logq)).sum(-1).sum(-1).cpu()
                a["top1"][r0 : r0 + row_chunk] += (x.argmax(-1) == top).double().sum(-1).cpu()
                tl = x.gather(-1, top[None, :, None].expand(x.shape[0], -1, 1))
                ranks.append(((x > tl).sum(-1) + 1).cpu())
            a["ranks"].append(torch.cat(ranks))  # [R, t-1]
            if share is not None:
                a["share"] += share[:, 1:].double().sum(-1).cpu()
        n_tok += ids.shape[-1] - 1
    table = []
    for s in specs:
        a = acc[s.name]
        ranks = torch.cat(a["ranks"], dim=1).double()
        for r in range(R):
            table.append({
                "lens": s.name, "kind": s.kind, "order": s.order, "group": "h_L" if s.reads_final else "h_l",
                "row": names[r], "kl": round(float(a["kl"][r] / n_tok), 5), "top1": round(float(a["top1"][r] / n_tok), 5),
                "rank_median": float(ranks[r].median()), "rank_mean": round(float(ranks[r].mean()), 2),
                "own_share": round(float(a["share"][r] / n_tok), 5) if s.reads_final else None,
            })
    return HeldoutEval(model.name, names, table, int(windows.shape[0]), n_tok, {k: round(v, 4) for k, v in secs.items()}, dict(settings or {}))


@dataclass
class ConceptItem:
    prompt: str
    intermediate: str
    target: str
    set: str = ""


def load_concepts(path: str | Path | None = None, sets: Sequence[str] | None = None) -> list[ConceptItem]:
    """Prompt items from a JSON file (default: the project's ``data/lens_concepts.json``):
    ``{"sets": {name: [{"prompt", "intermediate", "target"}, ...]}}``."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8")) if path else json.loads(resources.files("jetex").joinpath("data/lens_concepts.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"prompt set file {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"prompt set file {path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sets"), dict):
        raise InputError('a prompt set file holds {"sets": {name: [{"prompt", "intermediate", "target"}, ...]}}')
    out = []
    for name, items in raw["sets"].items():
        if sets is not None and name not in sets:
            continue
        for it in items:
            if not isinstance(it, dict) or not all(isinstance(it.get(k), str) and it[k].strip() for k in ("prompt", "intermediate", "target")):
                raise InputError(f"set {name!r}: every item needs non-empty strings prompt, intermediate, target")
            out.append(ConceptItem(it["prompt"], it["intermediate"], it["target"], name))
    if sets is not None:
        missing = set(sets) - set(raw["sets"])
        if missing:
            raise InputError(f"unknown prompt set(s) {sorted(missing)}; the file has {sorted(raw['sets'])}")
    if not out:
        raise InputError("the prompt set is empty")
    return out


def single_token(model: ResidualModel, word: str) -> int | None:
    """The id of `` word`` (after a space) if it is one token of the model's vocabulary, else None."""
    ids = model.tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
    unk = getattr(model.tokenizer, "unk_token_id", None)
    return ids[0] if len(ids) == 1 and ids[0] != unk else None


@dataclass
class ConceptEval:
    """pass@k of the intermediate and of the target per lens and layer (at the prompt's last position).

    ``table``: one dict per (lens, layer): ``int@1/5/10``, ``tgt@1/5/10`` (share of kept
    items whose token is in the lens's top-k), ``group``; ``best``: per lens and metric the
    best layer and its value; ``dropped``: items whose intermediate or target is not one
    token (with the reason); ``model_target@1``: how often the model itself predicts the target.
    """

    model_name: str
    rows: list[str]
    table: list[dict[str, Any]]
    best: list[dict[str, Any]]
    n_items: int
    dropped: list[dict[str, str]]
    model_target_at1: float

    def __repr__(self) -> str:
        return f"ConceptEval(model={self.model_name!r}, items={self.n_items}, dropped={len(self.dropped)})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "rows": self.rows, "n_items": self.n_items, "dropped": self.dropped,
                "model_target@1": self.model_target_at1, "best": self.best, "table": self.table}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConceptEval":
        return cls(d["model"], list(d["rows"]), list(d["table"]), list(d["best"]), int(d["n_items"]), list(d["dropped"]), float(d["model_target@1"]))


KS = (1, 5, 10)


@torch.no_grad()
def eval_concepts(model: ResidualModel, items: Sequence[ConceptItem], specs: Sequence[LensSpec]) -> ConceptEval:
    """pass@1/5/10 of intermediate and target per lens and layer, and each lens's best layer."""
    for s in specs:
        check_lens(model, s.kind, s.lens)
    kept, dropped = [], []
    for it in items:
        a, b = single_token(model, it.intermediate), single_token(model, it.target)
        if a is None or b is None:
            bad = [w for w, i in ((it.intermediate, a), (it.target, b)) if i is None]
            dropped.append({"set": it.set, "prompt": it.prompt, "reason": f"not one token of the vocabulary: {', '.join(repr(' ' + w) for w in bad)}"})
        else:
            kept.append((it, a, b))
    if not kept:
        raise InputError(f"no prompt item is usable on {model.name}: every intermediate or target is more than one token")
    streams, names = layer_streams(model)
    R = len(streams)
    hits = {s.name: torch.zeros(2, len(KS), R) for s in specs}
    model_hit = 0
    for it, a, b in kept:
        ids = model.tokenize(it.prompt)
        h = model.stream(ids)
        model_hit += int(model.decode(h[-1][0, -1:])[-1].argmax() == b)
        for s in specs:
            # every lens reads each position from the stream at that position alone: decode the last one only
            lg, _ = _rows_logits(model, s, h[:, :, -1:], streams)
            last = lg[:, -1]  # [R, V]
            for c, tok in enumerate((a, b)):
                rank = (last > last[:, tok : tok + 1]).sum(-1)  # 0-based
                for ki, k in enumerate(KS):
                    hits[s.name][c, ki] += (rank < k).float().cpu()
    n = len(kept)
    table, best = [], []
    for s in specs:
        frac = hits[s.name] / n
        for r in range(R):
            row = {"lens": s.name, "kind": s.kind, "order": s.order, "group": "h_L" if s.reads_final else "h_l", "row": names[r]}
            for c, tag in enumerate(("int", "tgt")):
                for ki, k in enumerate(KS):
                    row[f"{tag}@{k}"] = round(float(frac[c, ki, r]), 4)
            table.append(row)
        for c, tag in enumerate(("int", "tgt")):
            for ki, k in enumerate(KS):
                v = frac[c, ki]
                r = int(v.argmax())  # first best layer
                best.append({"lens": s.name, "metric": f"{tag}@{k}", "layer": names[r], "value": round(float(v[r]), 4)})
    return ConceptEval(model.name, names, table, best, n, dropped, round(model_hit / n, 4))
