"""The Taylor-mode engine: all coefficients c_0..c_k of J^k f(x)(y) in one pass.

Pipeline (cached per function, its modules' train/eval modes, input shape/dtype/device and order):

1. **Trace** f once at the centre x into an aten-level FX graph
   (:func:`~jetex.jets.tracing.record`; functionalised when f mutates variate-dependent
   values in place), with ``F.rms_norm`` and ``F.scaled_dot_product_attention``
   computed from elementary ops (:mod:`jetex.jets.decompose`). When f is an
   ``nn.Module`` (or a bound method of one), its
   parameters and buffers are graph *inputs*, fetched afresh at every call, so
   gradients reach them and replaced parameters are seen; any other tensor f closes over
   becomes a captured constant (the same tensor object, so gradients reach it too).
2. **Check** that every node depending on the variate has a rule in
   :data:`~jetex.jets.rules.RULES`. An op without one is taken through by the nested-JVP
   fallback (:mod:`jetex.jets.fallback`: exact, about 2^k times slower, one
   :class:`~jetex.jets.fallback.FallbackRuleWarning` per op per process); an op that cannot
   have a fallback (in place, random, integer results, fused attention) raises
   :class:`UnsupportedOpError` naming the op and saying why, before computing anything.
3. **Specialise** to the order k: run the Taylor interpreter on (x, v = y − x) — nodes
   that do not depend on the variate are evaluated once as constants, the others on
   coefficient stacks ``[m ≤ k+1, *shape]`` (the input x + t v has m = 2, so known-zero
   high coefficients are skipped until a non-linearity fills them) — and record that run
   too, giving one flat, straight-line aten graph (x, v, tensors) ↦ ``[k+1, *out]``.
   The interpreter's Python per-node overhead is paid once; later calls run the flat
   graph, which autograd differentiates like any other torch code. Blocks whose traced
   code is identical (every attention layer of a model) share one flat graph.
"""

from __future__ import annotations

import inspect
import operator
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import tree_flatten

from jetex.errors import InputError, UnsupportedOpError
from jetex.jets._checks import check_inputs, check_output
from jetex.jets.decompose import ElementaryOps
from jetex.jets.fallback import fallback_rule, forced, refusal, warn_once
from jetex.jets.rules import CONSTANT_RESULT_OPS, RULES
from jetex.jets.series import Series, is_series, pad
from jetex.jets.tracing import record

_CACHE_SIZE = 64


@dataclass
class _Trace:
    """Step 1–2 result for one (f, input signature)."""

    gm: fx.GraphModule
    module_ref: Callable[[], nn.Module | None] | None  # weak reference to f's module
    tensor_names: list[str]  # module parameters and buffers (graph inputs after x)
    const_names: list[str]  # captured constant tensors (get_attr targets)
    dep: set[fx.Node]
    rules: dict[Any, Callable[..., Any]] = field(default_factory=dict)  # op -> rule (table or fallback)
    fallback_ops: tuple[str, ...] = ()  # ops taken through the nested-JVP fallback (sorted names)
    flat: dict[int, fx.GraphModule] = field(default_factory=dict)
    refs: tuple[Callable[[], Any], ...] = ()  # (weak) references to the objects in the cache key

    @property
    def module(self) -> nn.Module | None:
        return self.module_ref() if self.module_ref is not None else None

    def valid(self) -> bool:
        """The objects whose ids form the cache key are still alive (so the ids are theirs)."""
        return all(r() is not None for r in self.refs)


