"""ONNX export: heads and tails per cut that ONNX Runtime runs like torch, and a readable manifest."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgesplit import analyze
from edgesplit.errors import EdgesplitError
from edgesplit.export import export_cuts
from edgesplit.models import IMAGENET, load_model
from edgesplit.runtime.device_engines import OnnxEngine, TorchEngine
from test_cli import run

SHAPE = (3, 64, 64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, SHAPE, "efficientnet_b0")
    out = tmp_path_factory.mktemp("onnx")
    cuts = [c for c in analysis.cuts if c.record_low]
    return loaded, analysis, out, export_cuts(analysis, cuts, out, loaded.normalization)


def test_manifest_lists_every_cut_with_its_files_and_differences(exported):
    loaded, analysis, out, manifest = exported
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "edgesplit-export/1" and manifest["input_shape"] == [3, 64, 64]
    assert manifest["normalization"] == IMAGENET.to_dict()
    assert [e["id"] for e in manifest["cuts"]] == [c.index for c in analysis.cuts if c.record_low]
    for entry in manifest["cuts"]:
        assert (out / entry["head"]).is_file() and (out / entry["tail"]).is_file()
        assert entry["head_max_abs_diff"] <= 1e-4 and entry["tail_max_abs_diff"] <= 1e-4
    assert manifest["model_max_abs_diff"] <= 1e-4


def test_onnx_head_then_tail_matches_torch_at_another_batch_size(exported):
    loaded, _, out, manifest = exported
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = loaded.module(x).numpy()
    for entry in manifest["cuts"]:
        head = ort.InferenceSession(str(out / entry["head"]), providers=["CPUExecutionProvider"])
        tail = ort.InferenceSession(str(out / entry["tail"]), providers=["CPUExecutionProvider"])
        mid = head.run(None, {"input": x.numpy()})[0]
        assert mid.shape == (3, *entry["shape"])
        assert np.abs(tail.run(None, {"crossing": mid})[0] - expected).max() <= 1e-4


def test_the_input_cut_cannot_be_exported(exported, tmp_path):
    _, analysis, _, _ = exported
    with pytest.raises(EdgesplitError, match="cut 'x' is not exportable: only cuts after the input where nothing but tensors cross"):
        export_cuts(analysis, [analysis.cuts[0]], tmp_path, IMAGENET)


def with_batch_statistics(model, shape):
    """``model`` (eval mode) with its batch norms' statistics taken from random images: untrained, its features
    vanish layer by layer and every score ties (one class everywhere, or every box scored alike)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch
    with torch.no_grad():
        model.train()(torch.randn(4, *shape, generator=torch.Generator().manual_seed(0)))
    return model.eval()


@pytest.fixture(scope="module")
def lraspp(tmp_path_factory):
    """LRASPP exported with its pixel classes at a cut where two tensors cross and at the last natural
    bottleneck."""
    loaded = load_model("lraspp_mobilenet_v3_large")
    analysis = analyze(with_batch_statistics(loaded.module, SHAPE), SHAPE, "lraspp", max_tensors=2)
    two = next(c for c in analysis.natural_bottlenecks() if len(c.crossing) == 2)
    one = analysis.natural_bottlenecks()[-1]
    out = tmp_path_factory.mktemp("lraspp")
    manifest = export_cuts(analysis, [two, one], out, loaded.normalization, postprocess=loaded.postprocess)
    return loaded, analysis, (two, one), out, manifest


