"""A model's answer, whatever its structure, and what a device reads from it (numpy only).

An :data:`Output` is a tensor (a classifier's logits), or dicts and lists of them, as models return them:
``{"out": masks}`` for torchvision's segmentation models. Tuples become lists. The server answers one as
a frame of named tensors (:func:`edgesplit.wire.flatten_tree`); the device reads from it what a user
compares: a classifier's top-1 class, a segmentation model's class per pixel, a detector's boxes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol, Union

import numpy as np

from edgesplit.errors import FrameError

Output = Union[np.ndarray, dict[str, "Output"], list["Output"]]
Batch = Union[np.ndarray, tuple[np.ndarray, ...]]  # what crosses a cut: one tensor, or several in order


def map_arrays(fn: Callable[[Any], np.ndarray], output: Any) -> Output:
    """``output`` with ``fn`` applied to every tensor (dicts keep their keys, tuples become lists)."""
    if isinstance(output, dict):
        return {key: map_arrays(fn, value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return [map_arrays(fn, value) for value in output]
    return fn(output)


def arrays(output: Output) -> list[np.ndarray]:
    """Every tensor in ``output``, in order."""
    found: list[np.ndarray] = []
    map_arrays(lambda a: found.append(a) or a, output)
    return found


def refill(template: Any, tensors: list[Any]) -> Any:
    """``template``'s structure with its tensors replaced by ``tensors``, in order."""
    supply = iter(tensors)
    return map_arrays(lambda _: next(supply), template)


def rows(output: Output, start: int, stop: int) -> Output:
    """Rows ``start:stop`` of every tensor: one request's share of a batch's answer."""
    return map_arrays(lambda a: a[start:stop], output)


def as_tensors(batch: Any) -> tuple[Any, ...]:
    """What crosses a cut as a tuple of its tensors, in order (one tensor: a tuple of one)."""
    return batch if isinstance(batch, tuple) else (batch,)


def batch_rows(batch: Batch) -> int:
    """How many requests a batch holds (its tensors' first dimension)."""
    return len(as_tensors(batch)[0])


def join(batches: list[Batch]) -> Batch:
    """Several requests' inputs as one batch, tensor by tensor."""
    if len(batches) == 1:
        return batches[0]
    if isinstance(batches[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*batches))
    return np.concatenate(batches)


def check_finite(output: Output) -> None:
    """FrameError unless every value of every tensor is finite (a float answer that is not is no answer)."""
    for array in arrays(output):
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise FrameError("an answer whose values are not all finite")


def top1(output: Output) -> int | None:
    """A classifier's class for the first request: the argmax of a lone (batch, classes) tensor; None for
    other outputs."""
    if isinstance(output, np.ndarray) and output.ndim == 2:
        return int(np.argmax(output[0]))
    return None


def pixel_classes(output: Output) -> np.ndarray | None:
    """A segmentation model's class per pixel for the first request: the argmax over the channels of its
    ``out`` tensor (batch, classes, H, W), or that tensor itself where it holds classes already (batch, H, W)
    of integers (:class:`PixelClasses`); None for other outputs."""
    out = output.get("out") if isinstance(output, dict) else None
    if isinstance(out, np.ndarray) and out.ndim == 4:
        return out[0].argmax(axis=0).astype(np.int32)
    if isinstance(out, np.ndarray) and out.ndim == 3 and out.dtype.kind in "ui":
        return out[0].astype(np.int32)
    return None


class Postprocess(Protocol):
    """What runs after a model's last layer, on the server after the tail and on the device after a local
    run or a fallback: :class:`PixelClasses`, :class:`edgesplit.detection.DetectionPostprocess`."""

    varies: bool  # whether the answer's shapes change from image to image (a detector's boxes)

    def answer(self, output: Output) -> Output: ...


