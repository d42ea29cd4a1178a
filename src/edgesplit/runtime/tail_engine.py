"""One model, able to run from any cut where only tensors cross to the end (no model copy per cut).

:class:`TailEngine` runs its tails in eager torch; other engines (``edgesplit.runtime.engines``: ONNX
Runtime, ``torch.compile``) subclass it and override one hook, :meth:`TailEngine._build`, which turns a
tail or segment module into what runs it. Cuts, the batch plan, normalisation and the model id are
shared by all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgesplit.analysis import Analysis
from edgesplit.wire import FLOATS, Expectation
from edgesplit.errors import EdgesplitError
from edgesplit.images import normalizer
from edgesplit.models import Normalization
from edgesplit.outputs import Batch, Output, Postprocess, as_tensors, map_arrays
from edgesplit import splitter

INPUT_CUT = 0
Runner = Callable[..., Any]  # a built tail or segment: the crossing tensors of a batch in, its output out


@dataclass(frozen=True)
class CutInfo:
    """A cut a client may send: its id (the cut's index in the analysis), name and the per-sample shape of
    each tensor that crosses it, in order."""

    id: int
    name: str
    shapes: tuple[tuple[int, ...], ...]  # without the batch dimension
    ratio: float
    natural_bottleneck: bool

    @property
    def expected(self) -> tuple[int, ...] | tuple[tuple[int, ...], ...]:
        """What a frame at this cut must hold (:class:`edgesplit.wire.Expectation`): one shape, or several."""
        return self.shapes[0] if len(self.shapes) == 1 else self.shapes

    def to_dict(self) -> dict[str, Any]:
        shapes = {"shape": list(self.shapes[0])} if len(self.shapes) == 1 else {}
        return {"id": self.id, "name": self.name, **shapes, "shapes": [list(s) for s in self.shapes],
                "dtype": "float32", "ratio": self.ratio, "natural_bottleneck": self.natural_bottleneck}


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


def to_numpy(output: Any) -> Output:
    """A model's output (a tensor, or dicts, lists and tuples of them) as numpy arrays on the CPU."""
    return map_arrays(lambda t: t.cpu().numpy(), output)


def module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters are (the CPU for one without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def torch_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device; a clear error when no such GPU is usable here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EdgesplitError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise EdgesplitError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EdgesplitError(f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
                                 f"built for CUDA {torch.version.cuda or 'none'}, sees no GPU); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EdgesplitError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                                 f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


class TailEngine:
    """Runs the model's tail from any accepted cut in eager torch; tails share the model's parameters and
    are built once, on first use. Answers are the model's own, bit for bit (``max_abs_diff`` 0).

    On a GPU (``device="cuda"``) the analysed model's parameters move there, once (every tail shares
    them), and TF32 is switched off for the process, so that answers stay within 1e-4 of fp32 on a CPU.

    A model with post-processing (:class:`~edgesplit.outputs.Postprocess`: a segmentation model's classes
    per pixel, a detector's boxes) has its engine hold it: tails still answer the model's raw outputs,
    batched, and :meth:`finish` turns each request's rows of them into its answer, as the server sends it.
    """

    name = "torch"
    max_abs_diff = 0.0  # the largest difference from eager fp32 on the CPU that this engine allows

    def __init__(self, analysis: Analysis, normalization: Normalization, device: str = "cpu",
                 postprocess: Postprocess | None = None) -> None:
        self.device = self._resolve_device(device)
        self.postprocess = postprocess
        self.analysis = analysis
        self.normalization = normalization
        self.model = analysis.graph.model.eval()
        self.model_id = model_id(self.model)
        batch_dims = analysis.graph.batch_dims
        self.cuts: dict[int, CutInfo] = {
            c.index: CutInfo(c.index, c.name, tuple(tuple(s[1:]) for s in c.shapes), c.ratio, c.natural_bottleneck)
            for c in analysis.cuts
            if len(c.shapes) == len(c.crossing) and all(batch_dims.get(name) == 0 for name in c.crossing)}
        self._tails: dict[int, Runner] = {}
        self._segments: dict[tuple[int, int], Runner] = {}
        self._normalize = normalizer(normalization.mean, normalization.std)
        self.batch_plan: BatchPlan | None = None  # None: batches run whole (see plan_batching)
        self.placement = self._place_model()

    def _resolve_device(self, name: str) -> torch.device:
        return torch_device(name)

    def _place_model(self) -> torch.device:
        """Where the tensors a runner takes live: the model's device (moved there now) for torch."""
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            self.analysis.graph.gm.to(self.device)  # the traced graph holds the model's modules: moved in place
            self.model.to(self.device)
        return self.device

    def _build(self, module: nn.Module, start: int, what: str) -> Runner:
        """What runs ``module``, a tail or a segment that takes the tensor at cut ``start`` (``what`` names
        it in messages); eager torch runs the module itself."""
        return module

    def example(self, cut_id: int) -> tuple[torch.Tensor, ...]:
        """A fixed batch of 2 at ``cut_id`` (float32, on the CPU, not inference tensors): random numbers
        at the input, the model's own activations at a later cut; one tensor per crossing value."""
        with torch.inference_mode(False), torch.no_grad():
            x = torch.randn(2, *self.analysis.input_shape, generator=torch.Generator().manual_seed(0))
            if cut_id == INPUT_CUT:
                return (x,)
            head = splitter.split(self.analysis, self.cuts[cut_id].name)[0]
            mid = head(x.to(module_device(self.model)))
            return tuple(t.cpu() for t in as_tensors(mid))

    def expectation(self, max_batch_size: int) -> Expectation:
        return Expectation(self.model_id, {i: c.expected for i, c in self.cuts.items()}, max_batch_size,
                           {INPUT_CUT: FLOATS | {"uint8"}})

    def tail(self, cut_id: int) -> Runner:
        if cut_id not in self._tails:
            if cut_id == INPUT_CUT:
                self._tails[cut_id] = self._build(self.model, cut_id, "the whole model")
            else:
                name = self.cuts[cut_id].name
                self._tails[cut_id] = self._build(splitter.split(self.analysis, name)[1], cut_id, f"the tail from {name}")
        return self._tails[cut_id]

    def segment(self, start: int, end: int) -> Runner:
        if (start, end) not in self._segments:
            first, last = self.cuts[start].name, self.cuts[end].name
            self._segments[start, end] = self._build(splitter.segment(self.analysis, first, last), start,
                                                     f"the segment from {first} to {last}")
        return self._segments[start, end]

    @contextlib.contextmanager
    def temporary_tails(self) -> Iterator[None]:
        """Tails and segments built inside are dropped on leaving, and their memory with them: measuring
        every cut does not leave the server holding tails that no client asked for."""
        tails, segments = set(self._tails), set(self._segments)
        try:
            yield
        finally:
            self._tails = {c: t for c, t in self._tails.items() if c in tails}
            self._segments = {c: s for c, s in self._segments.items() if c in segments}

    def run(self, cut_id: int, batch: Batch) -> Output:
        """The model's output (logits, or whatever structure it returns, as numpy) for a batch that crossed
        at ``cut_id``: one tensor, or a tuple of them at a cut where several cross; uint8 input at the input
        cut is normalised here. With a :class:`BatchPlan`, a batch that crossed before its cut runs one row
        at a time up to it."""
        tensors = as_tensors(batch)
        if cut_id == INPUT_CUT and tensors[0].dtype == np.uint8:
            tensors = (self._normalize(tensors[0]),)
        with torch.inference_mode():
            xs = tuple(torch.from_numpy(t).to(self.placement).float() for t in tensors)
            plan = self.batch_plan
            if plan is not None and len(xs[0]) > 1 and cut_id < plan.batch_from:  # cut ids follow the graph's order
                to_batch_from = self.segment(cut_id, plan.batch_from)
                xs = (torch.cat([to_batch_from(*one) for one in zip(*(x.split(1) for x in xs))]),)
                cut_id = plan.batch_from
            return to_numpy(self.tail(cut_id)(*xs))

    def finish(self, output: Output) -> Output:
        """One request's answer from its rows of :meth:`run`'s output: those rows themselves, or what the
        model's post-processing makes of them (a segmentation model's classes, a detector's detections)."""
        return output if self.postprocess is None else self.postprocess.answer(output)

    def plan_batching(self, batch_size: int, repeats: int = 3) -> BatchPlan:
        """Measure, between the input and the record-low cuts, each segment at batch 1 and at ``batch_size``
        (interleaved, medians of ``repeats`` after an untimed run), and from then on batch from the cut
        where that costs least per request (:func:`best_batch_from`)."""
        starts = [INPUT_CUT, *(c.index for c in self.analysis.cuts
                               if c.record_low and c.single_tensor and c.index in self.cuts)]
        stages = [(start, self.segment(start, end)) for start, end in zip(starts, starts[1:])]
        stages.append((starts[-1], self.tail(starts[-1])))
        example = torch.randn(1, *self.analysis.input_shape, generator=torch.Generator().manual_seed(0))
        samples: dict[tuple[int, int], list[float]] = {}
        with torch.inference_mode():
            for _ in range(repeats + 1):
                for size in (1, batch_size):
                    x = example.expand(size, *example.shape[1:]).contiguous().to(self.placement)
                    for start, stage in stages:
                        began = time.perf_counter()
                        x = stage(x)
                        self.synchronize()
                        samples.setdefault((start, size), []).append(time.perf_counter() - began)
        timed = [(start, statistics.median(samples[start, 1][1:]), statistics.median(samples[start, batch_size][1:]))
                 for start, _ in stages]
        plan = best_batch_from(timed, batch_size)
        for cut_id in self.warm_cut_ids():
            if cut_id < plan.batch_from:  # built now, so that no client's first batch pays for it
                self.segment(cut_id, plan.batch_from)
        self.batch_plan = plan
        return plan

    def synchronize(self) -> None:
        """Wait for the GPU's queued work, so that a timing ends when the work does (no-op on a CPU)."""
        if self.placement.type == "cuda":
            torch.cuda.synchronize(self.placement)

    def warm_cut_ids(self) -> list[int]:
        """The cuts :meth:`warm_up` builds: the input and every natural bottleneck (cheap in torch)."""
        return [INPUT_CUT, *(i for i, c in self.cuts.items() if c.natural_bottleneck)]

    def warm_up(self) -> int:
        """Build and run once the tail of every cut of :meth:`warm_cut_ids`, so that no client's first
        request at one of them pays for it; returns how many were warmed."""
        warmed = self.warm_cut_ids()
        for cut_id in warmed:
            shapes = (self.analysis.input_shape,) if cut_id == INPUT_CUT else self.cuts[cut_id].shapes
            self.run(cut_id, tuple(np.zeros((1, *shape), np.float32) for shape in shapes))
        return len(warmed)

    def describe(self) -> dict[str, Any]:
        return {"model": self.analysis.model, "model_id": self.model_id.hex(),
                "input_shape": list(self.analysis.input_shape), "normalization": self.normalization.to_dict(),
                "cuts": [c.to_dict() for c in self.cuts.values()], "engine": self.engine_description(),
                "batch_plan": None if self.batch_plan is None else self.batch_plan.to_dict(self.cuts)}

    def engine_description(self) -> dict[str, Any]:
        """What runs the tails, where, how far its answers may be from eager fp32, and what is built."""
        return {"name": self.name, "device": str(self.device), "max_abs_diff": self.max_abs_diff,
                "tails_built": len(self._tails), "segments_built": len(self._segments)}
