"""``jetex serve``: the local explorer (lens, paths, attribution, n-grams) in the browser.

    jetex serve                                   # SmolLM2 on http://127.0.0.1:8000
    jetex serve -m smollm2-135m -m gemma3-270m --store ngrams.duckdb --port 8001
"""

from __future__ import annotations

import click

from jetex.cli.common import DEFAULT_MODEL
from jetex.errors import InputError, JetexError


def register(group: click.Group) -> None:
    @group.command("serve")
    @click.option("--model", "-m", "models", multiple=True, default=(DEFAULT_MODEL,), show_default=True,
                  help="Model to load and keep warm (repeatable; the first is the default).")
    @click.option("--store", "stores", multiple=True, type=click.Path(dir_okay=False),
                  help="N-gram DuckDB file to browse (repeatable; opened read-only).")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless you say otherwise).")
    @click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free port).")
    @click.option("--max-tokens", type=int, default=None, help="Longest text in tokens (default 256).")
    @click.option("--max-queue", type=int, default=None, help="Computations waiting or running per model before 429 (default 32).")
    @click.option("--threads", type=int, default=None, help="torch threads per computation (default: torch's choice).")
    def serve_cmd(models, stores, host, port, max_tokens, max_queue, threads) -> None:
        """Serve the explorer: the models stay loaded, pages and a JSON API answer on HOST:PORT."""
        from dataclasses import replace

        try:
            import starlette  # noqa: F401
            import uvicorn
        except ImportError:
            raise JetexError("jetex serve needs Starlette and uvicorn: pip install 'jetex[serve]'") from None
        from jetex.models.load import load
        from jetex.serve.app import bind, create_app, is_loopback
        from jetex.serve.limits import Limits

        if not 0 <= port <= 65535:
            raise InputError(f"--port must be in 0..65535, got {port}")
        limits = Limits()
        for name, v in (("max_tokens", max_tokens), ("max_queue", max_queue)):
            if v is not None:
                if v < 1:
                    raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
                limits = replace(limits, **{name: v})
        loopback = is_loopback(host)
        from jetex.ngrams.store import NgramStore

        for path in stores:  # refuse an unreadable store before loading the models
            NgramStore(path, read_only=True).close()
        sock = bind(host, port)  # and a taken port
        if not loopback:
            click.echo(
                f"warning: listening on {host}, not on loopback: anyone who can reach this address can use the "
                "models on this machine (there is no authentication)",
                err=True,
            )
        if threads is not None:
            if threads < 1:
                raise InputError(f"--threads must be >= 1, got {threads}")
            import torch

            torch.set_num_threads(threads)
        loaded = {}
        for spec in models:
            if spec in loaded:
                continue
            click.echo(f"loading {spec} …", err=True)
            loaded[spec] = load(spec)
        app = create_app(loaded, list(stores), limits, allowed_hosts=None if loopback else ["*"])
        h, p = sock.getsockname()[:2]
        shown = f"[{h}]" if ":" in h else h
        click.echo(f"jetex explorer on http://{shown}:{p}/  (models: {', '.join(loaded)}; stores: {len(stores)}; Ctrl-C stops)", err=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)).run(sockets=[sock])
