"""Tail engines: what runs the server's tails, by name (``edgesplit serve --engine``).

    name     runs a tail as                          answers vs eager fp32   memory per tail built
    torch    the fx module itself (eager)            bit for bit             none: tails share the model
    onnx     an ONNX Runtime session, exported on    max abs diff <= 1e-4    a copy of that tail's weights
             first use (CPU EP; CUDA EP on a GPU)
    compile  ``torch.compile(dynamic=True)``         max abs diff <= 1e-4    none: tails share the model
    auto     the fastest of torch and onnx, measured at start-up (:func:`fastest_engine`)

Every engine is a :class:`~edgesplit.runtime.tail_engine.TailEngine` that overrides one hook, ``_build``:
cuts, the batch plan, normalisation of uint8 input and the model id are the same for all. A tail (or a
batch plan's segment) is built on the first request that needs it, or by ``warm_up``/``plan_batching``;
onnx and compile check each one they build against eager torch on a fixed batch of 2 and refuse it
(:class:`EdgesplitError`) beyond 1e-4.
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from edgesplit.analysis import Analysis, Cut
from edgesplit.errors import EdgesplitError
from edgesplit.models import Normalization
from edgesplit.profile import Profile, Timing
from edgesplit.registry import Registry
from edgesplit.outputs import Postprocess, arrays, refill
from edgesplit.runtime.tail_engine import INPUT_CUT, Runner, TailEngine, module_device, to_numpy

TOLERANCE = 1e-4  # the largest difference from eager fp32 allowed on any output, as for edgesplit export
ONNX_OPSET = 17
TAIL_ENGINES: Registry[type[TailEngine]] = Registry("tail engine")
TAIL_ENGINES.register("torch")(TailEngine)
AUTO_CANDIDATES = ("torch", "onnx")


def create_tail_engine(name: str, analysis: Analysis, normalization: Normalization, device: str = "cpu") -> TailEngine:
    """The engine registered as ``name`` (torch, onnx, compile) for the analysed model on ``device``."""
    return TAIL_ENGINES.get(name)(analysis, normalization, device)


def open_tail_engine(name: str, analysis: Analysis, normalization: Normalization, *, device: str = "cpu",
                     batch_size: int = 8, postprocess: Postprocess | None = None
                     ) -> tuple[TailEngine, list[EngineTiming]]:
    """The engine ``name`` (or, for ``auto``, the fastest, :func:`fastest_engine` at ``batch_size``) and
    what auto measured (empty for a named engine). A model with post-processing (a segmentation model's
    classes, a detector's boxes) is served by the torch engine only."""
    if postprocess is not None:
        if name != "torch":
            raise EdgesplitError(f"--engine {name} serves models without post-processing; use --engine torch")
        return TailEngine(analysis, normalization, device, postprocess), []
    if name == "auto":
        return fastest_engine(analysis, normalization, device=device, batch_size=batch_size)
    return create_tail_engine(name, analysis, normalization, device), []


def auto_report(timings: list[EngineTiming], chosen: TailEngine, batch_size: int) -> str:
    """What ``auto`` measured, one line per candidate, and what it chose."""
    lines = [f"--engine auto chose {chosen.name} on {chosen.device} (whole model, uint8 input, medians of "
             f"{max(t.rounds for t in timings)} interleaved rounds):"]
    for t in timings:
        if t.batch_1_s is None or t.full_batch_s is None:
            lines.append(f"  {t.name}: refused: {t.refused}")
        else:
            lines.append(f"  {t.name}: {t.batch_1_s * 1e3:.1f} ms at batch 1, {t.full_batch_s * 1e3:.1f} ms per "
                         f"request at batch {batch_size}")
    return "\n".join(lines)


def _check(got: Any, expected: Any, what: str, engine: str) -> None:
    """Refuse a built tail whose output (a tensor or a structure of them) is more than TOLERANCE off."""
    pairs = list(zip(arrays(to_numpy(got)), arrays(to_numpy(expected)), strict=True))
    diff = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in pairs)
    if not diff <= TOLERANCE:  # also refuses NaN
        raise EdgesplitError(f"the {engine} engine's {what} differs from eager torch by {diff:.3g} (allowed: "
                             f"{TOLERANCE:g}); serve with --engine torch")


