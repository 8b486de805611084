"""Entry point of the ``jetex`` command line.

Each ``jetex/cli/cmd_<name>.py`` module defines ``register(group: click.Group)`` that
adds its subcommand(s); they are discovered at start-up, so features add commands
without touching this file. Every command takes ``--model`` and ``--json`` (see
:mod:`jetex.cli.common`). A :class:`~jetex.errors.JetexError` (or a few well-known
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
    return 0


def torch_oom() -> type[BaseException]:
    try:
        import torch

        return torch.OutOfMemoryError
    except Exception:  # pragma: no cover
        return MemoryError


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
