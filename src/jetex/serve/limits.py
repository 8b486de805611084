"""Limits of the explorer server and validation of request parameters (no torch, no web framework).

Every refusal is a :class:`RequestError`: an HTTP status (4xx) and a one-line reason. The
server answers it as ``{"error": "<reason>"}`` with that status; the ``--server`` client
prints ``error: <reason>`` and exits non-zero.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Iterable


class RequestError(Exception):
    """A refused request: ``status`` (400, 404, 409, 413, 429, …) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; everything above is refused with a 4xx and its reason.

    ``max_text_chars``: characters of a text; ``max_tokens``: tokens of a text (also capped by
    the model's context window); ``max_order``: jet order k; ``max_top``: top-k tokens / rows;
    ``max_paths``: paths one /api/paths request may evaluate; ``max_queue``: computations
    waiting or running per model (the next one gets 429); ``max_body_bytes``: size of a
    request body; ``max_steps``: integrated-gradient steps; ``max_rows``: rows of an
    n-gram listing.
    """

    max_text_chars: int = 2000
    max_tokens: int = 256
    max_order: int = 4
    max_top: int = 50
    max_paths: int = 2000
    max_queue: int = 32
    max_body_bytes: int = 64 * 1024
    max_steps: int = 200
    max_rows: int = 1000

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


#: characters allowed in a text although Unicode calls them control characters
_ALLOWED_CONTROLS = {"\n", "\t", "\r"}


def check_text(text: Any, limits: Limits, field: str = "text") -> str:
    """A non-empty, printable, bounded text, or a :class:`RequestError` saying what is wrong."""
    if not isinstance(text, str):
        raise RequestError(400, f"'{field}' must be a string")
    if not text.strip():
        raise RequestError(400, f"empty {field}: give at least one non-blank character")
    if len(text) > limits.max_text_chars:
        raise RequestError(400, f"{field} is {len(text)} characters long; the limit is {limits.max_text_chars}")
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat == "Cs":
            raise RequestError(400, f"{field} is not valid Unicode (a lone surrogate at character {i})")
        if cat == "Cc" and ch not in _ALLOWED_CONTROLS:
            raise RequestError(400, f"{field} contains the control character U+{ord(ch):04X} at character {i}")
    return text


class Params:
    """Typed access to a JSON object of request parameters, refusing unknown or ill-typed ones.

    Each getter records the name it read; :meth:`done` refuses any field no getter asked for
    (a misspelt option is an error, never silently ignored).
    """

    def __init__(self, data: Any, limits: Limits) -> None:
        if not isinstance(data, dict):
            raise RequestError(400, "the request body must be a JSON object")
        self.data = data
        self.limits = limits
        self.seen: set[str] = set()

    def _get(self, name: str, default: Any) -> Any:
        self.seen.add(name)
        v = self.data.get(name, default)
        return default if v is None else v

    def text(self, name: str = "text") -> str:
        self.seen.add(name)
        if name not in self.data:
            raise RequestError(400, f"missing '{name}'")
        return check_text(self.data[name], self.limits, name)

    def string(self, name: str, default: str | None = None, *, max_len: int = 200) -> str | None:
        v = self._get(name, default)
        if v is None:
            return None
        if not isinstance(v, str):
            raise RequestError(400, f"'{name}' must be a string")
        if len(v) > max_len:
            raise RequestError(400, f"'{name}' is {len(v)} characters long; the limit is {max_len}")
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in v):
            raise RequestError(400, f"'{name}' contains a control character")
        return v

    def integer(self, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self._get(name, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                v = int(v)
            else:
                raise RequestError(400, f"'{name}' must be an integer, got {v!r}")
        if lo is not None and v < lo or hi is not None and v > hi:
            rng = f"{'' if lo is None else lo}..{'' if hi is None else hi}"
            raise RequestError(400, f"'{name}' = {v} is out of range {rng}")
        return v

    def boolean(self, name: str, default: bool = False) -> bool:
        v = self._get(name, default)
        if isinstance(v, bool):
            return v
        if v in ("true", "1", 1):
            return True
        if v in ("false", "0", 0, ""):
            return False
        raise RequestError(400, f"'{name}' must be true or false, got {v!r}")

    def choice(self, name: str, choices: Iterable[str], default: str) -> str:
        choices = list(choices)
        v = self._get(name, default)
        if v not in choices:
            raise RequestError(400, f"unknown {name} {v!r}; choose one of: {', '.join(choices)}")
        return v

    def names(self, name: str) -> list[str]:
        """A list of names, given as a JSON list of strings or one comma-separated string."""
        v = self._get(name, [])
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",")]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise RequestError(400, f"'{name}' must be a list of names or a comma-separated string")
        if len(v) > 1000:
            raise RequestError(400, f"'{name}' lists {len(v)} names; the limit is 1000")
        return [s.strip() for s in v if s.strip()]

    def ints(self, name: str, lo: int, hi: int) -> list[int] | None:
        """A list of integers (JSON list or comma-separated string), each in lo..hi; None if absent."""
        v = self._get(name, None)
        if v is None:
            return None
        if isinstance(v, str):
            try:
                v = [int(s) for s in v.split(",") if s.strip()]
            except ValueError:
                raise RequestError(400, f"'{name}' must be a list of integers, e.g. 0,1") from None
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise RequestError(400, f"'{name}' must be a list of integers")
        for x in v:
            if not lo <= x <= hi:
                raise RequestError(400, f"'{name}' value {x} is out of range {lo}..{hi}")
        return v

    def done(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise RequestError(400, f"unknown field {extra[0]!r}; accepted: {', '.join(sorted(self.seen))}")
