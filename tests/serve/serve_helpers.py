"""Helpers of the explorer tests: a slowed-down model, one HTTP request, a file hash."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from pathlib import Path


class SlowBlocks:
    """Forward pre-hooks on a model's blocks that sleep ``delay`` s per call, count the calls and
    record the largest number of threads inside the model at once."""

    def __init__(self, model, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        self.inside = 0
        self.max_inside = 0
        self.lock = threading.Lock()
        self.handles = [b.register_forward_pre_hook(self._pre) for b in model.blocks]
        self.handles += [b.register_forward_hook(self._post) for b in model.blocks]

    def _pre(self, module, args):
        with self.lock:
            self.calls += 1
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
        time.sleep(self.delay)

    def _post(self, module, args, out):
        with self.lock:
            self.inside -= 1


def file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def request(url: str, method: str, path: str, body=None, *, raw: bytes | None = None, headers: dict | None = None,
            timeout: float = 120.0):
    """(status, parsed JSON or text) of one request to the test server."""
    host, port = url.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"content-type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    r = conn.getresponse()
    payload = r.read().decode("utf-8")
    conn.close()
    try:
        return r.status, json.loads(payload)
    except json.JSONDecodeError:
        return r.status, payload


def finite(obj):
    """``obj`` with every non-finite float as None (the API writes NaN/Inf as null)."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj
