"""Turn a model into a torch.fx graph: symbolic tracing first, torch.export where fx fails."""

from __future__ import annotations

import contextlib
import io
import logging
import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from edgesplit.errors import TraceError

REMEDIES = (
    "known remedies: replace data-dependent Python control flow (if/for on tensor values) with "
    "torch.where or tensor ops; wrap an untraceable function with torch.fx.wrap; or analyse the "
    "traceable part of the model (pass a submodule)")


class _Tracer(fx.Tracer):
    """fx tracer that remembers the innermost module being traced when tracing fails.

    Where timm is installed, its registry of untraceable helpers is honoured (they become leaves).
    """

    def __init__(self) -> None:
        super().__init__(autowrap_functions=_timm_autowrap_functions())
        self._timm_leaves = _timm_leaf_modules()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self._timm_leaves) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if not hasattr(exc, "_edgesplit_module"):
                exc._edgesplit_module = (self.path_of_module(m), type(m).__name__)  # type: ignore[attr-defined]
            raise


def trace(model: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, str]:
    """A GraphModule computing ``model`` (eval mode), sharing its parameters, and the tracer used."""
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__), "torch.fx"
    except Exception as fx_exc:
        where = getattr(fx_exc, "_edgesplit_module", None)
        try:
            batch = torch.export.Dim("batch", min=1)  # the tail must accept any batch size
            examples = (torch.cat([example, example]),)
            with _quiet_torch_logs():
                exported = torch.export.export(model, examples, dynamic_shapes=({0: batch},), strict=False)
            return _plain(exported), "torch.export"
        except Exception as export_exc:
            place = f"module {where[0]!r} ({where[1]})" if where and where[0] else \
                f"{type(model).__name__}.forward"
            raise TraceError(
                f"cannot trace {place}: torch.fx: {_first_line(fx_exc)}; torch.export: "
                f"{_first_line(export_exc)}; {REMEDIES}") from export_exc


def _plain(exported: torch.export.ExportedProgram) -> fx.GraphModule:
    """The exported graph with positional inputs and, for a single-tensor result, an unwrapped output."""
    gm = exported.module()
    gm.graph.set_codegen(fx.graph.CodeGen())
    output = next(n for n in gm.graph.nodes if n.op == "output")
    if exported.call_spec.out_spec.is_leaf() and len(output.args[0]) == 1:
        output.args = (output.args[0][0],)
    gm.recompile()
    return gm


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch.export logs and prints graphs while it fails; our error message says what matters."""
    names = ["torch", *(n for n in logging.root.manager.loggerDict if n.startswith("torch."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # export prints the partial graph on failure
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


def _timm_autowrap_functions() -> tuple:
    try:
        from timm.layers import _fx
    except ImportError:
        return ()
    return tuple(getattr(_fx, "_autowrap_functions", ()))


def _timm_leaf_modules() -> tuple[type, ...]:
    try:
        from timm.layers import _fx
    except ImportError:
        return ()
    return tuple(getattr(_fx, "_leaf_modules", ()))


SHAPE_METHODS = {"size", "dim", "numel"}
SHAPE_ATTRS = {"shape", "ndim"}
SHAPE_FUNCTIONS = {operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
                   operator.truediv, operator.mod, getattr, torch.ops.aten.sym_size.int,
                   torch.ops.aten.sym_numel.default}


def computes_shape(node: fx.Node) -> bool:
    """True when ``node`` is a shape query or arithmetic on shape values (never on tensor data)."""
    if node.op == "call_method":
        return node.target in SHAPE_METHODS
    if node.op != "call_function" or node.target not in SHAPE_FUNCTIONS:
        return False
    if node.target is getattr:
        return len(node.args) > 1 and node.args[1] in SHAPE_ATTRS
    return True
