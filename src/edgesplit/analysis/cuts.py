"""Enumerate every cut of a traced model: what crosses it, how big it is, what each side costs.

A cut is placed after a tensor-producing node, in topological order. The values that cross it are the
input-dependent values computed at or before the cut and used after it. Values that depend only on
parameters are recomputed by the tail, and shape arithmetic (``x.size(0)``) is re-derived there: a
constant is inlined and the batch size is read from the crossing tensor, so ``view(bs, -1)`` does not
make every cut carry an integer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import fx, nn

from edgesplit.codecs import SPLIT_CODEC_NAMES, split_codec
from edgesplit.analysis.run import NodeValue, record, record_shapes_on_meta
from edgesplit.analysis.trace import computes_shape, trace
from edgesplit.errors import CutNotFound, EdgesplitError
from edgesplit.registry import unknown_name_message

ShapeKind = Literal["constant", "batch", "derived", "bound"]


@dataclass(frozen=True)
class Cut:
    """One place to split the model: head = everything up to and including node ``name``."""

    name: str
    index: int
    crossing: tuple[str, ...]  # graph values that cross, in graph order (tensors and bound Python values)
    shapes: tuple[tuple[int, ...], ...]  # of the crossing tensors, traced at batch size 1
    elements: int
    ratio: float  # crossing elements / input elements
    head_flops: int
    tail_flops: int
    head_params: int
    tail_params: int
    single_tensor: bool
    natural_bottleneck: bool
    record_low: bool = False
    pareto: bool = False
    modules: tuple[str, ...] = ()  # qualified names of the modules whose output this cut is
    module_classes: tuple[str, ...] = ()
    exact_max_abs_diff: float | None = None

    @property
    def bytes(self) -> dict[str, int]:
        """Payload bytes per split codec, uncompressed, at batch 1."""
        return {name: sum(split_codec(name).payload_bytes(shape) for shape in self.shapes)
                for name in SPLIT_CODEC_NAMES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "index": self.index, "shapes": [list(s) for s in self.shapes],
            "elements": self.elements, "ratio": self.ratio, "bytes": self.bytes,
            "head_flops": self.head_flops, "tail_flops": self.tail_flops,
            "head_params": self.head_params, "tail_params": self.tail_params,
            "natural_bottleneck": self.natural_bottleneck, "record_low": self.record_low,
            "pareto": self.pareto, "exact_max_abs_diff": self.exact_max_abs_diff,
        }


@dataclass(frozen=True)
class CutGraph:
    """The traced graph and what :func:`edgesplit.splitter.split` needs to cut it anywhere."""

    model: nn.Module
    gm: fx.GraphModule
    static: frozenset[str]  # nodes that depend on parameters only
    values: dict[str, NodeValue]  # at batch size 1
    shape_kinds: dict[str, ShapeKind]  # non-tensor input-dependent nodes
    batch_dims: dict[str, int | None]  # tensor nodes: which dim grows with the batch
    example: torch.Tensor


@dataclass(frozen=True)
class Analysis:
    """Every cut of one model at one input shape (see :func:`analyze`)."""

    model: str
    input_shape: tuple[int, ...]
    cuts: tuple[Cut, ...]
    tracer: str
    graph: CutGraph = field(repr=False, compare=False)
    max_tensors: int = 1  # a natural bottleneck carries at most this many tensors

    @property
    def input_elements(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    def counts(self) -> dict[str, int]:
        return {
            "cuts": len(self.cuts),
            "single_tensor_cuts": sum(c.single_tensor for c in self.cuts),
            "natural_bottlenecks": sum(c.natural_bottleneck for c in self.cuts),
            "record_low": sum(c.record_low for c in self.cuts),
            "pareto": sum(c.pareto for c in self.cuts),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "input_shape": list(self.input_shape),
                "input_elements": self.input_elements, "max_tensors": self.max_tensors,
                "cuts": [c.to_dict() for c in self.cuts],
                "counts": self.counts()}

    def cut(self, name: str | Cut) -> Cut:
        """The cut called ``name``; an unknown name lists the cuts that exist."""
        wanted = name.name if isinstance(name, Cut) else name
        for c in self.cuts:
            if c.name == wanted:
                return c
        raise CutNotFound(unknown_name_message("cut", wanted, [c.name for c in self.cuts]) +
                          "; list them with edgesplit analyze MODEL or Analysis.cuts")

    def natural_bottlenecks(self) -> list[Cut]:
        return [c for c in self.cuts if c.natural_bottleneck]

    def select(self, pattern: str) -> Analysis:
        """Only the cuts at outputs of modules whose qualified or class name fully matches ``pattern``.

        Flags (record-low, Pareto) are recomputed among the kept cuts, as the paper's block-level rule does.
        """
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise CutNotFound(f"--match {pattern!r} is not a valid regular expression: {exc}") from None
        kept = [c for c in self.cuts
                if any(regex.fullmatch(n) for n in (*c.modules, *c.module_classes))]
        if not kept:
            classes = sorted({k for c in self.cuts for k in c.module_classes})
            raise CutNotFound(f"--match {pattern!r} matches no module output; module classes with "
                              f"cuts: {', '.join(classes[:30])}")
        return replace(self, cuts=tuple(_flag(kept)))

    def with_cuts(self, cuts: list[Cut]) -> Analysis:
        return replace(self, cuts=tuple(cuts))


def example_input(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1) -> torch.Tensor:
    """A fixed, seeded input on the model's device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((1, *input_shape), generator=generator)
    return x.expand(batch_size, *input_shape).contiguous().to(device)


