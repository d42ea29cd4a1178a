"""Every architecture the issue names: traced, cut, and split exactly (random weights, seeded)."""

import pytest
import torch

from edgesplit.analysis import analyze
from edgesplit.models import load_model
from edgesplit.splitter import check_exact

SMALL = (3, 64, 64)
NATIVE = (3, 224, 224)
slow = pytest.mark.slow

ZOO = [
    pytest.param("efficientnet_b0", SMALL),
    *(pytest.param(f"efficientnet_b{i}", SMALL, marks=slow) for i in range(1, 8)),
    pytest.param("efficientnet_v2_s", SMALL),
    pytest.param("efficientnet_v2_m", SMALL, marks=slow),
    pytest.param("efficientnet_v2_l", SMALL, marks=slow),
    pytest.param("mobilenet_v2", SMALL),
    pytest.param("mobilenet_v3_small", SMALL),
    pytest.param("mobilenet_v3_large", SMALL),
    pytest.param("resnet18", SMALL),
    pytest.param("resnet50", SMALL),
    pytest.param("resnext50_32x4d", SMALL),
    pytest.param("regnet_x_400mf", SMALL),
    pytest.param("regnet_y_400mf", SMALL),
    pytest.param("densenet121", SMALL),
    pytest.param("convnext_tiny", SMALL),
    pytest.param("shufflenet_v2_x1_0", SMALL),
    pytest.param("squeezenet1_0", SMALL),
    pytest.param("mnasnet1_0", SMALL),
    pytest.param("vgg16", SMALL, marks=slow),
    pytest.param("alexnet", SMALL),
    pytest.param("googlenet", SMALL),
    pytest.param("vit_b_16", NATIVE, marks=slow),
    pytest.param("swin_t", SMALL),
    pytest.param("maxvit_t", NATIVE, marks=slow),
    pytest.param("timm:tf_efficientnet_lite0", SMALL),
    pytest.param("timm:mobilenetv3_large_100", SMALL),
    pytest.param("timm:resnet50", SMALL),
    pytest.param("timm:convnext_tiny", SMALL),
    pytest.param("timm:vit_small_patch16_224", NATIVE),
    pytest.param("efficientnet_lite0_pretrained", NATIVE),
]