def _input_and_record_lows(engine: TailEngine) -> list[int]:
    """What engines that pay to build a tail warm up: the input and the record-low cuts (the smallest
    tensors so far, where splitting saves the most bytes)."""
    return [INPUT_CUT, *(c.index for c in engine.analysis.cuts
                         if c.record_low and c.single_tensor and c.index in engine.cuts)]


@TAIL_ENGINES.register("onnx")
class OnnxTailEngine(TailEngine):
    """Tails run by ONNX Runtime: each tail (or segment) is exported from the fx module on first use
    (opset 17, dynamic batch dimension, in memory: no files) and run by its own session, on the CPU EP, or
    on the CUDA EP with ``device="cuda"`` (TF32 off; TensorRT is not used: it would build an engine per
    batch size on first use, and allows TF32). The torch model is not moved: it is only exported from.

    Memory: every session keeps its own copy of its tail's weights, ONNX Runtime's pre-packed convolution
    weights and its own arena for activations (grown to the largest batch it has run), so the cost grows
    with the cuts clients actually use. EfficientNet-B0 at 224 (20 MB of fp32 weights), RSS measured here:
    +110 MB for the whole model's session (+205 MB once it ran a batch of 8); +330 MB for what ``warm_up``
    builds (the input and the 5 record-low cuts, :meth:`warm_cut_ids`); +890 MB with the batch plan's 5
    segments and a batch of 8 run at each; every one of its 57 natural bottlenecks would be +2.2 GB.
    Sessions use ``threads`` intra-op threads (default: torch's thread count) that do not spin, since
    clients may share the cores.
    """

    name = "onnx"
    max_abs_diff = TOLERANCE

    def __init__(self, analysis: Analysis, normalization: Normalization, device: str = "cpu",
                 threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise EdgesplitError("--engine onnx needs onnxruntime: pip install 'edgesplit[device]'") from None
        self._ort = onnxruntime
        self.threads = threads or torch.get_num_threads()
        super().__init__(analysis, normalization, device)

    def _resolve_device(self, name: str) -> torch.device:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise EdgesplitError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
        available = self._ort.get_available_providers()
        if device.type == "cuda" and "CUDAExecutionProvider" not in available:
            raise EdgesplitError(f"--device {name} --engine onnx: this onnxruntime ({self._ort.__version__}) has no "
                                 f"CUDAExecutionProvider (it has {', '.join(available)}); pip install onnxruntime-gpu, "
                                 "or use --device cpu")
        if device.type not in ("cpu", "cuda"):
            raise EdgesplitError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
        self.providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            self.providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0, "use_tf32": 0}))
        return device

    def _place_model(self) -> torch.device:
        return torch.device("cpu")  # sessions take numpy arrays; the model stays where it is, to be exported

    def warm_cut_ids(self) -> list[int]:
        """Not every natural bottleneck: EfficientNet-B0 at 224 has 57, 2.2 GB and 33 s of sessions."""
        return _input_and_record_lows(self)

    def _build(self, module: nn.Module, start: int, what: str) -> Runner:
        example = self.example(start)
        beside_weights = tuple(t.to(module_device(module)) for t in example)  # on a GPU if the model moved there
        inputs = [f"input_{k}" for k in range(len(example))]
        buffer = io.BytesIO()
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            with warnings.catch_warnings():  # the TorchScript exporter announces its successor; it works as is
                warnings.simplefilter("ignore")
                with torch.inference_mode(False), torch.no_grad():
                    expected = module(*beside_weights)
                    outputs = [f"output_{k}" for k in range(len(arrays(to_numpy(expected))))]
                    torch.onnx.export(module, beside_weights, buffer, input_names=inputs, output_names=outputs,
                                      opset_version=ONNX_OPSET, dynamo=False,
                                      dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]})
            session = self._ort.InferenceSession(buffer.getvalue(), options, providers=self.providers)
        except Exception as exc:  # an op the exporter or ONNX Runtime cannot take ends here
            raise EdgesplitError(f"ONNX export of {what} failed: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}; serve with --engine torch") from exc

        def run(*xs: torch.Tensor) -> Any:
            got = session.run(None, {name: np.ascontiguousarray(x.numpy()) for name, x in zip(inputs, xs)})
            return refill(expected, [torch.from_numpy(a) for a in got])  # the model's own structure

        _check(run(*example), expected, what, self.name)
        return run

    def engine_description(self) -> dict[str, Any]:
        return {**super().engine_description(), "onnxruntime": self._ort.__version__, "threads": self.threads,
                "providers": [p if isinstance(p, str) else p[0] for p in self.providers]}


