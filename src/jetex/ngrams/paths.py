"""Jet n-gram paths: named, documented input-to-output paths of a residual model
(paper Sec. 4 "jet bi-grams / tri-grams", METHODS.md §4).

A path that skips every self-attention block is a function of the current token alone,
so evaluating it on every vocabulary token gives data-free bigram statistics
P(next | token). With η the encoder, γ_l the blocks, γ_{L+1} the final norm and U the
unembedding (the :class:`~jetex.models.base.ResidualModel` view), the input token t is
fed as a one-token sequence (no BOS) at position 0, so h_0 = η(t) (with the absolute
position embedding of position 0 where the model has one).

Bigram paths (``spec`` → logits ``[B, V]`` for token ids ``[B]``), at jet order k:

- ``direct``: jet_expand(q, L, {η}, k):  U J^k γ_{L+1}(η)(h_L).  At k = 0: U γ_{L+1}(η(t)).
- ``mlp:N``: η → MLP of layer N → υ, Algorithm 1 twice with a single centre (weight 1):
  x = J^k γ_{mlp.N}(η)(h_{l−1}) (l the block index of ``mlp.N``, h_{l−1} the stream entering
  it), then U J^k γ_{L+1}(x)(h_L). At k = 0: U γ_{L+1}(γ_{mlp.N}(η(t))).
- ``mlp:N,M,…`` (N < M < …): the chain η → mlp.N → mlp.M → … → υ, each step a
  single-centre jet of the next MLP block, decoded as above (order 0: γ's applied in order).
- ``mlp:all``: shorthand for every ``mlp:N`` as its own path.
- ``mlps``: the decoder expansion whose centres are the single-MLP terms
  {γ_{mlp.N}(η)}_N with uniform weights 1/N:  (1/N) Σ_N U J^k γ_{L+1}(x_N)(h_L), i.e. the
  mean of the ``mlp:N`` logits (a convex combination, the weights Algorithm 1 uses by
  default). It does not include ``direct``. The plain sum of the single-MLP path logits is
  N times this: the same ranking of next tokens for every input, a softmax at temperature
  1/N (the mean keeps the probabilities on the scale of one path).
- ``attn-free``: the attention-free sub-network h ← h + J^k γ_mlp(h)(h_{l−1}) over the MLP
  blocks in order, starting from η, then decoded. At k = 0 this is the model with every
  attention block deleted. It is NOT the sum of the 2^N attention-free paths: the order-0
  terms γ_mlp.j(γ_mlp.i(η)) and γ_mlp.j(η) do not add up to γ_mlp.j(η + γ_mlp.i(η))
  because γ is not additive; it is the expansion in which each step keeps a single centre
  (the whole attention-free stream so far) instead of splitting it into paths. The full
  family has 2^N members and is not enumerated.

Order k ≥ 1: the variate of every jet is the actual residual stream of the one-token
input (h_0..h_L, attention blocks included: on a one-token sequence each attention block
is a function of that token), so the path is still a function of the token alone. At
k = 0 the variate is irrelevant and the stream is not computed.

The weight of a single-centre path is 1 (a weight w would scale the term before γ_{L+1}
and change the softmax; the paper's bigram paths use the unweighted term).

Trigram paths (skip-trigrams through one self-attention head, paper Sec. 4) are parsed here
and evaluated in :mod:`jetex.ngrams.trigrams`:

- ``attn:L.H``: head H of the self-attention of transformer layer L (both 0-based);
- ``attn:L``: every head of layer L (one path ``attn:L.H`` per head). The number after
  ``attn:`` is always a layer, never a head: head H of the first layer is ``attn:0.H``;
- ``attn``: every head of the model's first attention layer (the lowest layer with a
  self-attention, layer 0 in every transformer), the paper's default choice.

Models: MLP blocks are found by name ``mlp.N``; parallel-residual layers (``attn+mlp.N``)
contribute their MLP branch; attention-free toy models (blocks ``block.l`` of kind
linear/nonlinear, all position-wise) expose their blocks as ``mlp:l−1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from jetex.errors import InputError
from jetex.jets import check_max_order
from jetex.models.base import ResidualModel

BigramKind = Literal["direct", "chain", "mlps", "attn-free"]
_POSITIONWISE = ("mlp", "linear", "nonlinear")


# ---------------------------------------------------------------------------------------
# model structure
# ---------------------------------------------------------------------------------------
def mlp_blocks(model: ResidualModel) -> dict[int, tuple[int, Callable[[Tensor], Tensor]]]:
    """{transformer layer N: (1-based block index l, γ of its MLP)} for every MLP of the model.

    γ is the block itself, or the MLP branch of a parallel-residual block (whose γ is the
    sum of an attention and an MLP branch, so the MLP branch is a path of its own).
    """
    out: dict[int, tuple[int, Callable[[Tensor], Tensor]]] = {}
    for i, blk in enumerate(model.blocks):
        branches = getattr(blk, "branches", None)
        if blk.kind in _POSITIONWISE:
            out[int(blk.layer)] = (i + 1, blk)
        elif branches is not None and len(branches) == 2 and getattr(branches[1], "kind", None) == "mlp":
            out[int(blk.layer)] = (i + 1, branches[1])
    return out


def attention_layers(model: ResidualModel) -> dict[int, int]:
    """{transformer layer N: 1-based index l of the block that holds its self-attention}."""
    from jetex.models.adapters import attention_of

    out: dict[int, int] = {}
    for i, blk in enumerate(model.blocks):
        if attention_of(blk) is not None:
            out.setdefault(int(blk.layer), i + 1)
    return out


def _range_text(ns: list[int]) -> str:
    if not ns:
        return "none"
    return f"{min(ns)}..{max(ns)}" if ns == list(range(min(ns), max(ns) + 1)) else ", ".join(map(str, ns))


# ---------------------------------------------------------------------------------------
# bigram paths
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BigramPath:
    """One bigram path: ``name`` (canonical spec), ``kind``, the 1-based MLP ``blocks`` it uses,
    the transformer ``layers`` of those MLPs, and a one-line ``description``."""

    name: str
    kind: BigramKind
    blocks: tuple[int, ...]
    layers: tuple[int, ...]
    description: str

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.layers):
            raise ValueError("BigramPath: blocks and layers must have the same length")
        if self.kind == "direct" and self.blocks:
            raise ValueError("BigramPath: the direct path uses no block")
        if self.kind != "direct" and not self.blocks:
            raise ValueError(f"BigramPath: a {self.kind} path needs at least one block")

    @property
    def is_trigram(self) -> bool:
        return False

    def decoded(self, model: ResidualModel, ids: Int[Tensor, "b"], order: int = 0) -> Float[Tensor, "b d"]:
        """The path's final-norm-space term e(t) ``[B, d]`` (its logits are U e (+ bias)).

        ``ids`` are token ids; each is a one-token input at position 0. ``order`` is k.
        """
        k = _check_order(order)
        seq = ids.reshape(-1, 1).to(model.device)
        x0 = model.embed(seq)  # [B, 1, d]
        h = model.stream(seq) if k > 0 else None  # [L+1, B, 1, d]
        L = model.n_blocks
        fns = mlp_blocks(model)
        gamma = {l: fn for (l, fn) in fns.values()}

        def J(fn: Callable[[Tensor], Tensor], centre: Tensor, var_index: int) -> Tensor:
            if k == 0:
                return fn(centre)
            from jetex.jets import jet

            assert h is not None
            return jet(fn, centre, h[var_index], k)

        if self.kind == "direct":
            out = J(model.final_norm, x0, L)
        elif self.kind == "chain":
            c = x0
            for l in self.blocks:
                c = J(gamma[l], c, l - 1)
            out = J(model.final_norm, c, L)
        elif self.kind == "mlps":
            out = torch.stack([J(model.final_norm, J(gamma[l], x0, l - 1), L) for l in self.blocks]).mean(0)
        else:  # attn-free
            c = x0
            for l in self.blocks:
                c = c + J(gamma[l], c, l - 1)
            out = J(model.final_norm, c, L)
        return out[:, 0]

    def logits(self, model: ResidualModel, ids: Int[Tensor, "b"], order: int = 0) -> Float[Tensor, "b v"]:
        """The path's logits ``[B, V]`` = U e(t) (+ the unembedding bias)."""
        return model.unembed(self.decoded(model, ids, order))


