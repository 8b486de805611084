"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any, Callable

import click

DEFAULT_MODEL = "smollm2-135m"

#: the one numbering convention of blocks and streams (jetex.models.naming), in every command's help
NUMBERING = (
    "Blocks/streams are named emb, attn.N, mlp.N, final (N = 0-based transformer layer; a stream "
    "is the residual stream right after the named block); a bare number N means layer N "
    "(its end: mlp.N), -1 = emb."
)

model_option = click.option(
    "--model",
    "-m",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model name (see `jetex models`), Hugging Face folder, or .gguf file.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")

#: options every Ray backend shares (the commands add --backend, --workers, --retries with their own help)
address_option = click.option(
    "--address", default=None, help="Ray cluster to connect to (host:port, ray://host:port, auto); default: start a local instance."
)
cpus_per_worker_option = click.option(
    "--cpus-per-worker", type=int, default=1, show_default=True, help="CPUs (torch threads) per Ray worker."
)


def _set_allow_nonfinite(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--allow-nonfinite: let non-finite weights and results through for this command only."""
    if not value:  # the default: nothing to switch (and no torch import for help or argument errors)
        return False
    from jetex.finite import ALLOW_NONFINITE  # torch is imported only once a command runs

    token = ALLOW_NONFINITE.set(bool(value))
    ctx.call_on_close(lambda: ALLOW_NONFINITE.reset(token))
    return bool(value)


#: on every command that loads a model: the debugging opt-out of the non-finite checks
allow_nonfinite_option = click.option(
    "--allow-nonfinite",
    is_flag=True,
    expose_value=False,
    callback=_set_allow_nonfinite,
    help="Debugging: load models with NaN/Inf weights and print non-finite results instead of refusing them.",
)


def with_numbering(cmd: click.Command) -> click.Command:
    """Append the one block/stream numbering convention (:data:`NUMBERING`) to a command's help."""
    cmd.help = inspect.cleandoc(cmd.help or "") + "\n\n" + NUMBERING
    return cmd


def common_options(f: Callable) -> Callable:
    """Attach ``--model``, ``--json`` and ``--allow-nonfinite`` to a command."""
    return model_option(json_option(allow_nonfinite_option(f)))


def check_result(obj: Any, what: str, hint: str = "") -> Any:
    """The shared non-finite check of every command's readout (before anything is printed or written).

    Raises :class:`~jetex.errors.NonFiniteResultError` (one line: ``what``, where, counts,
    ``hint``) unless ``--allow-nonfinite`` was given; returns ``obj``.
    """
    from jetex.finite import check_finite

    return check_finite(obj, what, hint)


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=_default)
    sys.stdout.write("\n")


def _default(o: Any) -> Any:
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except Exception:  # pragma: no cover
        pass
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(o)
    return str(o)


texts_option = click.option(
    "--texts",
    "texts_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read the texts from FILE, one a line (UTF-8; blank lines skipped): one model load for all; "
    "--json prints {'results': [one per text]}.",
)


def read_texts(path: str) -> list[str]:
    """The texts of ``path``, one a line (blank lines skipped); one-line errors naming the line."""
    from pathlib import Path

    from jetex.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--texts: no file {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"--texts: cannot read {p}: {e.strerror or e}") from None
    texts = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"--texts: {p} line {n} is not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        line = line.removesuffix("\r")
        if line.strip():
            texts.append(line)
    if not texts:
        raise InputError(f"--texts: {p} has no text (it is empty or blank)")
    return texts


def texts_of(text: str | None, texts_file: str | None) -> list[str] | None:
    """The texts of ``--texts FILE`` (None when TEXT was given instead); refuses both or neither."""
    from jetex.errors import InputError

    if text is not None and texts_file is not None:
        raise InputError("give either TEXT or --texts FILE, not both")
    if text is None and texts_file is None:
        raise InputError("give a TEXT (or --texts FILE with one text a line)")
    return read_texts(texts_file) if texts_file is not None else None


def numbered(path: str, i: int) -> str:
    """``out.png`` → ``out.3.png``: the file of the i-th text of ``--texts``."""
    from pathlib import Path

    p = Path(path)
    return str(p.with_name(f"{p.stem}.{i}{p.suffix}"))
