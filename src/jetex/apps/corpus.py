"""Real text every machine has, for the applications (no download, no data set).

- :func:`stdlib_docstrings`: the English prose of the Python standard library — every
  module, class and function docstring (``ast.get_docstring``) of the ``.py`` files under
  ``sysconfig.get_paths()['stdlib']``, skipping ``site-packages``, test suites, ``idlelib``
  and ``lib2to3``. Files are read in sorted path order and docstrings in ``ast.walk`` order,
  so the corpus is deterministic for a given Python version (CPython 3.11: ~700 files,
  ~7.7k docstrings, ~1.6 MB, ~250k words).
- :func:`stdlib_sources`: the ``.py`` source files of the same standard library (code, used
  by the fine-tuning example).
- :func:`read_corpus`: a text file given by the user, or the name ``stdlib-docs``.
- :func:`unigram_probs`: unigram frequencies p(a) of a model's tokens in a corpus
  (the statistic of the paper's pseudo-joint bigram mass, Fig. 4b).
- :func:`sentences`: sentences of a corpus, for contexts of real text.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from jetex.errors import InputError

STDLIB_DOCS = "stdlib-docs"
_SKIP_TOP = {"site-packages", "dist-packages", "test", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip"}


def stdlib_root() -> Path:
    """The folder of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(max_files: int | None = None, max_bytes: int | None = None) -> list[Path]:
    """``.py`` files of the standard library (sorted; tests, site-packages, idlelib skipped).

    ``max_bytes`` drops files larger than that (huge generated tables are not typical code).
    """
    root = stdlib_root()
    out: list[Path] = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if rel[0] in _SKIP_TOP or "tests" in rel or "test" in rel:
            continue
        if max_bytes is not None and p.stat().st_size > max_bytes:
            continue
        out.append(p)
        if max_files is not None and len(out) >= max_files:
            break
    return out


def _docstrings_of(source: str) -> Iterator[str]:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


@lru_cache(maxsize=1)
def stdlib_docstrings() -> str:
    """The standard library's docstrings joined by blank lines (deterministic; see module doc)."""
    docs: list[str] = []
    for p in stdlib_sources():
        try:
            docs.extend(_docstrings_of(p.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
    return "\n\n".join(docs)


def read_corpus(spec: str | Path) -> str:
    """The text of a corpus: a UTF-8 text file, or ``stdlib-docs`` (:func:`stdlib_docstrings`)."""
    if str(spec) == STDLIB_DOCS:
        return stdlib_docstrings()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise InputError(f"corpus file {spec} not found (give a UTF-8 text file or '{STDLIB_DOCS}')")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"corpus file {spec} is not UTF-8 text") from None
    if not text.strip():
        raise InputError(f"corpus file {spec} is empty")
    return text


def unigram_probs(tokenizer, text: str, vocab_size: int, chunk_chars: int = 20000) -> Float[Tensor, "v"]:
    """p(a): relative frequency of each token id in ``text`` tokenized without special tokens.

    The text is tokenized in chunks cut at line breaks (so long corpora stay cheap); counts
    are over ids < ``vocab_size`` (ids beyond the model's vocabulary are an error).
    """
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    lines = text.splitlines(keepends=True)
    buf: list[str] = []
    size = 0

    def flush() -> None:
        if not buf:
            return
        ids = tokenizer("".join(buf), add_special_tokens=False)["input_ids"]
        if ids:
            t = torch.tensor(ids, dtype=torch.long)
            if int(t.max()) >= vocab_size:
                raise InputError(f"the tokenizer produced id {int(t.max())} outside the model's vocabulary ({vocab_size})")
            counts.add_(torch.bincount(t, minlength=vocab_size).to(torch.float64))
        buf.clear()

    for line in lines:
        buf.append(line)
        size += len(line)
        if size >= chunk_chars:
            flush()
            size = 0
    flush()
    total = counts.sum()
    if total <= 0:
        raise InputError("the corpus has no tokens")
    return (counts / total).to(torch.float32)


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str, min_words: int = 4, max_chars: int = 300) -> list[str]:
    """Sentences of prose: paragraphs split at sentence ends, whitespace collapsed, short or
    very long pieces (and code-like lines with ``>>>``) dropped."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        if ">>>" in para:
            continue
        flat = " ".join(para.split())
        for s in _SENT.split(flat):
            s = s.strip()
            if len(s.split()) >= min_words and len(s) <= max_chars:
                out.append(s)
    return out
