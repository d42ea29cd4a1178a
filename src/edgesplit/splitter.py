"""Exact head/tail split at any cut, sharing the original parameters (no weight copies).

Invariant, checked by :func:`check_exact` and the tests: in eval mode ``tail(head(x)) == model(x)``.
``head(x)`` returns the crossing tensor (a tuple when several values cross); ``tail`` takes them as
positional arguments in the order of ``Cut.crossing``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import fx

from edgesplit.analysis.cuts import Analysis, Cut, CutGraph, example_input


def split(analysis: Analysis, cut: Cut | str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Head and tail modules for ``cut`` (a :class:`Cut` or its name) of the analysed model."""
    cut = analysis.cut(cut)
    graph = analysis.graph
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    crossing = [nodes[name] for name in cut.crossing]
    return _head(graph, crossing), _tail(graph, crossing)


def segment(analysis: Analysis, start: Cut | str, end: Cut | str) -> fx.GraphModule:
    """The part of the model between two cuts: takes ``start``'s crossing, as a tail does, and returns
    ``end``'s crossing, as a head does; ``end`` must come after ``start``."""
    start, end = analysis.cut(start), analysis.cut(end)
    if end.index <= start.index:
        raise ValueError(f"a segment runs forward: cut {end.name!r} does not come after {start.name!r}")
    nodes = {n.name: n for n in analysis.graph.gm.graph.nodes}
    return _tail(analysis.graph, [nodes[name] for name in start.crossing], [nodes[name] for name in end.crossing])


def _head(graph: CutGraph, crossing: list[fx.Node]) -> fx.GraphModule:
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    placeholders = [n for n in graph.gm.graph.nodes if n.op == "placeholder"]
    for n in _ancestors(placeholders + crossing, stop=set()):
        env[n] = new.node_copy(n, lambda a: env[a])
    results = [env[c] for c in crossing]
    new.output(results[0] if len(results) == 1 else tuple(results))
    return fx.GraphModule(graph.gm, new, "Head")


def _tail(graph: CutGraph, crossing: list[fx.Node], ends: list[fx.Node] | None = None) -> fx.GraphModule:
    """From ``crossing`` to the model's output, or to ``ends`` when given."""
    new = fx.Graph()
    env: dict[fx.Node, Any] = {c: new.placeholder(c.name) for c in crossing}
    batch_source = next((env[c] for c in crossing if graph.batch_dims.get(c.name) == 0), None)
    batch_size: fx.Node | None = None
    output = next(n for n in graph.gm.graph.nodes if n.op == "output")
    rederived = {n for n in graph.gm.graph.nodes if graph.shape_kinds.get(n.name) == "constant"
                 or (graph.shape_kinds.get(n.name) == "batch" and batch_source is not None)}
    for n in _ancestors(ends or [output], stop=set(crossing) | rederived):
        if n in env:
            continue
        kind = graph.shape_kinds.get(n.name)
        if kind == "constant":
            env[n] = graph.values[n.name].value  # shape arithmetic independent of the batch: inline it
        elif kind == "batch" and batch_source is not None:
            if batch_size is None:
                batch_size = new.call_method("size", (batch_source, 0))
            env[n] = batch_size
        elif n.op == "output":
            new.output(fx.graph.map_arg(n.args[0], lambda a: env[a]))
        else:
            env[n] = new.node_copy(n, lambda a: env[a])
    if ends is None:
        return fx.GraphModule(graph.gm, new, "Tail")
    results = [env[e] for e in ends]
    new.output(results[0] if len(results) == 1 else tuple(results))
    return fx.GraphModule(graph.gm, new, "Segment")


def _ancestors(roots: list[fx.Node], stop: set[fx.Node]) -> list[fx.Node]:
    """``roots`` and everything they depend on, not looking past ``stop``, in graph order."""
    seen: set[fx.Node] = set()
    todo = list(roots)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n not in stop:
            todo.extend(n.all_input_nodes)
    order = {n: i for i, n in enumerate(roots[0].graph.nodes)}
    return sorted(seen, key=order.__getitem__)


def check_exact(analysis: Analysis, cuts: list[Cut] | None = None) -> Analysis:
    """Run ``tail(head(x))`` against the original model for ``cuts`` (default: the natural bottlenecks)
    and record the max abs difference in each cut's ``exact_max_abs_diff``."""
    graph = analysis.graph
    model = graph.model
    chosen = {c.name for c in (cuts if cuts is not None else analysis.natural_bottlenecks())}
    x = example_input(model, analysis.input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            reference = model(x)
            checked = []
            for c in analysis.cuts:
                if c.name in chosen:
                    head, tail = split(analysis, c)
                    mid = head(x)
                    out = tail(*mid) if isinstance(mid, tuple) else tail(mid)
                    c = replace(c, exact_max_abs_diff=_max_abs_diff(out, reference))
                checked.append(c)
    finally:
        model.train(was_training)
    return analysis.with_cuts(checked)


def _max_abs_diff(a: Any, b: Any) -> float:
    flat_a, flat_b = torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b)
    if len(flat_a) != len(flat_b):
        return float("inf")
    diffs = [(x.double() - y.double()).abs().max().item() if isinstance(x, torch.Tensor)
             else (0.0 if x == y else float("inf")) for x, y in zip(flat_a, flat_b)]
    return max(diffs, default=0.0)
