"""ResidualModel basics: block indexing, toy construction errors, and the model fingerprint."""

from __future__ import annotations

import shutil

import pytest
import torch

import jetex
from jetex.errors import InputError
from jetex.models import LinearResidualNet, ToyResidualNet
from jetex.models.hf import HFResidualModel

from models_tiny_hf import make


# ---- block indexing ------------------------------------------------------------------------
def test_block_rejects_bools_and_non_ints():
    m = ToyResidualNet(depth=3)
    assert m.block(1) is m.blocks[0] and m.block(3) is m.blocks[2]
    for bad in (True, False):  # bool is an int subclass: block(True) used to return block 1
        with pytest.raises(InputError, match="block index"):
            m.block(bad)
    for bad in (0, 4, -1):
        with pytest.raises(InputError, match="out of range"):
            m.block(bad)
    with pytest.raises(InputError):
        m.block_index(True)


def test_toy_unknown_activation_lists_valid_ones():
    with pytest.raises(InputError) as e:
        ToyResidualNet(activation="relu")
    msg = str(e.value)
    assert "relu" in msg and all(a in msg for a in ("tanh", "gelu", "silu")) and "\n" not in msg
    for act in ("tanh", "gelu", "silu"):
        ToyResidualNet(activation=act)


# ---- fingerprint ---------------------------------------------------------------------------
@pytest.fixture
def llama():
    return HFResidualModel.from_hf(make("llama"), name="tiny-a")


def _bump(p: torch.Tensor, index: tuple[int, ...], delta: float = 1e-3) -> None:
    with torch.no_grad():
        p[index] += delta


@pytest.mark.parametrize(
    "where",
    ["down_proj", "o_proj", "final_norm", "embedding_last_row", "rotary_buffer"],
)
def test_fingerprint_sees_a_change_of_one_value_anywhere(llama, where):
    hf = llama.hf
    last = hf.model.layers[-1]
    if where == "down_proj":  # deep inside: last layer, last rows / columns
        p, idx = last.mlp.down_proj.weight, (hf.config.hidden_size - 3, 50)
    elif where == "o_proj":
        p, idx = last.self_attn.o_proj.weight, (17, 29)
    elif where == "final_norm":
        p, idx = hf.model.norm.weight, (hf.config.hidden_size - 1,)
    elif where == "embedding_last_row":  # tied with U
        p, idx = hf.model.embed_tokens.weight, (hf.config.vocab_size - 1, 5)
    else:
        p, idx = hf.model.rotary_emb.inv_freq, (3,)
    before = llama.fingerprint()
    old = p[idx].clone()
    _bump(p, idx)
    changed = llama.fingerprint()
    with torch.no_grad():  # the smallest possible change of one float32 value
        p[idx] = torch.nextafter(old, torch.tensor(float("inf"), dtype=p.dtype))
    tiny_change = llama.fingerprint()
    with torch.no_grad():
        p[idx] = old
    assert changed != before and tiny_change not in (before, changed)
    assert llama.fingerprint() == before


def test_fingerprint_ignores_the_display_name_and_folder(tmp_path):
    hf = make("llama")
    a = HFResidualModel.from_hf(hf, name="tiny-a")
    b = HFResidualModel.from_hf(make("llama"), name="something-else")
    assert a.name != b.name and a.fingerprint() == b.fingerprint()
    # the same weights saved in two folders, loaded under their folder names
    f1, f2 = tmp_path / "first", tmp_path / "second-copy"
    hf.save_pretrained(f1)
    shutil.copytree(f1, f2)
    m1, m2 = jetex.load(str(f1)), jetex.load(str(f2))
    assert (m1.name, m2.name) == ("first", "second-copy")
    assert m1.fingerprint() == m2.fingerprint()
    m3 = jetex.load(str(f2), granularity="layer")  # other blocks: another model for n-gram paths
    assert m3.fingerprint() != m2.fingerprint()


def test_fingerprint_covers_the_architecture_config():
    a = HFResidualModel.from_hf(make("llama"))
    hf = make("llama")
    hf.config.rms_norm_eps = 1e-3  # same tensors, another function
    b = HFResidualModel.from_hf(hf)
    assert a.fingerprint() != b.fingerprint()
    assert "rms_norm_eps" in a.architecture_config()["config"]
    assert "_name_or_path" not in a.architecture_config()["config"]
    hf2 = make("llama")
    hf2.config._model_name_or_path = "Some Display Name"  # what GGUF loads put there (general.name)
    hf2.config._name_or_path = "/some/where/else"
    assert HFResidualModel.from_hf(hf2).fingerprint() == a.fingerprint()


def test_fingerprint_is_deterministic_and_dtype_aware():
    m = HFResidualModel.from_hf(make("llama"))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = m.fingerprint()
        torch.set_num_threads(2)
        two = m.fingerprint()
    finally:
        torch.set_num_threads(n)
    assert one == two == HFResidualModel.from_hf(make("llama")).fingerprint()
    assert HFResidualModel.from_hf(make("llama").double()).fingerprint() != one


def test_toy_fingerprints():
    assert ToyResidualNet(seed=0).fingerprint() == ToyResidualNet(seed=0).fingerprint()
    assert ToyResidualNet(seed=0).fingerprint() != ToyResidualNet(seed=1).fingerprint()
    # same seed, same tensors: only the activation differs
    tanh, gelu = ToyResidualNet(seed=0, activation="tanh"), ToyResidualNet(seed=0, activation="gelu")
    assert all(torch.equal(p, q) for p, q in zip(tanh.parameters(), gelu.parameters()))
    assert tanh.fingerprint() != gelu.fingerprint()
    lin = LinearResidualNet(seed=0)
    before = lin.fingerprint()
    _bump(lin.blocks[-1].A, (7, 7))
    assert lin.fingerprint() != before
    renamed = LinearResidualNet(seed=0)
    renamed.name = "another"
    assert renamed.fingerprint() == before


@pytest.mark.real
def test_real_fingerprint_sees_one_value_of_the_last_down_proj(smollm2):
    p = smollm2.hf.model.layers[-1].mlp.down_proj.weight
    before = smollm2.fingerprint()
    old = p[400, 1000].item()
    try:
        with torch.no_grad():
            p[400, 1000] = torch.nextafter(p[400, 1000], torch.tensor(float("inf")))
        assert smollm2.fingerprint() != before
    finally:
        with torch.no_grad():
            p[400, 1000] = old
    assert smollm2.fingerprint() == before
