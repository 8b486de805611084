"""What the explorer computes: validated request parameters in, JSON-ready dicts out.

Each ``*_params`` function reads and checks a request (a :class:`~jetex.serve.limits.Params`)
against the model and the limits *before* any work is queued; each ``run_*`` function does
the work with the library's public functions (the same ones the command line uses, so the
``result`` of ``/api/lens`` is exactly what ``jetex lens --json`` prints) and runs on the
model's worker thread.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from jetex.attribution import METHODS, attribute
from jetex.attribution.core import GRADIENT_METHODS, LAYERWISE_METHODS
from jetex.attribution.faithfulness import faithfulness
from jetex.models.predict import predict_payload
from jetex.errors import JetexError
from jetex.expand import PathFilter, exp_jet_expansion
from jetex.lenses import iterative_lens, joint_lens
from jetex.lenses.lens import joint_centres
from jetex.models.base import ResidualModel
from jetex.models.naming import resolve_blocks, resolve_stream, resolve_streams, stream_names, valid_streams_line
from jetex.serve.jobs import check_cancelled
from jetex.serve.limits import Limits, Params, RequestError

COLOUR_SCALES = ("probability", "logprob", "rank", "logit")


def model_info(name: str, model: ResidualModel) -> dict[str, Any]:
    """What the pages need to know about a model served as ``name`` (blocks, layers, sizes)."""
    n_layers = len({b.layer for b in model.blocks})
    return {
        "name": name,
        "model_name": model.name,
        "n_blocks": model.n_blocks,
        "n_layers": n_layers,
        "blocks": model.block_names,
        "d_model": model.d_model,
        "vocab_size": model.vocab_size,
        "max_length": model.max_length,
        "fingerprint": model.fingerprint(),
        "tokenizer_fingerprint": model.tokenizer_fingerprint(),
    }


def tokenize(model: ResidualModel, text: str, limits: Limits) -> torch.Tensor:
    """Token ids ``[1, t]`` of a checked text, refusing more than ``limits.max_tokens`` tokens."""
    try:
        ids = model.tokenize(text)
    except JetexError as e:
        raise RequestError(400, str(e)) from None
    if ids.shape[-1] > limits.max_tokens:
        raise RequestError(400, f"text is {ids.shape[-1]} tokens long; the limit is {limits.max_tokens}")
    return ids


def _single_token(model: ResidualModel, token: str) -> int:
    enc = model.tokenizer(token, add_special_tokens=False)["input_ids"] if model.tokenizer is not None else []
    if not enc:
        raise RequestError(400, f"token {token!r} is empty after tokenization")
    if len(enc) > 1:
        pieces = ", ".join(repr(p) for p in model.token_strings(enc))
        raise RequestError(400, f"token {token!r} is {len(enc)} tokens ({pieces}); give a single token")
    return int(enc[0])


# ---- predict -----------------------------------------------------------------------------


def predict_params(p: Params, model: ResidualModel) -> dict[str, Any]:
    out = {"text": p.text(), "top": p.integer("top", 5, 1, p.limits.max_top)}
    tokenize(model, out["text"], p.limits)
    return out


def run_predict(model: ResidualModel, text: str, top: int) -> dict[str, Any]:
    """The model's top next tokens after ``text`` (as ``jetex predict --json``)."""
    return predict_payload(model, text, top)


# ---- lens --------------------------------------------------------------------------------


def _spec(p: Params, name: str) -> list[Any] | str | None:
    """A block/stream selection as sent: a comma-separated string or a JSON list of names / numbers."""
    raw = p._get(name, None)
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, list) and len(raw) <= 1000 and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in raw):
        return raw
    raise RequestError(400, f"'{name}' must be a list of names or numbers, or a comma-separated string")


def _layer_list(p: Params, model: ResidualModel) -> list[str] | None:
    """The iterative lens's rows: stream names (``emb``, ``attn.3``, ``mlp.14``, ``final``),
    transformer-layer numbers (the stream at the layer's end; -1 = ``emb``) or ranges
    (``0-29``), as :mod:`jetex.models.naming` reads them everywhere; returned as stream names."""
    try:
        idx = resolve_streams(model, _spec(p, "layers"), what="layers entry")
    except JetexError as e:
        raise RequestError(400, str(e)) from None
    if idx is None:
        return None
    names = stream_names(model)
    return [names[l] for l in idx]


