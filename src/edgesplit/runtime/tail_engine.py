"""One model, able to run from any single-tensor cut to the end (no model copy per cut)."""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgesplit.analysis import Analysis
from edgesplit.codec import FLOATS, Expectation
from edgesplit.images import normalizer
from edgesplit.models import Normalization
from edgesplit import splitter

INPUT_CUT = 0


@dataclass(frozen=True)
class CutInfo:
    """A cut a client may send: its id (the cut's index in the analysis), name and per-sample shape."""

    id: int
    name: str
    shape: tuple[int, ...]  # without the batch dimension
    ratio: float
    natural_bottleneck: bool

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "shape": list(self.shape), "dtype": "float32",
                "ratio": self.ratio, "natural_bottleneck": self.natural_bottleneck}


@dataclass(frozen=True)
class BatchPlan:
    """Where batching starts to pay on this server. Early layers work on large activations: at batch 8
    they leave the caches and run slower per request than one at a time (EfficientNet-B0 on a 2-core CPU:
    its first stages 0.25–0.8× as fast per request). A batch (two rows or more, whatever its size) that
    crosses before ``batch_from`` therefore runs one row at a time up to that cut and as one batch from
    there on.

    ``per_request_s`` holds, for each candidate cut (the input and the record-low cuts: the smallest
    tensors so far, cheap to join), the measured time per request at ``batch_size`` when batching from it.
    """

    batch_from: int  # a cut id; INPUT_CUT: batch the whole model
    batch_size: int
    per_request_s: dict[int, float]

    def to_dict(self, cuts: dict[int, CutInfo]) -> dict[str, Any]:
        return {"batch_from": cuts[self.batch_from].name, "batch_size": self.batch_size,
                "per_request_ms": {cuts[c].name: round(s * 1e3, 3) for c, s in self.per_request_s.items()}}


def best_batch_from(segment_s: list[tuple[int, float, float]], batch_size: int) -> BatchPlan:
    """The plan with the least time per request, from consecutive segments ``(start cut, seconds for one
    request, seconds for a batch of batch_size)`` that together run the whole model: batching from the
    i-th start runs the segments before it once per request and the rest once per batch."""
    per_request = {start: sum(one for _, one, _ in segment_s[:i]) + sum(many for _, _, many in segment_s[i:]) / batch_size
                   for i, (start, _, _) in enumerate(segment_s)}
    return BatchPlan(min(per_request, key=per_request.__getitem__), batch_size, per_request)


def model_id(module: nn.Module) -> bytes:
    """8 bytes of SHA-256 over the architecture (its repr) and every parameter and buffer."""
    digest = hashlib.sha256(f"{type(module).__qualname__}\n{module!r}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()[:8]


class TailEngine:
    """Runs the model's tail from any accepted cut; tails share the model's parameters and are built once."""

    def __init__(self, analysis: Analysis, normalization: Normalization) -> None:
        self.analysis = analysis
        self.normalization = normalization
        self.model = analysis.graph.model.eval()
        self.model_id = model_id(self.model)
        batch_dims = analysis.graph.batch_dims
        self.cuts: dict[int, CutInfo] = {
            c.index: CutInfo(c.index, c.name, tuple(c.shapes[0][1:]), c.ratio, c.natural_bottleneck)
            for c in analysis.cuts if c.single_tensor and batch_dims.get(c.crossing[0]) == 0}
        self._tails: dict[int, nn.Module] = {INPUT_CUT: self.model}
        self._segments: dict[tuple[int, int], nn.Module] = {}
        self._normalize = normalizer(normalization.mean, normalization.std)
        self.batch_plan: BatchPlan | None = None  # None: batches run whole (see plan_batching)

    def expectation(self, max_batch_size: int) -> Expectation:
        return Expectation(self.model_id, {i: c.shape for i, c in self.cuts.items()}, max_batch_size,
                           {INPUT_CUT: FLOATS | {"uint8"}})

    def tail(self, cut_id: int) -> nn.Module:
        if cut_id not in self._tails:
            self._tails[cut_id] = splitter.split(self.analysis, self.cuts[cut_id].name)[1]
        return self._tails[cut_id]

    def segment(self, start: int, end: int) -> nn.Module:
        if (start, end) not in self._segments:
            self._segments[start, end] = splitter.segment(self.analysis, self.cuts[start].name,
                                                            self.cuts[end].name)
        return self._segments[start, end]

    def run(self, cut_id: int, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch that crossed at ``cut_id``; uint8 input at the input cut is normalised here.
        With a :class:`BatchPlan`, a batch that crossed before its cut runs one row at a time up to it."""
        if cut_id == INPUT_CUT and batch.dtype == np.uint8:
            batch = self._normalize(batch)
        with torch.inference_mode():
            x = torch.from_numpy(batch).float()
            plan = self.batch_plan
            if plan is not None and len(x) > 1 and cut_id < plan.batch_from:  # cut ids follow the graph's order
                to_batch_from = self.segment(cut_id, plan.batch_from)
                x = torch.cat([to_batch_from(one) for one in x.split(1)])
                cut_id = plan.batch_from
            return self.tail(cut_id)(x).numpy()

    def plan_batching(self, batch_size: int, repeats: int = 3) -> BatchPlan:
        """Measure, between the input and the record-low cuts, each segment at batch 1 and at ``batch_size``
        (interleaved, medians of ``repeats`` after an untimed run), and from then on batch from the cut
        where that costs least per request (:func:`best_batch_from`)."""
        starts = [INPUT_CUT, *(c.index for c in self.analysis.cuts if c.record_low and c.index in self.cuts)]
        stages = [(start, self.segment(start, end)) for start, end in zip(starts, starts[1:])]
        stages.append((starts[-1], self.tail(starts[-1])))
        example = torch.randn(1, *self.analysis.input_shape, generator=torch.Generator().manual_seed(0))
        samples: dict[tuple[int, int], list[float]] = {}
        with torch.inference_mode():
            for _ in range(repeats + 1):
                for size in (1, batch_size):
                    x = example.expand(size, *example.shape[1:]).contiguous()
                    for start, stage in stages:
                        began = time.perf_counter()
                        x = stage(x)
                        samples.setdefault((start, size), []).append(time.perf_counter() - began)
        timed = [(start, statistics.median(samples[start, 1][1:]), statistics.median(samples[start, batch_size][1:]))
                 for start, _ in stages]
        plan = best_batch_from(timed, batch_size)
        for cut_id in (INPUT_CUT, *(i for i, c in self.cuts.items() if c.natural_bottleneck)):
            if cut_id < plan.batch_from:  # built now, so that no client's first batch pays for it
                self.segment(cut_id, plan.batch_from)
        self.batch_plan = plan
        return plan

    def warm_up(self) -> int:
        """Build and run once every natural-bottleneck tail and the whole model, so that no client's
        first request at a cut pays for it; returns how many were warmed."""
        warmed = [INPUT_CUT, *(i for i, c in self.cuts.items() if c.natural_bottleneck)]
        for cut_id in warmed:
            shape = self.analysis.input_shape if cut_id == INPUT_CUT else self.cuts[cut_id].shape
            self.run(cut_id, np.zeros((1, *shape), np.float32))
        return len(warmed)

    def describe(self) -> dict[str, Any]:
        return {"model": self.analysis.model, "model_id": self.model_id.hex(),
                "input_shape": list(self.analysis.input_shape), "normalization": self.normalization.to_dict(),
                "cuts": [c.to_dict() for c in self.cuts.values()],
                "batch_plan": None if self.batch_plan is None else self.batch_plan.to_dict(self.cuts)}
