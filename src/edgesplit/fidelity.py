"""How faithfully a split answers: every cut × split codec, and full offload, against the whole fp32 model.

Each image's head output is sent through the codec as the device sends it (one batch-1 frame: encoded,
compressed, then decoded as the receiver decodes it; where several tensors cross, one frame of them, each
sent with the codec); the tail runs on the decoded tensors in batches, and its answer is compared with
the whole fp32 model's on the same image. Full offload rows (cut ``"input"``) send the uint8 image
itself, ``raw`` or ``jpeg:Q``, and run the whole model on what arrives. A classifier's row
(:class:`FidelityRow`) compares logits::

    bytes           mean payload bytes of a frame, as sent (after compression)
    fp32_bytes      the crossing tensor at batch 1 in float32 (for "input": the normalised image)
    agreement       share of images whose top-1 class is fp32's, with a 95 % Wilson interval
    kl              mean KL(softmax(fp32 logits) || softmax(split logits)), in nats
    max_logit_diff  the largest |logit difference| over every image and class
    encode_ms       median per image at batch 1, the codec alone (no model); decode_ms likewise

A tail on a batch answers as it would per image up to float noise, and agreement compares top-1
classes, so batching does not move it. The whole model runs on the same batches, so an fp32 row's
max_logit_diff is the split's own inexactness (0 where it is bit-exact).

A segmentation model's row (:class:`PixelRow`, for answers :func:`edgesplit.outputs.pixel_classes`
reads) compares the class of every pixel instead, and keeps ``bytes``, ``fp32_bytes`` and the times::

    pixel_agreement      mean over images of the share of pixels whose class is fp32's
    min_pixel_agreement  the least of them
    miou                 mean over images of the mIoU against fp32's classes (:func:`edgesplit.outputs.mean_iou`)

The images are natural photos, framed to the model's input, plus random-resized crops of them: the
photos alone are too few to tell 99 % from 95 %.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from edgesplit.codecs import input_codec, payload_length, split_codec
from edgesplit.errors import EdgesplitError
from edgesplit.images import IMAGE_SUFFIXES, fit
from edgesplit.outputs import Batch, Output, as_tensors, map_arrays, mean_iou, pixel_agreement, pixel_classes
from edgesplit.outputs import rows as answer_rows

if TYPE_CHECKING:
    from edgesplit.runtime.device_engines import DeviceEngine

DEFAULT_CODECS = ("fp32", "fp16", "bf16", "int8", "int8c", "int6c", "int5c", "int4c", "int8:zstd", "int8c:zstd", "ecq6",
                  "ecq5", "ecq4")
JPEG_QUALITIES = (50, 75, 90, 95)
INPUT = "input"  # the cut name of full-offload rows
TOP1, PIXELS = "top-1", "pixels"  # what a model's rows compare: a classifier's logits, a segmentation's classes
WILSON_Z = 1.959963984540054  # the normal quantile of a two-sided 95 % interval


# ----------------------------------------------------------------------------------------------------
# Images


def _skimage_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        picture = getattr(data, name)()
        return picture[0] if isinstance(picture, tuple) else picture  # stereo_motorcycle: (left, right, disparity)

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as picture:
        return np.asarray(picture.convert("RGB"))


# The distinct natural colour photos that ship with scikit-image and matplotlib. Left out: skimage's cat
# (chelsea again), hubble_deep_field (astronomy), immunohistochemistry and retina (microscopy, fundus),
# colorwheel and logo (graphics), matplotlib's Minduka pack (clip art); stereo_motorcycle gives its left view.
NATURAL_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage_photo("astronaut"),
    "chelsea": _skimage_photo("chelsea"),
    "coffee": _skimage_photo("coffee"),
    "rocket": _skimage_photo("rocket"),
    "motorcycle": _skimage_photo("stereo_motorcycle"),
    "grace_hopper": _grace_hopper,
}


def natural_photos() -> dict[str, np.ndarray]:
    """:data:`NATURAL_PHOTOS` at full size, uint8 (3, H, W)."""
    if importlib.util.find_spec("skimage") is None:
        raise EdgesplitError("the built-in photos need scikit-image: pip install scikit-image, "
                             "or pass --images DIR")
    return {name: np.ascontiguousarray(load().transpose(2, 0, 1)) for name, load in NATURAL_PHOTOS.items()}


def read_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """The folder's images at full size, uint8 (3, H, W), by file name (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgesplitError(f"--images {folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise EdgesplitError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    photos = {}
    for path in paths:
        try:
            with Image.open(path) as picture:
                photos[path.name] = np.asarray(picture.convert("RGB")).transpose(2, 0, 1).copy()
        except OSError as exc:
            raise EdgesplitError(f"cannot read image {path}: {exc}") from exc
    return photos