def analyze(model: nn.Module, input_shape: tuple[int, ...], name: str | None = None,
            max_tensors: int = 1) -> Analysis:
    """Trace ``model`` (eval mode) and describe every cut: crossing values, sizes, FLOPs, parameters.

    A cut is a natural bottleneck when at most ``max_tensors`` tensors (and nothing else) cross it and
    their elements add up to fewer than the input's; the default, 1, is the paper's rule.
    """
    if max_tensors < 1:
        raise EdgesplitError(f"a cut carries at least one tensor: max_tensors must be >= 1, got {max_tensors}")
    was_training = model.training
    model.eval()
    try:
        example = example_input(model, input_shape)
        gm, tracer = trace(model, example)
        graph = _annotate(model, gm, example)
    finally:
        model.train(was_training)
    cuts = _enumerate(graph, input_elements=example[0].numel(), max_tensors=max_tensors)
    return Analysis(name or type(model).__name__, tuple(input_shape), tuple(_flag(cuts)), tracer, graph,
                    max_tensors)


def _annotate(model: nn.Module, gm: fx.GraphModule, example: torch.Tensor) -> CutGraph:
    nodes = list(gm.graph.nodes)
    static = _static_nodes(nodes)
    values, flops = record(gm, example)
    values_b2 = record_shapes_on_meta(gm, torch.cat([example, example]))
    shape_kinds: dict[str, ShapeKind] = {}
    batch_dims: dict[str, int | None] = {}
    for n in nodes:
        if n.name in static or n.op == "output" or n.name not in values:
            continue
        v1, v2 = values[n.name], values_b2.get(n.name)
        if v1.is_tensor:
            batch_dims[n.name] = _batch_dim(v1, v2)
        else:
            shape_kinds[n.name] = _shape_kind(n, v1, v2, values, shape_kinds, static)
    gm.meta["edgesplit_flops"] = flops
    return CutGraph(model, gm, static, values, shape_kinds, batch_dims, example)


def _static_nodes(nodes: list[fx.Node]) -> frozenset[str]:
    """Nodes that depend on parameters and constants only (recomputable on either side), in one pass
    over the topologically ordered graph."""
    static: set[str] = set()
    for n in nodes:
        inputs = n.all_input_nodes
        if n.op == "get_attr" or (n.op == "call_function" and all(i.name in static for i in inputs)):
            static.add(n.name)
    return frozenset(static)


def _batch_dim(v1: NodeValue, v2: NodeValue | None) -> int | None:
    if v2 is None or not v2.is_tensor or len(v1.shape) != len(v2.shape):
        return None
    grown = [d for d, (a, b) in enumerate(zip(v1.shape, v2.shape)) if a != b]
    return grown[0] if len(grown) == 1 and v1.shape[grown[0]] * 2 == v2.shape[grown[0]] else None


