"""Detection models: a traceable core split exactly, plus torchvision's own post-processing (random weights)."""

import numpy as np
import pytest
import torch

from edgesplit.analysis import analyze
from edgesplit.detection import DETECTION_SIDES, FASTER_RCNN_SIDES, build_detection_core
from edgesplit.errors import ModelNotFound
from edgesplit.models import load_model, model_names
from edgesplit.outputs import as_tensors, map_arrays
from edgesplit.splitter import check_exact, split

SSDLITE = "ssdlite320_mobilenet_v3_large"
FASTER_RCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _images() -> list[torch.Tensor]:
    """Two float images (0..1) of different sizes and aspect ratios."""
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 240, 320, generator=generator), torch.rand(3, 300, 200, generator=generator)]


def _keep_low_scores(detector: torch.nn.Module) -> None:
    """Random weights score every box low: keep a few per image anyway, so there are boxes to compare."""
    detector.score_thresh = 0.0
    detector.topk_candidates = 5
    detector.detections_per_img = 20


def _keep_low_class_scores(detector: torch.nn.Module) -> None:
    """Faster R-CNN with random weights scores every class about 1/91, under its 0.05 threshold: keep them."""
    detector.roi_heads.score_thresh = 0.0


def _assert_same_detections(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert set(g) == {"boxes", "scores", "labels"} and len(e["boxes"]) > 0
        assert torch.equal(g["labels"], e["labels"])
        assert (g["boxes"] - e["boxes"]).abs().max().item() <= 1e-4
        assert (g["scores"] - e["scores"]).abs().max().item() <= 1e-6


def _assert_splits_give_the_detectors_boxes(analysis, cuts, images) -> None:
    """At each cut, head then tail then the core's post-processing answers what the torchvision detector
    answers."""
    core = analysis.graph.model
    sizes = [image.shape[-2:] for image in images]
    with torch.inference_mode():
        expected = core.detector(images)
        batch = core.preprocess(images)
        for cut in cuts:
            head, tail = split(analysis, cut)
            _assert_same_detections(core.postprocess(tail(head(batch)), sizes), expected)


@pytest.fixture(scope="module")
def ssdlite():
    """SSDlite loaded while any download would fail the test."""
    calls = []

    def no_download(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"download attempted: {args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("torch.hub.load_state_dict_from_url", no_download)
        patch.setattr("torchvision.models._api.load_state_dict_from_url", no_download)
        loaded = load_model(SSDLITE)
    assert not calls
    _keep_low_scores(loaded.module.detector)
    return loaded


def test_loading_a_detector_never_downloads_and_describes_its_input(ssdlite):
    assert ssdlite.weights == "random weights (seed 0)"
    assert ssdlite.native_input_shape == (3, 320, 320)
    assert ssdlite.normalization.mean == (127.5, 127.5, 127.5) and ssdlite.normalization.std == (127.5,) * 3
    assert ssdlite.postprocess is ssdlite.module.postprocess
    core = ssdlite.module
    assert core.backbone is core.detector.backbone and core.head is core.detector.head  # shared, not copied
    assert list(core.state_dict()) == list(core.detector.state_dict())  # a torchvision checkpoint fits
    assert set(DETECTION_SIDES) <= set(model_names())
    assert load_model("resnet18").postprocess is None


def test_core_plus_postprocess_equals_the_torchvision_detector(ssdlite):
    core, images = ssdlite.module, _images()
    with torch.inference_mode():
        expected = core.detector(images)
        batch = core.preprocess(images)
        got = ssdlite.postprocess(core(batch), [image.shape[-2:] for image in images])
        uint8 = [(image * 255).round().to(torch.uint8) for image in images]
        assert torch.equal(core.preprocess(uint8), core.preprocess([image.float() / 255 for image in uint8]))
    assert batch.shape == (2, *ssdlite.native_input_shape)
    _assert_same_detections(got, expected)


def test_ssdlite_splits_exactly_at_natural_bottlenecks(ssdlite):
    core, images = ssdlite.module, _images()
    analysis = analyze(core, ssdlite.native_input_shape, SSDLITE)
    counts = analysis.counts()
    assert counts["cuts"] > 200 and counts["natural_bottlenecks"] >= 10
    record_lows = [c for c in analysis.natural_bottlenecks() if c.record_low]
    chosen = [record_lows[0], record_lows[-1]]  # the first one and the smallest
    assert chosen[0] != chosen[1]
    checked = check_exact(analysis, chosen)
    assert all(c.exact_max_abs_diff == 0.0 for c in checked.cuts if c.exact_max_abs_diff is not None)
    _assert_splits_give_the_detectors_boxes(analysis, chosen, images)


def test_retinanet_core_and_its_smallest_cut_give_the_detectors_boxes():
    """RetinaNet's FPN reads three backbone stages, so no single tensor crosses any cut inside the backbone
    (no natural bottleneck); a multi-tensor cut still splits exactly."""
    core = build_detection_core("retinanet_resnet50_fpn", side=128)
    _keep_low_scores(core.detector)
    images = _images()
    analysis = analyze(core, (3, 128, 128), "retinanet_resnet50_fpn")
    assert analysis.natural_bottlenecks() == []
    smallest = min((c for c in analysis.cuts if len(c.crossing) > 1), key=lambda c: c.elements)
    head, tail = split(analysis, smallest)
    sizes = [image.shape[-2:] for image in images]
    with torch.inference_mode():
        expected = core.detector(images)
        batch = core.preprocess(images)
        _assert_same_detections(core.postprocess(core(batch), sizes), expected)
        _assert_same_detections(core.postprocess(tail(*head(batch)), sizes), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(DETECTION_SIDES) - {SSDLITE}))
def test_every_detector_at_its_native_size(name):
    loaded = load_model(name)
    core = loaded.module
    _keep_low_scores(core.detector)
    side = DETECTION_SIDES[name]
    assert loaded.native_input_shape == (3, side, side)
    analysis = check_exact(analyze(core, loaded.native_input_shape, name))
    diffs = [c.exact_max_abs_diff for c in analysis.cuts if c.exact_max_abs_diff is not None]
    assert all(d == 0.0 for d in diffs)
    images = _images()
    with torch.inference_mode():
        expected = core.detector(images)
        got = loaded.postprocess(core(core.preprocess(images)), [image.shape[-2:] for image in images])
    _assert_same_detections(got, expected)


@pytest.mark.parametrize("name,message", [
    ("maskrcnn_resnet50_fpn", r"^torchvision detection model 'maskrcnn_resnet50_fpn' has no traceable core in "
                              r"edgesplit; the detection models it splits are ssdlite320_mobilenet_v3_large, "),
    ("keypointrcnn_resnet50_fpn", r"has no traceable core"),
])
def test_unsupported_detection_model_is_a_clear_error(name, message):
    with pytest.raises(ModelNotFound, match=message):
        load_model(name)


def test_ssd_size_is_fixed():
    with pytest.raises(ValueError, match=r"ssd300_vgg16 has a fixed input size of 300x300, not 512x512"):
        build_detection_core("ssd300_vgg16", side=512)


@pytest.fixture(scope="module")
def faster_rcnn():
    loaded = load_model(FASTER_RCNN)
    _keep_low_class_scores(loaded.module.detector)
    return loaded


def test_faster_rcnn_loads_as_its_traceable_part_with_the_rest_as_postprocess(faster_rcnn):
    core = faster_rcnn.module
    assert faster_rcnn.weights == "random weights (seed 0)" and faster_rcnn.native_input_shape == (3, 320, 320)
    assert faster_rcnn.postprocess is core.postprocess
    assert faster_rcnn.postprocess.varies and FASTER_RCNN in model_names()
    assert core.backbone is core.detector.backbone and core.roi_heads is core.detector.roi_heads
    assert list(core.state_dict()) == list(core.detector.state_dict())  # RoI heads included: a checkpoint fits
    with torch.inference_mode():
        outputs = core(torch.zeros(1, *faster_rcnn.native_input_shape))
    assert {key: tuple(value.shape) for key, value in outputs["features"].items()} == {
        "0": (1, 256, 10, 10), "1": (1, 256, 10, 10), "pool": (1, 256, 5, 5)}
    assert [tuple(o.shape) for o in outputs["objectness"]] == [(1, 15, 10, 10), (1, 15, 10, 10), (1, 15, 5, 5)]
    assert [tuple(d.shape) for d in outputs["bbox_deltas"]] == [(1, 60, 10, 10), (1, 60, 10, 10), (1, 60, 5, 5)]


def test_faster_rcnn_core_plus_postprocess_equals_the_torchvision_detector(faster_rcnn):
    core, images = faster_rcnn.module, _images()
    with torch.inference_mode():
        expected = core.detector(images)
        outputs = core(core.preprocess(images))
        got = faster_rcnn.postprocess(outputs, [image.shape[-2:] for image in images])
        in_input_coordinates = faster_rcnn.postprocess(outputs)
    assert all(len(e["boxes"]) >= 50 for e in expected)
    _assert_same_detections(got, expected)
    answers = faster_rcnn.postprocess.answer(map_arrays(lambda t: t.numpy(), outputs))  # numpy, as a tail's
    for answer, detections in zip(answers, in_input_coordinates, strict=True):
        assert {k: v.dtype.name for k, v in answer.items()} == {"boxes": "float32", "scores": "float32",
                                                                "labels": "int32"}
        assert all(np.array_equal(answer[key], value.numpy()) for key, value in detections.items())
    one_request = faster_rcnn.postprocess.answer(map_arrays(lambda t: t[:1].numpy(), outputs))
    assert set(one_request) == {"boxes", "scores", "labels"} and len(one_request["boxes"]) >= 50


def test_faster_rcnn_splits_exactly_at_natural_bottlenecks(faster_rcnn):
    """Its FPN reads MobileNetV3's last two stages only, so the backbone keeps single-tensor cuts."""
    core, images = faster_rcnn.module, _images()
    analysis = analyze(core, faster_rcnn.native_input_shape, FASTER_RCNN)
    counts = analysis.counts()
    assert counts["cuts"] >= 150 and counts["natural_bottlenecks"] >= 30
    two = analyze(core, faster_rcnn.native_input_shape, FASTER_RCNN, max_tensors=2)
    assert len(two.natural_bottlenecks()) >= 100
    record_lows = [c for c in analysis.natural_bottlenecks() if c.record_low]
    chosen = [record_lows[0], record_lows[-1]]  # the first one and the smallest
    assert chosen[-1].ratio < 0.1 and chosen[-1].name.startswith("backbone_body")
    checked = check_exact(analysis, chosen)
    assert [c.exact_max_abs_diff for c in checked.cuts if c.exact_max_abs_diff is not None] == [0.0, 0.0]
    _assert_splits_give_the_detectors_boxes(analysis, chosen, images)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(FASTER_RCNN_SIDES) - {FASTER_RCNN}))
def test_every_faster_rcnn_at_its_native_size(name):
    """Split at the cut where the fewest elements cross (ResNet-50: none is a natural bottleneck)."""
    loaded = load_model(name)
    core = loaded.module
    _keep_low_class_scores(core.detector)
    core.detector.rpn._post_nms_top_n["testing"] = 100  # rpn_post_nms_top_n_test: 1000 boxes take 10 s on 2 cores
    side = FASTER_RCNN_SIDES[name]
    assert loaded.native_input_shape == (3, side, side)
    analysis = analyze(core, loaded.native_input_shape, name)
    smallest = min(analysis.cuts[1:], key=lambda c: c.elements)
    checked = check_exact(analysis, [smallest])
    assert [c.exact_max_abs_diff for c in checked.cuts if c.exact_max_abs_diff is not None] == [0.0]
    image = _images()[0]
    head, tail = split(analysis, smallest)
    with torch.inference_mode():
        expected = core.detector([image])
        got = loaded.postprocess(tail(*as_tensors(head(core.preprocess([image])))), [image.shape[-2:]])
    _assert_same_detections(got, expected)
