"""What runs the model on the device: torch (from an analysis) or ONNX Runtime (from an export folder).

Both speak numpy, so the client does not care which one it holds:
``normalize(image)``, ``local(x)``, ``head(cut, x)``, ``tail(cut, mid)``, ``model_id``, ``cut_ids``,
``answer_varies``.
:class:`OnnxEngine` needs only numpy and onnxruntime (``pip install 'edgesplit[device]'``).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgesplit.answers import from_manifest
from edgesplit.codecs import split_codec_costs
from edgesplit.errors import EdgesplitError
from edgesplit.images import normalizer
from edgesplit.latency import Option
from edgesplit.outputs import Batch, Output, Postprocess, as_tensors, map_arrays
from edgesplit.profile import CutProfile, Profile, Timing
from edgesplit.wire import OUTPUT_CUT, encode_tensors, flatten_tree, unflatten_tree

EXPORT_FORMAT = "edgesplit-export/1"


class DeviceEngine(Protocol):
    """``local`` and ``tail`` return the model's output (:data:`~edgesplit.outputs.Output`: logits, or the
    model's own structure); ``head`` returns what crosses the cut (a tuple where several tensors do).
    ``answer_varies``: whether the answer's shapes vary from image to image (a detector's boxes), so
    that only its tensors' names, dtypes and trailing dimensions are known in advance."""

    model_id: bytes
    input_shape: tuple[int, ...]
    cut_ids: dict[str, int]
    answer_varies: bool

    def normalize(self, image: np.ndarray) -> np.ndarray: ...
    def local(self, x: np.ndarray) -> Output: ...
    def head(self, cut: str, x: np.ndarray) -> Batch: ...
    def tail(self, cut: str, mid: Batch) -> Output: ...
    def encode(self, option: Option, source: Batch, make: Callable[[], bytes]) -> bytes: ...


class TorchEngine:
    """The analysed torch model; heads and tails are built per cut on first use and share its weights.
    With the model's ``postprocess`` (:class:`~edgesplit.outputs.Postprocess`: a segmentation model's classes
    per pixel, a detector's boxes), ``local`` and ``tail`` answer what the server answers."""

    def __init__(self, analysis: Any, normalization: Any, postprocess: Postprocess | None = None) -> None:
        import torch

        from edgesplit.runtime.tail_engine import model_id

        self._torch = torch
        self.analysis = analysis
        self.model = analysis.graph.model.eval()
        self.model_id = model_id(self.model)
        self.input_shape = tuple(analysis.input_shape)
        self.cut_ids = {c.name: c.index for c in analysis.cuts}
        self._normalize = normalizer(normalization.mean, normalization.std)
        self._pairs: dict[str, tuple[Any, Any]] = {}
        self.postprocess = postprocess
        self.answer_varies = postprocess is not None and postprocess.varies

    def normalize(self, image: np.ndarray) -> np.ndarray:
        return self._normalize(image[None])

    def local(self, x: np.ndarray) -> Output:
        with self._torch.inference_mode():
            return self._finish(map_arrays(lambda t: t.numpy(), self.model(self._torch.from_numpy(x))))

    def head(self, cut: str, x: np.ndarray) -> Batch:
        with self._torch.inference_mode():
            mid = self._pair(cut)[0](self._torch.from_numpy(x))
            return tuple(t.numpy() for t in mid) if isinstance(mid, tuple) else mid.numpy()

    def tail(self, cut: str, mid: Batch) -> Output:
        with self._torch.inference_mode():
            tensors = [self._torch.from_numpy(m) for m in as_tensors(mid)]
            return self._finish(map_arrays(lambda t: t.numpy(), self._pair(cut)[1](*tensors)))

    def encode(self, option: Option, source: Batch, make: Callable[[], bytes]) -> bytes:
        """The frame of ``option`` that ``make`` builds from ``source`` (the image, or the head's output)."""
        return make()

    def _finish(self, output: Output) -> Output:
        """The model's output, or a detector's detections of it."""
        return output if self.postprocess is None else self.postprocess.answer(output)

    def _pair(self, cut: str) -> tuple[Any, Any]:
        if cut not in self._pairs:
            from edgesplit.splitter import split

            self._pairs[cut] = split(self.analysis, cut)
        return self._pairs[cut]