def _centres(model: ResidualModel, raw: Any) -> str | int | list[int]:
    """The joint lens's centres: ``blocks``, ``layers``, a number of centres, or the streams that
    end each group (names such as ``mlp.9,mlp.19,mlp.29`` or layer numbers; the last must be
    the final stream), as ``jetex lens --centres``."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        key = raw.strip().lower()
        if key in ("blocks", "layers"):
            return key
        if key.isdigit():
            return int(key)
    elif not isinstance(raw, list):
        raise RequestError(400, "'centres' must be 'blocks', 'layers', a number of centres or the streams ending each group")
    try:
        chosen = resolve_streams(model, raw, what="centres entry") or []
    except JetexError as e:
        if isinstance(raw, str) and "," not in raw:
            raise RequestError(400, f"unknown centres {raw!r}: use 'blocks', 'layers', a number of centres, or the streams "
                                    f"that end each group ({valid_streams_line(model)})") from None
        raise RequestError(400, str(e)) from None
    return sorted({l for l in chosen if l > 0})  # the embedding is always a centre


def lens_params(p: Params, model: ResidualModel) -> dict[str, Any]:
    lim = p.limits
    kw: dict[str, Any] = {
        "text": p.text(),
        "kind": p.choice("kind", ["iterative", "joint"], "iterative"),
        "order": p.integer("order", 1, 0, lim.max_order),
        "top": p.integer("top", 10, 1, lim.max_top),
        "probabilities": p.boolean("probabilities", True),
    }
    layers = _layer_list(p, model)
    centres_raw = p._get("centres", None)
    optimize = p.boolean("optimize", False)
    if kw["kind"] == "iterative":
        if centres_raw is not None or optimize:
            raise RequestError(400, "'centres' and 'optimize' apply to the joint lens only (kind: joint)")
        kw["layers"] = layers
    else:
        if layers is not None:
            raise RequestError(400, "'layers' applies to the iterative lens only; the joint lens takes 'centres'")
        centres = "layers" if centres_raw is None else _centres(model, centres_raw)
        try:
            joint_centres(model, centres)
        except JetexError as e:
            raise RequestError(400, str(e)) from None
        kw["centres"] = centres
        kw["optimize"] = optimize
    tokenize(model, kw["text"], lim)
    return kw


def _lens_view(model: ResidualModel, res: Any) -> dict[str, Any]:
    """What the page shows beyond the lens result, per cell (row r, position i), all read
    from the library's :class:`~jetex.lenses.LensResult` (its one-pass readout, nothing
    recomputed): the log-probabilities of the row's top-k tokens, the rank of the model's
    own top-1 token in the row (1 = the row agrees with the model) and its log-probability;
    and the model's own top-k with log-probabilities per position."""
    mi = res.model_top_ids  # [t, k]
    flat = mi.reshape(-1).tolist()
    uniq = sorted(set(flat))
    strings = dict(zip(uniq, model.token_strings(uniq)))
    k = mi.shape[-1]
    return {
        "logprobs": _rounded(res.top_logprobs),
        "model_token_rank": (res.model_rank + 1).tolist(),
        "model_token_logprob": _rounded(res.model_logprob),
        "model": [
            {"top": [strings[j] for j in flat[i * k:(i + 1) * k]], "ids": flat[i * k:(i + 1) * k], "logprobs": lp}
            for i, lp in enumerate(_rounded(res.model_top_logprobs))
        ],
    }


def _rounded(x: torch.Tensor, nd: int = 4) -> list:
    """A tensor as nested lists of floats rounded to ``nd`` decimals (non-finite values stay
    so; the response writes them as null)."""
    return torch.round(x.double(), decimals=nd).tolist()


def lens_warning(res: Any) -> str | None:
    """One line when the lens's readout is dominated by divergence, remainder or cancellation
    (the line ``jetex lens`` prints on stderr), else None."""
    d = getattr(res, "diagnostics", None)
    if d is None:
        return None
    if res.kind == "iterative":
        return d.warning("cells", "try a lower --order (0 or 1) and read the rows near the output (distance < 1)")
    return d.warning("cells", "try a lower --order or fewer, larger centres (--centres layers, or a number)")