@dataclass(frozen=True)
class LabelledImage:
    """One uint8 image (3, H, W) at the model's input size, and where it came from."""

    label: str  # "coffee", or "coffee/crop-17"
    pixels: np.ndarray = field(repr=False)


def random_resized_crop(picture: np.ndarray, input_shape: tuple[int, ...], rng: np.random.Generator, *,
                        scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """A crop of ``scale`` of the picture's area and aspect ratio in ``ratio`` (log-uniform), resized to the
    input (bilinear) and flipped left-right half the time, as torchvision's RandomResizedCrop; after ten
    crops that do not fit, the whole picture."""
    _, height, width = picture.shape
    top, left, crop_height, crop_width = 0, 0, height, width
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            crop_height, crop_width = h, w
            break
    crop = Image.fromarray(np.ascontiguousarray(picture[:, top:top + crop_height, left:left + crop_width]
                                                .transpose(1, 2, 0)))
    resized = np.asarray(crop.resize((input_shape[2], input_shape[1]), Image.BILINEAR)).transpose(2, 0, 1)
    return np.ascontiguousarray(resized[:, :, ::-1] if rng.random() < 0.5 else resized)


def evaluation_images(photos: Mapping[str, np.ndarray], input_shape: tuple[int, ...], *, augment: int = 0,
                      seed: int = 0) -> list[LabelledImage]:
    """Each photo framed to the input (:func:`edgesplit.images.fit`), then ``augment`` random-resized crops
    taken from the photos in turn (seeded)."""
    if not photos:
        raise EdgesplitError("no photos to evaluate on")
    rng = np.random.default_rng(seed)
    names = list(photos)
    images = [LabelledImage(name, fit(photos[name], input_shape)) for name in names]
    for k in range(augment):
        name = names[k % len(names)]
        images.append(LabelledImage(f"{name}/crop-{k}", random_resized_crop(photos[name], input_shape, rng)))
    return images


# ----------------------------------------------------------------------------------------------------
# Measurement


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default): unlike p ± z·se, it stays inside [0, 1]
    and does not collapse to a point at 0 % or 100 %."""
    if trials <= 0:
        raise ValueError(f"a proportion needs at least one trial, got {trials}")
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    low, high = centre - half, centre + half  # exactly 0 and 1 at 0 % and 100 %, but for rounding
    return (0.0 if successes == 0 else low), (1.0 if successes == trials else high)


@dataclass(frozen=True, kw_only=True)
class FidelityRow:
    """One cut × codec (or full offload) against the whole fp32 model (see the module docstring)."""

    cut: str
    codec: str
    bytes: float
    fp32_bytes: int
    agreement: float
    agreement_ci: tuple[float, float]
    kl: float
    max_logit_diff: float
    encode_ms: float
    decode_ms: float
    exact: bool
    head_mflops: float | None = None  # what the device computes before it sends (0 for offload; None: not given)
    agrees: tuple[bool, ...] = field(default=(), repr=False)  # per image, in order: top-1 is fp32's

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "agrees"}, "agreement_ci": list(self.agreement_ci)}


@dataclass(frozen=True, kw_only=True)
class PixelRow:
    """One cut × codec (or full offload) of a segmentation model against the whole fp32 model (see the
    module docstring)."""

    cut: str
    codec: str
    bytes: float
    fp32_bytes: int
    pixel_agreement: float
    min_pixel_agreement: float
    miou: float
    encode_ms: float
    decode_ms: float
    exact: bool
    head_mflops: float | None = None  # as FidelityRow's
    agreements: tuple[float, ...] = field(default=(), repr=False)  # per image, in order: its pixel agreement

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "agreements"}


@dataclass(frozen=True)
class FidelityReport:
    """Every row of one model on one set of images; ``to_dict`` is fidelity.json."""

    model: str
    images: tuple[str, ...]  # the photos, before augmentation
    augmented: int  # random-resized crops added to them
    rows: tuple[FidelityRow | PixelRow, ...]
    seed: int = 0  # of the crops

    @property
    def metric(self) -> str:
        """What the rows compare: :data:`PIXELS` for a segmentation model's, else :data:`TOP1`."""
        return PIXELS if self.rows and isinstance(self.rows[0], PixelRow) else TOP1

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "images": list(self.images), "augmented": self.augmented,
                "seed": self.seed, "results": [row.to_dict() for row in self.rows]}

    def row(self, cut: str, codec: str) -> FidelityRow | PixelRow:
        for row in self.rows:
            if (row.cut, row.codec) == (cut, codec):
                return row
        raise KeyError(f"no row for cut {cut!r} and codec {codec!r}")


