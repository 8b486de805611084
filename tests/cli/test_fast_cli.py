"""The command line starts fast: help, every command's help and argument errors import
neither torch nor transformers (nor numpy), and ``import jetex`` is light (names resolve lazily)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")

PROBE = r"""
import contextlib, io, json, sys
from jetex.cli.main import cli, main

def commands(group, prefix=()):
    import click
    out = []
    for name in group.list_commands(None):
        cmd = group.get_command(None, name)
        out.append(prefix + (name,))
        if isinstance(cmd, click.Group):
            out += commands(cmd, prefix + (name,))
    return out

runs = [["--help"], ["--version"], ["predict"], ["lens", "x", "--top", "many"], ["nosuchcommand"],
        ["predict", "hi", "--granularity", "cells"]]
runs += [list(c) + ["--help"] for c in commands(cli)]
codes = {}
for argv in runs:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes[" ".join(argv)] = main(argv)
heavy = sorted(m for m in ("torch", "transformers", "numpy", "duckdb", "matplotlib") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _probe(code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_and_argument_errors_import_no_heavy_module():
    res = _probe(PROBE)
    codes = res["codes"]
    assert res["heavy"] == [], f"imported at start-up: {res['heavy']}"
    assert codes["--help"] == 0 and codes["--version"] == 0
    assert codes["predict"] == 2 and codes["lens x --top many"] == 2 and codes["nosuchcommand"] == 2
    assert codes["predict hi --granularity cells"] == 2
    helps = {k: v for k, v in codes.items() if k.endswith("--help") and k != "--help"}
    assert len(helps) >= 10 and all(v == 0 for v in helps.values()), helps


def test_import_jetex_is_light_and_names_resolve_lazily():
    res = _probe(
        "import sys, json, jetex\n"
        "light = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "from jetex import load, iterative_lens, JetexError\n"
        "ok = callable(load) and callable(jetex.joint_lens) and 'load' in dir(jetex)\n"
        "try:\n    jetex.no_such_name\n    missing = False\nexcept AttributeError:\n    missing = True\n"
        "print(json.dumps({'light': light, 'ok': ok, 'missing': missing, 'all': sorted(jetex.__all__)}))"
    )
    assert res["light"] == [] and res["ok"] and res["missing"]
    assert {"load", "iterative_lens", "joint_lens", "attribute", "JetexError"} <= set(res["all"])