@dataclass(frozen=True)
class TrigramPath:
    """A trigram path through head ``head`` of the self-attention of transformer layer ``layer``
    (block index ``block``, 1-based). See :mod:`jetex.ngrams.trigrams` for its score."""

    name: str
    layer: int
    head: int
    block: int
    description: str

    @property
    def is_trigram(self) -> bool:
        return True


NgramPath = Union[BigramPath, TrigramPath]


def _check_order(order: object) -> int:
    return check_max_order(order)


_SPEC_HELP = ("direct, mlp:N (or mlp.N), mlp:N,M (a chain), mlp:all, mlps, attn-free, attn:L.H, attn:L (or attn.L: "
              "all heads of layer L) or attn (all heads of the first attention layer)")


def canonical_spec(spec: str) -> str:
    """A path spec with block names written the n-gram way: ``mlp.14`` → ``mlp:14``,
    ``mlp.3,mlp.5`` → ``mlp:3,5``, ``attn.2`` → ``attn:2``, ``attn.2.5`` → ``attn:2.5`` (lower case)."""
    s = spec.strip().lower()
    if re.fullmatch(r"mlp\.\d+(?:\s*,\s*mlp\.\d+)*", s):
        return "mlp:" + ",".join(re.findall(r"mlp\.(\d+)", s))
    m = re.fullmatch(r"attn\.(\d+)(?:\.(\d+))?", s)
    if m:
        return f"attn:{m.group(1)}" + (f".{m.group(2)}" if m.group(2) is not None else "")
    return s


