"""Start-up cost of the command line, against the floor every jetex command pays.

Measured in ONE run, each a fresh process, the median of ``--repeats`` runs after one
warm-up (so the files are in the OS cache), wall clock and CPU time (user + sys of the child):

- B, the floor: ``python -c "import torch, transformers.models.llama.modeling_llama"``
  (jetex runs the Hugging Face modules, so it cannot start faster than their import);
- ``jetex --help`` (target: ≤ 0.5 s; imports neither torch nor transformers);
- ``jetex predict hello`` on the cached default model (target: ≤ B + 1.5 s);
- ``jetex lens TEXT --kind joint --order 1 --optimize`` (target: ≤ predict + 1.0 s).

The default model must be cached (``jetex predict hello`` once). The targets are checked
on the medians; on a loaded machine compare the CPU columns, which the load inflates less.

    .venv/bin/python benchmarks/cli.py [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TEXT = "The capital of France is Paris. The capital of Germany is"


def _run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one process."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _measure(argv: list[str], repeats: int) -> dict:
    _run(argv)  # warm-up: files into the OS cache, first-run work done
    runs = [_run(argv) for _ in range(repeats)]
    return {"wall_s": statistics.median(w for w, _ in runs), "cpu_s": statistics.median(c for _, c in runs),
            "runs": [[round(w, 3), round(c, 3)] for w, c in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    py = sys.executable
    jetex = [py, "-m", "jetex.cli.main"]
    cases = {
        "floor B": [py, "-c", "import torch, transformers.models.llama.modeling_llama"],
        "jetex --help": [*jetex, "--help"],
        "jetex predict hello": [*jetex, "predict", "hello"],
        "jetex lens joint k=1 --optimize": [*jetex, "lens", TEXT, "--kind", "joint", "--order", "1", "--optimize"],
    }
    res = {name: _measure(argv, args.repeats) for name, argv in cases.items()}
    B = res["floor B"]
    help_, pred, lens = res["jetex --help"], res["jetex predict hello"], res["jetex lens joint k=1 --optimize"]
    checks = {
        "help <= 0.5 s": (help_["wall_s"], 0.5, help_["wall_s"] <= 0.5),
        "predict <= B + 1.5 s": (pred["wall_s"] - B["wall_s"], 1.5, pred["wall_s"] <= B["wall_s"] + 1.5),
        "lens <= predict + 1.0 s": (lens["wall_s"] - pred["wall_s"], 1.0, lens["wall_s"] <= pred["wall_s"] + 1.0),
    }
    cpu_checks = {
        "predict CPU - B CPU": pred["cpu_s"] - B["cpu_s"],
        "lens CPU - predict CPU": lens["cpu_s"] - pred["cpu_s"],
    }
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = float("nan")
    if args.json:
        print(json.dumps({"results": res, "checks": {k: {"value": v, "target": t, "ok": ok} for k, (v, t, ok) in checks.items()},
                          "cpu": cpu_checks, "load_average": load, "cpus": os.cpu_count()}, indent=2))
        return
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}; median of {args.repeats} runs after a warm-up")
    print(f"{'command':<34} {'wall (s)':>9} {'CPU (s)':>9}")
    for name, r in res.items():
        print(f"{name:<34} {r['wall_s']:>9.2f} {r['cpu_s']:>9.2f}")
    for name, (v, target, ok) in checks.items():
        print(f"{name:<26} measured {v:+.2f} s (target {target:.1f} s): {'ok' if ok else 'MISSED'}")
    for name, v in cpu_checks.items():
        print(f"{name:<26} {v:+.2f} s")


if __name__ == "__main__":
    main()
