"""The client behind ``--server URL`` (or ``$JETEX_SERVER``): send a command's request to a
running ``jetex serve`` and return its JSON. Standard library only — no torch, no model —
so a command answered by a warm server starts and ends in well under a second.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from jetex.errors import JetexError

#: environment variable naming the server when ``--server`` is not given
ENV = "JETEX_SERVER"


class ServerError(JetexError):
    """The server refused the request (its one-line reason) or could not be reached."""


def server_url(given: str | None) -> str | None:
    """The server to use: ``given`` (``--server``), else ``$JETEX_SERVER``, else None (compute locally)."""
    url = given if given is not None else os.environ.get(ENV) or None
    if url is None or not url.strip():
        return None
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ServerError(f"--server must be an http:// URL such as http://127.0.0.1:8000, got {url!r}")
    return url


def call(url: str, endpoint: str, body: dict[str, Any] | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """POST ``body`` as JSON to ``url + endpoint`` (GET without a body); the parsed JSON answer.

    A 4xx/5xx answer becomes a :class:`ServerError` carrying the server's one-line reason;
    an unreachable server says so and how to start one.
    """
    data = None if body is None else json.dumps({k: v for k, v in body.items() if v is not None}).encode("utf-8")
    req = urllib.request.Request(url + endpoint, data=data, method="GET" if data is None else "POST",
                                 headers={"content-type": "application/json", "accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read().decode("utf-8")).get("error") or e.reason
        except (ValueError, AttributeError):
            msg = e.reason
        raise ServerError(f"server {url}: {' '.join(str(msg).split())}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(f"cannot reach the jetex server at {url} ({reason}); start one with `jetex serve`") from None
    except ValueError:
        raise ServerError(f"server {url} answered something that is not JSON") from None
