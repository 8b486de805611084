"""Batches on SmolLM2 (float32): padding changes nothing beyond float32 rounding.

The oracle is the same model in float64: a padded batch may differ from the row run alone
only by the reassociation of float32 sums, so |batch − alone| must stay below the float32
rounding error the run alone already carries, |alone(float32) − alone(float64)| (measured
on this machine: 2e-4 against 2e-2 for the stream, whose values reach 2.5e4). A padding
position leaking into a real one would change the stream by O(1..1e4).
"""

from __future__ import annotations

import copy

import pytest
import torch

import jetex

TEXTS = ["The capital of France is", "The cat sat on the mat because it was tired", "One, two, three,"]
EPS32 = 2.0**-23


@pytest.mark.real
def test_padded_batch_is_within_float32_rounding(smollm2):
    ids, mask = smollm2.tokenize_batch(TEXTS)
    right = smollm2.stream(ids, mask)
    m64 = copy.deepcopy(smollm2).double()
    lens = jetex.iterative_lens(smollm2, TEXTS, order=1, top_k=5)
    for i, text in enumerate(TEXTS):
        alone_ids = smollm2.tokenize(text)
        n = alone_ids.shape[-1]
        alone = smollm2.stream(alone_ids)[:, 0]
        rounding = float((alone.double() - m64.stream(alone_ids)[:, 0]).abs().max())
        assert float((right[:, i, :n] - alone).abs().max()) <= rounding
        assert not right[:, i, n:].any()
        single = jetex.iterative_lens(smollm2, text, order=1, top_k=5)
        assert torch.equal(lens[i].top_ids, single.top_ids)
        # lens logits: a dot product over d = 576 of the final-norm jet; 64 float32 ulps of the
        # largest logit is far inside the reassociation bound d·eps32·Σ|terms| (measured: 1.4 ulps)
        scale = float(single.top_logits.abs().max())
        assert float((lens[i].top_logits - single.top_logits).abs().max()) <= 64 * EPS32 * scale
