"""Measuring profiles on this machine: head and tail time of every cut, per batch size.

Measurement (``method="per-node"``): the traced graph runs under an interpreter that times every node;
a cut's head time is the sum over the nodes up to the cut and its tail time the sum over the rest, per
repeat, so one run of the model yields every cut, and the spread comes from the repeats. The whole
model is also timed as compiled code runs it (``model_s``); the interpreter's own cost, the difference
between the two, is taken off in equal shares per node so that head + tail = the whole model.
``method="flops"`` instead times only the whole model and estimates each side from its FLOPs at the
measured FLOP/s (marked ``estimated``). ``slowdown`` scales every time to emulate slower (> 1) or faster
(< 1) hardware; the profile records the factor.

The answer is priced as it crosses the wire: ``output_bytes`` is the length of the frame the server
sends (:func:`edgesplit.wire.encode_tensors` of the model's output, or of what the model's
``postprocess`` makes of it: a segmenter's class per pixel, a detector's boxes), and ``answer_s`` the
post-processing's time per request (0 without one), both on the photos the codecs are costed on.

``idle_s`` sleeps before every timed run, to profile the machine as it serves requests that arrive apart:
a CPU that has idled is slower for its next inference (EfficientNet-Lite0 here: 43 ms back to back,
55–85 ms after 0.4 s idle). The profile records it under ``machine["idle_s"]``.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import fx

from edgesplit.analysis import Analysis, Cut, example_input
from edgesplit.errors import EdgesplitError
from edgesplit.codecs import COSTED_SAMPLES, jpeg_decode, jpeg_encode, split_codec_costs
from edgesplit.images import PHOTOS, fit, normalizer, photo
from edgesplit.models import IMAGENET, Normalization
from edgesplit.outputs import Output, Postprocess, map_arrays
from edgesplit.profile import CutProfile, Profile, Role, Timing, with_slowdown
from edgesplit.wire import OUTPUT_CUT, encode_tensors, flatten_tree


def machine_description() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


class _NodeTimer(fx.Interpreter):
    """Runs the graph and records the seconds each node took."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.seconds: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        start = time.perf_counter()
        result = super().run_node(n)
        self.seconds[n.name] = time.perf_counter() - start
        return result