def _sample(cuts, n=8):
    """Up to ``n`` cuts spread along the depth, plus every record-low one."""
    step = max(1, len(cuts) // n)
    return sorted({*cuts[::step], *(c for c in cuts if c.record_low)}, key=lambda c: c.index)


@pytest.mark.parametrize("name,shape", ZOO)
def test_zoo_model_is_cut_and_split_exactly(name, shape):
    loaded = load_model(name)
    analysis = analyze(loaded.module, shape, name)
    counts = analysis.counts()
    natural = analysis.natural_bottlenecks()
    assert counts["cuts"] > 10
    assert natural, f"{name} has no natural bottleneck"
    assert min(c.ratio for c in natural) < 0.25  # deep features are always much smaller than the input
    assert counts["record_low"] >= 1 and counts["pareto"] >= 2
    first = analysis.cuts[0]
    assert first.ratio == 1.0 and first.head_flops == 0 and first.tail_flops > 0
    total = sum(p.numel() for p in loaded.module.parameters())
    if name == "googlenet":  # its auxiliary classifiers run only in training: the tail does not need them
        assert 0 < first.tail_params < total
    else:
        assert first.tail_params == total

    checked = check_exact(analysis, _sample(natural))
    with torch.inference_mode():
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        scale = loaded.module(x).abs().max().item()
    diffs = [c.exact_max_abs_diff for c in checked.cuts if c.exact_max_abs_diff is not None]
    assert diffs and max(diffs) <= 1e-6 * max(1.0, scale), (name, diffs)


@pytest.mark.parametrize("name,at_least", [("lraspp_mobilenet_v3_large", 5), ("deeplabv3_mobilenet_v3_large", 5),
                                           pytest.param("fcn_resnet50", 1, marks=slow)])
def test_segmentation_models_cut_where_the_input_size_is_only_read(name, at_least):
    """The head resizes its masks to ``x.shape[-2:]``: a shape the tail re-derives, so the input does not
    cross every cut, and the block outputs are single-tensor natural bottlenecks, split exactly."""
    loaded = load_model(name)
    assert loaded.native_input_shape == (3, 520, 520)
    analysis = analyze(loaded.module, SMALL, name)
    natural = analysis.natural_bottlenecks()
    assert len(natural) >= at_least
    assert all("input_1" not in c.crossing for c in analysis.cuts[1:])
    checked = check_exact(analysis)
    diffs = [c.exact_max_abs_diff for c in checked.cuts if c.exact_max_abs_diff is not None]
    assert len(diffs) == len(natural) and max(diffs) <= 1e-5, diffs


def _max_abs_diff(analysis, cuts):
    checked = check_exact(analysis, cuts)
    diffs = [c.exact_max_abs_diff for c in checked.cuts if c.exact_max_abs_diff is not None]
    assert len(diffs) == len(cuts)
    return max(diffs)


@pytest.mark.parametrize("max_tensors,at_least", [(1, 11), (2, 52)])
def test_timm_features_only_backbone_is_split_exactly(max_tensors, at_least):
    """timm's MobileNetV3 as a detection backbone answers a list of three feature maps (strides 8, 16, 32);
    once the first is out it crosses every later cut, so K = 2 finds cuts inside the later stages."""
    module = load_model("toy_models:timm_mobilenetv3_features").module
    with torch.inference_mode():
        assert [tuple(f.shape) for f in module(torch.zeros(1, *SMALL))] == [(1, 40, 8, 8), (1, 112, 4, 4),
                                                                             (1, 960, 2, 2)]
    analysis = analyze(module, SMALL, max_tensors=max_tensors)
    natural = analysis.natural_bottlenecks()
    assert len(natural) >= at_least and max(len(c.crossing) for c in natural) == max_tensors
    assert _max_abs_diff(analysis, _sample(natural)) <= 1e-6


@pytest.mark.parametrize("max_tensors", [1, 2])
def test_timm_features_of_every_level_leave_no_natural_bottleneck(max_tensors):
    """ResNet-18 with all five levels as outputs: the stride-2 stem (64x32x32, 5.3x the input) is an
    output, so it crosses every later cut; none is smaller than the input, and every one splits exactly."""
    analysis = analyze(load_model("toy_models:timm_resnet18_features").module, SMALL, max_tensors=max_tensors)
    assert analysis.counts()["cuts"] > 10 and analysis.natural_bottlenecks() == []
    assert _max_abs_diff(analysis, _sample(list(analysis.cuts))) <= 1e-6


@pytest.mark.parametrize("max_tensors,at_least", [(1, 14), (3, 72)])
def test_yolo_style_detector_is_split_exactly(max_tensors, at_least):
    """A CSP backbone, an FPN/PAN neck and three heads: K = 1 cuts only the backbone before P3 leaves it;
    K = 3 also cuts through the neck, where P3, P4 and P5 wait for the paths that read them."""
    loaded = load_model("toy_models:tiny_yolo")
    analysis = analyze(loaded.module, SMALL, max_tensors=max_tensors)
    natural = analysis.natural_bottlenecks()
    assert len(natural) >= at_least and max(len(c.crossing) for c in natural) == max_tensors
    with torch.inference_mode():
        answer = loaded.module(torch.randn(1, *SMALL, generator=torch.Generator().manual_seed(0)))
    assert [tuple(a.shape) for a in answer] == [(1, 27, 8, 8), (1, 27, 4, 4), (1, 27, 2, 2)]
    scale = max(a.abs().max().item() for a in answer)
    assert _max_abs_diff(analysis, _sample(natural)) <= 1e-6 * max(1.0, scale)