class OnnxEngine:
    """Heads, tails and the whole model from ``edgesplit export``'s folder, run by ONNX Runtime. A cut where
    several tensors cross has a head that returns a tuple of them and a tail that takes that tuple. With the
    manifest's ``"postprocess"`` (:mod:`edgesplit.answers`: a segmentation model's classes, a detector's
    boxes, in numpy), ``local`` and ``tail`` answer what the server answers."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgesplitError("--engine onnx needs onnxruntime: pip install 'edgesplit[device]'") from None
        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise EdgesplitError(f"{folder} is not an edgesplit export folder ({manifest_path}: {exc})") from exc
        if manifest.get("format") != EXPORT_FORMAT:
            raise EdgesplitError(f"{manifest_path} has format {manifest.get('format')!r}, expected {EXPORT_FORMAT!r}")
        self.manifest = manifest
        self.name = manifest["model"]
        self.model_id = bytes.fromhex(manifest["model_id"])
        self.input_shape = tuple(manifest["input_shape"])
        cuts = manifest["cuts"]
        self.cut_ids = {c["name"]: c["id"] for c in cuts}
        self.postprocess = from_manifest(manifest["postprocess"], self.folder) if "postprocess" in manifest else None
        self.answer_varies = self.postprocess is not None and self.postprocess.varies
        self._normalize = normalizer(manifest["normalization"]["mean"], manifest["normalization"]["std"])
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads

        def session(name: str) -> Any:
            return ort.InferenceSession(str(self.folder / name), options, providers=["CPUExecutionProvider"])

        self._model = session(manifest["model_file"])
        self._heads = {c["name"]: session(c["head"]) for c in cuts}
        self._tails = {c["name"]: session(c["tail"]) for c in cuts}
        self._crossing = {c["name"]: c["crossing"] for c in cuts}
        self._elements = {c["name"]: sum(int(np.prod(shape)) for shape in c["shapes"]) for c in cuts}

    def normalize(self, image: np.ndarray) -> np.ndarray:
        return self._normalize(image[None])

    def local(self, x: np.ndarray) -> Output:
        return self._answer(self._model.run(None, {"input": x}))

    def head(self, cut: str, x: np.ndarray) -> Batch:
        mid = self._heads[cut].run(None, {"input": x})
        return mid[0] if len(mid) == 1 else tuple(mid)

    def tail(self, cut: str, mid: Batch) -> Output:
        return self._answer(self._tails[cut].run(None, dict(zip(self._crossing[cut], as_tensors(mid), strict=True))))

    def encode(self, option: Option, source: Batch, make: Callable[[], bytes]) -> bytes:
        """The frame of ``option`` that ``make`` builds from ``source`` (the image, or the head's output)."""
        return make()

    def _answer(self, results: list[np.ndarray]) -> Output:
        """The model's output from a session's results (the logits, or its structure rebuilt from the outputs'
        names, ``edgesplit.export.output_names``), post-processed where the manifest says so."""
        names = self.manifest.get("outputs", ["logits"])
        output = results[0] if names == ["logits"] else unflatten_tree(zip(names, results))
        return output if self.postprocess is None else self.postprocess.answer(output)

    def profile(self, images: list[np.ndarray], repeats: int = 5) -> Profile:
        """This device's head, tail and whole-model times at batch 1 under ONNX Runtime (measured now)."""
        x = self.normalize(images[0])

        def timed(call: Any) -> Timing:
            samples = []
            for i in range(repeats + 1):
                started = time.perf_counter()
                call()
                if i:
                    samples.append(time.perf_counter() - started)
            return Timing.of(samples)

        cuts = {}
        for name, cut_id in self.cut_ids.items():
            mid = self.head(name, x)
            cuts[name] = CutProfile(name, cut_id, self._elements[name], {1: timed(lambda: self.head(name, x))},
                                    {1: timed(lambda: self.tail(name, mid))},
                                    split_codec_costs([self.head(name, self.normalize(i)) for i in images]),
                                    tuple(as_tensors(mid)[0].shape[1:]))
        raw = int(np.prod(self.input_shape))
        return Profile(self.name, "device", self.input_shape, (1,), "onnxruntime", 1.0,
                       {"engine": "onnxruntime"}, {1: timed(lambda: self.local(x))}, cuts,
                       {"raw": {"bytes": raw, "encode_s": 0.0, "decode_s": 0.0},
                        **_jpeg_sizes(images, 90, repeats)},
                       len(encode_tensors(flatten_tree(self.local(x)), model_id=self.model_id, cut=OUTPUT_CUT)))


def _jpeg_sizes(images: list[np.ndarray], quality: int, repeats: int) -> dict[str, dict[str, float]]:
    from edgesplit.codecs import jpeg_encode

    sizes, encode = [], []
    for image in images:
        for _ in range(repeats):
            started = time.perf_counter()
            data = jpeg_encode(image, quality)
            encode.append(time.perf_counter() - started)
        sizes.append(len(data))
    return {f"jpeg:{quality}": {"bytes": statistics.mean(sizes), "encode_s": statistics.median(encode),
                               "decode_s": 0.0}}


class EmulatedDevice:
    """A device we do not have, emulated from its profile (e.g. this machine's, slowed 8x): each head, tail
    or whole-model call is stretched by a sleep to the time the profile gives it (never shortened). The
    processor is idle while it sleeps, as it would be with the device on a board of its own, and the
    device's time does not pick up this machine's noise amplified.

    With ``replay``, each result is computed once per input and replayed afterwards (still stretched to the
    profile's time): the answers stay real, and many emulated devices on one machine neither steal the
    server's processor nor slow each other down."""

    def __init__(self, engine: DeviceEngine, profile: Profile, replay: bool = False) -> None:
        self.engine = engine
        self.profile = profile
        self.model_id = engine.model_id
        self.input_shape = engine.input_shape
        self.cut_ids = engine.cut_ids
        self.answer_varies = engine.answer_varies
        self._replay: dict[tuple[str, str | None, bytes], Any] | None = {} if replay else None
        self._lock = threading.Lock()

    def normalize(self, image: np.ndarray) -> np.ndarray:
        return self.engine.normalize(image)

    def local(self, x: np.ndarray) -> Output:
        return self._stretched(self.profile.tail_s(None, 1), "local", None, x, lambda: self.engine.local(x))

    def head(self, cut: str, x: np.ndarray) -> Batch:
        return self._stretched(self.profile.head_s(cut), "head", cut, x, lambda: self.engine.head(cut, x))

    def tail(self, cut: str, mid: Batch) -> Output:
        return self._stretched(self.profile.tail_s(cut, 1), "tail", cut, mid, lambda: self.engine.tail(cut, mid))

    def encode(self, option: Option, source: Batch, make: Callable[[], bytes]) -> bytes:
        """The frame, in the device's encode time for ``option`` (a JPEG, a quantised head output)."""
        return self._stretched(option.encode_s, "encode", option.name, source, make)

    def _stretched(self, seconds: float, kind: str, cut: str | None, x: Batch, run: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        if self._replay is None:
            out = run()
        else:
            digest = hashlib.blake2b(digest_size=16)
            for part in as_tensors(x):
                digest.update(np.ascontiguousarray(part).tobytes())
            key = (kind, cut, digest.digest())
            with self._lock:
                out = self._replay.get(key)
            if out is None:
                out = run()
                with self._lock:
                    self._replay[key] = out
        time.sleep(max(0.0, seconds - (time.perf_counter() - started)))
        return out
