"""Algorithm 2 (``exp_jet_expansion``): all input-to-output paths, enumerated lazily.

Algorithm 2 starts from ξ = {η, γ_1 ∘ η} and applies ``jet_expand(q, l, ξ, k)`` for
l = 1..L with uniform weights 1/|ξ| reset at every step. Each resulting term is one path,
i.e. one subset S ⊆ {1..L} of blocks (block 1 enters exactly, through γ_1 ∘ η):

    x_∅ = η,   x_{{1}} = γ_1(η),
    x_{S ∪ {m}} = w_m · J^k γ_m(x_S)(h_{m-1})        (m > max S, m ≥ 2, w_m = 1/n_{m-1})
    path logits  = U · w_dec · J^k γ_{L+1}(x_S)(h_L)  (w_dec = 1/n_L)

where n_l is the number of centres entering step l (2^l). Skipping a block is its
identity term (the centre itself, since k ≥ 1; at k = 0 the identity is weighted, w·x).

The **super-exponential** variant (``split_degrees=True``, k ≥ 1) splits every jet term
into its Taylor degrees c_0..c_k, each a separate term and so a separate centre for the
next step: a path then chooses, per block it uses, a degree j; n_l = 2 (k+2)^{l-1}.

There are 2^L (or 2·(k+2)^{L-1}·(k+1)) paths, so they are never built eagerly: a
:class:`PathFilter` selects paths (blocks they must use or avoid, their length, their
degrees) and :meth:`PathExpansion.paths` yields just those; :meth:`PathExpansion.evaluate`
computes a selected set on an input in a batched way, sharing common prefixes (one jet
call per block for all prefixes that go through it).

For small expansions (at most :attr:`PathExpansion.MAX_EAGER_PATHS` paths),
:meth:`PathExpansion.materialize` builds Algorithm 2 explicitly with ``jet_expand`` (split by
degree in the super-exponential variant) and :meth:`PathExpansion.remainder` gives the
logit-space remainder q(z) − Σ_paths, so that Σ paths + remainder = q(z) (Eq. 11).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.expand.algorithm import Expansion, check_order, jet_expand
from jetex.expand.diagnostics import decay_from_norms, relative_distance
from jetex.expand.numerics import accumulation_dtype, unembed
from jetex.expand.terms import DEC, Contribution, Embedding, EvalContext
from jetex.models.base import ResidualModel
from jetex.models.batch import as_batch, is_batch
from jetex.results import Result, ResultList


@dataclass(frozen=True)
class Path:
    """One input-to-output path: the blocks it goes through (1-based, increasing) and, in the
    super-exponential expansion, the Taylor degree taken at each (``None`` = whole jet).
    Block 1 is always exact (``degree None``). ``dec_degree`` is the degree at the decoder."""

    blocks: tuple[int, ...]
    degrees: tuple[int | None, ...] = ()
    dec_degree: int | None = None

    def __post_init__(self) -> None:
        if self.degrees and len(self.degrees) != len(self.blocks):
            raise ValueError("Path: one degree per block")
        if any(b2 <= b1 for b1, b2 in zip(self.blocks, self.blocks[1:])):
            raise ValueError("Path: blocks must be strictly increasing")

    def degree_of(self, i: int) -> int | None:
        return self.degrees[i] if self.degrees else None

    def name(self, model: ResidualModel) -> str:
        steps = ["emb"]
        for i, b in enumerate(self.blocks):
            d = self.degree_of(i)
            steps.append(model.blocks[b - 1].name + ("" if d is None else f"[{d}]"))
        steps.append(DEC + ("" if self.dec_degree is None else f"[{self.dec_degree}]"))
        return " → ".join(steps)

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class PathFilter:
    """Selects paths without enumerating the others.

    ``must_use`` / ``avoid``: block indices (1-based) or names, or kinds (``"attn"``, ``"mlp"``:
    in ``avoid`` a kind excludes all its blocks). ``min_len``/``max_len``: number of blocks.
    ``degrees``: allowed Taylor degrees at each block (super-exponential expansion only).
    """

    must_use: tuple[int | str, ...] = ()
    avoid: tuple[int | str, ...] = ()
    min_len: int = 0
    max_len: int | None = None
    degrees: tuple[int, ...] | None = None


@dataclass
class PathValues:
    """Logits of selected paths on one input: ``logits [P, *b, t, V]`` (or ``[P, *b, V]`` at one position).

    ``weighted``: whether the paths carry Algorithm 2's weights (see :meth:`PathExpansion.evaluate`).
    ``decay`` and ``distance`` (``logits.shape[:-1]``): the largest degree-norm ratio and the largest
    centre→variate distance over the jets along each path (docs/trust.md; 0 for a path with no
    series, NaN when not computed).
    """

    paths: list[Path]
    names: list[str]
    logits: Tensor
    position: int | None
    weighted: bool = True
    decay: Tensor | None = None
    distance: Tensor | None = None

    def __post_init__(self) -> None:
        if self.logits.shape[0] != len(self.paths) or len(self.names) != len(self.paths):
            raise ValueError("PathValues: one logits row and one name per path")
        for v in (self.decay, self.distance):
            if v is not None and tuple(v.shape) != tuple(self.logits.shape[:-1]):
                raise ValueError("PathValues: decay and distance must be logits.shape[:-1]")


def _share(x: float) -> str:
    """A path's logit as a share of the model's: ``+62% of the model's`` or ``+253× the model's``."""
    if x != x:
        return "model's logit is 0"
    return f"{x:+.0%} of the model's" if abs(x) < 10 else f"{x:+.3g}× the model's"


@dataclass
class RankedPath:
    """A path and its contribution to a token's logit at one position.

    ``logit``: the path's logit for the target token ``token`` (string ``token_str``) on the scale
    it was ranked on (``weighted`` False: the unweighted path, see :meth:`PathExpansion.rank`);
    ``share``: that logit over the model's own logit for the token; ``top_token``/``top_str``: the
    path's own top-1 token; ``decay``/``distance``/``trusted``: the path's trust diagnostics
    (trusted: order 0, or every jet along the path within its radius, distance < 1, with
    non-growing degree norms).
    """

    name: str
    path: Path
    logit: float
    top_token: int
    token: int = -1
    token_str: str = ""
    top_str: str = ""
    share: float = float("nan")
    weighted: bool = False
    decay: float = float("nan")
    distance: float = float("nan")
    trusted: bool = True

    def __repr__(self) -> str:
        flag = "" if self.trusted else ", untrusted"
        return f"RankedPath({self.name!r}, logit[{self.token_str!r}]={self.logit:+.4g} ({_share(self.share)}), top={self.top_str!r}{flag})"

    def to_dict(self) -> dict:
        return {
            "path": self.name,
            "logit": self.logit,
            "share": None if self.share != self.share else self.share,
            "token": self.token_str,
            "top_token": self.top_str,
            "weighted": self.weighted,
            "decay": None if self.decay != self.decay else self.decay,
            "distance": None if self.distance != self.distance else self.distance,
            "trusted": self.trusted,
        }


@dataclass(repr=False)
class PathRanking(Result):
    """Paths ranked by their contribution to one token's logit at one position of one input.

    A sequence of :class:`RankedPath` (``len``, iteration, indexing; best first), with the
    setting: ``model_name``, ``order``, ``split_degrees``, ``tokens`` / ``input_ids`` ``[t]``
    (the input), ``position`` (0-based), ``target_id`` / ``target`` (the ranked token),
    ``n_ranked`` (how many paths were evaluated) and ``top_tokens`` (each ranked path's own
    top-1 token string).

    Table columns: ``rank`` (1 = largest logit), ``path`` (its name, ``emb → attn.0 → dec``),
    ``blocks`` (comma-separated block names it goes through), ``length``, ``logit`` (its
    logit of the target), ``top_token_id``, ``top_token``, ``target``, ``target_id``, ``position``.
    """

    _renderer_module = "jetex.viz.tables"

    model_name: str
    order: int
    split_degrees: bool
    tokens: list[str]
    input_ids: Int[Tensor, "t"]
    position: int
    target_id: int
    target: str
    n_ranked: int
    paths: list[RankedPath]
    top_tokens: list[str]

    def __post_init__(self) -> None:
        if len(self.top_tokens) != len(self.paths):
            raise ValueError("PathRanking: one top token per ranked path")
        if self.input_ids.ndim != 1 or self.input_ids.shape[0] != len(self.tokens):
            raise ValueError("PathRanking: input_ids must be [t], one per token")

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[RankedPath]:
        return iter(self.paths)

    def __getitem__(self, i: int) -> RankedPath:
        return self.paths[i]

    def _summary(self) -> str:
        text = "".join(self.tokens)
        text = text if len(text) <= 40 else text[:39] + "…"
        best = f", best={self.paths[0].name!r} ({self.paths[0].logit:+.3g}, {_share(self.paths[0].share)})" if self.paths else ""
        return (
            f"target={self.target!r}, position={self.position}, order={self.order}, "
            f"paths={len(self.paths)} of {self.n_ranked}{best}, model={self.model_name!r}, text={text!r}"
        )

    def _columns(self) -> dict[str, list]:
        names = [r.name.split(" → ")[1:-1] for r in self.paths]
        return {
            "rank": list(range(1, len(self.paths) + 1)),
            "path": [r.name for r in self.paths],
            "blocks": [",".join(n) for n in names],
            "length": [len(r.path) for r in self.paths],
            "logit": [float(r.logit) for r in self.paths],
            "share": [float(r.share) for r in self.paths],
            "trusted": [bool(r.trusted) for r in self.paths],
            "top_token_id": [int(r.top_token) for r in self.paths],
            "top_token": list(self.top_tokens),
            "target": [self.target] * len(self.paths),
            "target_id": [int(self.target_id)] * len(self.paths),
            "position": [int(self.position)] * len(self.paths),
        }


class PathExpansion:
    """The exponential (or super-exponential) jet expansion of a model, enumerated lazily."""

    def __init__(self, model: ResidualModel, order: int, split_degrees: bool = False) -> None:
        self.model = model
        self.order = check_order(order)
        if split_degrees and self.order == 0:
            raise InputError("the super-exponential expansion needs order k >= 1")
        self.split_degrees = split_degrees
        self.L = model.n_blocks
        if self.L < 1:
            raise InputError("the model has no blocks to expand")

    # ---- structure -------------------------------------------------------------
    def n_centres(self, l: int) -> int:
        """Number of centres entering step l (expanding γ_{l+1}; l = L: the decoder)."""
        if not self.split_degrees:
            return 2**l
        return 2 * (self.order + 2) ** (l - 1)

    def weight(self, m: int) -> float:
        """Uniform weight of the jet at block m (m = L+1: the decoder); block 1 is exact."""
        return 1.0 if m == 1 else 1.0 / self.n_centres(m - 1)

    @property
    def n_paths(self) -> int:
        """Total number of paths (2^L, or 2 (k+2)^{L-1} (k+1) split by degree)."""
        if not self.split_degrees:
            return 2**self.L
        return self.n_centres(self.L) * (self.order + 1)

    def _blocks(self, spec: Sequence[int | str]) -> set[int]:
        out: set[int] = set()
        for s in spec:
            if isinstance(s, str) and s in ("attn", "mlp", "layer", "linear", "nonlinear"):
                out |= {i + 1 for i, b in enumerate(self.model.blocks) if b.kind == s}
            else:
                out.add(self.model.block_index(s))
        return out

    def _choices(self, flt: PathFilter) -> tuple[list[int], set[int], list[int | None], list[int | None]]:
        must = self._blocks(flt.must_use)
        avoid = self._blocks(flt.avoid)
        if must & avoid:
            raise InputError("a block cannot be both required and avoided")
        allowed = [b for b in range(1, self.L + 1) if b not in avoid]
        if self.split_degrees:
            degs: list[int | None] = list(flt.degrees if flt.degrees is not None else range(self.order + 1))
            if any(not 0 <= d <= self.order for d in degs):  # type: ignore[operator]
                raise InputError(f"degrees must lie in 0..{self.order}")
            dec_degs = degs
        else:
            if flt.degrees is not None:
                raise InputError("degree filters need the super-exponential expansion (split_degrees=True)")
            degs, dec_degs = [None], [None]
        return allowed, must, degs, dec_degs

    def count(self, flt: PathFilter = PathFilter()) -> int:
        """Number of paths the filter selects (computed, not enumerated)."""
        allowed, must, degs, dec_degs = self._choices(flt)
        free = [b for b in allowed if b not in must]
        hi = len(allowed) if flt.max_len is None else min(flt.max_len, len(allowed))
        total = 0
        for n in range(max(flt.min_len, len(must)), hi + 1):
            extra = n - len(must)
            if extra < 0 or extra > len(free):
                continue
            n_sets = math.comb(len(free), extra)
            if self.split_degrees:
                # block 1, when used, has a single (exact) choice; every other block len(degs)
                if 1 in must:
                    with1 = n_sets
                elif 1 in free:
                    with1 = math.comb(len(free) - 1, extra - 1) if extra >= 1 else 0
                else:
                    with1 = 0
                without1 = n_sets - with1
                total += (without1 * len(degs) ** n + with1 * len(degs) ** max(n - 1, 0)) * len(dec_degs)
            else:
                total += n_sets
        return total

    def paths(self, flt: PathFilter = PathFilter()) -> Iterator[Path]:
        """Yield the selected paths lazily (shortest first, then in block order)."""
        allowed, must, degs, dec_degs = self._choices(flt)
        free = [b for b in allowed if b not in must]
        hi = len(allowed) if flt.max_len is None else min(flt.max_len, len(allowed))
        for n in range(max(flt.min_len, len(must)), hi + 1):
            extra = n - len(must)
            if extra < 0 or extra > len(free):
                continue
            for combo in itertools.combinations(free, extra):
                blocks = tuple(sorted(must | set(combo)))
                if not self.split_degrees:
                    yield Path(blocks)
                    continue
                per_block = [[None] if b == 1 else degs for b in blocks]
                for ds in itertools.product(*per_block):
                    for dd in dec_degs:
                        yield Path(blocks, tuple(ds), dd)

    def path(self, spec: str | Sequence[int | str]) -> Path:
        """A single (non-split) path from block names/indices, e.g. ``"attn.0,mlp.3"``."""
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        items = [i.strip() if isinstance(i, str) else i for i in items]
        blocks = tuple(sorted(self.model.block_index(i) for i in items if i != ""))
        return Path(blocks)

    # ---- evaluation ---------------------------------------------------------------
    def evaluate(
        self,
        input_ids: Int[Tensor, "*b t"],
        paths: Sequence[Path],
        position: int | None = None,
        ctx: EvalContext | None = None,
        *,
        weighted: bool = True,
    ) -> PathValues:
        """Logits of each path on ``input_ids``; prefixes are shared and jets batched per block.

        ``position`` (e.g. -1) keeps only that position's logits (``[P, *b, V]``), which
        saves the unembedding of every other position. ``weighted=False`` evaluates each path
        with every Algorithm-2 weight (jet weights 1/|ξ| and, at k = 0, identity weights) set
        to 1: the composition of the path's own jets, which does not shrink with the number of
        paths (those values are no longer terms of Eq. 11). For k ≥ 1 the degrees are summed
        in float64 and weighted paths' logits returned in float64 (:mod:`jetex.expand.numerics`);
        unweighted paths' logits are in the model's dtype.
        """
        from jetex.jets import jet_coefficients

        paths = list(paths)
        if not paths:
            raise InputError("no paths selected")
        ctx = ctx or EvalContext(self.model, input_ids)
        values: dict[tuple, Tensor] = {(): ctx.h[0]}
        zero = torch.zeros(ctx.h.shape[1:-1], dtype=torch.float64, device=ctx.h.device)
        diag: dict[tuple, tuple[Tensor, Tensor]] = {(): (zero, zero)}
        # all distinct non-empty prefixes, as tuples of (block, degree)
        prefixes: set[tuple] = set()
        for p in paths:
            steps = tuple((b, p.degree_of(i)) for i, b in enumerate(p.blocks))
            for j in range(1, len(steps) + 1):
                prefixes.add(steps[:j])
        by_block: dict[int, list[tuple]] = {}
        for pre in prefixes:
            by_block.setdefault(pre[-1][0], []).append(pre)
        for m in sorted(by_block):
            group = sorted(by_block[m])
            if m == 1:
                for pre in group:
                    values[pre] = ctx.gamma[0]
                    diag[pre] = (zero, zero)
                continue
            parents = sorted({pre[:-1] for pre in group})
            centres = [self._skip_scale(p, m, weighted) * values[p] for p in parents]
            coeffs = self._jet(m, centres, ctx, jet_coefficients)
            dec, dist = self._series_diag(m, centres, coeffs, ctx)
            idx = {p: i for i, p in enumerate(parents)}
            w = self.weight(m) if weighted else 1.0
            for pre in group:
                d = pre[-1][1]
                i = idx[pre[:-1]]
                c = coeffs[:, i]
                values[pre] = w * (c.sum(0) if d is None else c[d])
                pd, pr = diag[pre[:-1]]
                diag[pre] = (torch.fmax(pd, dec[i]), torch.fmax(pr, dist[i]))
        # decoder
        finals = sorted({tuple((b, p.degree_of(i)) for i, b in enumerate(p.blocks)) for p in paths})
        centres = [self._skip_scale(f, self.L + 1, weighted) * values[f] for f in finals]
        coeffs = self._jet(self.L + 1, centres, ctx, jet_coefficients, position)
        dec, dist = self._series_diag(self.L + 1, centres, coeffs, ctx, position)
        fidx = {f: i for i, f in enumerate(finals)}
        w = self.weight(self.L + 1) if weighted else 1.0
        out, decays, dists = [], [], []
        for p in paths:
            key = tuple((b, p.degree_of(i)) for i, b in enumerate(p.blocks))
            i = fidx[key]
            c = coeffs[:, i]
            out.append(w * (c.sum(0) if p.dec_degree is None else c[p.dec_degree]))
            pd, pr = diag[key]
            if position is not None:
                pd, pr = pd[..., position], pr[..., position]
            decays.append(torch.fmax(pd, dec[i]))
            dists.append(torch.fmax(pr, dist[i]))
        stacked = torch.stack(out)
        # weighted paths are Eq. 11 summands: float64 logits for k >= 1; unweighted ones are read one by one
        logits = unembed(self.model, stacked if weighted else stacked.to(self.model.dtype))
        return PathValues(
            paths, [p.name(self.model) for p in paths], logits, position, weighted, torch.stack(decays), torch.stack(dists)
        )

    def _series_diag(
        self, m: int, centres: list[Tensor], coeffs: Tensor, ctx: EvalContext, position: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Degree-norm decay and centre→variate distance ``[n, *b, t]`` (or ``[n, *b]`` at ``position``)
        of the jets of block m (m = L+1: the decoder) around ``centres``; 0 at order 0 (no series)."""
        decoder = m == self.L + 1
        variate = ctx.h[self.L] if decoder else ctx.h[m - 1]
        X = torch.stack(centres)
        if decoder and position is not None:
            X, variate = X[..., position, :], variate[..., position, :]
        if self.order == 0:
            z = torch.zeros(X.shape[:-1], dtype=torch.float64, device=X.device)
            return z, z
        return decay_from_norms(coeffs.norm(dim=-1)), relative_distance(X, variate.unsqueeze(0))

    def _skip_scale(self, prefix: tuple, m: int, weighted: bool = True) -> float:
        """Product of the identity weights of the blocks a path skips before block m.

        For k ≥ 1 identity terms are the centres themselves (Eq. 9): scale 1. For k = 0 the
        identity term of block j is w_j·x (footnote 2), for every skipped block j ≥ 2
        (skipping block 1 is the exact initial centre η). Unweighted paths: 1.
        """
        if self.order >= 1 or not weighted:
            return 1.0
        prev = prefix[-1][0] if prefix else 0
        scale = 1.0
        for j in range(max(prev + 1, 2), m):
            scale *= self.weight(j)
        return scale

    def _jet(self, m: int, centres: list[Tensor], ctx: EvalContext, jet_coefficients, position: int | None = None) -> Tensor:
        """Coefficients ``[k+1, n, *b, t, d]`` of J^k γ_m(x_i)(h_{m-1}) for each centre (m = L+1: final norm)."""
        decoder = m == self.L + 1
        fn = self.model.final_norm if decoder else self.model.blocks[m - 1]
        variate = ctx.h[self.L] if decoder else ctx.h[m - 1]
        X = torch.stack(centres).to(variate.dtype)  # centres held in float64 (k >= 1) enter the jet in the model's dtype
        if decoder and position is not None:  # the final norm is position-wise
            X = X[..., position : position + 1 if position != -1 else None, :]
            variate = variate[..., position : position + 1 if position != -1 else None, :]
        Y = variate.unsqueeze(0).expand_as(X)
        flat_x = X.reshape(-1, *X.shape[-2:])
        flat_y = Y.reshape(flat_x.shape)
        if self.order == 0:
            c = fn(flat_x).unsqueeze(0)
        else:
            c = jet_coefficients(fn, flat_x, flat_y, self.order)
        c = c.reshape(c.shape[0], *X.shape).to(accumulation_dtype(c.dtype, self.order))
        if decoder and position is not None:
            c = c.squeeze(-2)
        return c

    @torch.no_grad()
    def rank(
        self,
        input_ids: Int[Tensor, "*b t"] | str | Sequence,
        paths: Sequence[Path],
        token: int | Sequence[int | None] | None = None,
        position: int = -1,
        top: int = 10,
        batch_size: int = 256,
        *,
        attention_mask: Tensor | Sequence | None = None,
        weighted: bool = False,
        progress: bool = False,
    ) -> PathRanking | ResultList:
        """Rank ``paths`` by their logit for ``token`` (default: the model's prediction) at
        ``position``; the ``top`` best, as a :class:`PathRanking`.

        The scale is the **unweighted path** (``weighted=False``, default): the path's own jets
        composed with every Algorithm-2 weight set to 1 (at k = 0, emb → mlp.3 → dec is the
        paper's bigram path U γ_{L+1}(γ_mlp.3(η))). Algorithm 2's weighted term — the summand of
        Eq. 11 — carries the product of the weights 1/|ξ_l| along the path, about 2^−L (8.7e−19 at
        the decoder of a 60-block model), so every single path reads ~0 whatever it computes and
        rankings on that scale are dominated by the weights; ``weighted=True`` ranks on it anyway.
        Each :class:`RankedPath` gives token strings, the logit's share of the model's own logit
        for the token, and trust diagnostics. ``progress``: a progress bar on stderr, shown once
        the ranking has run for 2 s.

        A batch (a list of texts or id sequences, or ids ``[b, t]`` with an optional
        ``attention_mask``, see :mod:`jetex.models.batch`) gives a
        :class:`~jetex.results.ResultList` of one ranking per item, each equal to the item
        ranked alone (``position`` counts within the item: −1 is its last token; ``token``
        one for all, or a list with one per item).
        """
        import sys

        from tqdm.auto import tqdm

        if is_batch(input_ids, attention_mask):
            batch = as_batch(input_ids, self._item_ids, attention_mask)
            tokens = list(token) if isinstance(token, (list, tuple)) else [token] * len(batch)
            if len(tokens) != len(batch):
                raise InputError(f"{len(tokens)} tokens for a batch of {len(batch)}: give one token, or one per item")
            paths = list(paths)
            return ResultList(
                self.rank(x[None], paths, tk, position, top, batch_size, weighted=weighted, progress=progress)
                for x, tk in zip(batch.ids, tokens)
            )
        if isinstance(input_ids, str):
            input_ids = self.model.tokenize(input_ids)
        ids = torch.as_tensor(input_ids)
        t = int(ids.shape[-1])
        if not -t <= position < t:
            raise InputError(f"position {position} out of range for {t} tokens")
        ctx = EvalContext(self.model, input_ids)
        q = self.model.decode(ctx.h[self.L])[..., position, :].reshape(-1, self.model.vocab_size)[0]
        if token is None:
            token = int(q.argmax())
        q_tok = float(q[token])
        ranked: list[RankedPath] = []
        paths = list(paths)
        strings = self.model.token_strings
        tok_str = strings([token])[0]
        bar = tqdm(total=len(paths), unit="path", desc="ranking paths", delay=2.0, disable=not progress, file=sys.stderr, leave=False)
        try:
            for i in range(0, len(paths), batch_size):
                chunk = paths[i : i + batch_size]
                vals = self.evaluate(input_ids, chunk, position=position, ctx=ctx, weighted=weighted)
                lg = vals.logits.reshape(len(chunk), -1, self.model.vocab_size)[:, 0]
                dec = vals.decay.reshape(len(chunk), -1)[:, 0]  # type: ignore[union-attr]
                dist = vals.distance.reshape(len(chunk), -1)[:, 0]  # type: ignore[union-attr]
                tops = lg.argmax(-1).tolist()
                for j, (p, n) in enumerate(zip(chunk, vals.names)):
                    v = float(lg[j, token])
                    dj, rj = float(dec[j]), float(dist[j])
                    ok = self.order == 0 or (math.isfinite(v) and rj < 1.0 and not dj > 1.0)
                    ranked.append(
                        RankedPath(
                            n, p, v, tops[j], token=token, token_str=tok_str, top_str="",
                            share=v / q_tok if q_tok != 0 else float("nan"), weighted=weighted,
                            decay=dj, distance=rj, trusted=ok,
                        )
                    )
                bar.update(len(chunk))
        finally:
            bar.close()
        ranked.sort(key=lambda r: -r.logit)
        ranked = ranked[:top]
        for r, st in zip(ranked, strings([r.top_token for r in ranked])):
            r.top_str = st
        flat = ids.reshape(-1, t)[0].cpu()
        return PathRanking(
            model_name=self.model.name,
            order=self.order,
            split_degrees=self.split_degrees,
            tokens=self.model.token_strings(flat),
            input_ids=flat,
            position=position % t,
            target_id=int(token),
            target=self.model.token_strings([int(token)])[0],
            n_ranked=len(paths),
            paths=ranked,
            top_tokens=[r.top_str for r in ranked],
        )

    def _item_ids(self, x) -> Int[Tensor, "t"]:
        """Ids ``[t]`` of one batch item (a text is tokenised with BOS)."""
        if isinstance(x, str):
            return self.model.tokenize(x)[0]
        ids = torch.as_tensor(x)
        if ids.ndim != 1 or ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise InputError("each item must be a text or non-empty integer token ids [t]")
        if int(ids.min()) < 0 or int(ids.max()) >= self.model.vocab_size:
            raise InputError(f"token ids must lie in 0..{self.model.vocab_size - 1}")
        return ids.long().to(self.model.device)

    def materialize(self) -> Expansion:
        """Build Algorithm 2 explicitly with ``jet_expand`` (only for small L: 2^L terms, or
        2 (k+2)^{L-1} (k+1) split by degree).

        Each decoder term is one path; its name is that path's :meth:`Path.name`, so term and
        lazy path can be matched by name. In the super-exponential variant every jet is split
        into its Taylor degrees (``jet_expand(..., split_degrees=True)``), block 1 staying exact.
        Used to check the lazy evaluation against Algorithm 1.
        """
        if self.n_paths > self.MAX_EAGER_PATHS:
            raise InputError(
                f"refusing to build {self.n_paths} terms eagerly (more than {self.MAX_EAGER_PATHS}); use paths() and evaluate()"
            )
        name1 = self.model.blocks[0].name
        xi = [Embedding(), Contribution(1, name1, path=("emb", name1))]
        exp = None
        for l in range(1, self.L + 1):
            exp = jet_expand(self.model, l, xi, self.order, split_degrees=self.split_degrees)
            xi = exp.terms
        assert exp is not None
        return exp

    MAX_EAGER_PATHS = 4096

    @torch.no_grad()
    def remainder(
        self,
        input_ids: Int[Tensor, "*b t"],
        *,
        max_paths: int | None = None,
        batch_size: int = 256,
    ) -> Float[Tensor, "*b t v"]:
        """The logit-space remainder of the whole expansion: q(z) − Σ_{all paths} path logits.

        This is U δ_L of Algorithm 2 (plus the unembedding bias, if the model has one), so that
        Σ paths + remainder = q(z) exactly (Eq. 11). It needs every path, so it is only allowed
        when the path count is at most ``max_paths`` (default :attr:`MAX_EAGER_PATHS`); paths
        are evaluated in chunks of ``batch_size`` sharing one stream computation.
        """
        limit = self.MAX_EAGER_PATHS if max_paths is None else max_paths
        if self.n_paths > limit:
            raise InputError(
                f"the remainder needs all {self.n_paths} paths of this {'super-' if self.split_degrees else ''}exponential "
                f"expansion (L = {self.L}, k = {self.order}); it is computed only for at most {limit} paths"
            )
        if batch_size < 1:
            raise InputError("batch_size must be >= 1")
        ctx = EvalContext(self.model, input_ids)
        total: Tensor | None = None
        chunk: list[Path] = []

        def flush() -> None:
            nonlocal total
            s = self.evaluate(input_ids, chunk, ctx=ctx).logits.sum(0)
            total = s if total is None else total + s
            chunk.clear()

        for p in self.paths():
            chunk.append(p)
            if len(chunk) == batch_size:
                flush()
        if chunk:
            flush()
        assert total is not None
        return self.model.decode(ctx.h[self.L]) - total


def exp_jet_expansion(model: ResidualModel, order: int, *, split_degrees: bool = False) -> PathExpansion:
    """Algorithm 2: the exponential jet expansion (2^L paths), or the super-exponential one.

    Returns a lazy :class:`PathExpansion`; select paths with :class:`PathFilter` and evaluate
    them with :meth:`PathExpansion.evaluate` / rank them with :meth:`PathExpansion.rank`.
    """
    return PathExpansion(model, order, split_degrees)
