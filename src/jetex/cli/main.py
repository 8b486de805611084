"""Entry point of the ``jetex`` command line.

Each ``jetex/cli/cmd_<name>.py`` module defines ``register(group: click.Group)`` that
adds its subcommand(s); they are discovered at start-up, so features add commands
without touching this file. Every command takes ``--model`` and ``--json`` (see
:mod:`jetex.cli.common`). A :class:`~jetex.errors.JetexError` (or a few well-known
OS errors) becomes one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

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
        msg = " ".join(str(e).split())
        click.echo(f"error: {msg}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted (work already committed is kept)", err=True)
        return 130
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        click.echo(f"error: {e.strerror or e}: {e.filename}", err=True)
        return 2
    except OSError as e:
        click.echo(f"error: {' '.join(str(e).split())}", err=True)
        return 2
    except torch_oom() as e:  # pragma: no cover
        click.echo(f"error: out of memory: {' '.join(str(e).split())[:200]}", err=True)
        return 3
    return 0


def torch_oom() -> type[BaseException]:
    try:
        import torch

        return torch.OutOfMemoryError
    except Exception:  # pragma: no cover
        return MemoryError


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