@TAIL_ENGINES.register("compile")
class CompiledTailEngine(TailEngine):
    """Tails compiled by ``torch.compile(dynamic=True)`` (Inductor; C++ on a CPU, Triton on a GPU), sharing
    the model's parameters as eager tails do (no freezing: no weight copies). Building a tail compiles it
    twice, for a batch of 1 and for larger ones (Dynamo specialises sizes 0 and 1), and checks both.
    Compiling is slow: EfficientNet-B0's tail from a mid cut took 172 s on the 2-core test machine, and ran
    slower than eager at batch 1 (54 against 40 ms; at batch 8 120 against 235 ms), so ``auto`` leaves it
    out; name it where compiling pays (a GPU, a long-lived server).
    """

    name = "compile"
    max_abs_diff = TOLERANCE

    def warm_cut_ids(self) -> list[int]:
        """Not every natural bottleneck: each tail takes minutes to compile."""
        return _input_and_record_lows(self)

    def _build(self, module: nn.Module, start: int, what: str) -> Runner:
        compiled = torch.compile(module, dynamic=True)
        example = tuple(t.to(self.placement) for t in self.example(start))
        with torch.inference_mode():
            for rows in (tuple(t[:1] for t in example), example):
                try:
                    got = compiled(*rows)
                except Exception as exc:  # Inductor's failures (no C++ compiler, an unsupported op) end here
                    raise EdgesplitError(f"torch.compile failed on {what}: {type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0] if str(exc) else ''}; serve with --engine torch "
                                         "or onnx") from exc
                _check(got, module(*rows), what, self.name)
        return compiled


@dataclass(frozen=True)
class EngineTiming:
    """One candidate of ``auto``: the whole model's median seconds per request at batch 1 and at a full
    batch, over interleaved rounds, or why it could not run."""

    name: str
    batch_1_s: float | None
    full_batch_s: float | None
    rounds: int
    refused: str | None = None

    @property
    def per_request_s(self) -> float:
        """The score ``auto`` minimises: the mean of the two."""
        if self.batch_1_s is None or self.full_batch_s is None:
            return float("inf")
        return (self.batch_1_s + self.full_batch_s) / 2


def fastest_engine(analysis: Analysis, normalization: Normalization, *, device: str = "cpu", batch_size: int = 8,
                   candidates: tuple[str, ...] = AUTO_CANDIDATES, rounds: int = 5,
                   note: Callable[[str], None] | None = None) -> tuple[TailEngine, list[EngineTiming]]:
    """Build each candidate, time the whole model on a uint8 input at batch 1 and at ``batch_size``
    (rounds interleaved across candidates, medians after one untimed round), and return the one with the
    least mean time per request, with every candidate's timing. A candidate that cannot be built (not
    installed, outside the tolerance) is reported as refused."""
    engines: dict[str, TailEngine] = {}
    refused: dict[str, str] = {}
    for name in candidates:
        try:
            engine = create_tail_engine(name, analysis, normalization, device)
            engine.tail(INPUT_CUT)
            engines[name] = engine
        except EdgesplitError as exc:
            refused[name] = str(exc)
            if note:
                note(f"{name}: {exc}")
    if not engines:
        raise EdgesplitError("no tail engine could run here: " + "; ".join(f"{n}: {r}" for n, r in refused.items()))
    image = np.random.default_rng(0).integers(0, 256, (1, *analysis.input_shape), dtype=np.uint8)
    batches = {1: image, batch_size: np.repeat(image, batch_size, axis=0)}
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds + 1):
        for size, batch in batches.items():
            for name, engine in engines.items():
                began = time.perf_counter()
                engine.run(INPUT_CUT, batch)
                samples.setdefault((name, size), []).append((time.perf_counter() - began) / size)
    timings = [EngineTiming(name, statistics.median(samples[name, 1][1:]),
                            statistics.median(samples[name, batch_size][1:]), rounds) if name in engines
               else EngineTiming(name, None, None, 0, refused[name]) for name in candidates]
    best = min(timings, key=lambda t: t.per_request_s)
    return engines[best.name], timings


