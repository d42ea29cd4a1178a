"""The dynamic split computing paper's counts (Bakhtiarnia et al., arXiv 2205.11269), at native resolution,
with cuts restricted to EfficientNet blocks. Built on the meta device: shapes and FLOPs, no weights."""

import pytest
import torch

from edgesplit.analysis import analyze
from edgesplit.models import load_model

PAPER_NATURAL_BOTTLENECKS = {
    "efficientnet_b0": 15, "efficientnet_b1": 21, "efficientnet_b2": 21, "efficientnet_b3": 24,
    "efficientnet_b4": 30, "efficientnet_b5": 36, "efficientnet_b6": 42, "efficientnet_b7": 44,
    "efficientnet_v2_s": 34, "efficientnet_v2_m": 49, "efficientnet_v2_l": 68,
}
BLOCKS = "MBConv|FusedMBConv"


def _blocks(name):
    with torch.device("meta"):
        loaded = load_model(name)
    return analyze(loaded.module, loaded.native_input_shape, name).select(BLOCKS)


@pytest.mark.parametrize("name,expected", PAPER_NATURAL_BOTTLENECKS.items())
def test_natural_bottleneck_counts_match_the_paper(name, expected):
    assert _blocks(name).counts()["natural_bottlenecks"] == expected


def test_b0_record_low_blocks_match_the_paper():
    blocks = _blocks("efficientnet_b0")
    assert [round(c.ratio, 4) for c in blocks.cuts if c.record_low] == [0.5, 0.2083, 0.1042, 0.0625]
    assert len(blocks.cuts) == 16  # one cut per MBConv block; the first (c = 1.33) is no bottleneck
    assert blocks.cuts[0].ratio == pytest.approx(16 * 112 * 112 / (3 * 224 * 224))
