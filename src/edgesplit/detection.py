"""Detection models as a traceable core plus post-processing.

torchvision's detectors cannot be traced whole: their transform resizes each image to a size computed
from its own shape, and after the head come anchors, box decoding, score thresholds and NMS, all
data-dependent. They are taken apart into three steps, each reusing the detector's own code:

- ``core.preprocess(images)``: torchvision's ``GeneralizedRCNNTransform`` (normalize, resize to the
  core's fixed size, batch), uint8 or float images in, an (N, 3, H, W) tensor out;
- ``core(x)``: the fx-traceable layers, sharing the detector's parameters; a dict of tensors (nested
  for Faster R-CNN);
- ``core.postprocess(outputs, original_sizes)``: the rest, then ``transform.postprocess``.

One-stage detectors (SSD, SSDlite, RetinaNet, FCOS; :class:`DetectionCore`): the core is backbone and head,
returning the head's raw outputs (``bbox_regression``, ``cls_logits``, and ``bbox_ctrness`` for FCOS); the
post-processing is anchors (which depend on shapes only, so are computed once per device) and
``postprocess_detections``.

Faster R-CNN (:class:`FasterRCNNCore`): the core is backbone, FPN and RPN head, returning the FPN's maps
and the RPN's raw outputs per level (``features/0``…, ``objectness/0``…, ``bbox_deltas/0``… on the wire);
the post-processing decodes the proposals (anchors, ``filter_proposals``: top-n, NMS) and runs the RoI
heads on the FPN's maps (RoIAlign of the proposals, box head, ``postprocess_detections``). The number of
proposals depends on the data, so the RoI heads cannot be traced.

``core.postprocess(core(core.preprocess(images)), sizes)`` equals ``detector(images)`` for the eval-mode
torchvision detector (``core.detector``), whose transform is set to the core's fixed size.

Served live, the tail's raw outputs become the answer on the server, or on the device when it falls
back: ``core.postprocess.answer(outputs)`` (numpy in, numpy out, boxes in the core's input coordinates).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgesplit.outputs import map_arrays

# name -> fixed input side; SSD's size is part of its architecture, RetinaNet's and FCOS's is our choice
DETECTION_SIDES: dict[str, int] = {
    "ssdlite320_mobilenet_v3_large": 320,
    "ssd300_vgg16": 300,
    "retinanet_resnet50_fpn": 512,
    "retinanet_resnet50_fpn_v2": 512,
    "fcos_resnet50_fpn": 512,
}
# name -> fixed input side: torchvision's shorter side for the MobileNet models (the two differ in little
# else), and for ResNet-50 the 512 of RetinaNet and FCOS, so the same backbone is compared at one size
FASTER_RCNN_SIDES: dict[str, int] = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": 320,
    "fasterrcnn_mobilenet_v3_large_fpn": 800,
    "fasterrcnn_resnet50_fpn": 512,
    "fasterrcnn_resnet50_fpn_v2": 512,
}
Detections = list[dict[str, Tensor]]
Answer = dict[str, np.ndarray]  # one image's boxes (K, 4) float32, scores (K,) float32, labels (K,) int32


class _TorchvisionPostprocess(ABC):
    """What both post-processings share: the detector, its fixed input size and feature-map sizes, one
    image's anchors from its generator (computed from shapes alone, once per device and dtype) and numpy
    answers."""

    varies = True  # the number of boxes changes from image to image

    def __init__(self, detector: nn.Module, input_size: tuple[int, int],
                 feature_sizes: list[tuple[int, int]]) -> None:
        self.detector = detector
        self.input_size = input_size
        self.feature_sizes = feature_sizes
        self._anchors: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @abstractmethod
    def __call__(self, outputs: Any, original_sizes: Sequence[tuple[int, int]] | None = None) -> Detections:
        """Detections per image, boxes in ``original_sizes`` coordinates (default: the core's input size)."""

    def answer(self, outputs: Mapping[str, Any]) -> Answer | list[Answer]:
        """What the detector answers for the core's outputs of a batch (numpy, as a tail returns them): for
        one image its detections, ``{"boxes", "scores", "labels"}`` as numpy (labels int32, as the wire
        carries integers), boxes in the core's input coordinates; for several images a list of those."""
        with torch.inference_mode():
            detections = self(map_arrays(lambda value: torch.from_numpy(np.asarray(value)), outputs))
        answers = [{"boxes": d["boxes"].numpy().astype(np.float32, copy=False),
                    "scores": d["scores"].numpy().astype(np.float32, copy=False),
                    "labels": d["labels"].numpy().astype(np.int32)} for d in detections]
        return answers[0] if len(answers) == 1 else answers

    def anchors(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """One image's anchors from the detector's own generator, computed from shapes alone."""
        from torchvision.models.detection.image_list import ImageList

        key = (device, dtype)
        if key not in self._anchors:
            image = ImageList(torch.empty((1, 0, *self.input_size), device=device, dtype=dtype), [self.input_size])
            features = [torch.empty((1, 0, h, w), device=device, dtype=dtype) for h, w in self.feature_sizes]
            self._anchors[key] = self._anchor_generator()(image, features)[0]
        return self._anchors[key]

    @abstractmethod
    def _anchor_generator(self) -> nn.Module: ...


class DetectionPostprocess(_TorchvisionPostprocess):
    """The detector's steps after the head: raw head outputs -> torchvision's boxes, scores, labels."""

    def __call__(self, outputs: dict[str, Tensor],
                 original_sizes: Sequence[tuple[int, int]] | None = None) -> Detections:
        """Detections per image, boxes in ``original_sizes`` coordinates (default: the core's input size)."""
        from torchvision.models.detection.ssd import SSD

        logits = outputs["cls_logits"]
        image_sizes = [self.input_size] * logits.shape[0]
        anchors = [self.anchors(logits.device, logits.dtype)] * logits.shape[0]
        if isinstance(self.detector, SSD):
            detections = self.detector.postprocess_detections(outputs, anchors, image_sizes)
        else:  # RetinaNet and FCOS decode level by level
            per_level = self.anchors_per_level(logits.shape[1])
            split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in outputs.items()}
            split_anchors = [list(a.split(per_level)) for a in anchors]
            detections = self.detector.postprocess_detections(split_outputs, split_anchors, image_sizes)
        return _to_original_sizes(self.detector, detections, image_sizes, original_sizes)

    def _anchor_generator(self) -> nn.Module:
        return self.detector.anchor_generator

    def anchors_per_level(self, total: int) -> list[int]:
        """How many of the ``total`` head outputs belong to each feature level (as torchvision infers it)."""
        cells = [h * w for h, w in self.feature_sizes]
        per_cell = total // sum(cells)
        return [c * per_cell for c in cells]


class FasterRCNNPostprocess(_TorchvisionPostprocess):
    """Faster R-CNN's steps after the RPN head: proposals from its raw outputs, then the RoI heads on the FPN's
    maps -> torchvision's boxes, scores, labels. (Not a :class:`DetectionPostprocess`: it has no numpy version
    for a device without torch, and ``edgesplit export`` tells them apart.)"""

    def __call__(self, outputs: Mapping[str, Any],
                 original_sizes: Sequence[tuple[int, int]] | None = None) -> Detections:
        """Detections per image, boxes in ``original_sizes`` coordinates (default: the core's input size)."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        rpn, features = self.detector.rpn, outputs["features"]
        objectness, bbox_deltas = list(outputs["objectness"]), list(outputs["bbox_deltas"])
        image_sizes = [self.input_size] * objectness[0].shape[0]
        anchors = [self.anchors(objectness[0].device, objectness[0].dtype)] * len(image_sizes)
        per_level = [o[0].numel() for o in objectness]  # anchors per level, as RegionProposalNetwork counts
        objectness, bbox_deltas = concat_box_prediction_layers(objectness, bbox_deltas)
        proposals = rpn.box_coder.decode(bbox_deltas, anchors).view(len(image_sizes), -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, image_sizes, per_level)
        detections, _ = self.detector.roi_heads(features, boxes, image_sizes)
        return _to_original_sizes(self.detector, detections, image_sizes, original_sizes)

    def _anchor_generator(self) -> nn.Module:
        return self.detector.rpn.anchor_generator


def _to_original_sizes(detector: nn.Module, detections: Detections, image_sizes: list[tuple[int, int]],
                       original_sizes: Sequence[tuple[int, int]] | None) -> Detections:
    originals = [(int(h), int(w)) for h, w in original_sizes] if original_sizes is not None else image_sizes
    return detector.transform.postprocess(detections, image_sizes, originals)


class _FixedSizeCore(nn.Module):
    """What every core shares: the detector it was taken from, its fixed input size, its preprocessing."""

    postprocess: DetectionPostprocess | FasterRCNNPostprocess

    @property
    def detector(self) -> nn.Module:
        """The torchvision detector (eval mode) whose layers this core shares."""
        return self.postprocess.detector

    @property
    def input_size(self) -> tuple[int, int]:
        return self.postprocess.input_size

    def preprocess(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """uint8 (0..255) or float (0..1) images, (3, H, W) each, of any sizes -> the core's input batch."""
        from torchvision.transforms.functional import convert_image_dtype

        floats = [convert_image_dtype(image, torch.float32) for image in images]
        return self.detector.transform(floats)[0].tensors


class DetectionCore(_FixedSizeCore):
    """Backbone and head of a torchvision detector at a fixed input size: images (N, 3, H, W),
    normalized and resized by :meth:`preprocess`, to the head's raw outputs. fx-traceable.

    ``backbone`` and ``head`` are the detector's own modules, so the state_dict keys are torchvision's
    and a torchvision checkpoint of the detector loads into the core as it is.
    """

    def __init__(self, detector: nn.Module, input_size: tuple[int, int]) -> None:
        super().__init__()
        detector.eval()
        self.backbone = detector.backbone
        self.head = detector.head
        device = next(detector.parameters()).device
        with torch.inference_mode():
            features = self._features(torch.zeros((1, 3, *input_size), device=device))
        self.postprocess = DetectionPostprocess(detector, input_size,
                                                [(f.shape[-2], f.shape[-1]) for f in features])
        self.eval()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.head(self._features(images))

    def _features(self, images: Tensor) -> list[Tensor]:
        return list(self.backbone(images).values())


class FasterRCNNCore(_FixedSizeCore):
    """Backbone, FPN and RPN head of a torchvision Faster R-CNN at a fixed input size: images (N, 3, H, W),
    normalized and resized by :meth:`preprocess`, to ``{"features": {level: map}, "objectness": [per level],
    "bbox_deltas": [per level]}``. fx-traceable.

    It holds the detector's ``backbone``, ``rpn`` and ``roi_heads`` (run by :attr:`postprocess`, not by
    ``forward``), so its state_dict is the detector's: a torchvision checkpoint loads as it is, RoI heads
    included, and two cores with different RoI heads differ in ``model_id``.
    """

    def __init__(self, detector: nn.Module, input_size: tuple[int, int]) -> None:
        super().__init__()
        detector.eval()
        self.backbone = detector.backbone
        self.rpn = detector.rpn
        self.roi_heads = detector.roi_heads
        device = next(detector.parameters()).device
        with torch.inference_mode():
            features = self.backbone(torch.zeros((1, 3, *input_size), device=device)).values()
        self.postprocess = FasterRCNNPostprocess(detector, input_size,
                                                 [(f.shape[-2], f.shape[-1]) for f in features])
        self.eval()

    def forward(self, images: Tensor) -> dict[str, Any]:
        features = self.backbone(images)
        objectness, bbox_deltas = self.rpn.head(list(features.values()))
        return {"features": dict(features), "objectness": objectness, "bbox_deltas": bbox_deltas}


def build_detection_core(name: str, side: int | None = None) -> DetectionCore:
    """The core of torchvision detector ``name`` with random weights (nothing is downloaded), at its fixed
    side (:data:`DETECTION_SIDES`); RetinaNet and FCOS accept another ``side``, SSD does not."""
    import torchvision

    fixed = DETECTION_SIDES[name]
    if name.startswith("ssd"):
        if side is not None and side != fixed:
            raise ValueError(f"{name} has a fixed input size of {fixed}x{fixed}, not {side}x{side}")
        sizing = {}
    else:
        fixed = side or fixed
        sizing = _fixed_sizing(fixed)
    detector = torchvision.models.get_model(name, weights=None, weights_backbone=None, **sizing)
    return DetectionCore(detector, (fixed, fixed))


def build_faster_rcnn_core(name: str, side: int | None = None) -> FasterRCNNCore:
    """The core of torchvision Faster R-CNN ``name`` with random weights (nothing is downloaded), at ``side``
    or its fixed side (:data:`FASTER_RCNN_SIDES`)."""
    import torchvision

    fixed = side or FASTER_RCNN_SIDES[name]
    detector = torchvision.models.get_model(name, weights=None, weights_backbone=None, **_fixed_sizing(fixed))
    return FasterRCNNCore(detector, (fixed, fixed))


def _fixed_sizing(side: int) -> dict[str, Any]:
    """The transform's arguments that resize every image to ``side`` x ``side``."""
    return {"min_size": side, "max_size": side, "fixed_size": (side, side)}
