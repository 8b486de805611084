"""NormXLogit and a gradient baseline on the real models, against the HF model's own computation."""

from __future__ import annotations

import pytest
import torch

from jetex.attribution import attribute, evaluate_faithfulness

pytestmark = pytest.mark.real

TEXT = "The capital of France is"


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_normxlogit_matches_hf_hidden_states(request, name):
    m = request.getfixturevalue(name)
    ids = m.tokenize(TEXT)[0]
    with torch.no_grad():
        out = m.hf(input_ids=ids[None], output_hidden_states=True, use_cache=False)
    h0, hL = out.hidden_states[0][0], out.hidden_states[-1][0]  # η(z) (Gemma: √d-scaled); final-normed h_L
    target = int(out.logits[0, -1].argmax())
    with torch.no_grad():
        logat = m.hf.lm_head(hL)[:, target]
    a = attribute(m, TEXT)
    assert a.target_id == target
    torch.testing.assert_close(a.scores, (h0.norm(dim=-1) * logat).float(), rtol=1e-4, atol=1e-3)
    if name == "smollm2":
        assert a.target == " Paris"


def test_saliency_matches_hf_autograd_on_smollm2(smollm2):
    m = smollm2
    ids = m.tokenize(TEXT)[0]
    a = attribute(m, ids, method="saliency")
    x = m.hf.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    logit = m.hf(inputs_embeds=x, use_cache=False).logits[0, -1, a.target_id]
    (g,) = torch.autograd.grad(logit, x)
    torch.testing.assert_close(a.scores, g[0].norm(dim=-1), rtol=1e-3, atol=1e-4)


def test_faithfulness_runs_on_smollm2(smollm2):
    report = evaluate_faithfulness(smollm2, ["The capital of France is", "The cat sat on the"], ["normxlogit", "random"])
    for s in report.summaries:
        assert -1.0 <= s.aopc_comprehensiveness <= 1.0 and -1.0 <= s.aopc_sufficiency <= 1.0
