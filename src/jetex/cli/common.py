"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

DEFAULT_MODEL = "smollm2-135m"

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


def common_options(f: Callable) -> Callable:
    """Attach ``--model`` and ``--json`` to a command."""
    return model_option(json_option(f))


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
