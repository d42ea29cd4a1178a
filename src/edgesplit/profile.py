"""Latency profiles: head and tail time of every cut, per batch size, on the machine that runs it.

Measurement (``method="per-node"``): the traced graph runs under an interpreter that times every node;
a cut's head time is the sum over the nodes up to the cut and its tail time the sum over the rest, per
repeat, so one run of the model yields every cut, and the spread comes from the repeats. The whole
model is also timed as the user runs it (``model_s``), which checks how well the per-node sums compose.
``method="flops"`` instead times only the whole model and estimates each side from its FLOPs at the
measured FLOP/s (marked ``estimated``). ``slowdown`` scales every time to emulate slower (> 1) or faster
(< 1) hardware; the profile records the factor.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import fx

from edgesplit.analysis import Analysis, Cut, example_input
from edgesplit.errors import EdgesplitError, ProfileError
from edgesplit.images import PHOTOS, fit, jpeg_decode, jpeg_encode, lite_normalize, photo

FORMAT = "edgesplit-profile/1"
Role = Literal["device", "server"]
Source = Literal["measured", "estimated"]
SPLIT_CODECS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Timing:
    """Seconds for one piece of work: median and 10th/90th percentiles over ``repeats`` runs."""

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int
    source: Source = "measured"

    @classmethod
    def of(cls, samples: list[float], source: Source = "measured") -> Timing:
        ordered = sorted(samples)
        return cls(statistics.median(ordered), _quantile(ordered, 0.1), _quantile(ordered, 0.9),
                   len(ordered), source)

    def scaled(self, factor: float) -> Timing:
        return Timing(self.median_s * factor, self.p10_s * factor, self.p90_s * factor, self.repeats, self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "p10_s": self.p10_s, "p90_s": self.p90_s,
                "repeats": self.repeats, "source": self.source}


@dataclass(frozen=True)
class CutProfile:
    name: str
    index: int
    elements: int
    head_s: dict[int, Timing]
    tail_s: dict[int, Timing]
    codec_s: dict[str, dict[str, float]]  # fp16/int8: {"encode_s", "decode_s"} for the crossing tensor (batch 1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "elements": self.elements,
                "head_s": {str(b): t.to_dict() for b, t in self.head_s.items()},
                "tail_s": {str(b): t.to_dict() for b, t in self.tail_s.items()},
                "codec_s": self.codec_s}


@dataclass(frozen=True)
class Profile:
    """Everything one machine measured about one model; see :func:`measure` and :func:`load_profile`."""

    model: str
    role: Role
    input_shape: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    method: str
    slowdown: float
    machine: dict[str, Any]
    model_s: dict[int, Timing]
    cuts: dict[str, CutProfile]
    input_codecs: dict[str, dict[str, float]]  # raw / jpeg<Q>: {"bytes", "encode_s", "decode_s"}
    output_bytes: int
    flops_per_s: dict[int, float] = field(default_factory=dict)

    def cut(self, name: str) -> CutProfile:
        if name not in self.cuts:
            raise ProfileError(f"the {self.role} profile of {self.model} has no cut {name!r}; it has "
                               f"{', '.join(self.cuts) or 'none'} (profile again with --cuts)")
        return self.cuts[name]

    def tail_s(self, name: str | None, batch_size: int) -> float:
        """Server time to run from cut ``name`` (None: the whole model) to the end for ``batch_size``."""
        table = self.model_s if name is None else self.cut(name).tail_s
        return _at_batch(table, batch_size, f"{self.role} profile of {self.model}").median_s

    def head_s(self, name: str) -> float:
        return _at_batch(self.cut(name).head_s, 1, f"{self.role} profile of {self.model}").median_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": self.model, "role": self.role, "input_shape": list(self.input_shape),
            "batch_sizes": list(self.batch_sizes), "method": self.method, "slowdown": self.slowdown,
            "machine": self.machine, "model_s": {str(b): t.to_dict() for b, t in self.model_s.items()},
            "flops_per_s": {str(b): v for b, v in self.flops_per_s.items()},
            "cuts": [c.to_dict() for c in self.cuts.values()], "input_codecs": self.input_codecs,
            "output_bytes": self.output_bytes,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def _at_batch(table: dict[int, Timing], batch_size: int, where: str) -> Timing:
    if batch_size in table:
        return table[batch_size]
    if not table or batch_size > max(table) or batch_size < min(table):
        raise ProfileError(f"the {where} has no batch size {batch_size} (it has {sorted(table)}); "
                           "profile again with --batch-sizes")
    from edgesplit.latency import interpolate_batch

    return Timing(interpolate_batch({b: t.median_s for b, t in table.items()}, batch_size),
                  interpolate_batch({b: t.p10_s for b, t in table.items()}, batch_size),
                  interpolate_batch({b: t.p90_s for b, t in table.items()}, batch_size), 0, "estimated")


def require_batch_sizes(profile: Profile, largest: int) -> None:
    """A clear error when ``profile`` was not measured up to batch size ``largest``."""
    have = max(profile.batch_sizes)
    if have < largest:
        raise ProfileError(f"the {profile.role} profile of {profile.model} goes up to batch size {have} but "
                           f"{largest} is needed; profile again with --batch-sizes up to at least {largest}")


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
            jpeg_qualities: tuple[int, ...] = (75, 90), progress: Callable[[str], None] | None = None
            ) -> Profile:
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
    for batch_size in batch_sizes:
        if progress:
            progress(f"batch size {batch_size}")
        x = example_input(graph.model, analysis.input_shape, batch_size)
        n_repeats = max(3, repeats // max(1, batch_size // 4)) if batch_size > 1 else repeats
        n_warmup = min(warmup, 1) if batch_size >= 16 else warmup  # large batches warm up in one run
        whole = _time_calls(lambda: graph.model(x), n_repeats, n_warmup)
        model_s[batch_size] = Timing.of(whole)
        flops_per_s[batch_size] = total_flops * batch_size / statistics.median(whole) if total_flops else 0.0
        if method == "flops":
            for c in cuts:
                rate = flops_per_s[batch_size]
                head[c.name][batch_size] = _estimate(c.head_flops * batch_size, rate, model_s[batch_size])
                tail[c.name][batch_size] = _estimate(c.tail_flops * batch_size, rate, model_s[batch_size])
            continue
        timed = _time_nodes(graph.gm, x, n_repeats, n_warmup)
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
        method=method, slowdown=1.0, machine=machine_description(), model_s=model_s,
        cuts={c.name: CutProfile(c.name, c.index, c.elements, head[c.name], tail[c.name],
                                 _split_codec_times(c, graph)) for c in cuts},
        input_codecs=_input_codec_times(analysis.input_shape, jpeg_qualities),
        output_bytes=_output_bytes(graph), flops_per_s=flops_per_s)
    return with_slowdown(profile, slowdown) if slowdown != 1.0 else profile


def with_slowdown(profile: Profile, factor: float) -> Profile:
    """Every time multiplied by ``factor`` (emulates slower or faster hardware; sizes are unchanged)."""
    def scale(table: dict[int, Timing]) -> dict[int, Timing]:
        return {b: t.scaled(factor) for b, t in table.items()}

    def scale_codecs(codecs: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        return {k: {f: (v * factor if f.endswith("_s") else v) for f, v in d.items()} for k, d in codecs.items()}

    cuts = {n: CutProfile(c.name, c.index, c.elements, scale(c.head_s), scale(c.tail_s), scale_codecs(c.codec_s))
            for n, c in profile.cuts.items()}
    return Profile(profile.model, profile.role, profile.input_shape, profile.batch_sizes, profile.method,
                   profile.slowdown * factor, profile.machine,
                   scale(profile.model_s), cuts, scale_codecs(profile.input_codecs), profile.output_bytes,
                   {b: v / factor for b, v in profile.flops_per_s.items()})


def _estimate(flops: int, rate: float, whole: Timing) -> Timing:
    seconds = flops / rate if rate else 0.0
    ratio = seconds / whole.median_s if whole.median_s else 0.0
    return Timing(seconds, whole.p10_s * ratio, whole.p90_s * ratio, whole.repeats, "estimated")


def _time_calls(call: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    samples = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            call()
            if i >= warmup:
                samples.append(time.perf_counter() - start)
    return samples


def _time_nodes(gm: fx.GraphModule, x: torch.Tensor, repeats: int, warmup: int) -> list[dict[str, float]]:
    runs = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            timer = _NodeTimer(gm)
            timer.run(x)
            if i >= warmup:
                runs.append(timer.seconds)
    return runs


def _split_codec_times(cut: Cut, graph: Any) -> dict[str, dict[str, float]]:
    """Time to turn the crossing tensor into fp16 / int8 (affine) and back, at batch 1."""
    from edgesplit.codec import dequantize_int8, quantize_int8

    x = torch.randn(cut.shapes[0]).numpy() if cut.shapes else torch.zeros(1).numpy()
    steps: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
        "fp16": (lambda: x.astype("float16"), lambda h: h.astype("float32")),
        "int8": (lambda: quantize_int8(x), lambda q: dequantize_int8(*q)),
    }
    out: dict[str, dict[str, float]] = {}
    for name, (encode, decode) in steps.items():
        encoded = encode()
        out[name] = {"encode_s": statistics.median(_time_calls(encode, 7, 1)),
                     "decode_s": statistics.median(_time_calls(lambda: decode(encoded), 7, 1))}
    return out


def _input_codec_times(input_shape: tuple[int, ...], qualities: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Full offload of the input: raw uint8 (normalised on the server) and JPEG, on real photos."""
    if len(input_shape) != 3 or input_shape[0] != 3:
        elements = 1
        for d in input_shape:
            elements *= d
        return {"raw": {"bytes": elements, "encode_s": 0.0, "decode_s": 0.0}}
    images = [fit(photo(name), input_shape) for name in PHOTOS]
    raw = {"bytes": images[0].numel(), "encode_s": 0.0,
           "decode_s": statistics.median(_time_calls(lambda: lite_normalize(images[0]), 7, 1))}
    codecs = {"raw": raw}
    for quality in qualities:
        sizes, encode, decode = [], [], []
        for image in images:
            data = jpeg_encode(image, quality)
            sizes.append(len(data))
            encode += _time_calls(lambda: jpeg_encode(image, quality), 5, 1)
            decode += _time_calls(lambda: lite_normalize(jpeg_decode(data)), 5, 1)
        codecs[f"jpeg{quality}"] = {"bytes": statistics.mean(sizes), "encode_s": statistics.median(encode),
                                    "decode_s": statistics.median(decode)}
    return codecs


