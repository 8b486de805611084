"""Batches on SmolLM2 (float32): padding changes nothing beyond float32 rounding.

A padded batch may differ from the row run alone only by the reassociation of float32 sums
(a batched matmul blocks its sums differently, and how depends on the CPU's kernels). The
bound is per stream h_l and follows the magnitudes compared: 64 float32 ulps of the largest
|h_l| of the run alone. Reassociating a float32 dot product of n terms changes it by at most
~n·eps32·Σ|terms| (n = 576 or 1536 here, and 60 blocks accumulate), so 64 ulps of the
largest value is well inside what float32 allows; measured: up to 1.4 ulps on the machine
the test was written on, up to 30 (at BOS, whose stream reaches 2.5e4) on a Sapphire Rapids
Xeon, where the run alone's own distance to float64 (3.6e-3) was smaller than the batch's
(1.6e-2) — so the earlier bound "|batch − alone| ≤ |alone − float64|" did not hold there.
A padding position leaking into a real one would change the stream by O(1..1e4), far above
the bound (0.19 at the largest layer, ~1e-4 at the first).
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
        alone = smollm2.stream(alone_ids)[:, 0]  # [L+1, n, d]
        bound = 64 * EPS32 * alone.abs().amax(dim=(1, 2))  # per stream h_l
        assert ((right[:, i, :n] - alone).abs().amax(dim=(1, 2)) <= bound).all()
        # both runs are float32-accurate against the float64 model, within the same bound
        x64 = m64.stream(alone_ids)[:, 0]
        assert ((alone.double() - x64).abs().amax(dim=(1, 2)) <= bound.double()).all()
        assert not right[:, i, n:].any()
        single = jetex.iterative_lens(smollm2, text, order=1, top_k=5)
        assert torch.equal(lens[i].top_ids, single.top_ids)
        # lens logits: a dot product over d = 576 of the final-norm jet; 64 float32 ulps of the
        # largest logit is far inside the reassociation bound d·eps32·Σ|terms| (measured: 1.4 ulps)
        scale = float(single.top_logits.abs().max())
        assert float((lens[i].top_logits - single.top_logits).abs().max()) <= 64 * EPS32 * scale
