"""Terms: symbolic functions of the input z that expansions are built from (paper Sec. 3).

A :class:`Term` is a node of a small expression graph whose leaves read the residual
stream of an input (η(z), h_l(z), γ_l(h_{l-1}(z))) and whose inner nodes are weighted
jets ``w · J^k γ_l(centre)(h_{l-1})`` or identity terms. Terms are built without data
(that is the point of jet expansions: the rewrite is functional) and evaluated on an
input through an :class:`EvalContext`, which computes the stream once and memoises
every term's value, batching the jets of sibling terms into one call.

Spaces: a term lives in the residual-stream space ``[*b, t, d]``, except terms produced
by expanding the decoder, which live in final-norm space (U maps them to logits).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.expand.numerics import accumulation_dtype
from jetex.models.base import ResidualModel

DEC = "dec"


class Term:
    """A function of the input z; ``path`` names the input-to-output path it stands for."""

    path: tuple[str, ...]
    space: str = "stream"  # or "decoder"

    @property
    def name(self) -> str:
        """Readable path name, e.g. ``emb → attn.3 → mlp.7 → dec``."""
        return " → ".join(self.path)

    def children(self) -> tuple["Term", ...]:
        return ()

    def compute(self, ctx: "EvalContext") -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class Embedding(Term):
    """η(z): the encoder output h_0."""

    def __init__(self) -> None:
        self.path = ("emb",)

    def compute(self, ctx: "EvalContext") -> Tensor:
        return ctx.h[0]


class Stream(Term):
    """h_l(z): the whole residual stream after block l (0 = embedding)."""

    def __init__(self, l: int) -> None:
        self.l = l
        self.path = (f"h{l}",)

    def compute(self, ctx: "EvalContext") -> Tensor:
        return ctx.h[self.l]


class Contribution(Term):
    """γ_l(h_{l-1}(z)): block l's contribution to the stream (a joint-lens centre)."""

    def __init__(self, l: int, name: str, path: tuple[str, ...] | None = None) -> None:
        self.l = l
        self.path = path or (name,)

    def compute(self, ctx: "EvalContext") -> Tensor:
        return ctx.gamma[self.l - 1]


class Segment(Term):
    """h_b(z) − h_a(z) = Σ_{l=a+1..b} γ_l(h_{l-1}(z)): the contribution of consecutive blocks a+1..b."""

    def __init__(self, a: int, b: int, name: str) -> None:
        if not 0 <= a < b:
            raise ValueError("a segment needs 0 <= a < b")
        self.a, self.b = a, b
        self.path = (name,)

    def compute(self, ctx: "EvalContext") -> Tensor:
        return ctx.gamma[self.a : self.b].sum(0)


class Given(Term):
    """A user-supplied function of the input ids (``fn(input_ids, h) -> [*b, t, d]``)."""

    def __init__(self, fn, name: str) -> None:
        self.fn = fn
        self.path = (name,)

    def compute(self, ctx: "EvalContext") -> Tensor:
        return self.fn(ctx.input_ids, ctx.h)


class JetTerm(Term):
    """``w · J^k γ_l(x)(h_{l-1})``: a weighted jet of block l (l = L+1: the final norm γ_{L+1}).

    The centre x is another term; the variate is the actual stream entering the block
    (h_{l-1}, or h_L for the decoder). ``degree=j`` keeps only the degree-j Taylor
    coefficient c_j (super-exponential expansion); ``None`` keeps the whole jet.
    ``weight`` is a float or a tensor broadcastable to ``[*b, t]`` (per-position weights).
    """

    def __init__(self, l: int, centre: Term, order: int, weight: float | Tensor, block_name: str, degree: int | None = None) -> None:
        self.l = l
        self.centre = centre
        self.order = order
        self.weight = weight
        self.degree = degree
        self.block_name = block_name
        step = block_name if degree is None else f"{block_name}[{degree}]"
        self.path = centre.path + (step,)
        self.space = "decoder" if block_name == DEC else "stream"

    def children(self) -> tuple[Term, ...]:
        return (self.centre,)

    def group_key(self) -> tuple:
        return (self.l, self.order)

    def compute(self, ctx: "EvalContext") -> Tensor:  # single evaluation (batched path in ctx)
        ctx.evaluate([self])
        return ctx.cache[id(self)]


class IdentityTerm(Term):
    """The identity term of β = id + γ for one centre: the centre itself (k ≥ 1, Eq. 9) or w·x (k = 0)."""

    def __init__(self, centre: Term, weight: float | Tensor = 1.0) -> None:
        self.centre = centre
        self.weight = weight
        self.path = centre.path

    def children(self) -> tuple[Term, ...]:
        return (self.centre,)

    def compute(self, ctx: "EvalContext") -> Tensor:
        return _scale(self.weight, ctx.value(self.centre))


class Remainder(Term):
    """δ = target − Σ terms, for the target of one expansion (h_{l+1}, or γ_{L+1}(h_L))."""

    def __init__(self, l: int, terms: Sequence[Term], decoder: bool) -> None:
        self.l = l
        self.terms = tuple(terms)
        self.decoder = decoder
        self.path = ("remainder",)
        self.space = "decoder" if decoder else "stream"

    def children(self) -> tuple[Term, ...]:
        return self.terms

    def compute(self, ctx: "EvalContext") -> Tensor:
        return ctx.target(self.l, self.decoder) - ctx.values(self.terms).sum(0)


