"""numpy post-processing (edgesplit.answers) answers what torchvision's does, and refuses hostile manifests."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms as torch_batched_nms

from edgesplit.answers import batched_nms, from_manifest
from edgesplit.detection import build_detection_core
from edgesplit.errors import EdgesplitError
from edgesplit.export import describe_postprocess
from edgesplit.outputs import PixelClasses

DETECTORS = {"ssd": ("ssdlite320_mobilenet_v3_large", None), "retinanet": ("retinanet_resnet50_fpn", 128),
             "fcos": ("fcos_resnet50_fpn", 128)}
COCO_CLASSES = 91  # torchvision's detectors, background included


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    """``described(kind)``: a detector's torch post-processing, its manifest entry and export folder, and the
    shapes of its raw outputs for one image (each built once)."""
    built = {}

    def describe(kind):
        if kind not in built:
            name, side = DETECTORS[kind]
            postprocess = build_detection_core(name, side).postprocess
            folder = tmp_path_factory.mktemp(kind)
            entry = describe_postprocess(postprocess, folder)
            anchors = len(np.load(folder / entry["anchors"]))
            shapes = {"bbox_regression": (anchors, 4), "cls_logits": (anchors, COCO_CLASSES)}
            if kind == "fcos":
                shapes["bbox_ctrness"] = (anchors, 1)
            built[kind] = postprocess, entry, folder, shapes
        return built[kind]

    return describe


def raw_outputs(shapes, logit_mean, seed, batch=2):
    """Random head outputs for ``batch`` images: offsets ~ N(0, 1), logits ~ N(logit_mean, 1.5)."""
    rng = np.random.default_rng(seed)
    return {key: rng.normal(0.0 if key == "bbox_regression" else logit_mean, 1.0 if key == "bbox_regression" else 1.5,
                            (batch, *shape)).astype(np.float32) for key, shape in shapes.items()}


def by_score(answer):
    """``answer`` by descending score, ties by box and label: torch orders equal scores arbitrarily (its sort
    and topk are not stable), numpy by position."""
    boxes = answer["boxes"]
    order = np.lexsort((answer["labels"], boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -answer["scores"]))
    return {key: value[order] for key, value in answer.items()}


# RetinaNet's and FCOS's lower logits send fewer than 1000 boxes into NMS (torchvision's coordinate trick), the
# others thousands (NMS class by class); SSD's softmax keeps nearly every box of every class
@pytest.mark.parametrize("kind, logit_mean", [("ssd", 0.0), ("retinanet", -2.0), ("retinanet", -7.5),
                                              ("fcos", -2.0), ("fcos", -4.5)])
def test_numpy_detections_equal_torchvisions(described, kind, logit_mean):
    postprocess, entry, folder, shapes = described(kind)
    numpy_version = from_manifest(json.loads(json.dumps(entry)), folder)
    raw = raw_outputs(shapes, logit_mean, seed=3)
    expected, got = postprocess.answer(raw), numpy_version.answer(raw)
    assert numpy_version.varies and len(got) == len(expected) == 2
    for e, g in zip(expected, got):
        assert 0 < len(g["boxes"]) == len(e["boxes"])
        assert np.all(np.diff(g["scores"]) <= 0)
        e, g = by_score(e), by_score(g)
        assert g["labels"].dtype == np.int32 and np.array_equal(g["labels"], e["labels"])
        assert np.abs(g["boxes"] - e["boxes"]).max() <= 1e-4
        assert np.abs(g["scores"] - e["scores"]).max() <= 1e-5


def test_one_image_answers_one_dict_as_torch_does(described):
    postprocess, entry, folder, shapes = described("fcos")
    raw = raw_outputs(shapes, -3.0, seed=4, batch=1)
    got, expected = from_manifest(entry, folder).answer(raw), postprocess.answer(raw)
    assert isinstance(got, dict) and set(got) == set(expected) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize("count", [300, 3000])  # torchvision: the coordinate trick up to 1000 boxes, else per class
def test_batched_nms_keeps_what_torchvision_keeps_in_its_order(count):
    rng = np.random.default_rng(count)
    corners = rng.uniform(0, 100, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(1, 30, (count, 2)).astype(np.float32)], axis=1)
    scores = rng.random(count, dtype=np.float32)
    labels = rng.integers(0, 5, count)
    expected = torch_batched_nms(*(torch.from_numpy(a) for a in (boxes, scores, labels)), 0.5).numpy()
    assert np.array_equal(batched_nms(boxes, scores, labels, 0.5), expected)


def test_pixel_classes_come_back_as_pixel_classes(tmp_path):
    assert isinstance(from_manifest({"kind": "pixel_classes"}, tmp_path), PixelClasses)


@pytest.fixture(scope="module")
def retinanet_entry(described):
    _, entry, folder, _ = described("retinanet")
    return entry, folder


@pytest.mark.parametrize("change, message", [
    ({"kind": "yolo"}, "unknown post-processing kind 'yolo'"),
    ({"kind": 3}, "must be an object with a string 'kind'"),
    ({"score_thresh": -0.1}, "'score_thresh' must be a number from 0 to 1, not -0.1"),
    ({"nms_thresh": float("nan")}, "'nms_thresh' must be a number from 0 to 1, not nan"),
    ({"detections_per_img": True}, "'detections_per_img' must be an integer from 1 to"),
    ({"topk_candidates": 0}, "'topk_candidates' must be an integer from 1 to"),
    ({"input_size": [64]}, "'input_size' must be a list of 2 integers"),
    ({"weights": [1, 1, 1]}, "'weights' must be 4 positive numbers"),
    ({"anchors_per_level": [1, 2]}, "'anchors_per_level' sums to 3, but the anchors file holds"),
    ({"anchors": "../anchors.npy"}, "'anchors' must name a .npy file in the export folder"),
    ({"anchors": "missing.npy"}, "cannot read the anchors"),
])
def test_a_hostile_manifest_is_a_clear_error(retinanet_entry, change, message):
    entry, folder = retinanet_entry
    with pytest.raises(EdgesplitError, match=re.escape(message)):
        from_manifest({**entry, **change}, folder)


@pytest.mark.parametrize("anchors, message", [
    (np.zeros((10, 3), np.float32), r"must hold finite float32 anchors of shape \(A, 4\), not float32 \(10, 3\)"),
    (np.zeros((10, 4), np.float64), r"not float64 \(10, 4\)"),
    (np.array([None, 1], dtype=object), "cannot read the anchors"),  # a pickle: never loaded
])
def test_anchors_of_the_wrong_kind_are_refused(retinanet_entry, anchors, message, tmp_path):
    np.save(tmp_path / "bad.npy", anchors, allow_pickle=True)
    with pytest.raises(EdgesplitError, match=message):
        from_manifest({**retinanet_entry[0], "anchors": "bad.npy"}, tmp_path)


def test_outputs_that_do_not_fit_the_anchors_are_a_clear_error(retinanet_entry):
    entry, folder = retinanet_entry
    raw = {"bbox_regression": np.zeros((1, 7, 4), np.float32), "cls_logits": np.zeros((1, 7, 91), np.float32)}
    with pytest.raises(EdgesplitError, match=r"bbox_regression has shape \(1, 7, 4\); the manifest's \d+ anchors"):
        from_manifest(entry, folder).answer(raw)


def test_the_numpy_post_processing_imports_without_torch():
    blocked = "import sys; sys.modules['torch'] = None; import edgesplit.answers, edgesplit.runtime.device_engines"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
