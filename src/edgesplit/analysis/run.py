"""Run a traced graph once and record, per node, what it produced and what it cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class NodeValue:
    """What one node produced: a tensor's shape and dtype, or a plain Python value."""

    is_tensor: bool
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    value: Any = None  # non-tensor results only (ints, sizes, tuples)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def describe(value: Any) -> NodeValue:
    if isinstance(value, torch.Tensor):
        return NodeValue(True, tuple(value.shape), value.dtype)
    return NodeValue(False, value=value)


class _Recorder(fx.Interpreter):
    """Interpreter that records every node's value description and the FLOPs it executed."""

    def __init__(self, gm: fx.GraphModule, count_flops: bool) -> None:
        super().__init__(gm)
        self.values: dict[str, NodeValue] = {}
        self.flops: dict[str, int] = {}
        self._counter = FlopCounterMode(display=False) if count_flops else None

    def run_node(self, n: fx.Node) -> Any:
        before = self._counter.get_total_flops() if self._counter else 0
        result = super().run_node(n)
        if self._counter:
            self.flops[n.name] = self._counter.get_total_flops() - before
        self.values[n.name] = describe(result)
        return result

    def record(self, example: torch.Tensor) -> Any:
        with torch.inference_mode():
            if self._counter is None:
                return self.run(example)
            with self._counter:
                return self.run(example)


def record(gm: fx.GraphModule, example: torch.Tensor, count_flops: bool = True
           ) -> tuple[dict[str, NodeValue], dict[str, int]]:
    """Values and FLOPs (2 x multiply-accumulates of conv/linear/matmul/attention) of every node."""
    recorder = _Recorder(gm, count_flops)
    recorder.record(example)
    return recorder.values, recorder.flops


class _Run(nn.Module):
    """Lets ``torch.func.functional_call`` swap the graph's parameters while a recorder runs it."""

    def __init__(self, gm: fx.GraphModule, recorder: _Recorder) -> None:
        super().__init__()
        self.gm = gm
        self._recorder = recorder

    def forward(self, x: torch.Tensor) -> Any:
        return self._recorder.record(x)


def record_shapes_on_meta(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, NodeValue]:
    """Node values for ``example``'s shape without computing anything: parameters swapped for meta tensors.

    Falls back to a real run when an operator has no meta implementation.
    """
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in [*gm.named_parameters(), *gm.named_buffers()]}
    meta_example = torch.empty_like(example, device="meta")
    recorder = _Recorder(gm, count_flops=False)
    try:
        torch.func.functional_call(_Run(gm, recorder), {f"gm.{k}": v for k, v in meta.items()},
                                   (meta_example,))
    except (NotImplementedError, RuntimeError):
        recorder = _Recorder(gm, count_flops=False)
        recorder.record(example)
    return recorder.values
