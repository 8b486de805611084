"""The explorer web application (Starlette, served by uvicorn).

Pages (one static app, shared navigation): ``/lens``, ``/paths``, ``/attribution``,
``/ngrams``; each is a client of the JSON API below (documented in docs/serve.md and at
``GET /api``):

=======================  =====  ==============================================================
``/api``                 GET    this list of endpoints
``/api/status``          GET    models, stores, limits, computation counters
``/api/predict``         POST   ``{model?, text, top?}`` → the model's top next tokens
``/api/lens``            POST   ``{model?, text, kind?, order?, layers?, centres?, optimize?,
                                top?, probabilities?}`` → ``result`` (= ``jetex lens --json``), ``view``
``/api/paths``           POST   ``{model?, text, order?, use?, avoid?, min_len?, max_len?,
                                position?, token?, top?, split_degrees?, degrees?}`` → ranked paths
``/api/attribute``       POST   ``{model?, text, method?, target?|target_id?, layer?, order?,
                                steps?, faithfulness?, candidates?}`` → scores per input token
``/api/ngrams/top``      GET    ``store?, path?, score?, n?, token?, side?, model?, format?`` (score:
                                logprob/logit/zlogit/pmi/zpmi, default the run's own; trigrams: prob/attn_prob)
``/api/ngrams/diff``     GET    ``a, b, path?, top?, step?`` → two stores side by side
=======================  =====  ==============================================================

Every refusal is a 4xx with ``{"error": "<one line>"}``; the server keeps serving.
Computations run on the model's single worker thread (:mod:`jetex.serve.jobs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from jetex.errors import JetexError
from jetex.models.base import ResidualModel
from jetex.serve import compute
from jetex.serve.jobs import Cancelled, Counters, ModelWorker, install_cancel_hook, remove_cancel_hook
from jetex.serve.limits import Limits, Params, RequestError, check_text
from jetex.ngrams.scores import DEFAULT_SCORE
from jetex.serve.stores import SCORES, TRIGRAM_SCORES, StoreRegistry, to_csv

PAGES = ("lens", "paths", "attribution", "ngrams")
#: status sent when the client went away (nobody reads it; logged as such)
CLIENT_CLOSED = 499

ENDPOINTS = [
    {"method": "GET", "path": "/api/status", "does": "models, stores, limits and computation counters"},
    {"method": "POST", "path": "/api/predict", "body": "model?, text, top?", "does": "the model's top next tokens (jetex predict --json)"},
    {"method": "POST", "path": "/api/lens", "body": "model?, text, kind?, order?, layers?, centres?, optimize?, top?, probabilities?",
     "does": "iterative or joint jet lens: result (jetex lens --json) and view (probabilities, ranks, model top-k)"},
    {"method": "POST", "path": "/api/paths", "body": "model?, text, order?, use?, avoid?, min_len?, max_len?, position?, token?, top?, split_degrees?, degrees?",
     "does": "input-to-output jet paths ranked by their logit for a token at a position (jetex paths --json)"},
    {"method": "POST", "path": "/api/attribute", "body": "model?, text, method?, target?|target_id?, layer?, order?, steps?, faithfulness?, candidates?",
     "does": "attribution of the next-token prediction to the input tokens (jetex attribute --json), faithfulness on request"},
    {"method": "GET", "path": "/api/ngrams/top", "query": "store?, path?, score?, n?, token?, side?, model?, format? (json|csv)",
     "does": "top n-grams of a stored path by a score; a token's rows as input or output; CSV export"},
    {"method": "GET", "path": "/api/ngrams/diff", "query": "a, b, path?, top?, step?", "does": "diff of the bigrams of two stores, side by side"},
]


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class JSON(JSONResponse):
    """JSON with non-finite floats written as null (the browser's JSON.parse refuses NaN)."""

    def render(self, content: Any) -> bytes:
        try:
            s = json.dumps(content, ensure_ascii=False, allow_nan=False, default=str)
        except ValueError:
            s = json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, default=str)
        return s.encode("utf-8")


