"""A light aten-level tracer: run a function once and record every aten op it executes.

``record(fn, *inputs)`` returns an FX ``GraphModule`` replaying the aten operations
``fn`` dispatched (below autograd, so composite ops such as ``linear`` or ``matmul``
arrive already decomposed into ``mm``/``bmm``/views), with ``inputs`` as placeholders
(recognised by tensor identity) and every other tensor ``fn`` touched stored as a
constant attribute (the same tensor object, so gradients still reach it when the graph
is replayed). It does what ``make_fx(tracing_mode="real")`` does for us, without the
fake-tensor metadata make_fx attaches to every node, which dominates its cost on graphs
of a few hundred nodes.

Limits (by design, all hold for the engine's uses): the function must not extract
Python values from tensors (``.item()``, data-dependent control flow), and the recorded
graph is only valid for the shapes, dtypes and Python-level branches of this run.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx

from jetex.errors import UnsupportedOpError
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

_SCALAR_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}


class _Recorder(TorchDispatchMode):
    def __init__(self, inputs: tuple[Tensor, ...]) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.nodes: dict[int, fx.Node] = {}
        self.alive: list[Any] = []  # keep every seen tensor alive so ids are never reused
        self.n_consts = 0
        for i, t in enumerate(inputs):
            node = self.graph.placeholder(f"arg{i}")
            self.nodes[id(t)] = node
            self.alive.append(t)

    def _arg(self, a: Any) -> Any:
        if isinstance(a, Tensor):
            node = self.nodes.get(id(a))
            if node is None:
                name = f"_const{self.n_consts}"
                self.n_consts += 1
                setattr(self.root, name, a)  # the same tensor object (parameters stay parameters)
                node = self.graph.get_attr(name)
                self.nodes[id(a)] = node
                self.alive.append(a)
            return node
        return a

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _SCALAR_OPS:
            raise UnsupportedOpError(
                f"cannot trace {func}: the function reads a tensor value in Python (.item(), data-dependent control flow)"
            )
        out = func(*args, **kwargs)
        node_args = tree_map(self._arg, args)
        node_kwargs = tree_map(self._arg, kwargs)
        node = self.graph.call_function(func, tuple(node_args), dict(node_kwargs))
        # the dtypes of the tensor results (the engine reads them to explain ops it cannot expand)
        node.meta["dtypes"] = tuple(o.dtype for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, Tensor))
        if isinstance(out, Tensor):
            self.nodes[id(out)] = node
            self.alive.append(out)
        elif isinstance(out, (tuple, list)):
            for i, o in enumerate(out):
                if isinstance(o, Tensor):
                    self.nodes[id(o)] = self.graph.call_function(operator.getitem, (node, i))
                    self.alive.append(o)
        return out

    def output(self, out: Any) -> None:
        self.graph.output(tree_map(self._arg, out))


def record(fn: Callable[..., Any], *inputs: Tensor) -> fx.GraphModule:
    """Run ``fn(*inputs)`` once (no autograd) and return the graph of aten ops it ran."""
    rec = _Recorder(inputs)
    with torch.no_grad(), rec:
        out = fn(*inputs)
    rec.output(out)
    gm = fx.GraphModule(rec.root, rec.graph)
    return gm