def run_lens(model: ResidualModel, **kw: Any) -> dict[str, Any]:
    """The lens (``result``: the :class:`~jetex.lenses.LensResult` as a dict, the same as
    ``jetex lens --json``) and, with ``probabilities``, the page's ``view`` (see :func:`_lens_view`)."""
    top = kw["top"]
    if kw["kind"] == "iterative":
        res = iterative_lens(model, kw["text"], order=kw["order"], layers=kw.get("layers"), top_k=top)
    else:
        res = joint_lens(model, kw["text"], order=kw["order"], centres=kw["centres"], optimize=kw["optimize"], top_k=top)
    check_cancelled()
    out: dict[str, Any] = {"result": res.to_dict(), "warning": lens_warning(res)}
    if kw["probabilities"]:
        out["view"] = _lens_view(model, res) | {"top_ids": res.top_ids.tolist()}
    return out


# ---- paths -------------------------------------------------------------------------------


def paths_params(p: Params, model: ResidualModel) -> dict[str, Any]:
    lim = p.limits
    kw: dict[str, Any] = {
        "text": p.text(),
        "order": p.integer("order", 1, 0, lim.max_order),
        "must_use": p.names("use"),
        "avoid": p.names("avoid"),
        "min_len": p.integer("min_len", 0, 0, model.n_blocks),
        "max_len": p.integer("max_len", 2, 0, model.n_blocks),
        "position": p.integer("position", -1, None, None),
        "token": p.string("token", None),
        "top": p.integer("top", 10, 1, lim.max_top),
        "split_degrees": p.boolean("split_degrees", False),
        "degrees": p.ints("degrees", 0, lim.max_order),
    }
    if kw["degrees"] is not None and not kw["split_degrees"]:
        raise RequestError(400, "'degrees' filters the super-exponential expansion: set split_degrees")
    if kw["split_degrees"] and kw["order"] == 0:
        raise RequestError(400, "split_degrees needs order >= 1 (an order-0 jet has a single degree)")
    ids = tokenize(model, kw["text"], lim)
    t = ids.shape[-1]
    if not -t <= kw["position"] < t:
        raise RequestError(400, f"position {kw['position']} out of range for {t} tokens")
    for what in ("must_use", "avoid"):  # block names, kinds (attn, mlp) or layer numbers, as `jetex paths --use`
        try:
            kw[what] = tuple(resolve_blocks(model, [b for b in kw[what] if b], what="block", kinds=True))
        except JetexError as e:
            raise RequestError(400, str(e)) from None
    if kw["token"] is not None:
        kw["token_id"] = _single_token(model, kw["token"])
    flt = PathFilter(must_use=kw["must_use"], avoid=kw["avoid"], min_len=kw["min_len"], max_len=kw["max_len"],
                     degrees=tuple(kw["degrees"]) if kw["degrees"] is not None else None)
    try:
        n = exp_jet_expansion(model, kw["order"], split_degrees=kw["split_degrees"]).count(flt)
    except JetexError as e:
        raise RequestError(400, str(e)) from None
    if n == 0:
        raise RequestError(400, "no path matches these filters")
    if n > lim.max_paths:
        raise RequestError(400, f"{n} paths match; the limit is {lim.max_paths}: narrow the filters (max_len, use, avoid)")
    kw["filter"] = flt
    kw["n_paths"] = n
    return kw


def run_paths(model: ResidualModel, **kw: Any) -> dict[str, Any]:
    """The top paths for a token at a position, on the unweighted path scale (the dict
    ``jetex paths --json`` prints, plus ``position`` and ``tokens``)."""
    pe = exp_jet_expansion(model, kw["order"], split_degrees=kw["split_degrees"])
    ids = model.tokenize(kw["text"])
    with torch.no_grad():
        ranked = pe.rank(ids, list(pe.paths(kw["filter"])), token=kw.get("token_id"), position=kw["position"], top=kw["top"])
    return {
        "model": model.name,
        "order": kw["order"],
        "split_degrees": kw["split_degrees"],
        "degrees": kw["degrees"],
        "scale": "unweighted",
        "target": {"id": ranked[0].token, "token": ranked[0].token_str},
        "n_paths": kw["n_paths"],
        "paths": [r.to_dict() for r in ranked],
        "position": kw["position"],
        "tokens": model.token_strings(ids[0]),
    }