def parse_path(model: ResidualModel, spec: str) -> list[NgramPath]:
    """Parse one path spec into paths (``mlp:all`` and ``attn:L`` expand to several).

    Raises :class:`InputError` (one line) for unknown names and out-of-range layers/heads.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"empty path name; use one of: {_SPEC_HELP}")
    s = canonical_spec(spec)
    mlps = mlp_blocks(model)
    mlp_layers = sorted(mlps)
    if s == "direct":
        return [BigramPath("direct", "direct", (), (), "η → υ: U γ_{L+1}(η(t)), the encoder–decoder path")]
    if s in ("mlps", "attn-free", "mlp:all"):
        if not mlp_layers:
            raise InputError(f"path {spec!r}: model {model.name} has no MLP blocks")
        blocks = tuple(mlps[n][0] for n in mlp_layers)
        if s == "mlps":
            return [BigramPath("mlps", "mlps", blocks, tuple(mlp_layers),
                               f"mean over the {len(blocks)} single-MLP paths η → mlp.N → υ (uniform jet weights)")]
        if s == "attn-free":
            return [BigramPath("attn-free", "attn-free", blocks, tuple(mlp_layers),
                               "attention-free sub-network h ← h + γ_mlp(h) over all MLPs, then υ")]
        return [p for n in mlp_layers for p in parse_path(model, f"mlp:{n}")]
    m = re.fullmatch(r"mlp:(\d+(?:,\d+)*)", s)
    if m:
        layers = [int(x) for x in m.group(1).split(",")]
        for n in layers:
            if n not in mlps:
                raise InputError(f"path {spec!r}: MLP layer {n} out of range; this model's MLP layers are {_range_text(mlp_layers)}")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise InputError(f"path {spec!r}: a chain of MLPs must list strictly increasing layers")
        blocks = tuple(mlps[n][0] for n in layers)
        steps = " → ".join(f"mlp.{n}" for n in layers)
        return [BigramPath("mlp:" + ",".join(map(str, layers)), "chain", blocks, tuple(layers),
                           f"η → {steps} → υ (single-centre jets, weight 1)")]
    if s == "attn":
        attn = attention_layers(model)
        if not attn:
            raise InputError(f"path {spec!r}: model {model.name} has no self-attention blocks")
        return parse_path(model, f"attn:{min(attn)}")
    m = re.fullmatch(r"attn:(\d+)(?:\.(\d+))?", s)
    if m:
        layer = int(m.group(1))
        attn = attention_layers(model)
        if layer not in attn:
            raise InputError(f"path {spec!r}: attention layer {layer} out of range; this model's attention layers are {_range_text(sorted(attn))}")
        l = attn[layer]
        n_heads = model.head_weights(l).n_heads
        heads = range(n_heads) if m.group(2) is None else [int(m.group(2))]
        out: list[NgramPath] = []
        for hd in heads:
            if not 0 <= hd < n_heads:
                raise InputError(f"path {spec!r}: head {hd} out of range; layer {layer} has heads 0..{n_heads - 1}")
            out.append(TrigramPath(f"attn:{layer}.{hd}", layer, hd, l,
                                   f"skip-trigrams through head {hd} of attention layer {layer}: a … b → c"))
        return out
    raise InputError(f"unknown path {spec!r}; use one of: {_SPEC_HELP}")


def parse_paths(model: ResidualModel, specs: list[str] | tuple[str, ...] | str) -> list[NgramPath]:
    """Parse several specs, expanding shorthands, keeping the first occurrence of each path."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise InputError(f"no path given; use one of: {_SPEC_HELP}")
    out: dict[str, NgramPath] = {}
    for spec in specs:
        for p in parse_path(model, spec):
            out.setdefault(p.name, p)
    return list(out.values())


def available_paths(model: ResidualModel) -> list[str]:
    """Readable list of the path specs this model supports."""
    mlps = sorted(mlp_blocks(model))
    attn = attention_layers(model)
    out = ["direct"]
    if mlps:
        out += [f"mlp:N (N in {_range_text(mlps)})", "mlp:N,M,… (chain)", "mlp:all", "mlps", "attn-free"]
    if attn:
        H = model.head_weights(next(iter(attn.values()))).n_heads
        out += [f"attn:L.H (L in {_range_text(sorted(attn))}, H in 0..{H - 1})", "attn:L (all heads)",
                f"attn (all heads of the first attention layer, attn:{min(attn)})"]
    return out
