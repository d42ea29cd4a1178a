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


def test_multi_value_cuts_cannot_be_exported(exported, tmp_path):
    _, analysis, _, _ = exported
    multi = next(c for c in analysis.cuts if not c.single_tensor)
    with pytest.raises(EdgesplitError, match="is not a single-tensor cut"):
        export_cuts(analysis, [multi], tmp_path, IMAGENET)


def test_export_command(monkeypatch, capsys, tmp_path):
    code, out, err = run(monkeypatch, capsys, "export", "toy_models:toy", "--input-shape", "3,8,8", "--cuts", "pool",
                         "--out", str(tmp_path / "toy"))
    assert code == 0, err
    assert json.loads((tmp_path / "toy" / "manifest.json").read_text())["cuts"][0]["name"] == "pool"
    assert "pool" in out