def test_a_segmentation_model_exports_with_cuts_where_two_tensors_cross(lraspp):
    """LRASPP's head reads a low-level feature map too: past it, two tensors cross. The masks come out
    under their name in the model's output dict."""
    loaded, _, (two, one), out, manifest = lraspp
    assert manifest["outputs"] == ["out"] and manifest["postprocess"] == {"kind": "pixel_classes"}
    entry = manifest["cuts"][0]
    assert entry["crossing"] == ["crossing_0", "crossing_1"] and "shape" not in entry
    assert entry["shapes"] == [list(s[1:]) for s in two.shapes]
    assert manifest["cuts"][1]["crossing"] == ["crossing"] and manifest["cuts"][1]["shape"] == list(one.shapes[0][1:])
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = loaded.module(x)["out"].numpy()
    head = ort.InferenceSession(str(out / entry["head"]), providers=["CPUExecutionProvider"])
    tail = ort.InferenceSession(str(out / entry["tail"]), providers=["CPUExecutionProvider"])
    mids = head.run(None, {"input": x.numpy()})
    masks = tail.run(["out"], dict(zip(entry["crossing"], mids)))[0]
    assert masks.shape == (2, 21, 64, 64) and np.abs(masks - expected).max() <= 1e-4


def test_the_onnx_engine_answers_pixel_classes_as_torch_at_a_cut_where_two_tensors_cross(lraspp):
    loaded, analysis, (two, one), out, _ = lraspp
    onnx, torch_engine = OnnxEngine(out), TorchEngine(analysis, loaded.normalization, loaded.postprocess)
    assert set(onnx.cut_ids) == {two.name, one.name} and not onnx.answer_varies
    image = np.random.default_rng(5).integers(0, 256, SHAPE, dtype=np.uint8)
    x = onnx.normalize(image)
    mid = onnx.head(two.name, x)
    assert isinstance(mid, tuple) and [m.shape[1:] for m in mid] == [tuple(s[1:]) for s in two.shapes]
    expected = torch_engine.tail(two.name, torch_engine.head(two.name, x))["out"]
    assert len(np.unique(expected)) > 1
    for got in (onnx.tail(two.name, mid)["out"], onnx.tail(one.name, onnx.head(one.name, x))["out"],
                onnx.local(x)["out"]):
        assert got.dtype == np.uint8 and got.shape == (1, 64, 64) and np.array_equal(got, expected)
    profile = onnx.profile([image], repeats=1)
    assert profile.cuts[two.name].elements == two.elements and profile.output_bytes == 64 * 64 + 53  # the answer's frame: 38 + 4·3 B for (1, 64, 64) uint8, 3 for "out"


def test_export_command(monkeypatch, capsys, tmp_path):
    code, out, err = run(monkeypatch, capsys, "export", "toy_models:toy", "--input-shape", "3,8,8", "--cuts", "pool",
                         "--out", str(tmp_path / "toy"))
    assert code == 0, err
    assert json.loads((tmp_path / "toy" / "manifest.json").read_text())["cuts"][0]["name"] == "pool"
    assert "pool" in out


@pytest.mark.slow
def test_a_detector_answers_the_same_boxes_through_the_onnx_engine_as_through_torch(tmp_path):
    """SSDlite exported at a natural bottleneck: ONNX Runtime's head and tail, then numpy's post-processing,
    give torch's boxes."""
    loaded = load_model("ssdlite320_mobilenet_v3_large")
    analysis = analyze(with_batch_statistics(loaded.module, loaded.native_input_shape), loaded.native_input_shape,
                       "ssdlite")
    cut = min(analysis.natural_bottlenecks(), key=lambda c: c.ratio)
    manifest = export_cuts(analysis, [cut], tmp_path, loaded.normalization, postprocess=loaded.postprocess)
    assert manifest["postprocess"]["kind"] == "ssd"
    onnx, torch_engine = OnnxEngine(tmp_path), TorchEngine(analysis, loaded.normalization, loaded.postprocess)
    assert onnx.answer_varies
    x = onnx.normalize(np.random.default_rng(0).integers(0, 256, (3, 320, 320), dtype=np.uint8))
    expected = torch_engine.tail(cut.name, torch_engine.head(cut.name, x))
    for got in (onnx.tail(cut.name, onnx.head(cut.name, x)), onnx.local(x)):
        assert len(got["boxes"]) == len(expected["boxes"]) > 0
        assert np.array_equal(got["labels"], expected["labels"])
        assert np.abs(got["boxes"] - expected["boxes"]).max() <= 1e-4
        assert np.abs(got["scores"] - expected["scores"]).max() <= 1e-5