def _shape_kind(n: fx.Node, v1: NodeValue, v2: NodeValue | None, values: dict[str, NodeValue],
                kinds: dict[str, ShapeKind], static: frozenset[str]) -> ShapeKind:
    """constant: same for every batch size; batch: equals the batch size; derived: other shape arithmetic
    (``x.shape`` itself), which crosses only where a value that is not shape arithmetic uses it; bound: must
    cross as a value."""
    if not computes_shape(n) or v2 is None:
        return "bound"
    for i in n.all_input_nodes:
        if i.name in static:
            continue
        is_query = n.op == "call_method" or n.target is getattr or "sym_" in str(n.target)
        if values[i.name].is_tensor and not is_query:
            return "bound"
        if not values[i.name].is_tensor and kinds.get(i.name) == "bound":
            return "bound"
    if v1.value == v2.value:
        return "constant"
    if isinstance(v1.value, int) and v1.value == 1 and v2.value == 2:
        return "batch"
    return "derived"


def _enumerate(graph: CutGraph, input_elements: int, max_tensors: int) -> list[Cut]:
    nodes = list(graph.gm.graph.nodes)
    pos = {n.name: i for i, n in enumerate(nodes)}
    flops: dict[str, int] = graph.gm.meta["edgesplit_flops"]
    consumers = _dynamic_consumers(nodes, graph.static, pos)
    flops_at = [0] * len(nodes)
    for n in nodes:
        at = pos[n.name] if n.name not in graph.static else min(consumers[n.name], default=pos[n.name])
        flops_at[at] += flops.get(n.name, 0)
    first_use, last_use, numel = _parameter_uses(graph.gm, nodes, consumers, graph.static, pos)
    total_flops = sum(flops_at)
    last_user = {n.name: max((pos[u.name] for u in n.users if not _rederived(u, graph)), default=-1)
                 for n in nodes}
    module_outputs = _module_outputs(nodes, graph.static)
    last_compute = max(pos[n.name] for n in nodes if n.op not in ("output", "placeholder", "get_attr")
                       and n.name not in graph.static)

    cuts: list[Cut] = []
    live: dict[str, None] = {}
    head_flops = 0
    for n in nodes:
        i = pos[n.name]
        head_flops += flops_at[i]
        if n.op == "output":
            break
        if n.name not in graph.static and n.users:
            live[n.name] = None
        for name in [m for m in live if last_user[m] <= i]:
            del live[name]
        value = graph.values.get(n.name)
        if i >= last_compute or n.name in graph.static or value is None or not value.is_tensor:
            continue  # after the last computation the tail would be empty
        crossing = _crossing(list(live), graph)
        tensors = [c for c in crossing if graph.values[c].is_tensor]
        shapes = tuple(graph.values[c].shape for c in tensors)
        elements = sum(graph.values[c].numel for c in tensors)
        single = len(crossing) == 1 and len(tensors) == 1
        carried = len(tensors) == len(crossing) and 1 <= len(tensors) <= max_tensors  # frames carry tensors only
        mods = module_outputs.get(n.name, [])
        cuts.append(Cut(
            name=n.name, index=len(cuts), crossing=tuple(crossing), shapes=shapes, elements=elements,
            ratio=elements / input_elements, head_flops=head_flops, tail_flops=total_flops - head_flops,
            head_params=sum(numel[p] for p in numel if first_use[p] <= i),
            tail_params=sum(numel[p] for p in numel if last_use[p] > i),
            single_tensor=single, natural_bottleneck=carried and elements < input_elements,
            modules=tuple(m for m, _ in mods), module_classes=tuple(c for _, c in mods)))
    return cuts


def _rederived(node: fx.Node, graph: CutGraph) -> bool:
    """A shape query the tail re-derives (a constant, or the batch size): it keeps the tensor it asks
    about alive for no one, so ``F.interpolate(y, size=x.shape[-2:])`` does not make ``x`` cross."""
    return graph.shape_kinds.get(node.name) in ("constant", "batch", "derived")