@dataclass
class _Transfers:
    """What one cut × codec sent and got back, image after image."""

    sizes: list[int] = field(default_factory=list)
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)  # per batch: what :func:`_score` keeps of the answer

    def send(self, encode: Callable[..., bytes], array: Batch, **options: Any) -> Batch:
        """Encode ``array`` (or several tensors) as one frame and decode it as the receiver does (what
        ``roundtrip`` does, timed in halves)."""
        from edgesplit.wire import decode_frame

        started = time.perf_counter()
        frame = encode(array, **options)
        encoded = time.perf_counter()
        tensors = decode_frame(frame).tensors
        decoded = tuple(t.array for t in tensors) if isinstance(array, tuple) else tensors[0].array
        self.decode_s.append(time.perf_counter() - encoded)
        self.encode_s.append(encoded - started)
        self.sizes.append(payload_length(frame))
        return decoded


def parse_codecs(spec: str) -> tuple[str, ...]:
    """Comma-separated split codecs, each checked (an unknown one raises, naming those that exist)."""
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    if not names:
        raise EdgesplitError("--codecs names no codec: give e.g. fp32,int8")
    for name in names:
        split_codec(name)
    return names


def parse_qualities(spec: str) -> tuple[int, ...]:
    """Comma-separated JPEG qualities 1..100 (an empty string: none)."""
    codecs = [input_codec(f"jpeg:{part.strip()}") for part in spec.split(",") if part.strip()]
    return tuple(codec.quality for codec in codecs if codec.quality is not None)


def answer_kind(answer: Output) -> str:
    """What fidelity compares of a model whose whole answer (on a batch) is ``answer``: :data:`PIXELS` for a
    segmentation model's, :data:`TOP1` for a classifier's logits (batch, classes); others raise."""
    if pixel_classes(answer) is not None:
        return PIXELS
    if isinstance(answer, np.ndarray) and answer.ndim == 2:
        return TOP1
    raise EdgesplitError("fidelity compares a classifier's logits (batch, classes) or a segmentation model's "
                         "{'out': (batch, classes, H, W)}; this model answers "
                         f"{map_arrays(lambda a: tuple(a.shape), answer)}")