class PixelClasses:
    """A segmentation model's answer as a user reads it: the class of every pixel, batch first (uint8 where
    the classes fit, else int32), from its ``out`` scores. Exact (the argmax of exact scores) and 4 × classes
    times smaller: LRASPP at 520×520 answers 270 KB instead of 22.7 MB of float32 scores."""

    varies = False  # one shape for every image

    def answer(self, output: Output) -> Output:
        scores = output["out"]  # type: ignore[index]
        dtype = np.uint8 if scores.shape[1] <= 256 else np.int32
        return {"out": scores.argmax(axis=1).astype(dtype)}


DETECTION_KEYS = frozenset({"boxes", "scores", "labels"})


def detections(output: Output) -> dict[str, np.ndarray] | None:
    """A detector's answer for one image: ``{"boxes": (K, 4), "scores": (K,), "labels": (K,)}``; None for
    other outputs."""
    if isinstance(output, dict) and set(output) == DETECTION_KEYS and all(
            isinstance(a, np.ndarray) for a in output.values()):
        return output  # type: ignore[return-value]
    return None


def box_count(output: Output) -> int | None:
    """How many boxes a detector's answer holds; None for other outputs."""
    found = detections(output)
    return None if found is None else len(found["boxes"])


def answer_digest(output: Output) -> str:
    """16 hex digits naming what the answer says: the top-1 class, the class of every pixel, a detector's
    boxes (to 0.01 px) and labels, or else every tensor's bytes. Two answers that agree have the same
    digest, so runs compare without keeping masks."""
    found = detections(output)
    decided = pixel_classes(output)
    if found is not None:
        parts = [np.rint(found["boxes"].astype(np.float64) * 100).astype(np.int64), found["labels"].astype(np.int64)]
    elif decided is None:
        label = top1(output)
        parts = [np.asarray([label])] if label is not None else arrays(output)
    else:
        parts = [decided]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.dtype}{part.shape}".encode())
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


def pixel_agreement(output: Output, reference: Output) -> float:
    """The share of pixels whose class agrees with ``reference``'s (1.0 for equal masks)."""
    got, expected = pixel_classes(output), pixel_classes(reference)
    if got is None or expected is None or got.shape != expected.shape:
        raise ValueError("pixel agreement compares two segmentation answers of one size")
    return float((got == expected).mean())


def mean_iou(output: Output, reference: Output) -> float:
    """Mean intersection over union of the classes either answer uses, against ``reference``'s classes."""
    got, expected = pixel_classes(output), pixel_classes(reference)
    if got is None or expected is None or got.shape != expected.shape:
        raise ValueError("mIoU compares two segmentation answers of one size")
    ious = [np.logical_and(got == k, expected == k).sum() / np.logical_or(got == k, expected == k).sum()
            for k in np.union1d(np.unique(got), np.unique(expected))]
    return float(np.mean(ious))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), boxes as
    (x1, y1, x2, y2): an (N, M) array."""
    a, b = a.astype(np.float64).reshape(-1, 4), b.astype(np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_agreement(output: Output, reference: Output, iou: float = 0.5) -> float:
    """The share of ``reference``'s boxes that ``output`` finds: its boxes, by descending score, each match
    the unmatched reference box of the same label that overlaps it most, if at IoU >= ``iou`` (one-to-one).
    1.0 when both have no boxes; 0.0 when only the reference has none."""
    got, expected = detections(output), detections(reference)
    if got is None or expected is None:
        raise ValueError("box agreement compares two detection answers (boxes, scores, labels)")
    if len(expected["boxes"]) == 0:
        return 1.0 if len(got["boxes"]) == 0 else 0.0
    overlaps = box_iou(got["boxes"], expected["boxes"])
    overlaps[got["labels"].reshape(-1, 1) != expected["labels"].reshape(1, -1)] = -1.0
    free = np.ones(len(expected["boxes"]), bool)
    for row in np.argsort(-got["scores"], kind="stable"):
        candidates = np.where(free, overlaps[row], -1.0)
        best = int(np.argmax(candidates))
        if candidates[best] >= iou:
            free[best] = False
    return float((~free).mean())