def measure(analysis: Analysis, cuts: list[Cut], *, role: Role, batch_sizes: tuple[int, ...],
            method: str = "per-node", repeats: int = 10, warmup: int = 2, slowdown: float = 1.0,
            jpeg_qualities: tuple[int, ...] = (75, 90), progress: Callable[[str], None] | None = None,
            idle_s: float = 0.0, normalization: Normalization = IMAGENET,
            postprocess: Postprocess | None = None) -> Profile:
    """Profile ``cuts`` of the analysed model on this machine (see the module docstring)."""
    if method not in ("per-node", "flops"):
        raise EdgesplitError(f"unknown profiling method {method!r}; known: per-node, flops")
    if slowdown <= 0:
        raise EdgesplitError(f"--slowdown must be positive, got {slowdown}")
    graph = analysis.graph
    nodes = [n for n in graph.gm.graph.nodes if n.op != "output"]
    position = {n.name: i for i, n in enumerate(nodes)}
    model_s: dict[int, Timing] = {}
    flops_per_s: dict[int, float] = {}
    head: dict[str, dict[int, Timing]] = {c.name: {} for c in cuts}
    tail: dict[str, dict[int, Timing]] = {c.name: {} for c in cuts}
    total_flops = (cuts[0].head_flops + cuts[0].tail_flops) if cuts else 0
    photos = [fit(photo(name), analysis.input_shape) for name in PHOTOS] if _is_image(analysis.input_shape) else []
    samples = _samples(analysis, normalization, photos[:COSTED_SAMPLES])
    crossing, outputs = _crossing_values(graph.gm, samples, [c for c in cuts if c.index > 0])
    output_bytes, answer_s = _answer_costs(outputs, postprocess)
    for batch_size in batch_sizes:
        if progress:
            progress(f"batch size {batch_size}")
        x = example_input(graph.model, analysis.input_shape, batch_size)
        n_repeats = max(3, repeats // max(1, batch_size // 4)) if batch_size > 1 else repeats
        n_warmup = min(warmup, 1) if batch_size >= 16 else warmup  # large batches warm up in one run
        whole = _time_calls(lambda: graph.model(x), n_repeats, n_warmup, idle_s)
        model_s[batch_size] = Timing.of(whole)
        flops_per_s[batch_size] = total_flops * batch_size / statistics.median(whole) if total_flops else 0.0
        if method == "flops":
            for c in cuts:
                rate = flops_per_s[batch_size]
                head[c.name][batch_size] = _estimate(c.head_flops * batch_size, rate, model_s[batch_size])
                tail[c.name][batch_size] = _estimate(c.tail_flops * batch_size, rate, model_s[batch_size])
            continue
        timed = _time_nodes(graph.gm, x, n_repeats, n_warmup, idle_s)
        # the interpreter costs a few microseconds per node that compiled code does not: take off an equal
        # share per node so the sums compose to the whole model as it really runs
        overhead = max(0.0, statistics.median(sum(r.values()) for r in timed) - model_s[batch_size].median_s)
        per_node = overhead / len(nodes)
        runs = [list(itertools.accumulate(max(0.0, run.get(n.name, 0.0) - per_node) for n in nodes))
                for run in timed]
        for c in cuts:
            at = position[c.name]
            head[c.name][batch_size] = Timing.of([run[at] for run in runs])
            tail[c.name][batch_size] = Timing.of([run[-1] - run[at] for run in runs])
    profile = Profile(
        model=analysis.model, role=role, input_shape=analysis.input_shape, batch_sizes=tuple(batch_sizes),
        method=method, slowdown=1.0, machine={**machine_description(), "idle_s": idle_s}, model_s=model_s,
        cuts={c.name: CutProfile(c.name, c.index, c.elements, head[c.name], tail[c.name],
                                 _codec_costs(crossing.get(c.name, [])),
                                 c.shapes[0][1:] if c.shapes else None) for c in cuts},
        input_codecs=_input_codec_times(analysis.input_shape, photos, jpeg_qualities, normalization),
        output_bytes=output_bytes, flops_per_s=flops_per_s, answer_s=answer_s)
    return with_slowdown(profile, slowdown) if slowdown != 1.0 else profile


def _estimate(flops: int, rate: float, whole: Timing) -> Timing:
    seconds = flops / rate if rate else 0.0
    ratio = seconds / whole.median_s if whole.median_s else 0.0
    return Timing(seconds, whole.p10_s * ratio, whole.p90_s * ratio, whole.repeats, "estimated")


def _time_calls(call: Callable[[], Any], repeats: int, warmup: int, idle_s: float = 0.0) -> list[float]:
    samples = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if i >= warmup and idle_s:
                time.sleep(idle_s)
            start = time.perf_counter()
            call()
            if i >= warmup:
                samples.append(time.perf_counter() - start)
    return samples


def _time_nodes(gm: fx.GraphModule, x: torch.Tensor, repeats: int, warmup: int,
                idle_s: float) -> list[dict[str, float]]:
    runs = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if i >= warmup and idle_s:
                time.sleep(idle_s)
            timer = _NodeTimer(gm)
            timer.run(x)
            if i >= warmup:
                runs.append(timer.seconds)
    return runs


def _crossing_values(gm: fx.GraphModule, x: torch.Tensor, cuts: list[Cut]
                     ) -> tuple[dict[str, list[list[np.ndarray]]], list[Output]]:
    """For each cut, per tensor crossing it, that tensor for each input in the batch ``x`` (batch 1 each);
    and the model's output for each input (numpy), from the same runs."""
    wanted = {name for c in cuts for name in c.crossing}
    captured: dict[str, list[np.ndarray]] = {name: [] for name in wanted}

    class Capture(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            if n.name in wanted and isinstance(result, torch.Tensor):
                captured[n.name].append(result.detach().numpy().copy())
            return result

    with torch.inference_mode():
        outputs = [map_arrays(lambda t: t.numpy(), Capture(gm).run(sample[None])) for sample in x]
    return {c.name: [captured[name] for name in c.crossing if captured[name]] for c in cuts}, outputs


def _codec_costs(tensors: list[list[np.ndarray]]) -> dict[str, dict[str, float]]:
    """What each split codec costs a cut: the sum over the tensors crossing it."""
    total: dict[str, dict[str, float]] = {}
    for values in tensors:
        for codec, costs in split_codec_costs(values).items():
            entry = total.setdefault(codec, dict.fromkeys(costs, 0.0))
            for key, value in costs.items():
                entry[key] += value
    return total


def _is_image(input_shape: tuple[int, ...]) -> bool:
    return len(input_shape) == 3 and input_shape[0] == 3


def _samples(analysis: Analysis, normalization: Normalization, photos: list[np.ndarray]) -> torch.Tensor:
    """What the crossing tensors are measured on: ``photos`` (the ones the codecs are costed on), normalised,
    for an image model; else one example input."""
    if not photos:
        return example_input(analysis.graph.model, analysis.input_shape, 1)
    return torch.from_numpy(normalizer(normalization.mean, normalization.std)(np.stack(photos)))


def _input_codec_times(input_shape: tuple[int, ...], images: list[np.ndarray], qualities: tuple[int, ...],
                       normalization: Normalization) -> dict[str, dict[str, float]]:
    """Full offload of the input: raw uint8 (normalised on the server) and JPEG, on ``images`` (real photos;
    none for a model whose input is not an image)."""
    if not images:
        return {"raw": {"bytes": math.prod(input_shape), "encode_s": 0.0, "decode_s": 0.0}}
    normalize = normalizer(normalization.mean, normalization.std)
    raw = {"bytes": images[0].size, "encode_s": 0.0,
           "decode_s": statistics.median(_time_calls(lambda: normalize(images[0][None]), 7, 1))}
    codecs = {"raw": raw}
    for quality in qualities:
        sizes, encode, decode = [], [], []
        for image in images:
            data = jpeg_encode(image, quality)
            sizes.append(len(data))
            encode += _time_calls(lambda: jpeg_encode(image, quality), 5, 1)
            shape = (1, *image.shape)
            decode += _time_calls(lambda: normalize(jpeg_decode(data, shape)[None]), 5, 1)
        codecs[f"jpeg:{quality}"] = {"bytes": statistics.mean(sizes), "encode_s": statistics.median(encode),
                                     "decode_s": statistics.median(decode)}
    return codecs


def _answer_costs(outputs: list[Output], postprocess: Postprocess | None) -> tuple[int, float]:
    """The bytes of the frame that answers one request, and the seconds ``postprocess`` takes per request
    (median over the model's ``outputs``, batch 1 each; 0 without one). The bytes are the mean over them: a
    detector's answer grows with its boxes, and the downlink's time is linear in bytes, so the mean prices
    the mean transfer (as the mean JPEG size does the upload)."""
    sizes, seconds = [], []
    for output in outputs:
        answer = output if postprocess is None else postprocess.answer(output)
        sizes.append(len(encode_tensors(flatten_tree(answer), model_id=bytes(8), cut=OUTPUT_CUT)))
        if postprocess is not None:
            seconds += _time_calls(lambda: postprocess.answer(output), 3, 1)
    return round(statistics.mean(sizes)), statistics.median(seconds) if seconds else 0.0


def iter_batch_sizes(text: str) -> Iterator[int]:
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) <= 0:
            raise EdgesplitError(f"malformed --batch-sizes {text!r}: expected positive integers like 1,2,4,8")
        yield int(part)