def measure(engine: DeviceEngine, images: Sequence[LabelledImage], *, cuts: Sequence[str],
            codecs: Sequence[str] = DEFAULT_CODECS, jpeg_qualities: Sequence[int] = JPEG_QUALITIES,
            batch_size: int = 32, head_flops: Mapping[str, int] | None = None) -> list[FidelityRow | PixelRow]:
    """A row for every cut × codec, then raw and JPEG offload at each quality, on ``images``: each image's
    head output is computed once per cut, and the model or tail runs ``batch_size`` images at a time,
    once per distinct decoded batch (a lossless compression decodes what its codec alone decodes).
    A classifier's rows are :class:`FidelityRow`, a segmentation model's :class:`PixelRow`
    (:func:`answer_kind`). ``head_flops`` (per cut, from the analysis) puts the device's compute beside
    the bytes and the agreement: the three-way comparison of split-computing benchmarks."""
    if not images:
        raise EdgesplitError("fidelity needs at least one image")
    split_codecs = [split_codec(name) for name in codecs]
    input_codecs = [input_codec("raw")] + [input_codec(f"jpeg:{q}") for q in jpeg_qualities]
    batches = [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
    inputs = [np.concatenate([engine.normalize(image.pixels) for image in batch]) for batch in batches]
    expected = [engine.local(x) for x in inputs]
    kind = answer_kind(expected[0])
    make_row = _pixel_row if kind == PIXELS else functools.partial(_row, reference=np.concatenate(expected))
    results: list[FidelityRow | PixelRow] = []
    for cut in cuts:
        transfers = {codec.name: _Transfers() for codec in split_codecs}
        tail = functools.partial(engine.tail, cut)
        for x, want in zip(inputs, expected):
            crossing = engine.head(cut, x)
            answered: list[tuple[Batch, np.ndarray]] = []
            for codec in split_codecs:
                sent = transfers[codec.name]
                decoded = [sent.send(codec.frame, _image(crossing, i), model_id=engine.model_id, cut=0)
                           for i in range(len(x))]
                sent.scores.append(_answer(tail, _stack(decoded), kind, want, answered))
        mflops = head_flops[cut] / 1e6 if head_flops is not None else None
        fp32_bytes = 4 * sum(tensor[0].size for tensor in as_tensors(crossing))
        results += [replace(make_row(cut, codec.name, codec.exact, fp32_bytes, transfers[codec.name]),
                            head_mflops=mflops) for codec in split_codecs]
    for codec in input_codecs:
        sent = _Transfers()
        for batch, x, want in zip(batches, inputs, expected):
            arrived = [sent.send(codec.frame, image.pixels, model_id=engine.model_id) for image in batch]
            model_input = np.concatenate([engine.normalize(a[0]) for a in arrived])
            sent.scores.append(_answer(engine.local, model_input, kind, want, [(x, _score(kind, want, want))]))
        results.append(replace(make_row(INPUT, codec.name, codec.exact, 4 * images[0].pixels.size, sent),
                               head_mflops=0.0 if head_flops is not None else None))
    return results


def _image(crossing: Batch, i: int) -> Batch:
    """Image ``i``'s share of a head's output, at batch 1."""
    return tuple(t[i:i + 1] for t in crossing) if isinstance(crossing, tuple) else crossing[i:i + 1]


def _stack(decoded: list[Batch]) -> Batch:
    """Decoded batch-1 crossings as one float32 batch, tensor by tensor."""
    if isinstance(decoded[0], tuple):
        return tuple(np.concatenate(parts).astype(np.float32, copy=False) for parts in zip(*decoded))
    return np.concatenate(decoded).astype(np.float32, copy=False)


def _answer(run: Callable[[Batch], Output], x: Batch, kind: str, expected: Output,
            answered: list[tuple[Batch, np.ndarray]]) -> np.ndarray:
    """:func:`_score` of ``run(x)``, or the score already computed for an equal input (the model is
    deterministic)."""
    for earlier, score in answered:
        before, now = as_tensors(earlier), as_tensors(x)
        if len(before) == len(now) and all(map(np.array_equal, before, now)):
            return score
    score = _score(kind, run(x), expected)
    answered.append((x, score))
    return score


def _score(kind: str, answer: Output, expected: Output) -> np.ndarray:
    """What a row needs of a batch's answer: a classifier's logits; for a segmentation model, each image's
    pixel agreement and mIoU against ``expected`` (n, 2), not its masks."""
    if kind == TOP1:
        return np.asarray(answer)
    pairs = [(answer_rows(answer, i, i + 1), answer_rows(expected, i, i + 1)) for i in range(len(expected["out"]))]
    return np.array([(pixel_agreement(got, want), mean_iou(got, want)) for got, want in pairs])


def _row(cut: str, codec: str, exact: bool, fp32_bytes: int, sent: _Transfers, reference: np.ndarray) -> FidelityRow:
    expected, logits = reference.astype(np.float64), np.concatenate(sent.scores).astype(np.float64)
    agrees = logits.argmax(axis=1) == expected.argmax(axis=1)
    log_p, log_q = _log_softmax(expected), _log_softmax(logits)
    kl = float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())
    return FidelityRow(cut=cut, codec=codec, bytes=statistics.fmean(sent.sizes), fp32_bytes=int(fp32_bytes),
                       agreement=float(agrees.mean()), agreement_ci=wilson_interval(int(agrees.sum()), len(agrees)),
                       kl=max(kl, 0.0),  # float rounding can take a KL of ~1e-17 below 0
                       max_logit_diff=float(np.abs(logits - expected).max()),
                       encode_ms=1e3 * statistics.median(sent.encode_s),
                       decode_ms=1e3 * statistics.median(sent.decode_s), exact=exact, agrees=tuple(agrees.tolist()))


