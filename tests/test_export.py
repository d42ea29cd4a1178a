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


def test_a_segmentation_model_exports_with_cuts_where_two_tensors_cross(tmp_path):
    """LRASPP's head reads a low-level feature map too: past it, two tensors cross. The masks come out
    under their name in the model's output dict."""
    loaded = load_model("lraspp_mobilenet_v3_large")
    analysis = analyze(loaded.module, SHAPE, "lraspp", max_tensors=2)
    two = next(c for c in analysis.natural_bottlenecks() if len(c.crossing) == 2)
    one = analysis.natural_bottlenecks()[-1]
    manifest = export_cuts(analysis, [two, one], tmp_path, loaded.normalization)
    assert manifest["outputs"] == ["out"]
    entry = manifest["cuts"][0]
    assert entry["crossing"] == ["crossing_0", "crossing_1"] and "shape" not in entry
    assert entry["shapes"] == [list(s[1:]) for s in two.shapes]
    assert manifest["cuts"][1]["crossing"] == ["crossing"] and manifest["cuts"][1]["shape"] == list(one.shapes[0][1:])
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = loaded.module(x)["out"].numpy()
    head = ort.InferenceSession(str(tmp_path / entry["head"]), providers=["CPUExecutionProvider"])
    tail = ort.InferenceSession(str(tmp_path / entry["tail"]), providers=["CPUExecutionProvider"])
    mids = head.run(None, {"input": x.numpy()})
    masks = tail.run(["out"], dict(zip(entry["crossing"], mids)))[0]
    assert masks.shape == (2, 21, 64, 64) and np.abs(masks - expected).max() <= 1e-4


def test_export_command(monkeypatch, capsys, tmp_path):
    code, out, err = run(monkeypatch, capsys, "export", "toy_models:toy", "--input-shape", "3,8,8", "--cuts", "pool",
                         "--out", str(tmp_path / "toy"))
    assert code == 0, err
    assert json.loads((tmp_path / "toy" / "manifest.json").read_text())["cuts"][0]["name"] == "pool"
    assert "pool" in out
