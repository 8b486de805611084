"""Text as the terminal shows it: control characters made visible, never sent raw.

A token or a user's text may hold terminal control characters (ESC sequences that recolour
or clear the screen, carriage returns that overwrite a line, bidi overrides that reorder
it). :func:`visible` writes each as an escape (``\\x1b``, ``\\r``, ``\\u202e``); :func:`cell`
also escapes rich markup (``[red]``), for table cells and titles printed with rich.
Pure Python (no torch), so the command line uses it at no start-up cost.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# bidirectional overrides / isolates and other invisible format characters that reorder or hide text
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def visible(text: str, *, newlines: str | None = None) -> str:
    """``text`` with every control character (Unicode category Cc, bidi controls, lone
    surrogates) replaced by a visible escape; ``newlines`` replaces ``\\n`` instead when given."""
    out = []
    for ch in str(text):
        if ch == "\n" and newlines is not None:
            out.append(newlines)
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs"):
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def cell(text: str, width: int | None = None) -> str:
    """:func:`visible` text, cut to ``width`` characters (with …), rich markup escaped."""
    from rich.markup import escape

    t = visible(text)
    if width is not None and len(t) > width:
        t = t[: max(1, width - 1)] + "…"
    return escape(t)