_cache: OrderedDict[Any, _Trace] = OrderedDict()
_shared: OrderedDict[Any, fx.GraphModule] = OrderedDict()
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every traced function (needed only if a traced function's code or the
    tensors it closes over were swapped for others without changing their identity)."""
    with _lock:
        _cache.clear()
        _shared.clear()


def _module_of(f: Any) -> nn.Module | None:
    if isinstance(f, nn.Module):
        return f
    if inspect.ismethod(f) and isinstance(f.__self__, nn.Module):
        return f.__self__
    return None


def _ref(obj: Any) -> Callable[[], Any]:
    """A weak reference where the object allows one (modules, tensors), else a strong one."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _fn_key(f: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """A hashable identity of the callable and of the objects it refers to, plus those objects.

    Functions are keyed by their code and the identities of their closure cells, defaults
    and referenced globals, so a new lambda over the same objects hits the cache while one
    over other tensors or modules does not.
    """
    if isinstance(f, nn.Module):
        return ("module", id(f), _modes(f)), (f,)
    if inspect.ismethod(f):
        return ("method", id(f.__func__), id(f.__self__), _modes(f.__self__)), (f.__func__, f.__self__)
    code = getattr(f, "__code__", None)
    if code is None:
        return ("object", id(f)), (f,)
    refs: list[Any] = []
    for cell in f.__closure__ or ():
        try:
            refs.append(cell.cell_contents)
        except ValueError:  # empty cell
            refs.append(None)
    refs.extend(f.__defaults__ or ())
    refs.extend((f.__kwdefaults__ or {}).values())
    g = getattr(f, "__globals__", {})
    refs.extend(g[name] for name in code.co_names if name in g)
    mods = [_modes(r) for r in refs if isinstance(r, nn.Module)]
    return ("function", id(code), tuple(id(r) for r in refs), tuple(mods)), (code, *refs)


def _modes(obj: Any) -> tuple[bool, ...] | None:
    """The train/eval flag of a module and of every submodule (a child switched alone, e.g.
    ``model.hf.train()`` under a block wrapper, changes what the traced code computes)."""
    if not isinstance(obj, nn.Module):
        return None
    return tuple(m.training for m in obj.modules())


def _named_tensors(module: nn.Module) -> tuple[list[str], list[Tensor]]:
    names, tensors = [], []
    for n, p in module.named_parameters(remove_duplicate=False):
        names.append(n)
        tensors.append(p)
    for n, b in module.named_buffers(remove_duplicate=False):
        names.append(n)
        tensors.append(b)
    return names, tensors


def _current_tensors(tr: _Trace) -> list[Tensor]:
    out: list[Tensor] = []
    module = tr.module
    if module is not None:
        lookup = dict(module.named_parameters(remove_duplicate=False))
        lookup.update(dict(module.named_buffers(remove_duplicate=False)))
        for n in tr.tensor_names:
            if n not in lookup:
                raise InputError(f"parameter {n!r} of the traced module disappeared; call jetex.jets.clear_cache()")
            out.append(lookup[n])
    out.extend(getattr(tr.gm, n) for n in tr.const_names)
    return out


def _is_mutating(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


def _trace(f: Callable[[Tensor], Tensor], x: Tensor) -> _Trace:
    module = _module_of(f)
    names, tensors = _named_tensors(module) if module is not None else ([], [])
    # unique tensors only: the tracer tracks inputs by identity
    seen: dict[int, int] = {}
    uniq_names, uniq = [], []
    for n, t in zip(names, tensors):
        if id(t) not in seen:
            seen[id(t)] = len(uniq)
            uniq_names.append(n)
            uniq.append(t)

    def g(x_: Tensor, *ts: Tensor) -> Tensor:
        # fused functions without rules (rms_norm, scaled_dot_product_attention) are
        # recorded as the elementary ops they are made of
        with ElementaryOps():
            if module is None:
                return check_output(f(x_))
            # swap the module's tensors for the graph inputs, ties included
            swap = {n: ts[seen[id(t)]] for n, t in zip(names, tensors)}
            with _reparametrize_module(module, swap):
                return check_output(f(x_))

    gm = record(g, x, *uniq)
    dep = _dependents(gm)
    if any(_is_mutating(n.target) for n in dep):
        # in-place ops on variate-dependent values: trace a functionalised version
        gm = record(torch.func.functionalize(g, remove="mutations"), x, *uniq)
        dep = _dependents(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    dep = _dependents(gm)
    const_names: list[str] = []
    rules: dict[Any, Callable[..., Any]] = {}
    fallbacks: list[Any] = []
    force = forced()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            const_names.append(node.target)
        elif node.op == "call_function" and node in dep and node.target is not operator.getitem:
            op = node.target
            if op in rules:
                continue
            if op in RULES and op not in force:
                rules[op] = RULES[op]
                continue
            why = refusal(op, node.meta.get("dtypes"))
            if why is not None:
                raise UnsupportedOpError(
                    f"no Taylor rule for {op} (in {_describe(f)}) and no nested-JVP fallback: {why}"
                )
            rules[op] = fallback_rule(op)
            fallbacks.append(op)
    for op in fallbacks:
        if op not in force:
            warn_once(op)
    return _Trace(
        gm, weakref.ref(module) if module is not None else None, uniq_names, const_names, dep,
        rules=rules, fallback_ops=tuple(sorted(str(op) for op in fallbacks)),
    )


def _dependents(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes that receive a value depending on the first placeholder (the variate's path).

    Locally constant ops (comparisons, ``*_like``, argmax, sign) are included — their rule
    reads the primal — but their results do not propagate the dependence.
    """
    x_node = next(n for n in gm.graph.nodes if n.op == "placeholder")
    dep: set[fx.Node] = {x_node}
    blocked: set[fx.Node] = set()  # locally constant results (comparisons, *_like, ...)
    for node in gm.graph.nodes:
        if node.op == "call_function" and any(a in dep and a not in blocked for a in node.all_input_nodes):
            dep.add(node)
            if node.target in CONSTANT_RESULT_OPS:
                blocked.add(node)
    return dep