# ---- attribution -------------------------------------------------------------------------


def _stream(p: Params, model: ResidualModel, name: str) -> int | None:
    """One stream index l (0..L) from a name (``emb``, ``attn.3``, ``mlp.14``, ``final``) or a
    transformer-layer number (the stream at its end; -1 = ``emb``), as ``jetex attribute --layer``."""
    raw = p._get(name, None)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise RequestError(400, f"'{name}' must be a stream name (emb, attn.N, mlp.N, final) or a layer number")
    try:
        return resolve_stream(model, raw, what=name)
    except JetexError as e:
        raise RequestError(400, str(e)) from None


def attribute_params(p: Params, model: ResidualModel) -> dict[str, Any]:
    lim = p.limits
    kw: dict[str, Any] = {
        "text": p.text(),
        "method": p.choice("method", METHODS, "normxlogit"),
        "target": p.string("target", None),
        "target_id": p.integer("target_id", None, 0, model.vocab_size - 1),
        "layer": _stream(p, model, "layer"),
        "order": p.integer("order", 1, 0, lim.max_order),
        "steps": p.integer("steps", None, 1, lim.max_steps),
        "faithfulness": p.boolean("faithfulness", False),
        "candidates": p.integer("candidates", 5, 0, lim.max_top),
    }
    if kw["target"] is not None and kw["target_id"] is not None:
        raise RequestError(400, "give either 'target' or 'target_id', not both")
    if kw["target"] == "":
        kw["target"] = None
    if kw["layer"] is not None and kw["method"] not in LAYERWISE_METHODS:
        raise RequestError(400, f"method {kw['method']!r} takes no layer; layer-wise methods are: {', '.join(LAYERWISE_METHODS)}")
    if kw["method"] == "jetxlogit" and kw["layer"] is None:
        raise RequestError(400, f"method 'jetxlogit' needs a layer: {valid_streams_line(model)}")
    if kw["steps"] is not None and kw["method"] != "integrated_gradients":
        raise RequestError(400, "'steps' applies to integrated_gradients only")
    if kw["method"] in GRADIENT_METHODS:
        from jetex.attribution.gradient import import_captum

        try:
            import_captum(kw["method"])
        except JetexError as e:
            raise RequestError(400, str(e)) from None
    tokenize(model, kw["text"], lim)
    return kw


def run_attribute(model: ResidualModel, **kw: Any) -> dict[str, Any]:
    """The attribution (``attribution``: as ``jetex attribute --json``), the model's top
    candidates for the target, and the faithfulness curve on request."""
    opts: dict[str, Any] = {}
    if kw["steps"] is not None:
        opts["n_steps"] = kw["steps"]
    target = kw["target_id"] if kw["target_id"] is not None else kw["target"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            attr = attribute(model, kw["text"], target=target, method=kw["method"], layer=kw["layer"], order=kw["order"], **opts)
        except JetexError as e:
            raise RequestError(400, str(e)) from None
    out: dict[str, Any] = {"model": model.name, "attribution": attr.to_dict(),
                           "warnings": [str(w.message) for w in caught if issubclass(w.category, UserWarning)]}
    if kw["layer"] is not None:  # the stream read, by name (as `jetex attribute --json`)
        out["stream"] = stream_names(model)[kw["layer"]]
    if kw["candidates"]:
        check_cancelled()
        with torch.no_grad():
            logits = model(model.tokenize(kw["text"]))[0, -1].float()
        probs = torch.softmax(logits, -1)
        pv, pi = probs.topk(min(kw["candidates"], probs.shape[-1]))
        out["candidates"] = [{"id": int(i), "token": s, "prob": float(v)} for i, s, v in zip(pi.tolist(), model.token_strings(pi), pv.tolist())]
    if kw["faithfulness"]:
        check_cancelled()
        out["faithfulness"] = faithfulness(model, attr).to_dict()
    return out


__all__ = [
    "COLOUR_SCALES",
    "model_info",
    "predict_params",
    "run_predict",
    "lens_params",
    "run_lens",
    "paths_params",
    "run_paths",
    "attribute_params",
    "run_attribute",
]