def _output_bytes(graph: Any) -> int:
    output = next(n for n in graph.gm.graph.nodes if n.op == "output")
    values = [graph.values[a.name] for a in output.all_input_nodes if a.name in graph.values]
    return sum(v.numel * 4 for v in values if v.is_tensor)


def _quantile(ordered: list[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read a profile written by ``edgesplit profile`` (JSON, validated; never unpickled)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profile {os.fspath(path)}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{os.fspath(path)} is not a profile (invalid JSON: {exc})") from exc
    try:
        if data.get("format") != FORMAT:
            raise ProfileError(f"{os.fspath(path)} is not an edgesplit profile (format {data.get('format')!r}, "
                               f"expected {FORMAT!r})")

        def timings(table: dict[str, Any]) -> dict[int, Timing]:
            return {int(b): Timing(float(t["median_s"]), float(t["p10_s"]), float(t["p90_s"]), int(t["repeats"]),
                                   t["source"]) for b, t in table.items()}

        cuts = {c["name"]: CutProfile(c["name"], int(c["index"]), int(c["elements"]), timings(c["head_s"]),
                                      timings(c["tail_s"]), c["codec_s"]) for c in data["cuts"]}
        return Profile(data["model"], data["role"], tuple(data["input_shape"]), tuple(data["batch_sizes"]),
                       data["method"], float(data["slowdown"]), data["machine"], timings(data["model_s"]), cuts,
                       data["input_codecs"], int(data["output_bytes"]),
                       {int(b): float(v) for b, v in data.get("flops_per_s", {}).items()})
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProfileError(f"{os.fspath(path)} is a malformed profile ({type(exc).__name__}: {exc})") from exc


def iter_batch_sizes(text: str) -> Iterator[int]:
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) <= 0:
            raise EdgesplitError(f"malformed --batch-sizes {text!r}: expected positive integers like 1,2,4,8")
        yield int(part)