def _pixel_row(cut: str, codec: str, exact: bool, fp32_bytes: int, sent: _Transfers) -> PixelRow:
    scores = np.concatenate(sent.scores)
    agreements = scores[:, 0]
    return PixelRow(cut=cut, codec=codec, bytes=statistics.fmean(sent.sizes), fp32_bytes=int(fp32_bytes),
                    pixel_agreement=float(agreements.mean()), min_pixel_agreement=float(agreements.min()),
                    miou=float(scores[:, 1].mean()), encode_ms=1e3 * statistics.median(sent.encode_s),
                    decode_ms=1e3 * statistics.median(sent.decode_s), exact=exact,
                    agreements=tuple(agreements.tolist()))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ----------------------------------------------------------------------------------------------------
# Output


def table(report: FidelityReport) -> Any:
    """The rows as a rich table: a classifier's top-1 agreement, KL and logit difference; a segmentation
    model's pixel agreement (mean and least over images) and mIoU."""
    from rich.table import Table

    count = len(report.images) + report.augmented
    pixels = report.metric == PIXELS
    measured = ("pixel agreement = share of pixels whose class is the fp32 model's, mean over images" if pixels
                else "agreement = same top-1 as the fp32 model")
    result = Table(title=f"{report.model} · {count} images ({len(report.images)} photos + {report.augmented} "
                         f"crops) · {measured}")
    metrics = ("pixel agreement %", "least %", "mIoU %") if pixels else ("agreement %", "95 % CI", "KL",
                                                                        "max |Δlogit|")
    for column in ("cut", "codec", "head MFLOPs", "KB", "× fp32", *metrics, "encode ms", "decode ms"):
        result.add_column(column, justify="left" if column in ("cut", "codec") else "right")
    for row in report.rows:
        if isinstance(row, PixelRow):
            values = (f"{100 * row.pixel_agreement:.2f}", f"{100 * row.min_pixel_agreement:.2f}",
                      f"{100 * row.miou:.2f}")
        else:
            low, high = row.agreement_ci
            values = (f"{100 * row.agreement:.1f}", f"{100 * low:.1f}–{100 * high:.1f}", f"{row.kl:.2g}",
                      f"{row.max_logit_diff:.2g}")
        result.add_row(row.cut, row.codec, "-" if row.head_mflops is None else f"{row.head_mflops:.0f}",
                       f"{row.bytes / 1000:.1f}", f"{row.bytes / row.fp32_bytes:.3f}", *values,
                       f"{row.encode_ms:.2f}", f"{row.decode_ms:.2f}")
    return result


