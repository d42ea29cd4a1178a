"""A model's post-processing on a device without torch (numpy only), rebuilt from an export's manifest.

``edgesplit export`` describes what runs after the model's last layer under the manifest's ``"postprocess"``;
:func:`from_manifest` turns that description back into a :class:`~edgesplit.outputs.Postprocess`:

    kind            answer                      follows
    pixel_classes   the class of every pixel    :class:`edgesplit.outputs.PixelClasses` itself
    ssd             boxes, scores, labels       torchvision ``SSD.postprocess_detections``: softmax, per class
                                                over all anchors
    retinanet       boxes, scores, labels       ``RetinaNet.postprocess_detections``: sigmoid, top-k per level
    fcos            boxes, scores, labels       ``FCOS.postprocess_detections``: sqrt(class x centerness)

Detectors run torchvision's steps in float32 and in its order: box decoding, clipping to the input, the score
threshold, top-k (stable: ties keep the lower index), batched NMS as torchvision runs it on a CPU (the
coordinate trick up to 1000 boxes, class by class beyond), ``detections_per_img``. ``transform.postprocess``
is the identity: the core's input size is the original size. Boxes agree with torch's within 1e-4 and labels
exactly, bar scores that tie (torch orders them arbitrarily) or lie a float32 rounding from the threshold.

A manifest is untrusted input: every value is checked before use and the anchors are read with
``allow_pickle=False``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgesplit.errors import EdgesplitError
from edgesplit.outputs import Output, PixelClasses, Postprocess
from edgesplit.registry import Registry

Answer = dict[str, np.ndarray]  # one image's boxes (K, 4) float32, scores (K,) float32, labels (K,) int32
VANILLA_NMS_FROM = 4000  # torchvision's batched_nms on a CPU runs class by class beyond this many box coordinates
MAX_COUNT = 1_000_000  # the largest top-k or detections per image a manifest may ask for

POSTPROCESSES: Registry[Callable[[dict[str, Any], Path], Postprocess]] = Registry("post-processing kind")
POSTPROCESSES.register("pixel_classes")(lambda entry, folder: PixelClasses())


def from_manifest(entry: Any, folder: str | Path) -> Postprocess:
    """The post-processing that the manifest's ``"postprocess"`` entry describes; files it names are read from
    the export ``folder``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        raise EdgesplitError(f"manifest postprocess must be an object with a string 'kind', not {entry!r:.100}")
    return POSTPROCESSES.get(entry["kind"])(entry, Path(folder))


class DeltaCoder:
    """torchvision's ``BoxCoder.decode_single`` (SSD, RetinaNet): weighted offsets of the anchor's centre and
    log-scales of its size, the scales clamped at ``bbox_xform_clip``."""

    def __init__(self, entry: dict[str, Any]) -> None:
        weights = entry.get("weights")
        if not (isinstance(weights, list) and len(weights) == 4
                and all(_is_number(w) and 0 < w < math.inf for w in weights)):
            raise EdgesplitError(f"manifest postprocess 'weights' must be 4 positive numbers, not {weights!r:.100}")
        self.weights = np.asarray(weights, np.float32)
        self.bbox_xform_clip = np.float32(_number(entry, "bbox_xform_clip", 0.0, 100.0))

    def decode(self, codes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        half = np.float32(0.5)
        widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        ctr_x, ctr_y = anchors[:, 0] + half * widths, anchors[:, 1] + half * heights
        dx, dy, dw, dh = (codes[:, k] / self.weights[k] for k in range(4))
        dw, dh = np.minimum(dw, self.bbox_xform_clip), np.minimum(dh, self.bbox_xform_clip)
        pred_ctr_x, pred_ctr_y = dx * widths + ctr_x, dy * heights + ctr_y
        half_w, half_h = half * (np.exp(dw) * widths), half * (np.exp(dh) * heights)
        return np.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=1)


