"""``--dtype float16`` lens rows: the readout of float16 rows whose norm exceeds float16's range
(‖row‖ > 65504 while every entry is finite, as order-1 rows on SmolLM2) is finite and equals the
float32 readout of the same values."""

import torch

from jetex.lenses.lens import _row_stats


def test_row_stats_of_float16_rows_with_large_norm():
    g = torch.Generator().manual_seed(0)
    R, t, V = 3, 2, 1000
    logits = (torch.randn(R, t, V, generator=g) * 3000).to(torch.float16)  # entries < 65504, norms ~1e5
    model = (torch.randn(t, V, generator=g) * 5).to(torch.float16)
    assert torch.isinf(torch.linalg.vector_norm(logits, dim=-1)).any()  # the float16 norm overflows
    alpha = torch.randn(R, t, generator=g, dtype=torch.float64)
    half = _row_stats(logits, model, 5, alpha=alpha)
    ref = _row_stats(logits.float(), model.float(), 5, alpha=alpha)
    for k in ("cosine", "norm", "rem", "rest_cosine", "rest_norm", "lse", "top_logits"):
        assert torch.isfinite(half[k]).all(), k
        assert torch.equal(half[k], ref[k]), k
