"""The model's top next tokens after a text, with a summary of its block structure
(``jetex predict``, and the explorer's prediction panel)."""

from __future__ import annotations

import torch

from jetex.errors import InputError
from jetex.finite import check_finite


def predict_payload(model, text: str, top: int) -> dict:
    """The model's top-``top`` next tokens after ``text`` and a summary of its block structure."""
    if not isinstance(top, int) or top < 1:
        raise InputError(f"--top must be a positive integer, got {top}")
    top = min(top, model.vocab_size)
    ids = model.tokenize(text)  # InputError on empty / too long text
    with torch.no_grad():
        logits = model(ids)[0, -1]
    check_finite(logits, f"{model.name}'s next-token logits", "the model overflows on this input (or its weights are not finite)")
    probs = torch.softmax(logits.float(), dim=-1)
    p, idx = probs.topk(top)
    tokens = model.token_strings(idx)
    names = model.block_names
    return {
        "model": model.name,
        "text": text,
        "n_tokens": int(ids.shape[-1]),
        "top": [
            {"token": t, "id": int(i), "prob": float(pp), "logit": float(logits[i])}
            for t, i, pp in zip(tokens, idx.tolist(), p.tolist())
        ],
        "structure": {
            "L": model.n_blocks,
            "granularity": model.granularity,
            "blocks": f"{names[0]} … {names[-1]}" if len(names) > 1 else names[0],
            "first_blocks": names[:2],
            "last_block": names[-1],
            "n_layers": getattr(model, "n_layers", None),
            "d": model.d_model,
            "vocab": model.vocab_size,
            "max_length": model.max_length,
            "architecture": type(getattr(model, "hf", model)).__name__,
        },
    }