def profile_engine(engine: TailEngine, cuts: list[Cut], *, batch_sizes: tuple[int, ...], repeats: int = 10,
                   idle_s: float = 0.0) -> Profile:
    """A server profile measured as ``engine`` serves: each cut's tail and the whole model timed through
    ``engine.run`` (with its batch plan, if any) per batch size, after one untimed run, idling ``idle_s``
    before each timed one. A server runs no heads: head times are the whole model's less the tail's
    ("estimated"). Codec times and sizes come from :func:`edgesplit.measure.measure`. Tails built to be
    timed are dropped afterwards (:meth:`TailEngine.temporary_tails`)."""
    from edgesplit.measure import measure

    missing = [c.name for c in cuts if c.index not in engine.cuts]
    if missing:
        raise EdgesplitError(f"cuts {', '.join(missing)} cannot be sent to a server (not only tensors with a batch "
                             "dimension cross them); profile natural bottlenecks")
    base = measure(engine.analysis, cuts, role="server", batch_sizes=(1,), method="flops", repeats=1, warmup=0)
    timings: dict[int, dict[int, Timing]] = {}
    for cut_id in (INPUT_CUT, *(c.index for c in cuts)):
        one = [t[:1].numpy() for t in engine.example(cut_id)]
        batches = {b: tuple(np.repeat(t, b, axis=0) for t in one) for b in batch_sizes}
        with engine.temporary_tails():  # one tail at a time: at most one more in memory
            timings[cut_id] = {b: _timed(lambda: engine.run(cut_id, batches[b]), _repeats(repeats, b), idle_s)
                               for b in batch_sizes}
    model_s = timings[INPUT_CUT]
    tail_s = {c.name: timings[c.index] for c in cuts}

    def head(c: Cut) -> dict[int, Timing]:
        return {b: Timing(*(max(0.0, getattr(model_s[b], f) - getattr(tail_s[c.name][b], f))
                            for f in ("median_s", "p10_s", "p90_s")), model_s[b].repeats, "estimated")
                for b in batch_sizes}

    total_flops = (cuts[0].head_flops + cuts[0].tail_flops) if cuts else 0
    description = engine.engine_description()
    return Profile(
        model=base.model, role="server", input_shape=base.input_shape, batch_sizes=tuple(batch_sizes),
        method=f"{engine.name} engine, whole tails as served", slowdown=1.0,
        machine={**base.machine, "idle_s": idle_s, "engine": description["name"], "device": description["device"]},
        model_s=model_s,
        cuts={c.name: replace(base.cuts[c.name], head_s=head(c), tail_s=tail_s[c.name]) for c in cuts},
        input_codecs=base.input_codecs, output_bytes=base.output_bytes,
        flops_per_s={b: total_flops * b / t.median_s for b, t in model_s.items()} if total_flops else {})


def _repeats(at_batch_1: int, batch_size: int) -> int:
    """Fewer timed runs for larger batches, as :func:`edgesplit.measure.measure` does."""
    return at_batch_1 if batch_size == 1 else max(3, at_batch_1 // max(1, batch_size // 4))


def _timed(call: Callable[[], Any], repeats: int, idle_s: float) -> Timing:
    call()  # untimed: builds what the call needs
    samples = []
    for _ in range(repeats):
        if idle_s:
            time.sleep(idle_s)
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return Timing.of(samples)
