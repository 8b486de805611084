"""The explorer (``jetex serve``) measured from the outside, in one run, loopback only.

    .venv/bin/python benchmarks/serve.py                        # SmolLM2; Gemma 3 smoke-tested too
    .venv/bin/python benchmarks/serve.py --screenshots docs/figures   # also the README's pictures

What is measured:

1. ``jetex serve`` is started as a subprocess on a free loopback port with SmolLM2 (and
   Gemma 3 with ``--models``) and a small n-gram store of SmolLM2's direct path (first
   ``--store-vocab`` input tokens, built once into a temporary folder).
2. **warm lens, server time**: the order-1 iterative lens of a 16-token text, ``--repeats``
   requests after 3 warm-ups; the median of the server's own ``timing.server_s`` (queue +
   compute, as the server measures it) and of the client's wall time per request. As a
   reference measured in the same run, the benchmark process itself times
   ``jetex.iterative_lens`` on the same text (the library call alone, no HTTP, no
   probabilities); ``server / library`` is the explorer's overhead ratio.
3. **browser**: a headless Chromium opens /lens, and ``--repeats`` times sets the text and
   clicks Run; the page records ``performance.now()`` from the request to the grid in the
   DOM (``data-render-ms``); the median is reported.
4. **command line**: ``jetex lens TEXT --server URL`` as a subprocess, wall time end to end
   (median of 3), and whether torch was imported by the client (``-X importtime``).
5. **concurrency**: 20 clients send the lens request at once; every answer must equal the
   serial answer (same cells); p50 / p95 of their latencies.
6. **memory**: the server's resident set (``VmRSS`` of the subprocess) before and after 200
   more order-1 lens requests of varied short texts (4–6 tokens, so that the run stays short
   on a loaded machine); growth in percent.
7. both real models: each page's endpoint answers 200 on every served model (``--models``),
   block and stream names included, and the n-gram listing on a small store of each model
   (its first ``--store-vocab`` input tokens, at most 500 for the second model).

The machine is shared (2 cores, many jobs): absolute seconds are only roughly comparable
between runs; the ratios and the pass/fail checks are the results.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from jetex.serve.client import call  # noqa: E402  (torch-free)

TEXT16 = "The quick brown fox jumps over the lazy dog because it wanted to see the"
TEXTS = [
    "The capital of France is",
    "In 1492 Columbus sailed",
    "def fib(n): return",
    "She opened the door and",
    "Water boils at",
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_server(models: list[str], stores: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "jetex.cli.main", "serve", "--port", "0", "--threads", str(threads)]
    for m in models:
        cmd += ["-m", m]
    for s in stores:
        cmd += ["--store", s]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    t0 = time.monotonic()
    while True:
        line = p.stderr.readline()
        if not line:
            raise RuntimeError("the server exited: " + (p.stderr.read() or ""))
        sys.stderr.write("  server: " + line)
        if "jetex explorer on" in line:
            url = line.split("jetex explorer on ")[1].split()[0].rstrip("/")
            print(f"server up after {time.monotonic() - t0:.1f} s at {url}")
            return p, url


def store_name(model: str) -> str:
    return model.replace("-", "_").replace("/", "_") + "_direct"


def make_store(tmp: Path, vocab: int, model: str = "smollm2-135m") -> str:
    import jetex
    from jetex.ngrams import extract_ngrams

    db = tmp / f"{store_name(model)}.duckdb"
    t0 = time.perf_counter()
    extract_ngrams(jetex.load(model), ["direct"], db=db, top_k=10, exclude_self=True, global_top=100,
                   limit_vocab=vocab, progress=False, fidelity_sample=0, precision_sample=0)
    print(f"store of {model}: direct path, first {vocab} input tokens, {time.perf_counter() - t0:.1f} s")
    return str(db)


PROBABILITIES = True


def lens_body(text: str, model: str | None = None) -> dict:
    return {"model": model, "text": text, "kind": "iterative", "order": 1, "top": 10, "probabilities": PROBABILITIES}


def timed(url: str, endpoint: str, body: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = call(url, endpoint, body, timeout=3600)
    return time.perf_counter() - t0, out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def browser_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)


def wait(fn, timeout=300.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            v = fn()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.02)
    raise TimeoutError


def browser_runs(url: str, repeats: int, shots: Path | None, text: str) -> list[float]:
    drv = browser_driver()
    try:
        drv.get(url + "/lens")
        wait(lambda: drv.find_element("tag name", "body").get_attribute("data-ready") == "1")
        out = []
        for _ in range(repeats):
            drv.execute_script("document.getElementById('text').value = arguments[0];"
                               "document.getElementById('lens-grid').setAttribute('data-render-ms', '');", text)
            drv.find_element("id", "lens-run").click()
            ms = wait(lambda: drv.find_element("id", "lens-grid").get_attribute("data-render-ms"))
            out.append(float(ms) / 1000)
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            cells = drv.find_elements("css selector", "#lens-grid td.cell[data-r='20']")
            cells[min(len(cells) - 1, 9)].click()
            wait(lambda: drv.find_element("id", "cell-topk"))
            drv.save_screenshot(str(shots / "serve_lens.png"))
            drv.find_element("css selector", "nav a[data-nav='paths']").click()
            drv.find_element("id", "paths-run").click()
            wait(lambda: len(drv.find_elements("css selector", "#paths-table tr")) > 1)
            drv.save_screenshot(str(shots / "serve_paths.png"))
            drv.find_element("css selector", "nav a[data-nav='attribution']").click()
            drv.find_element("id", "attr-faith").click()
            drv.find_element("id", "attr-run").click()
            wait(lambda: len(drv.find_elements("css selector", "#attr-faith-table tr")) > 1)
            drv.save_screenshot(str(shots / "serve_attribution.png"))
            drv.find_element("css selector", "nav a[data-nav='ngrams']").click()
            drv.find_element("id", "ng-token").send_keys(" the")
            drv.find_element("id", "ng-run").click()
            wait(lambda: len(drv.find_elements("css selector", "#ng-table tr")) > 1)
            drv.save_screenshot(str(shots / "serve_ngrams.png"))
            print(f"screenshots: {', '.join(sorted(p.name for p in shots.glob('serve_*.png')))} in {shots}")
        return out
    finally:
        drv.quit()


def cli_runs(url: str, text: str, n: int = 3) -> tuple[list[float], bool, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    walls, torch_loaded, out = [], False, ""
    for i in range(n):
        cmd = [sys.executable] + (["-X", "importtime"] if i == 0 else []) + ["-m", "jetex.cli.main", "lens", text, "--server", url]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise RuntimeError(f"jetex lens --server failed: {r.stderr.strip().splitlines()[-1:]}")
        if i == 0:
            torch_loaded = any(line.split("|")[-1].strip() == "torch" for line in r.stderr.splitlines() if "|" in line)
            out = r.stdout
    return walls[1:] if n > 1 else walls, torch_loaded, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m", help="served models (the first is measured)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("JETEX_BENCH_THREADS", "1")),
                    help="torch threads of the server and of the reference (default 1: the machine is shared)")
    ap.add_argument("--store-vocab", type=int, default=3000)
    ap.add_argument("--memory-requests", type=int, default=200)
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--screenshots", default=None, help="folder for serve_*.png (the README's pictures)")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--steps", default="lens,browser,cli,concurrent,memory,smoke", help="which measurements to run")
    ap.add_argument("--no-probabilities", action="store_true",
                    help="lens requests without the probability view (the page's default logit colour scale)")
    args = ap.parse_args()
    global PROBABILITIES
    PROBABILITIES = not args.no_probabilities
    steps = set(args.steps.split(","))
    models = [m for m in args.models.split(",") if m]
    tmp = Path(tempfile.mkdtemp(prefix="jetex-serve-bench-"))
    report: dict = {"models": models}
    stores = {m: make_store(tmp, args.store_vocab if i == 0 else min(args.store_vocab, 500), m)
              for i, m in enumerate(models if "smoke" in steps else models[:1])} if args.store_vocab > 0 else {}
    store = stores.get(models[0])
    import torch

    torch.set_num_threads(args.threads)
    proc, url = start_server(models, list(stores.values()), args.threads)
    report["probabilities"] = PROBABILITIES
    try:
        # 2. warm lens, server time vs the library call in this process
        for _ in range(3):
            call(url, "/api/lens", lens_body(TEXT16), timeout=3600)
        if "lens" in steps:
            walls, server = [], []
            for _ in range(args.repeats):
                w, out = timed(url, "/api/lens", lens_body(TEXT16))
                walls.append(w)
                server.append(out["timing"]["server_s"])
            n_tok = len(out["result"]["tokens"])
            import jetex

            m = jetex.load(models[0])
            for _ in range(2):
                jetex.iterative_lens(m, TEXT16, order=1)
            lib = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jetex.iterative_lens(m, TEXT16, order=1)
                lib.append(time.perf_counter() - t0)
            del m
            report["lens"] = {"tokens": n_tok, "server_s_median": statistics.median(server), "request_s_median": statistics.median(walls),
                              "library_s_median": statistics.median(lib)}
            report["lens"]["server_over_library"] = report["lens"]["server_s_median"] / report["lens"]["library_s_median"]
            print(f"warm order-1 iterative lens, {n_tok} tokens: server {report['lens']['server_s_median']:.3f} s (median of "
                  f"{args.repeats}), request {report['lens']['request_s_median']:.3f} s; library call alone "
                  f"{report['lens']['library_s_median']:.3f} s → server/library {report['lens']['server_over_library']:.2f}")

        if "browser" in steps:
            # 3. browser
            if not args.no_browser and shutil.which("chromium") and shutil.which("chromedriver"):
                shots = Path(args.screenshots) if args.screenshots else None
                rend = browser_runs(url, args.repeats, shots, TEXT16)
                report["browser_s_median"] = statistics.median(rend)
                print(f"browser: request → rendered grid {report['browser_s_median']:.3f} s (median of {len(rend)})")

        if "cli" in steps:
            # 4. command line against the warm server
            try:
                cw, torch_loaded, _ = cli_runs(url, TEXT16)
                report["cli"] = {"wall_s_median": statistics.median(cw), "client_imported_torch": torch_loaded}
                print(f"jetex lens TEXT --server: {report['cli']['wall_s_median']:.3f} s wall (median of {len(cw)}); "
                      f"client imported torch: {torch_loaded}")
            except RuntimeError as e:
                report["cli"] = {"error": str(e)}
                print(f"jetex lens --server: {e}")

        if "concurrent" in steps:
            # 5. concurrency
            ref = call(url, "/api/lens", lens_body(TEXT16))["result"]

            def one(_):
                w, o = timed(url, "/api/lens", lens_body(TEXT16))
                return w, o["result"] == ref

            with cf.ThreadPoolExecutor(args.concurrent) as pool:
                res = list(pool.map(one, range(args.concurrent)))
            lat = [w for w, _ in res]
            ok = sum(1 for _, good in res if good)
            report["concurrent"] = {"n": args.concurrent, "correct": ok, "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95)}
            print(f"{args.concurrent} concurrent lens requests: {ok}/{args.concurrent} answered correctly; "
                  f"p50 {report['concurrent']['p50_s']:.2f} s, p95 {report['concurrent']['p95_s']:.2f} s")

        if "memory" in steps:
            # 6. memory over N requests
            before = rss_kib(proc.pid)
            for i in range(args.memory_requests):
                t = TEXTS[i % len(TEXTS)] + " again" * (i % 3)
                call(url, "/api/lens", lens_body(t))
            after = rss_kib(proc.pid)
            report["memory"] = {"requests": args.memory_requests, "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
                                "growth_pct": 100 * (after - before) / before}
            print(f"server RSS over {args.memory_requests} lens requests: {before / 1024:.0f} → {after / 1024:.0f} MiB "
                  f"({report['memory']['growth_pct']:+.2f} %)")

        if "smoke" in steps:
            # 7. every page's endpoint on every served model (block names included), seconds per request
            smoke = {}
            for mname in models:
                info = next(i for i in call(url, "/api/status")["models"] if i["name"] == mname)
                mid = f"mlp.{info['n_layers'] // 2}"
                codes = {}
                for label, ep, body in [
                        ("lens iterative", "/api/lens", lens_body(TEXTS[0], mname)),
                        ("lens iterative emb,attn.3,mlp.N", "/api/lens", lens_body(TEXTS[0], mname) | {"layers": f"emb,attn.3,{mid}"}),
                        ("lens joint", "/api/lens", {"model": mname, "text": TEXTS[0], "kind": "joint"}),
                        ("lens joint optimized", "/api/lens", {"model": mname, "text": TEXTS[0], "kind": "joint", "optimize": True}),
                        ("paths", "/api/paths", {"model": mname, "text": TEXTS[0], "max_len": 1}),
                        ("paths use mlp.3", "/api/paths", {"model": mname, "text": TEXTS[0], "max_len": 2, "use": "mlp.3"}),
                        ("attribute +faithfulness", "/api/attribute", {"model": mname, "text": TEXTS[0], "faithfulness": True}),
                        (f"attribute jetxlogit {mid}", "/api/attribute", {"model": mname, "text": TEXTS[0], "method": "jetxlogit", "layer": mid}),
                        ("predict", "/api/predict", {"model": mname, "text": TEXTS[0]})]:
                    t0 = time.perf_counter()
                    call(url, ep, body, timeout=3600)
                    codes[label] = round(time.perf_counter() - t0, 3)
                if mname in stores:
                    for label, q in [("ngrams top (store default score)", ""), ("ngrams top, score named (zpmi)", "&score=zpmi"),
                                     ("ngrams token as input", "&token=%20the"), ("ngrams token as output", "&token=%20the&side=output")]:
                        t0 = time.perf_counter()
                        out = call(url, f"/api/ngrams/top?store={store_name(mname)}&n=20&model={mname}" + q)
                        assert "score" in out["columns"] and (out["rows"] or "token" in q), out
                        codes[label] = round(time.perf_counter() - t0, 3)
                smoke[mname] = codes
            report["models_smoke_s"] = smoke
            print("every endpoint answered on every model (seconds): " + json.dumps(smoke, indent=1))
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