def _scale(w: float | Tensor, x: Tensor) -> Tensor:
    if isinstance(w, Tensor):
        if w.ndim == 0:
            return w * x
        return w.to(x.dtype)[..., None] * x
    return x if w == 1.0 else w * x


class EvalContext:
    """Evaluates terms on one input: computes the stream once, memoises values, batches jets."""

    def __init__(self, model: ResidualModel, input_ids: Int[Tensor, "*b t"]) -> None:
        from jetex.jets import jet_coefficients  # noqa: F401  (fail early if jets are missing)

        self.model = model
        self.input_ids = input_ids
        h = model.embed(input_ids)
        hs, gs = [h], []
        for blk in model.blocks:
            g = blk(h)
            h = h + g
            hs.append(h)
            gs.append(g)
        self.h: Float[Tensor, "l1 *b t d"] = torch.stack(hs)
        self.gamma: Float[Tensor, "l *b t d"] = torch.stack(gs) if gs else self.h[:0]
        self.cache: dict[int, Tensor] = {}
        #: the terms whose values ``cache`` holds, kept alive: the cache is keyed by id(term),
        #: and an id is reused once its object is freed (a later term would read a stale value)
        self._held: dict[int, Term] = {}
        #: per jet term: norms of its Taylor coefficients ``[k+1, *b, t]`` (unweighted), for diagnostics
        self.coefficient_norms: dict[int, Tensor] = {}
        self._final: Tensor | None = None

    @property
    def L(self) -> int:
        return self.model.n_blocks

    def target(self, l: int, decoder: bool) -> Tensor:
        """What an expansion at Algorithm-1 index l decomposes: h_{l+1}, or γ_{L+1}(h_L) at the decoder."""
        if decoder:
            if self._final is None:
                self._final = self.model.final_norm(self.h[self.L])
            return self._final
        return self.h[l + 1]

    def value(self, term: Term) -> Tensor:
        key = id(term)
        if key not in self.cache:
            if isinstance(term, JetTerm):
                self.evaluate([term])
            else:
                self._store(term, term.compute(self))
        return self.cache[key]

    def _store(self, term: Term, value: Tensor) -> None:
        self._held[id(term)] = term
        self.cache[id(term)] = value

    def values(self, terms: Sequence[Term]) -> Tensor:
        """Values of ``terms`` stacked: ``[n, *b, t, d]`` (jets of the same block batched), in the
        widest dtype among them (float64 once a term of order k ≥ 1 is involved, see
        :mod:`jetex.expand.numerics`)."""
        self.evaluate(terms)
        vals = [self.value(t) for t in terms]
        dtype = vals[0].dtype
        for v in vals[1:]:
            dtype = torch.promote_types(dtype, v.dtype)
        return torch.stack([v.to(dtype) for v in vals])

    def evaluate(self, terms: Sequence[Term]) -> None:
        """Compute and memoise ``terms`` and all they depend on, level by level.

        A term's level is 1 + the highest level of its children; all jets of one level
        that share (block, order) are computed in a single batched jet call.
        """
        level: dict[int, int] = {}
        nodes: dict[int, Term] = {}

        def visit(t: Term) -> int:
            key = id(t)
            if key not in level:
                if key in self.cache:
                    level[key] = 0
                else:
                    level[key] = 1 + max((visit(c) for c in t.children()), default=0)
                    nodes[key] = t
            return level[key]

        for t in terms:
            visit(t)
        by_level: dict[int, list[Term]] = defaultdict(list)
        for key, t in nodes.items():
            by_level[level[key]].append(t)
        for lev in sorted(by_level):
            jets: dict[tuple, list[JetTerm]] = defaultdict(list)
            for t in by_level[lev]:
                if isinstance(t, JetTerm):
                    jets[t.group_key()].append(t)
                else:
                    self._store(t, t.compute(self))
            for group in jets.values():
                self._jet_batch(group)

    def _jet_batch(self, group: list[JetTerm]) -> None:
        """One jet call for a group of jets of the same block and order.

        The jets run in the model's dtype (centres held in float64 are rounded to it); the
        Taylor coefficients are summed, and the terms kept, in
        :func:`~jetex.expand.numerics.accumulation_dtype` (float64 for k ≥ 1).
        """
        from jetex.jets import jet_coefficients

        l, k = group[0].l, group[0].order
        decoder = l == self.L + 1
        fn = self.model.final_norm if decoder else self.model.blocks[l - 1]
        variate = self.h[self.L] if decoder else self.h[l - 1]
        centres = torch.stack([self.value(t.centre).to(variate.dtype) for t in group])  # [n, *b, t, d]
        n = centres.shape[0]
        flat = centres.reshape(-1, *centres.shape[-2:])
        var = variate.unsqueeze(0).expand_as(centres).reshape(flat.shape)
        coeffs = jet_coefficients(fn, flat, var, k)  # [k+1, n*b, t, d]
        coeffs = coeffs.reshape(k + 1, n, *centres.shape[1:]).to(accumulation_dtype(coeffs.dtype, k))
        full = coeffs.sum(0)
        for i, t in enumerate(group):
            val = full[i] if t.degree is None else coeffs[t.degree, i]
            self._store(t, _scale(t.weight, val))
            self.coefficient_norms[id(t)] = coeffs[:, i].norm(dim=-1)  # [k+1, *b, t]
