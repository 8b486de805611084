"""The package layers import downwards only, and no import cycle hides anywhere.

    errors ← progress, finite, results, orders ← jets, models ← expand ← lenses, attribution, ngrams ← apps ← viz ← serve ← cli

The import graph is read from the source with ``ast``: EVERY import statement counts,
including imports inside functions (the lazy imports of heavy dependencies for start-up
speed must still point downwards) and ``if TYPE_CHECKING:`` blocks. Only the package root
``jetex/__init__.py`` (the public facade, whose names are resolved lazily) may import from
any layer. A new top-level package must be given a layer in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "jetex"

#: top-level module/package of jetex -> its layer (a package may import its own layer's
#: modules only within itself, and any lower layer)
LAYERS: dict[str, int] = {
    "errors": 0,
    "progress": 1,  # stderr progress (no jetex imports)
    "orders": 1,  # the accepted jet orders (torch-free: checked before a model loads)
    "finite": 1,  # non-finite checks of weights and results
    "results": 1,  # the result base class (renderers are looked up by module name, at call time)
    "jets": 2,
    "models": 2,
    "expand": 3,
    "lenses": 4,
    "attribution": 4,
    "ngrams": 4,
    "apps": 5,
    "viz": 6,
    "serve": 7,
    "cli": 8,  # the command line also starts the explorer (jetex serve)
}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the jetex modules it imports (anywhere in its source)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    targets.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod)
        resolved = set()
        for t in targets:
            while t and t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t != name and t != "jetex":
                resolved.add(t)
        graph[name] = resolved
    return graph


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_layer():
    tops = {_top(m) for m in _modules()} - {None}
    missing = sorted(t for t in tops if t not in LAYERS)
    assert not missing, f"give these jetex packages a layer in tests/test_layering.py: {missing}"


def test_layers_import_downwards_only():
    bad = []
    for a, targets in import_graph().items():
        ta = _top(a)
        if ta is None or ta not in LAYERS:
            continue
        for b in targets:
            tb = _top(b)
            if tb is None or tb == ta or tb not in LAYERS:
                continue
            if LAYERS[tb] >= LAYERS[ta]:
                bad.append(f"{a} (layer {LAYERS[ta]}) imports {b} (layer {LAYERS[tb]})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycles_even_through_function_local_imports():
    cycles = _cycles(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_checker_sees_cycles_and_local_imports():
    """The checker itself: a cycle made only by a function-local import is found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    g = import_graph()
    # cli/main.py imports jetex.errors at the top; cmd_lens imports jetex.lenses inside its command
    assert "jetex.errors" in g["jetex.cli.main"]
    assert any(t.startswith("jetex.lenses") for t in g["jetex.cli.cmd_lens"])


@pytest.mark.parametrize("pair", [("jetex.ngrams.distributed", "jetex.apps.dynamics"), ("jetex.attribution.core", "jetex.attribution.gradient")])
def test_former_cycles_stay_broken(pair):
    a, b = pair
    g = import_graph()
    assert not (b in g[a] and a in g[b])
