"""Measuring profiles on a real (tiny) model: composition, estimation, slowdown, codecs, the answer's frame."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from edgesplit import analyze
from edgesplit.errors import EdgesplitError, ProfileError
from edgesplit.measure import measure
from edgesplit.codecs import PROFILED_CODECS
from edgesplit.outputs import PixelClasses
from edgesplit.profile import FORMAT, load_profile, with_batch_plan, with_device_time, with_flops_shape
from toy_models import Toy

SHAPE = (3, 8, 8)
HEADER, SECTION = 24, 14  # a frame's header and a section's fixed part (docs/wire.md)


@pytest.fixture(scope="module")
def toy():
    return analyze(Toy().eval(), SHAPE, "toy_models:toy")


def test_per_node_profile_covers_every_cut_and_batch_size(toy, tmp_path):
    cuts = list(toy.cuts)
    profile = measure(toy, cuts, role="server", batch_sizes=(1, 2), repeats=5, warmup=1)
    assert list(profile.cuts) == [c.name for c in cuts] and profile.batch_sizes == (1, 2)
    for c in profile.cuts.values():
        for b in (1, 2):
            head, tail = c.head_s[b], c.tail_s[b]
            assert head.repeats == tail.repeats == 5
            assert head.source == tail.source == "measured"
            assert 0 <= head.p10_s <= head.median_s <= head.p90_s
    first, last = profile.cuts["x"], profile.cuts["view"]
    assert first.head_s[1].median_s <= last.head_s[1].median_s and last.tail_s[1].median_s <= first.tail_s[1].median_s
    assert profile.cuts["conv1"].elements == 64
    # the logits' frame: header, one unnamed section of shape (1, 5), 5 float32
    assert profile.output_bytes == HEADER + SECTION + 2 * 4 + 5 * 4 and profile.answer_s == 0.0
    assert profile.input_codecs["raw"]["bytes"] == 192
    assert set(profile.input_codecs) == {"raw", "jpeg:75", "jpeg:90"} and profile.input_codecs["jpeg:90"]["bytes"] > 0
    pool = profile.cuts["pool"]
    assert set(pool.codec_s) == set(PROFILED_CODECS) and pool.shape == (4, 1, 1)
    # bytes measured on the photos' own tensors: uncompressed codecs send exactly their payload
    # pooled features (4, 1, 1) are one channel to per-channel codecs: 8 bytes of parameters in all
    assert pool.codec_s["int8"]["bytes"] == 4 and pool.codec_s["int8c"]["bytes"] == 4 + 8
    assert pool.codec_s["int4c"]["bytes"] == 2 + 8 and pool.codec_s["bf16"]["bytes"] == 8
    assert all(v["encode_s"] > 0 and v["decode_s"] > 0 for v in pool.codec_s.values())
    assert "codec_s" in profile.cuts["conv2"].to_dict() and profile.cuts["x"].codec_s == {}
    path = tmp_path / "p.json"
    profile.save(path)
    assert load_profile(path) == profile
    assert profile.to_dict()["format"] == FORMAT


def test_flops_method_is_marked_estimated_and_splits_by_flops(toy):
    profile = measure(toy, list(toy.cuts), role="device", batch_sizes=(1,), method="flops", repeats=3)
    conv1, whole = profile.cuts["conv1"], profile.model_s[1]
    assert conv1.head_s[1].source == "estimated" and whole.source == "measured"
    c = toy.cut("conv1")
    assert conv1.head_s[1].median_s == pytest.approx(whole.median_s * c.head_flops / (c.head_flops + c.tail_flops))
    assert conv1.head_s[1].median_s + conv1.tail_s[1].median_s == pytest.approx(whole.median_s)


def test_a_measured_profile_reshaped_by_flops_keeps_its_whole_model_and_codecs(toy):
    measured = measure(toy, [toy.cut("conv1"), toy.cut("pool")], role="server", batch_sizes=(1, 2), repeats=3)
    flops = {c.name: (c.head_flops, c.tail_flops) for c in toy.cuts}
    shaped = with_flops_shape(measured, flops)
    assert shaped.method == "flops" and shaped.model_s == measured.model_s
    for name in ("conv1", "pool"):
        head, tail = flops[name]
        for b in (1, 2):
            whole = measured.model_s[b].median_s
            assert shaped.cuts[name].head_s[b].median_s == pytest.approx(whole * head / (head + tail), rel=1e-12)
            assert shaped.cuts[name].tail_s[b].median_s == pytest.approx(whole * tail / (head + tail), rel=1e-12)
            assert shaped.cuts[name].head_s[b].source == "estimated"
        assert shaped.cuts[name].codec_s == measured.cuts[name].codec_s
    device = with_device_time(shaped, 0.35)  # the benchmarks' device: FLOP-shaped, then given its time
    assert device.model_s[1].median_s == pytest.approx(0.35)
    assert device.cuts["conv1"].head_s[1].median_s == pytest.approx(0.35 * flops["conv1"][0] / sum(flops["conv1"]))
    with pytest.raises(ProfileError, match="no FLOPs for the cuts pool of toy_models:toy"):
        with_flops_shape(measured, {"conv1": flops["conv1"]})
    with pytest.raises(ProfileError, match="FLOPs of toy_models:toy at conv1 could not be counted"):
        with_flops_shape(measured, {**flops, "conv1": (0, 0)})


def test_slowdown_scales_times_and_is_recorded(toy):
    profile = measure(toy, [toy.cut("add")], role="device", batch_sizes=(1,), method="flops", repeats=3, slowdown=8)
    assert profile.slowdown == 8.0
    assert profile.cuts["add"].elements == 64  # sizes are not scaled


def test_a_batch_plan_prices_early_cuts_one_request_at_a_time(toy):
    profile = measure(toy, list(toy.cuts), role="server", batch_sizes=(1, 4), repeats=3, warmup=1)
    planned = with_batch_plan(profile, "pool")
    pool = profile.cuts["pool"].tail_s
    for name in ("x", "conv1", "relu", "add"):  # before the plan's cut: 4 × (to pool at batch 1) + pool's tail at 4
        one, four = profile.cuts[name].tail_s[1], planned.cuts[name].tail_s[4]
        assert four.median_s == pytest.approx(4 * (one.median_s - pool[1].median_s) + pool[4].median_s)
        assert four.p90_s == pytest.approx(4 * (one.p90_s - pool[1].p90_s) + pool[4].p90_s)
        assert four.source == "estimated" and planned.cuts[name].tail_s[1] == one
    assert planned.model_s[4].median_s == pytest.approx(4 * (profile.model_s[1].median_s - pool[1].median_s)
                                                        + pool[4].median_s)
    assert planned.cuts["pool"] == profile.cuts["pool"] and planned.cuts["view"] == profile.cuts["view"]
    assert planned.method == "per-node; batches run one request at a time before pool"
    with pytest.raises(ProfileError, match="has no batch size 1 to plan batches with"):
        with_batch_plan(replace(profile, batch_sizes=(4,)), "pool")
    with pytest.raises(ProfileError, match="has no cut 'nope'"):
        with_batch_plan(profile, "nope")


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "guess"}, "unknown profiling method 'guess'; known: per-node, flops"),
    ({"slowdown": 0}, "--slowdown must be positive, got 0"),
])
def test_bad_profiling_arguments(toy, kwargs, message):
    with pytest.raises(EdgesplitError, match=message):
        measure(toy, [toy.cut("add")], role="device", batch_sizes=(1,), **kwargs)


class Segmenter(nn.Module):
    """Two classes' scores per pixel, as torchvision's segmentation models answer: ``{"out": (N, 2, 8, 8)}``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


