"""The residual-block view of a model (paper Sec. 2, METHODS.md §1).

A model is read as the residual network

    q = υ ∘ β_L ∘ … ∘ β_1 ∘ η,     β_l = id + γ_l,     υ(x) = U γ_{L+1}(x)

- ``embed``       η: token ids ``[*b, t]`` → stream ``[*b, t, d]`` (token + absolute position embedding)
- ``blocks[l-1]`` γ_l for l = 1..L: stream ``[*b, t, d]`` → contribution ``[*b, t, d]``
- ``final_norm``  γ_{L+1}: stream → normalised stream ``[*b, t, d]``
- ``unembed``     U: normalised stream → logits ``[*b, t, V]`` (linear, plus a bias if the model has one)
- ``decode``      υ = U ∘ γ_{L+1}

Indexing follows the paper: blocks are γ_1..γ_L (``block(l)`` is 1-based), the stream is
h_0..h_L with h_l = h_{l-1} + γ_l(h_{l-1}); ``blocks`` is the 0-based list.

Every block is a plain callable on an arbitrary stream tensor: the positions are
0..t-1 of the tensor it receives and the attention mask is causal (with the layer's
sliding window where the model has one). That is what lets jets be taken through it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jetex.errors import InputError
from jetex.models.batch import as_batch, pack

BlockKind = Literal["attn", "mlp", "layer", "linear", "nonlinear"]


@dataclass(frozen=True)
class HeadWeights:
    """Per-head weights of one self-attention block (for head-level paths, e.g. trigrams).

    Shapes: ``W_Q [H, d, dh]``, ``W_K [H, d, dh]``, ``W_V [H, d, dh]``, ``W_O [H, dh, d]``
    (key/value heads already repeated for grouped-query attention), biases ``[H, dh]``
    / ``[d]`` or None. ``scale`` multiplies q·k. The attention block computes, for the
    normalised input x = norm(h):  out = Σ_h softmax(q_h k_hᵀ·scale + mask) v_h W_O[h] + b_O,
    with rotary position embedding applied to q, k where ``rotary`` is True.

    Optional, for architectures that need them (defaults keep the plain form above):
    ``rotary_dims`` — only the first ``rotary_dims`` dims of each head are rotated
    (GPT-NeoX partial rotary; None: all); ``q_norm`` / ``k_norm`` — per-head norm modules
    applied to q, k before rotary (Gemma 3). ``jetex.models.adapters.head_attention``
    recomputes the per-head outputs from these weights.
    """

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    b_Q: Tensor | None
    b_K: Tensor | None
    b_V: Tensor | None
    b_O: Tensor | None
    scale: float
    rotary: bool
    rotary_dims: int | None = None
    q_norm: Any = None
    k_norm: Any = None

    def __post_init__(self) -> None:
        H, d, dh = self.W_Q.shape
        for name in ("W_K", "W_V"):
            if tuple(getattr(self, name).shape) != (H, d, dh):
                raise ValueError(f"HeadWeights.{name} must be [{H}, {d}, {dh}]")
        if tuple(self.W_O.shape) != (H, dh, d):
            raise ValueError(f"HeadWeights.W_O must be [{H}, {dh}, {d}]")

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[0])


class Block(nn.Module):
    """One residual block's non-linearity γ_l (input norm, sub-layer, output norm if any).

    Subclasses implement :meth:`forward`. ``name`` is the block's readable name used in
    path names (``attn.3``, ``mlp.3``, ``layer.3``, ``block.2`` for toys); ``layer`` is
    the 0-based transformer layer it belongs to.
    """

    def __init__(self, name: str, kind: BlockKind, layer: int) -> None:
        super().__init__()
        self.name = name
        self.kind: BlockKind = kind
        self.layer = layer

    def forward(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}, layer={self.layer}"


class FnBlock(Block):
    """A block whose γ is a given module or function of the stream."""

    def __init__(self, name: str, kind: BlockKind, layer: int, fn: nn.Module) -> None:
        super().__init__(name, kind, layer)
        self.fn = fn

    def forward(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:
        return self.fn(x)


class ResidualModel(nn.Module):
    """Base class of every residual-block view (real models and toys).

    Subclasses set ``self.blocks`` (an ``nn.ModuleList`` of :class:`Block`) and implement
    :meth:`embed`, :meth:`final_norm` and :meth:`unembed`; real models also override
    :meth:`reference_logits` to call the original Hugging Face forward pass.
    """

    blocks: nn.ModuleList
    tokenizer: Any = None
    name: str = "model"
    granularity: str = "sublayer"

    # ---- the four parts of q -------------------------------------------------
    def embed(self, input_ids: Int[Tensor, "*b t"]) -> Float[Tensor, "*b t d"]:  # pragma: no cover
        """η(z): token embedding (+ absolute position embedding where the model has one)."""
        raise NotImplementedError

    def final_norm(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t d"]:  # pragma: no cover
        """γ_{L+1}: the final normalisation (identity for models without one)."""
        raise NotImplementedError

    def unembed(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t v"]:
        """U x (+ bias): the linear unembedding."""
        out = x @ self.unembedding_matrix.T
        if self.unembedding_bias is not None:
            out = out + self.unembedding_bias
        return out

    @property
    def unembedding_matrix(self) -> Float[Tensor, "v d"]:  # pragma: no cover
        """U as a ``[V, d]`` matrix."""
        raise NotImplementedError

    @property
    def unembedding_bias(self) -> Tensor | None:
        return None

    # ---- derived -------------------------------------------------------------
    def decode(self, x: Float[Tensor, "*b t d"]) -> Float[Tensor, "*b t v"]:
        """υ(x) = U γ_{L+1}(x)."""
        return self.unembed(self.final_norm(x))

    @property
    def n_blocks(self) -> int:
        """L, the number of residual blocks."""
        return len(self.blocks)

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    @property
    def d_model(self) -> int:  # pragma: no cover
        return int(self.unembedding_matrix.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.unembedding_matrix.shape[0])

    @property
    def max_length(self) -> int | None:
        """Context window in tokens (None: unbounded)."""
        return None

    @property
    def device(self) -> torch.device:
        return self.unembedding_matrix.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unembedding_matrix.dtype

    def block(self, l: int) -> Block:
        """γ_l, 1-based as in the paper (l = 1..L)."""
        if isinstance(l, bool) or not isinstance(l, int):
            raise InputError(f"block index must be an int in 1..{self.n_blocks}, got {l!r} ({type(l).__name__})")
        if not 1 <= l <= self.n_blocks:
            raise InputError(f"block index {l!r} out of range: this model has blocks 1..{self.n_blocks}")
        return self.blocks[l - 1]

    def block_index(self, name_or_index: str | int) -> int:
        """The 1-based index l of a block given by name (``mlp.3``) or index."""
        if isinstance(name_or_index, int) and not isinstance(name_or_index, bool):
            self.block(name_or_index)
            return name_or_index
        names = self.block_names
        if name_or_index in names:
            return names.index(name_or_index) + 1
        shown = ", ".join(names[:4] + (["…"] if len(names) > 6 else []) + names[-2:] if len(names) > 6 else names)
        raise InputError(f"unknown block {name_or_index!r}; blocks are: {shown}")

    def stream(self, input_ids: Int[Tensor, "*b t"], attention_mask: Tensor | Any = None) -> Float[Tensor, "l1 *b t d"]:
        """The residual stream h_0..h_L, stacked: ``[L+1, *b, t, d]``.

        ``attention_mask`` ``[b, t]`` (1 = token, 0 = padding; left or right padding, see
        :mod:`jetex.models.batch`): every row is run with its tokens at positions 0..t_i−1,
        as it would be alone, and put back where it was; padding positions are 0.
        """
        if attention_mask is not None:
            if input_ids.ndim != 2:
                raise InputError(f"with an attention_mask the token ids must be [b, t], got shape {tuple(input_ids.shape)}")
            packed, spans = pack(input_ids, attention_mask)
            hs = self.stream(packed)
            out = torch.zeros_like(hs)
            for i, (s, e) in enumerate(spans):
                out[:, i, s:e] = hs[:, i, : e - s]
            return out
        h = self.embed(input_ids)
        hs = [h]
        for blk in self.blocks:
            h = h + blk(h)
            hs.append(h)
        return torch.stack(hs)

    def forward(self, input_ids: Int[Tensor, "*b t"]) -> Float[Tensor, "*b t v"]:
        """q(z) computed through the view: υ(β_L(…β_1(η(z))))."""
        h = self.embed(input_ids)
        for blk in self.blocks:
            h = h + blk(h)
        return self.decode(h)

    def reference_logits(self, input_ids: Int[Tensor, "*b t"]) -> Float[Tensor, "*b t v"]:
        """The model's own logits (the original implementation's forward pass)."""
        return self.forward(input_ids)

    def head_weights(self, l: int) -> HeadWeights:  # pragma: no cover
        """Per-head weights of attention block γ_l (1-based)."""
        raise InputError(f"block {self.block(l).name} has no attention heads")

    def __repr__(self) -> str:
        """One line: class, name, blocks (first and last names), d, V — never the module tree
        (``print(model.hf)`` shows the Hugging Face modules)."""
        names = self.block_names
        shown = ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, …, {names[-1]}"
        try:
            dims = f", d={self.d_model}, V={self.vocab_size}"
        except (NotImplementedError, AttributeError):  # pragma: no cover - a view without U yet
            dims = ""
        return f"{type(self).__name__}(name={self.name!r}, L={len(names)} blocks [{shown}]{dims})"

    # ---- text ------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = True) -> Int[Tensor, "1 t"]:
        """Token ids ``[1, t]`` of ``text`` (with BOS where the tokenizer uses one)."""
        if self.tokenizer is None:
            raise InputError(f"model {self.name!r} has no tokenizer")
        if not isinstance(text, str) or not text.strip():
            raise InputError("empty text: give at least one non-blank character")
        ids = self.tokenizer(text, add_special_tokens=add_bos)["input_ids"]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + list(ids)
        if self.max_length is not None and len(ids) > self.max_length:
            raise InputError(f"text is {len(ids)} tokens long; the context window of {self.name} is {self.max_length}")
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def tokenize_batch(self, texts: list[str], *, add_bos: bool = True) -> tuple[Int[Tensor, "b t"], Int[Tensor, "b t"]]:
        """Token ids ``[b, T]`` of ``texts``, right-padded, and the attention mask ``[b, T]``
        (1 = token, 0 = padding); each row as :meth:`tokenize` gives it."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise InputError("tokenize_batch takes a list of texts")
        batch = as_batch(list(texts), lambda x: self.tokenize(x, add_bos=add_bos)[0])
        ids, mask = batch.padded(pad_id=getattr(self.tokenizer, "pad_token_id", None) or 0)
        return ids, mask.long()

    def token_strings(self, ids: Tensor | list[int]) -> list[str]:
        """Readable strings of token ids (one per id)."""
        ids = [int(i) for i in (ids.flatten().tolist() if isinstance(ids, Tensor) else ids)]
        if self.tokenizer is None:
            return [f"<{i}>" for i in ids]
        return [self.tokenizer.decode([i]) for i in ids]

    def architecture_config(self) -> dict[str, Any]:
        """What defines the model besides its tensors (hashed by :meth:`fingerprint`):
        the view's class and its blocks (name, kind, class). Subclasses add their
        configuration (the Hugging Face config, a toy's constructor arguments); never the
        display name."""
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "blocks": [[b.name, b.kind, type(b).__name__] for b in self.blocks],
        }

    def fingerprint(self) -> str:
        """A short hash identifying the model: architecture, every tensor, and tokenizer.

        Covers :meth:`architecture_config` (not the display ``name``: the same weights
        loaded under another name or from another folder have the same fingerprint), then
        every parameter and buffer once (tied weights once) by name, shape, dtype, a strided
        sample of 256 values and, per row, the sum of the values' bit patterns as unsigned
        integers (modular, so exact: a change of any single value anywhere — a
        down-projection, an output projection, the final norm — changes the fingerprint),
        and the tokenizer's vocabulary. Integer sums do not depend on device, summation order
        or thread count. About 0.2 s for SmolLM2-135M on one CPU thread, most of it the
        tokenizer's vocabulary. Stored with artifacts (n-gram databases) to refuse mixing
        models.
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.architecture_config(), sort_keys=True, default=str).encode())
        seen: set[tuple[int, int, tuple[int, ...]]] = set()
        named = list(self.named_parameters()) + list(self.named_buffers())
        for name, t in named:
            key = (t.data_ptr(), t.numel(), tuple(t.stride()))
            if t.numel() and key in seen:  # tied weights and shared buffers: once
                continue
            seen.add(key)
            _hash_tensor(h, name, t)
        h.update(self.tokenizer_fingerprint().encode())
        return h.hexdigest()[:16]

    def tokenizer_fingerprint(self) -> str:
        """A hash of the vocabulary (token → id), or ``"none"``."""
        if self.tokenizer is None:
            return f"none-{self.vocab_size}"
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        # one update of the concatenation: the same digest as one update per entry, faster
        text = "".join(f"{i}\t{tok}\n" for tok, i in vocab)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_SAMPLE = 256


def tensor_digest(t: Tensor) -> str:
    """A sha256 hex digest of one tensor's shape, dtype and values (as :meth:`ResidualModel.fingerprint`
    hashes each tensor: per-row sums of the bit patterns plus a strided sample; any change of
    a single value changes it). ~30 ms for SmolLM2's 49,152 x 576 unembedding."""
    h = hashlib.sha256()
    _hash_tensor(h, "", t)
    return h.hexdigest()


def _hash_tensor(h: Any, name: str, t: Tensor) -> None:
    """Feed one tensor into ``h``: name, shape, dtype, a strided sample of its values' bit
    patterns and, per row (last dim), the sum of the bit patterns as unsigned integers
    modulo 2^(bits) — exact and order-free, and changed by any change of a single value."""
    t = t.detach()
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
    if t.numel() == 0:
        return
    if t.is_complex():
        t = torch.view_as_real(t)
    flat = t.reshape(-1)
    size = flat.element_size()
    ints = flat.cpu().contiguous().view(_INT_OF_SIZE[size]).numpy()
    bits = ints.view(np.dtype(f"uint{8 * size}"))  # unsigned: wrap-around is defined
    width = t.shape[-1] if t.dim() else 1
    row_sums = bits.reshape(-1, width).sum(-1, dtype=bits.dtype)
    h.update(row_sums.tobytes())
    h.update(bits[:: max(1, bits.size // _SAMPLE)].tobytes())
