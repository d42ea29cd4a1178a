"""The real pretrained EfficientNet-Lite0 on real photos: right answers, and identical through every cut."""

import pytest
import torch
import torchvision
import torchvision.transforms.functional as F
from skimage import data as skimage_data

from edgesplit import analyze, split
from edgesplit.models import load_model

CATEGORIES = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]


def _photo(name: str) -> torch.Tensor:
    image = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)
    x = F.center_crop(F.resize(image, 256, antialias=True), 224).float()
    return (x - 127.0) / 128.0  # EfficientNet-Lite's preprocessing


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0_pretrained")


def test_pretrained_weights_recognise_real_photos(lite0):
    assert lite0.weights == "pretrained ImageNet weights"
    with torch.inference_mode():
        logits = lite0.module(torch.stack([_photo("coffee"), _photo("chelsea")]))
    labels = [CATEGORIES[i] for i in logits.argmax(1)]
    assert labels[0] == "espresso"
    assert labels[1] in {"tiger cat", "Egyptian cat", "tabby"}


def test_every_natural_bottleneck_gives_identical_logits_on_photos(lite0):
    analysis = analyze(lite0.module, (3, 224, 224), "efficientnet_lite0_pretrained")
    counts = analysis.counts()
    assert counts["natural_bottlenecks"] == 52
    assert [round(c.ratio, 4) for c in analysis.cuts if c.record_low] == [0.5, 0.2083, 0.1042, 0.0625, 0.0085]
    x = torch.stack([_photo("coffee"), _photo("chelsea"), _photo("astronaut")])
    with torch.inference_mode():
        expected = lite0.module(x)
        for cut in analysis.natural_bottlenecks():
            head, tail = split(analysis, cut)
            assert torch.equal(tail(head(x)), expected), cut.name