class PixelsAsBoxes:
    """A detector-like answer whose size varies: one box per pixel of class 1; records each answer's boxes."""

    varies = True

    def __init__(self) -> None:
        self.boxes: dict[bytes, int] = {}  # per distinct output (photo): how many boxes it answered

    def answer(self, output):
        count = int((output["out"][0].argmax(axis=0) == 1).sum())
        self.boxes[output["out"].tobytes()] = count
        return {"boxes": np.zeros((count, 4), np.float32), "scores": np.zeros(count, np.float32),
                "labels": np.ones(count, np.int32)}


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return analyze(Segmenter().eval(), SHAPE, "segmenter")


def test_the_answer_is_priced_as_the_frame_the_server_sends(segmenter, tmp_path):
    scores = measure(segmenter, [], role="server", batch_sizes=(1,), repeats=3, jpeg_qualities=())
    classes = measure(segmenter, [], role="server", batch_sizes=(1,), repeats=3, jpeg_qualities=(),
                      postprocess=PixelClasses())
    # named "out" (3 B), shape (1, 2, 8, 8): 128 float32 scores; as classes (1, 8, 8): 64 uint8
    assert scores.output_bytes == HEADER + SECTION + 3 + 4 * 4 + 128 * 4 == 569 and scores.answer_s == 0.0
    assert classes.output_bytes == HEADER + SECTION + 3 + 3 * 4 + 64 == 117 and classes.answer_s > 0
    path = tmp_path / "classes.json"
    classes.save(path)
    assert load_profile(path) == classes and load_profile(path).answer_s == classes.answer_s


def test_an_answer_that_varies_is_priced_at_its_mean_frame_over_the_photos(segmenter):
    boxes = PixelsAsBoxes()
    profile = measure(segmenter, [], role="server", batch_sizes=(1,), repeats=3, jpeg_qualities=(), postprocess=boxes)
    # three sections: "boxes" (5 B, 2 dims), "scores" and "labels" (6 B, 1 dim), 16 + 4 + 4 B per box
    frames = [HEADER + 3 * SECTION + 5 + 6 + 6 + 4 * (2 + 1 + 1) + 24 * count for count in boxes.boxes.values()]
    assert len(frames) == 3 and len(set(frames)) > 1  # three photos, answered with different numbers of boxes
    assert profile.output_bytes == round(sum(frames) / 3)