def _error(status: int, message: str) -> JSON:
    return JSON({"error": " ".join(message.split())}, status_code=status)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Explorer:
    """The state behind the app: models (with their workers), stores, limits, counters."""

    def __init__(self, models: dict[str, ResidualModel], stores: list[str | Path], limits: Limits) -> None:
        if not models:
            raise JetexError("the explorer needs at least one model")
        self.models = dict(models)
        self.limits = limits
        self.counters = Counters()
        self.workers = {name: ModelWorker(name, limits.max_queue, self.counters) for name in self.models}
        self.stores = StoreRegistry(list(stores))
        self.infos = {name: compute.model_info(name, m) for name, m in self.models.items()}

    def model(self, name: Any) -> tuple[str, ResidualModel]:
        if name is None:
            name = next(iter(self.models))
        if not isinstance(name, str) or name not in self.models:
            raise RequestError(404, f"unknown model {name!r}; served models: {', '.join(self.models)}")
        return name, self.models[name]

    def close(self) -> None:
        for w in self.workers.values():
            w.shutdown()
        self.stores.close()


async def _body(request: Request, limits: Limits) -> Any:
    """The request's JSON object, refusing big, non-UTF-8 or malformed bodies."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, f"request body is {declared} bytes; the limit is {limits.max_body_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise RequestError(413, f"request body exceeds {limits.max_body_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise RequestError(400, "empty request body: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def create_app(
    models: dict[str, ResidualModel],
    stores: list[str | Path] = (),  # type: ignore[assignment]
    limits: Limits | None = None,
    *,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The explorer app over already loaded ``models`` (name → model; the first is the default)
    and the n-gram ``stores`` (files, opened read-only). ``allowed_hosts``: the Host headers
    accepted (default: loopback names only, which stops DNS-rebinding pages from reaching a
    local server); ``["*"]`` accepts any."""
    ex = Explorer(models, list(stores), limits or Limits())
    static_dir = Path(str(resources.files("jetex.serve") / "static"))
    index_html = (static_dir / "index.html").read_text(encoding="utf-8")

    async def compute_endpoint(request: Request, what: str, parse: Callable, run: Callable) -> Response:
        data = await _body(request, ex.limits)
        p = Params(data, ex.limits)
        name, model = ex.model(p._get("model", None))
        kw = parse(p, model)
        p.done()
        t0 = time.perf_counter()

        async def gone() -> bool:
            return await request.is_disconnected()

        out, queue_s, compute_s = await ex.workers[name].run(what, lambda: run(model, **kw), gone)
        out = dict(out)
        out["timing"] = {"queue_s": round(queue_s, 4), "compute_s": round(compute_s, 4), "server_s": round(time.perf_counter() - t0, 4)}
        return JSON(out)

    async def api_predict(request: Request) -> Response:
        return await compute_endpoint(request, "predict", compute.predict_params, compute.run_predict)

    async def api_lens(request: Request) -> Response:
        return await compute_endpoint(request, "lens", compute.lens_params, compute.run_lens)

    async def api_paths(request: Request) -> Response:
        return await compute_endpoint(request, "paths", compute.paths_params, compute.run_paths)

    async def api_attribute(request: Request) -> Response:
        return await compute_endpoint(request, "attribute", compute.attribute_params, compute.run_attribute)

    def _query(request: Request, accepted: set[str]) -> Params:
        q = dict(request.query_params)
        extra = sorted(set(q) - accepted)
        if extra:
            raise RequestError(400, f"unknown parameter {extra[0]!r}; accepted: {', '.join(sorted(accepted))}")
        return Params(q, ex.limits)

    async def api_ngrams_top(request: Request) -> Response:
        p = _query(request, {"store", "path", "score", "n", "token", "side", "model", "format"})
        store = ex.stores.get(p.string("store"))
        if p.data.get("model"):
            name, m = ex.model(p.string("model"))
            ex.stores.check_model(store, ex.infos[name]["fingerprint"], name)
        path = p.string("path")
        score = p.string("score") or None  # validated against the run (bigram scores or trigram columns)
        n = p.integer("n", 20, 1, ex.limits.max_rows)
        token = p.string("token")
        if token is not None:
            token = check_text(token, ex.limits, "token") if token.strip() else token
            if token == "":
                token = None
        side = p.choice("side", ["input", "output"], "input")
        fmt = p.choice("format", ["json", "csv"], "json")
        listing = await asyncio.to_thread(store.listing, path, score, n, token, side)
        if fmt == "csv":
            fname = f"{store.name}_{listing['run']['path']}_{listing['score']}.csv".replace(":", "-").replace("/", "-")
            return PlainTextResponse(to_csv(listing), media_type="text/csv",
                                     headers={"content-disposition": f'attachment; filename="{fname}"'})
        return JSON(listing)

    async def api_ngrams_diff(request: Request) -> Response:
        p = _query(request, {"a", "b", "path", "top", "step"})
        a = ex.stores.get(p.string("a"))
        b_name = p.string("b")
        if b_name is None:
            raise RequestError(400, "missing 'b': the store to compare with")
        b = ex.stores.get(b_name)
        path = p.string("path", "direct") or "direct"
        top = p.integer("top", 100, 1, ex.limits.max_rows)
        step = p.integer("step", 10, 1, ex.limits.max_rows)
        out = await asyncio.to_thread(ex.stores.diff, a, b, path, top, step)
        return JSON(out)

    async def api_status(request: Request) -> Response:
        return JSON({
            "models": list(ex.infos.values()),
            "default_model": next(iter(ex.models)),
            "stores": [s.info() for s in ex.stores.stores.values()],
            "limits": ex.limits.to_dict(),
            "scores": list(SCORES),
            "trigram_scores": list(TRIGRAM_SCORES),
            "default_score": DEFAULT_SCORE,
            "colour_scales": list(compute.COLOUR_SCALES),
            "counters": ex.counters.to_dict(),
            "queued": {n: w.pending for n, w in ex.workers.items()},
        })

    async def api_index(request: Request) -> Response:
        return JSON({"endpoints": ENDPOINTS, "errors": "4xx with {\"error\": \"<one line>\"}", "docs": "docs/serve.md"})

    async def page(request: Request) -> Response:
        return HTMLResponse(index_html)

    async def root(request: Request) -> Response:
        return RedirectResponse("/lens")

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api"):
            return _error(404, f"no endpoint {request.method} {request.url.path}; see GET /api")
        return PlainTextResponse(f"no page {request.url.path}; pages: {', '.join('/' + p for p in PAGES)}", status_code=404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}; see GET /api")

    async def on_request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return _error(exc.status, str(exc))

    async def on_jetex_error(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def on_cancelled(request: Request, exc: Exception) -> Response:
        return _error(CLIENT_CLOSED, "cancelled: the client disconnected")

    async def on_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error ({type(exc).__name__}): {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        install_cancel_hook()
        try:
            yield
        finally:
            remove_cancel_hook()
            ex.close()

    routes = [
        Route("/", root),
        *[Route(f"/{name}", page) for name in PAGES],
        Route("/api", api_index),
        Route("/api/status", api_status),
        Route("/api/predict", api_predict, methods=["POST"]),
        Route("/api/lens", api_lens, methods=["POST"]),
        Route("/api/paths", api_paths, methods=["POST"]),
        Route("/api/attribute", api_attribute, methods=["POST"]),
        Route("/api/ngrams/top", api_ngrams_top),
        Route("/api/ngrams/diff", api_ngrams_diff),
        Mount("/static", StaticFiles(directory=static_dir), name="static"),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]", "::1"]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={
            404: not_found,
            405: method_not_allowed,
            RequestError: on_request_error,
            JetexError: on_jetex_error,
            Cancelled: on_cancelled,
            Exception: on_error,
        },
        lifespan=lifespan,
    )
    app.state.explorer = ex
    return app


@dataclass
class RunningServer:
    """A server running on a background thread (tests, benchmarks); ``stop()`` ends it."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port)."""
    fam = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise JetexError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


def start_in_thread(app: Starlette, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> RunningServer:
    """Start uvicorn for ``app`` on a background thread; return once it accepts connections."""
    import uvicorn

    sock = bind(host, port)
    cfg = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(cfg)
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="jetex-serve")
    th.start()
    t0 = time.monotonic()
    while not server.started:
        if not th.is_alive() or time.monotonic() - t0 > timeout:
            raise JetexError("the explorer server did not start")
        time.sleep(0.02)
    h, p = sock.getsockname()[:2]
    return RunningServer(f"http://{h if ':' not in h else '[' + h + ']'}:{p}", server, th)