class LinearCoder:
    """torchvision's ``BoxLinearCoder.decode`` (FCOS): distances from the anchor's centre to the box's sides,
    scaled by the anchor's size with ``normalize_by_size``."""

    def __init__(self, entry: dict[str, Any]) -> None:
        if not isinstance(entry.get("normalize_by_size"), bool):
            raise EdgesplitError(f"manifest postprocess 'normalize_by_size' must be true or false, not "
                                 f"{entry.get('normalize_by_size')!r:.100}")
        self.normalize_by_size = entry["normalize_by_size"]

    def decode(self, codes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        half = np.float32(0.5)
        ctr_x, ctr_y = half * (anchors[:, 0] + anchors[:, 2]), half * (anchors[:, 1] + anchors[:, 3])
        if self.normalize_by_size:
            widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
            codes = codes * np.stack([widths, heights, widths, heights], axis=1)
        return np.stack([ctr_x - codes[:, 0], ctr_y - codes[:, 1], ctr_x + codes[:, 2], ctr_y + codes[:, 3]], axis=1)


class DetectorAnswer(abc.ABC):
    """A torchvision detector's ``postprocess_detections``: the raw head outputs of a batch (``bbox_regression``
    (N, A, 4), ``cls_logits`` (N, A, C)) to one image's detections, or a list of them for several images, as
    :meth:`edgesplit.detection.DetectionPostprocess.answer` answers."""

    varies = True  # the number of boxes changes from image to image
    outputs = ("bbox_regression", "cls_logits")
    coder: type[DeltaCoder | LinearCoder] = DeltaCoder

    def __init__(self, entry: dict[str, Any], folder: Path) -> None:
        self.kind = entry["kind"]
        height, width = _counts(entry, "input_size", length=2)
        self.input_size = (height, width)
        self.score_thresh = np.float32(_number(entry, "score_thresh", 0.0, 1.0))  # torch compares in float32
        self.nms_thresh = _number(entry, "nms_thresh", 0.0, 1.0)  # torchvision's NMS compares in double
        self.detections_per_img = _counts(entry, "detections_per_img", length=1)[0]
        self.topk_candidates = _counts(entry, "topk_candidates", length=1)[0]
        self.anchors = _anchors(entry, folder)
        self.box_coder = self.coder(entry)

    def answer(self, output: Output) -> Answer | list[Answer]:
        raw = self._checked(output)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # as torch: inf and NaN, no warnings
            answers = [self._detections({key: value[n] for key, value in raw.items()})
                       for n in range(len(raw["cls_logits"]))]
        return answers[0] if len(answers) == 1 else answers

    def _checked(self, output: Output) -> dict[str, np.ndarray]:
        """The head outputs as float32, or an error saying how they do not fit these anchors."""
        if not isinstance(output, dict) or any(not isinstance(output.get(key), np.ndarray) for key in self.outputs):
            raise EdgesplitError(f"a {self.kind} answer needs the outputs {', '.join(self.outputs)}")
        raw = {key: output[key].astype(np.float32, copy=False) for key in self.outputs}
        batch = len(raw["cls_logits"])
        for key, value in raw.items():
            if value.ndim != 3 or value.shape[:2] != (batch, len(self.anchors)):
                raise EdgesplitError(f"the model's {key} has shape {value.shape}; the manifest's {len(self.anchors)} "
                                     "anchors need (batch, anchors, ...)")
        return raw

    def _detections(self, raw: dict[str, np.ndarray]) -> Answer:
        boxes, scores, labels = self._candidates(raw)
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[:self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep].astype(np.int32)}

    @abc.abstractmethod
    def _candidates(self, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's boxes that go into NMS, with their scores and labels."""

    def _boxes(self, codes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Decoded boxes clipped to the core's input, as torchvision's ``clip_boxes_to_image``."""
        boxes = self.box_coder.decode(codes, anchors)
        height, width = self.input_size
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], np.float32(0), np.float32(width))
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], np.float32(0), np.float32(height))
        return boxes


class SsdAnswer(DetectorAnswer):
    """SSD: every anchor's box, then per class but the background (0) the scores above the threshold, top-k."""

    def _candidates(self, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes = self._boxes(raw["bbox_regression"], self.anchors)
        logits = raw["cls_logits"]
        exps = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = exps / exps.sum(axis=1, keepdims=True)
        picked, picked_scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        picked_labels = [np.zeros(0, np.int64)]
        for label in range(1, scores.shape[1]):
            score = scores[:, label]
            above = np.flatnonzero(score > self.score_thresh)
            top = above[_top(score[above], self.topk_candidates)]
            picked.append(top)
            picked_scores.append(score[top])
            picked_labels.append(np.full(len(top), label, np.int64))
        return boxes[np.concatenate(picked)], np.concatenate(picked_scores), np.concatenate(picked_labels)


class RetinaNetAnswer(DetectorAnswer):
    """RetinaNet: per feature level, the (anchor, class) pairs whose sigmoid score is above the threshold,
    top-k of them, and only their boxes decoded."""

    def __init__(self, entry: dict[str, Any], folder: Path) -> None:
        super().__init__(entry, folder)
        self.anchors_per_level = _counts(entry, "anchors_per_level")
        if sum(self.anchors_per_level) != len(self.anchors):
            raise EdgesplitError(f"manifest postprocess 'anchors_per_level' sums to {sum(self.anchors_per_level)}, "
                                 f"but the anchors file holds {len(self.anchors)}")

    def _candidates(self, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = []
        start = 0
        for count in self.anchors_per_level:
            level = {key: value[start:start + count] for key, value in raw.items()}
            classes = level["cls_logits"].shape[1]
            scores = self._scores(level).ravel()
            above = np.flatnonzero(scores > self.score_thresh)
            pairs = above[_top(scores[above], self.topk_candidates)]
            anchor = pairs // classes
            found.append((self._boxes(level["bbox_regression"][anchor], self.anchors[start:start + count][anchor]),
                          scores[pairs], pairs % classes))
            start += count
        boxes, scores, labels = zip(*found)
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)

    def _scores(self, level: dict[str, np.ndarray]) -> np.ndarray:
        return _sigmoid(level["cls_logits"])


class FcosAnswer(RetinaNetAnswer):
    """FCOS: as RetinaNet, with scores sqrt(sigmoid(class) x sigmoid(centerness)) and linear boxes."""

    outputs = ("bbox_regression", "cls_logits", "bbox_ctrness")
    coder = LinearCoder

    def _scores(self, level: dict[str, np.ndarray]) -> np.ndarray:
        return np.sqrt(_sigmoid(level["cls_logits"]) * _sigmoid(level["bbox_ctrness"]))


POSTPROCESSES.register("ssd")(SsdAnswer)
POSTPROCESSES.register("retinanet")(RetinaNetAnswer)
POSTPROCESSES.register("fcos")(FcosAnswer)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """torchvision's ``batched_nms`` on a CPU: the indices of the boxes kept, NMS within each label, by
    descending score. Up to 1000 boxes it offsets each label's boxes past the others' (the coordinate trick,
    whose float32 sums it reproduces); beyond, it runs each label alone and orders the union by score."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if boxes.size <= VANILLA_NMS_FROM:
        offsets = labels.astype(np.float32) * (boxes.max() + np.float32(1))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    kept = np.concatenate([members[nms(boxes[members], scores[members], iou_threshold)]
                           for members in (np.flatnonzero(labels == label) for label in np.unique(labels))])
    kept.sort()
    return kept[np.argsort(-scores[kept], kind="stable")]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """torchvision's CPU ``nms`` kernel: boxes by descending score (stable), each kept unless a kept one
    overlaps it by IoU > ``iou_threshold`` (float32 areas and IoU, compared in double)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), bool)
    keep = []
    zero = np.float32(0)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        rest = slice(i + 1, None)
        width = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        height = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = width * height
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= overlap.astype(np.float64) > iou_threshold
    return np.asarray(keep, np.int64)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """The positions of the ``k`` largest scores, largest first (torch's ``topk``; ties by position)."""
    return np.argsort(-scores, kind="stable")[:k]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    one = np.float32(1)
    return one / (one + np.exp(-x))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(entry: dict[str, Any], key: str, low: float, high: float) -> float:
    value = entry.get(key)
    if not (_is_number(value) and low <= value <= high):  # NaN fails too
        raise EdgesplitError(f"manifest postprocess {key!r} must be a number from {low:g} to {high:g}, "
                             f"not {value!r:.100}")
    return float(value)


def _counts(entry: dict[str, Any], key: str, length: int | None = None) -> list[int]:
    """``entry[key]``: a positive integer (``length`` 1) or a list of them."""
    value = entry.get(key)
    values = [value] if length == 1 else value
    if not (isinstance(values, list) and values and (length is None or len(values) == length)
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_COUNT for v in values)):
        what = "an integer" if length == 1 else f"a list of {length or 'some'} integers"
        raise EdgesplitError(f"manifest postprocess {key!r} must be {what} from 1 to {MAX_COUNT}, not {value!r:.100}")
    return values


def _anchors(entry: dict[str, Any], folder: Path) -> np.ndarray:
    """The anchors file the entry names, in the export folder: float32 (A, 4), finite."""
    name = entry.get("anchors")
    if not (isinstance(name, str) and name.endswith(".npy") and Path(name).name == name):
        raise EdgesplitError(f"manifest postprocess 'anchors' must name a .npy file in the export folder, "
                             f"not {name!r:.100}")
    path = folder / name
    try:
        anchors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EdgesplitError(f"cannot read the anchors {path}: {exc}") from exc
    if not (isinstance(anchors, np.ndarray) and anchors.dtype == np.float32 and anchors.ndim == 2
            and anchors.shape[1] == 4 and len(anchors) and np.isfinite(anchors).all()):
        found = f"{anchors.dtype} {anchors.shape}" if isinstance(anchors, np.ndarray) else type(anchors).__name__
        raise EdgesplitError(f"{path} must hold finite float32 anchors of shape (A, 4), not {found}")
    return anchors