def _describe(f: Any) -> str:
    name = getattr(f, "__qualname__", None) or type(f).__name__
    return str(name)


def _interpret(tr: _Trace, K: int, x: Tensor, v: Tensor, tensors: tuple[Tensor, ...]) -> Tensor:
    """Evaluate the traced graph on series: returns the output coefficients ``[K, *out]``."""
    env: dict[fx.Node, Any] = {}
    n_mod = len(tr.tensor_names)
    consts = dict(zip(tr.const_names, tensors[n_mod:]))
    placeholders = iter(tensors[:n_mod])
    first = True
    for node in tr.gm.graph.nodes:
        if node.op == "placeholder":
            if first:
                env[node] = Series(torch.stack([x, v]))
                first = False
            else:
                env[node] = next(placeholders)
        elif node.op == "get_attr":
            env[node] = consts[node.target]
        elif node.op == "call_function":
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if node in tr.dep:
                if node.target is operator.getitem:
                    env[node] = args[0][args[1]]
                elif not _has_series(args, kwargs):
                    # reached only through constant results (e.g. the integer half of a tuple)
                    env[node] = node.target(*args, **kwargs)
                else:
                    env[node] = tr.rules[node.target](K, *args, **kwargs)
            else:
                env[node] = node.target(*args, **kwargs)
        elif node.op == "output":
            out = node.args[0]
            if isinstance(out, (list, tuple)):
                out = out[0]
            val = env[out] if isinstance(out, fx.Node) else out
            if isinstance(val, Series):
                return pad(val.c, K)
            if not isinstance(val, Tensor):
                raise InputError(f"f must return a torch.Tensor, got {type(val).__name__}")
            return pad(val.unsqueeze(0), K)
    raise AssertionError("graph without output")  # pragma: no cover


def _has_series(args: Any, kwargs: Any) -> bool:
    return any(is_series(a) for a in tree_flatten((args, kwargs))[0])


def _flat_graph(tr: _Trace, K: int, x: Tensor, v: Tensor, tensors: list[Tensor]) -> fx.GraphModule:
    def taylor(x_: Tensor, v_: Tensor, *ts: Tensor) -> Tensor:
        return _interpret(tr, K, x_, v_, ts)

    flat = record(taylor, x, v, *tensors)
    flat.graph.eliminate_dead_code()
    flat.recompile()
    return flat


def _get_trace(f: Callable[[Tensor], Tensor], x: Tensor) -> _Trace:
    fkey, objs = _fn_key(f)
    key = (fkey, tuple(x.shape), x.dtype, x.device, forced())
    with _lock:
        tr = _cache.get(key)
        if tr is not None and tr.valid():
            _cache.move_to_end(key)
            return tr
    tr = _trace(f, x)
    tr.refs = tuple(_ref(o) for o in objs)
    with _lock:
        _cache[key] = tr
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return tr


def taylor_coefficients(f: Any, x: Any, y: Any, k: Any) -> Tensor:
    """c_0..c_k of t ↦ f(x + t(y − x)), stacked ``[k+1, *f(x).shape]`` (Taylor mode)."""
    check_inputs(f, x, y, k)
    if k == 0:
        return check_output(f(x)).unsqueeze(0)
    tr = _get_trace(f, x)
    K = k + 1
    tensors = _current_tensors(tr)
    v = y - x
    flat = tr.flat.get(K)
    if flat is None:
        # blocks with the same traced code (e.g. every attention layer of a model) share
        # one specialised graph: their tensors are inputs, every literal is in the code
        skey = (tr.gm.code, K, _signature(x), tuple(_signature(t) for t in tensors), tr.fallback_ops)
        with _lock:
            flat = _shared.get(skey)
        if flat is None:
            flat = _flat_graph(tr, K, x.detach(), v.detach(), [t.detach() for t in tensors])
            with _lock:
                _shared[skey] = flat
                while len(_shared) > 4 * _CACHE_SIZE:
                    _shared.popitem(last=False)
        tr.flat[K] = flat
    return flat(x, v, *tensors)


def _signature(t: Tensor) -> tuple[Any, ...]:
    return (tuple(t.shape), tuple(t.stride()), t.dtype, t.device)


def variate_ops(f: Callable[[Tensor], Tensor], x: Tensor) -> set[Any]:
    """The aten ops f applies to values that depend on its input (after tracing at x)."""
    tr = _get_trace(f, x)
    return {n.target for n in tr.dep if n.op == "call_function"}
