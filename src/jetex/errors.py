"""Errors jetex raises on bad input.

Every user-facing failure is a :class:`JetexError` (or subclass) whose message is a
single line; the CLI prints it as ``error: <message>`` and exits non-zero.
"""

from __future__ import annotations


class JetexError(Exception):
    """A user-facing error with a one-line message."""

    exit_code: int = 2


class ModelLoadError(JetexError):
    """A model could not be found, read or represented."""


class UnsupportedArchitectureError(ModelLoadError):
    """The checkpoint's architecture has no adapter (or the adapter refuses the config)."""


class InputError(JetexError):
    """Bad user input: empty text, too long, index out of range, bad order, ..."""


class UnsupportedOpError(JetexError):
    """The Taylor-mode engine met an operation with no rule; the message names it."""


class StoreError(JetexError):
    """The n-gram store is unusable (other model, corrupt, read-only, full disk)."""


class NonFiniteWeightsError(ModelLoadError):
    """A model's weights hold NaN or ±Inf (refused at load unless explicitly allowed)."""


class NonFiniteResultError(JetexError):
    """A computed result holds NaN or ±Inf (divergent expansion, overflow, bad weights)."""
