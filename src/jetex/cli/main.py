"""Entry point of the ``jetex`` command line.

Each ``jetex/cli/cmd_<name>.py`` module defines ``register(group: click.Group)`` that
adds its subcommand(s); they are discovered at start-up, so features add commands
without touching this file. Every command takes ``--model`` and ``--json`` (see
:mod:`jetex.cli.common`).

Start-up is fast by design: ``jetex --help``, ``jetex COMMAND --help`` and argument errors
import neither torch nor transformers. ``import jetex`` is light (its public names resolve
lazily), and a ``cmd_*`` module imports only click, :mod:`jetex.cli.common` and
:mod:`jetex.errors` at its top; everything heavy (models, lenses, torch, rich) is imported
inside the command body, once its arguments are parsed. These function-local imports are
lazy loading for speed, never a way around an import cycle: they point downwards like every
other import (``tests/test_layering.py`` reads them too), and ``tests/cli/test_fast_cli.py``
checks that help and argument errors load no heavy module. A :class:`~jetex.errors.JetexError` (or a few well-known
OS errors) becomes one line on stderr and a non-zero exit, never a traceback. Any other
exception is a bug: it is reported as one line too,
``error: internal error (<Type>): <message> (set JETEX_DEBUG=1 for the traceback)``,
with exit code 1. With ``JETEX_DEBUG=1`` in the environment the traceback of every
reported error is printed to stderr before its line.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
import warnings

import click

from jetex.errors import JetexError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jetex")
def cli() -> None:
    """Interpret language models with jet expansions."""


def _register_all() -> None:
    import jetex.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"jetex.cli.{info.name}")
            module.register(cli)


_register_all()


INTERNAL_ERROR_EXIT = 1


def _debug() -> bool:
    return os.environ.get("JETEX_DEBUG", "").strip() not in ("", "0")


def _one_line(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _report(line: str) -> None:
    """The error line on stderr, after the traceback of the exception being handled when JETEX_DEBUG=1."""
    if _debug():
        traceback.print_exc(file=sys.stderr)
    click.echo(line, err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning  # a warning is one line on stderr too
    bad = _not_utf8(args)
    if bad is not None:
        click.echo(f"error: {bad}", err=True)
        return 2
    try:
        cli.main(args=args, prog_name="jetex", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code or 0)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return int(e.exit_code or 2)
    except JetexError as e:
        _report(f"error: {_one_line(e)}")
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted (work already committed is kept)", err=True)
        return 130
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        _report(f"error: {e.strerror or e}: {e.filename}")
        return 2
    except OSError as e:
        _report(f"error: {_one_line(e)}")
        return 2
    except torch_oom() as e:  # pragma: no cover
        _report(f"error: out of memory: {_one_line(e, 200)}")
        return 3
    except Exception as e:  # a bug: still one line, the traceback on request
        msg = _one_line(e) or "(no message)"
        if _debug():
            _report(f"error: internal error ({type(e).__name__}): {msg}")
        else:
            click.echo(f"error: internal error ({type(e).__name__}): {msg} (set JETEX_DEBUG=1 for the traceback)", err=True)
        return INTERNAL_ERROR_EXIT
    finally:
        warnings.showwarning = shown
    return 0


def _not_utf8(args: list[str]) -> str | None:
    """The complaint about the first argument that is not valid UTF-8 (Python keeps such bytes
    as lone surrogates, which no tokenizer accepts), or None."""
    for n, a in enumerate(args, 1):
        try:
            a.encode("utf-8")
        except UnicodeEncodeError as e:
            raw = a.encode("utf-8", "surrogateescape")
            from jetex.viz.text import visible

            shown = visible(raw[max(0, e.start - 10): e.start + 10].decode("utf-8", "backslashreplace"))
            return f"argument {n} is not valid UTF-8 text (byte {e.start}: ...{shown}...); give UTF-8 text"
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    click.echo(f"warning: {_one_line(message if isinstance(message, Warning) else Warning(message))}", err=True)


def torch_oom() -> type[BaseException]:
    try:
        import torch

        return torch.OutOfMemoryError
    except Exception:  # pragma: no cover
        return MemoryError


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
