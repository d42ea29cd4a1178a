"""A model's answer, whatever its structure, and what a device reads from it (numpy only).

An :data:`Output` is a tensor (a classifier's logits), or dicts and lists of them, as models return them:
``{"out": masks}`` for torchvision's segmentation models. Tuples become lists. The server answers one as
a frame of named tensors (:func:`edgesplit.wire.flatten_tree`); the device reads from it what a user
compares: a classifier's top-1 class, a segmentation model's class per pixel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Union

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


def batch_rows(batch: Batch) -> int:
    """How many requests a batch holds (its tensors' first dimension)."""
    return len(batch[0]) if isinstance(batch, tuple) else len(batch)


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
    ``out`` tensor (batch, classes, H, W); None for other outputs."""
    if isinstance(output, dict) and isinstance(output.get("out"), np.ndarray) and output["out"].ndim == 4:
        return output["out"][0].argmax(axis=0).astype(np.int32)
    return None


def answer_digest(output: Output) -> str:
    """16 hex digits naming what the answer says: the top-1 class, the class of every pixel, or else every
    tensor's bytes. Two answers that agree have the same digest, so runs compare without keeping masks."""
    decided = pixel_classes(output)
    if decided is None:
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