def _percent(row: FidelityRow | PixelRow) -> tuple[float, float, float]:
    """What the plot draws of a row, in %: the agreement, and the bar's low and high ends (a classifier's
    95 % interval; a segmentation model's least pixel agreement up to its mean)."""
    if isinstance(row, PixelRow):
        return 100 * row.pixel_agreement, 100 * row.min_pixel_agreement, 100 * row.pixel_agreement
    low, high = row.agreement_ci
    return 100 * row.agreement, 100 * low, 100 * high


def plot(report: FidelityReport, path: str | Path) -> None:
    """Agreement against bytes (log): one curve per cut across its codecs (colour: the cut; marker: the
    codec, hollow when compressed), JPEG offload across its qualities, raw offload. A classifier's
    agreement is top-1's, bars its 95 % intervals; a segmentation model's is the mean pixel agreement, bars
    down to the least image's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(10, 6), layout="constrained")
    cuts = list(dict.fromkeys(row.cut for row in report.rows if row.cut != INPUT))
    curves = [(f"cut {cut}", [row for row in report.rows if row.cut == cut], f"C{k % 10}", "-")
              for k, cut in enumerate(cuts)]
    offload = [row for row in report.rows if row.cut == INPUT]
    curves += [("JPEG input offload", [row for row in offload if row.codec != "raw"], "k", "--"),
               ("raw input offload", [row for row in offload if row.codec == "raw"], "0.4", "")]
    for label, rows, color, line in curves:
        rows = sorted(rows, key=lambda row: row.bytes)
        if not rows:
            continue
        x, (y, low, high) = [row.bytes for row in rows], np.array([_percent(row) for row in rows]).T
        ax.errorbar(x, y, yerr=[y - low, high - y], fmt="none", ecolor=color, alpha=0.35, capsize=2, lw=1)
        ax.plot(x, y, line, color=color, lw=1.2, label=label)
        for row, agreement in zip(rows, y):
            base, _, argument = row.codec.partition(":")
            compressed = row.cut != INPUT and bool(argument)
            ax.scatter(row.bytes, agreement, marker=_MARKERS.get(base, "o"), s=30, zorder=3,
                       edgecolors=color, facecolors="none" if compressed else color)
            if base == "jpeg":
                ax.annotate(f"q{argument}", (row.bytes, agreement), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("payload bytes per image, as sent (log)")
    ax.set_ylabel("pixel agreement with the fp32 model (%; mean, bars down to the least image)"
                  if report.metric == PIXELS else "top-1 agreement with the fp32 model (%)")
    count = len(report.images) + report.augmented
    ax.set_title(f"{report.model}: bytes and fidelity on {count} images "
                 f"({len(report.images)} photos + {report.augmented} crops)")
    ax.grid(True, which="both", alpha=0.3)
    placement = ax.legend(fontsize=8, loc="lower right", title="where the split is", title_fontsize=8)
    ax.add_artist(placement)
    codecs = list(dict.fromkeys(row.codec.partition(":")[0] for row in report.rows if row.cut != INPUT))
    handles = [Line2D([], [], ls="", marker=_MARKERS.get(name, "o"), color="0.3", label=name) for name in codecs]
    handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", color="0.3", label="hollow: + zstd/lz4"))
    ax.legend(handles=handles, fontsize=8, loc="lower left", title="codec", title_fontsize=8)
    fig.savefig(path, dpi=130)
    plt.close(fig)


_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "P", "int8": "^", "int8c": "v", "int6c": "X", "int5c": "p",
            "int4c": "D", "ecq6": "<", "ecq5": ">", "ecq4": "h", "raw": "D", "jpeg": "s"}