def _crossing(live: list[str], graph: CutGraph) -> list[str]:
    """The live values that must really cross: shape constants never do; the batch size does only
    when no crossing tensor carries the batch in dim 0."""
    kept = [m for m in live if graph.values[m].is_tensor or graph.shape_kinds.get(m) in ("bound", "derived")]
    batch_ints = [m for m in live if graph.shape_kinds.get(m) == "batch"]
    if batch_ints and not any(graph.batch_dims.get(m) == 0 for m in kept):
        kept += batch_ints
    return kept


def _dynamic_consumers(nodes: list[fx.Node], static: frozenset[str], pos: dict[str, int]
                       ) -> dict[str, list[int]]:
    """For each static node, the positions of the input-dependent nodes that (indirectly) use it."""
    consumers: dict[str, list[int]] = {}
    for n in reversed(nodes):
        if n.name not in static:
            continue
        found: list[int] = []
        for u in n.users:
            found.extend(consumers[u.name] if u.name in static else [pos[u.name]])
        consumers[n.name] = found
    return consumers


def _parameter_uses(gm: fx.GraphModule, nodes: list[fx.Node], consumers: dict[str, list[int]],
                    static: frozenset[str], pos: dict[str, int]
                    ) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """First and last graph position where each parameter is needed, and its size."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    numel: dict[int, int] = {}
    for n in nodes:
        if n.op == "call_module":
            params = list(gm.get_submodule(n.target).parameters())
        elif n.op == "get_attr":
            attr = _fetch(gm, n.target)
            params = [attr] if isinstance(attr, nn.Parameter) else (
                list(attr.parameters()) if isinstance(attr, nn.Module) else [])
        else:
            continue
        where = consumers.get(n.name, [pos[n.name]]) if n.name in static else [pos[n.name]]
        for p in params:
            key = id(p)
            numel[key] = p.numel()
            for at in where:
                first[key] = min(first.get(key, at), at)
                last[key] = max(last.get(key, at), at)
    return first, last, numel


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _module_outputs(nodes: list[fx.Node], static: frozenset[str]) -> dict[str, list[tuple[str, str]]]:
    """node name -> modules (qualified name, class name) whose single output that node is."""
    members: dict[str, tuple[str, str, set[str]]] = {}
    for n in nodes:
        for key, (path, cls) in (n.meta.get("nn_module_stack") or {}).items():
            entry = members.setdefault(key, (str(path), _class_name(cls), set()))
            entry[2].add(n.name)
    outputs: dict[str, list[tuple[str, str]]] = {}
    by_name = {n.name: n for n in nodes}
    for path, cls, inside in members.values():
        exits = [m for m in inside if m not in static
                 and any(u.name not in inside for u in by_name[m].users)]
        if len(exits) == 1:
            outputs.setdefault(exits[0], []).append((path, cls))
    return outputs


def _class_name(cls: object) -> str:
    return cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].rstrip("'>")


def _flag(cuts: list[Cut]) -> list[Cut]:
    """Set record_low (the paper's rule) and pareto (head FLOPs vs crossing bytes) among ``cuts``."""
    best = None
    flagged = []
    for c in cuts:
        record = c.natural_bottleneck and (best is None or c.elements < best)
        if record:
            best = c.elements
        flagged.append(replace(c, record_low=record))
    order = sorted(range(len(flagged)), key=lambda k: (flagged[k].head_flops, flagged[k].elements))
    pareto: set[int] = set()
    min_before: int | None = None
    k = 0
    while k < len(order):
        group = [order[k]]
        while k + len(group) < len(order) and \
                flagged[order[k + len(group)]].head_flops == flagged[order[k]].head_flops:
            group.append(order[k + len(group)])
        group_min = min(flagged[j].elements for j in group)
        for j in group:
            if flagged[j].elements == group_min and (min_before is None or group_min < min_before):
                pareto.add(j)
        min_before = group_min if min_before is None else min(min_before, group_min)
        k += len(group)
    return [replace(c, pareto=j in pareto) for j, c in enumerate(flagged)]
