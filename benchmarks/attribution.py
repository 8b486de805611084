"""Cost of the token-attribution methods: time and peak memory, per method, on the same inputs.

    .venv/bin/python benchmarks/attribution.py                       # SmolLM2 and Gemma 3, all methods
    .venv/bin/python benchmarks/attribution.py --models smollm2-135m --prompts 3 --repeats 3

What is measured, for each (model, method), in a **fresh subprocess** (so one method's
allocations never hide another's):

1. load the model, tokenise the first ``--prompts`` prompts of the shipped evaluation set,
   and fix each prompt's target (the model's argmax next token), so that every method
   explains the same targets on the same token ids;
2. warm up: run the method once on every prompt (lazy initialisation, thread pools);
3. time: ``--repeats`` runs over all prompts, the median run divided by the number of
   prompts (seconds per prompt), with ``JETEX_BENCH_THREADS`` torch threads (default 1:
   the machine is shared, and oversubscribed OpenMP threads make timings erratic);
4. peak memory: switch glibc to mmap every block over 64 KiB (``mallopt``, so freed
   tensors return to the OS at once and the heap cannot hide a new peak), release freed
   memory (``malloc_trim``), reset the kernel's peak-RSS counter (``echo 5 >
   /proc/self/clear_refs``), note VmRSS, run the method once on every prompt, read VmHWM.
   ``peak MiB`` = VmHWM − VmRSS before: the extra resident memory the method needed on
   top of the loaded model (weights are not counted).

Two references run the same way: ``forward`` (the model's own Hugging Face forward
pass, logits at every position, no grad) and ``view_forward`` (q(z) through the residual
view, no grad). The printed ratios divide by ``forward``. NormXLogit needs h_0 and h_L
(one pass through the blocks) and U's target row at each position (t·d multiply-adds,
instead of the forward's t·V·d head), so it should cost at most one forward pass.

The machine is shared and has 2 cores: ratios measured within one run are meaningful,
absolute seconds only roughly. Results depend on the prompt lengths (≈ 6–17 tokens here).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time

METHODS = [
    "forward",
    "view_forward",
    "norm",
    "logat",
    "normxlogit",
    "jetxlogit:1",
    "jetxlogit:2",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "random",
]


def _status() -> dict[str, int]:
    s = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", s).group(1)) for k in ("VmRSS", "VmHWM")}  # kB


def _release() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - non-glibc
        pass


def _mallopt(param: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except OSError:  # pragma: no cover - non-glibc
        pass


def worker(model_name: str, method: str, n_prompts: int, repeats: int, ig_steps: int) -> dict:
    import torch

    import jetex
    from jetex.attribution import attribute, load_prompts

    torch.set_num_threads(int(os.environ.get("JETEX_BENCH_THREADS", "1")))
    model = jetex.load(model_name)
    prompts = load_prompts()[:n_prompts]
    ids = [model.tokenize(p)[0] for p in prompts]
    with torch.no_grad():
        targets = [int(model.reference_logits(x[None])[0, -1].argmax()) for x in ids]
    L = model.n_blocks
    name, _, k = method.partition(":")

    def run_once() -> None:
        for x, t in zip(ids, targets):
            if name == "forward":
                with torch.no_grad():
                    model.reference_logits(x[None])
            elif name == "view_forward":
                with torch.no_grad():
                    model.forward(x[None])
            elif name == "jetxlogit":
                attribute(model, x, target=t, method="jetxlogit", layer=L // 2, order=int(k))
            elif name == "integrated_gradients":
                attribute(model, x, target=t, method=name, n_steps=ig_steps, internal_batch_size=min(ig_steps, 10))
            else:
                attribute(model, x, target=t, method=name)

    run_once()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - t0)
    # memory: from now on every block over 64 KiB is mmapped (returned to the OS on free)
    _mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also turns glibc's dynamic threshold off)
    _release()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status()["VmRSS"]
    run_once()
    peak_kb = _status()["VmHWM"] - before
    return {
        "model": model_name,
        "method": method,
        "seconds_per_prompt": statistics.median(times) / len(ids),
        "peak_mib": peak_kb / 1024,
        "tokens": [int(x.numel()) for x in ids],
        "layer": L // 2 if name == "jetxlogit" else None,
        "ig_steps": ig_steps if name == "integrated_gradients" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--prompts", type=int, default=5, help="first N prompts of the shipped set")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ig-steps", type=int, default=50, help="integrated-gradients steps (cost is linear in them)")
    ap.add_argument("--json", dest="json_out", help="also write the rows as JSON to this file")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.prompts, args.repeats, args.ig_steps)))
        return

    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
    rows = []
    for model_name in args.models.split(","):
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--worker", model_name, method, "--prompts", str(args.prompts), "--repeats", str(args.repeats), "--ig-steps", str(args.ig_steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{model_name} {method}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  {model_name:14s} {method:22s} {row['seconds_per_prompt'] * 1e3:9.1f} ms/prompt  peak +{row['peak_mib']:8.1f} MiB", flush=True)
    print()
    for model_name in args.models.split(","):
        mine = [r for r in rows if r["model"] == model_name]
        ref = next((r for r in mine if r["method"] == "forward"), None)
        if not mine or ref is None:
            continue
        toks = mine[0]["tokens"]
        print(f"{model_name}: {len(toks)} prompts of {min(toks)}–{max(toks)} tokens; jetxlogit at layer {next((r['layer'] for r in mine if r['layer'] is not None), '-')}")
        print(f"{'method':22s} {'ms/prompt':>10s} {'× forward':>10s} {'peak MiB':>10s} {'× forward':>10s}")
        for r in mine:
            tr = r["seconds_per_prompt"] / ref["seconds_per_prompt"]
            mr = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")
            print(f"{r['method']:22s} {r['seconds_per_prompt'] * 1e3:10.1f} {tr:10.2f} {r['peak_mib']:10.1f} {mr:10.2f}")
        nx = next((r for r in mine if r["method"] == "normxlogit"), None)
        if nx is not None:
            grads = [r for r in mine if r["method"] in ("saliency", "input_x_gradient", "integrated_gradients")]
            print(f"NormXLogit / forward: time {nx['seconds_per_prompt'] / ref['seconds_per_prompt']:.2f}×, peak memory {nx['peak_mib'] / ref['peak_mib'] if ref['peak_mib'] else float('nan'):.2f}×")
            for g in grads:
                print(
                    f"{g['method']} / NormXLogit: time {g['seconds_per_prompt'] / nx['seconds_per_prompt']:.1f}×, "
                    f"peak memory {g['peak_mib'] / nx['peak_mib'] if nx['peak_mib'] > 0 else float('nan'):.1f}×"
                )
        print()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
