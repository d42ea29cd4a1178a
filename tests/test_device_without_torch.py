"""A device with only `pip install edgesplit[device]` (ONNX Runtime + numpy, no torch) serves requests
from an exported folder against a real server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgesplit import analyze
from edgesplit.export import export_cuts
from edgesplit.images import load_images
from edgesplit.models import load_model
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.runtime.server import create_app
from live_server import LiveServer

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 64, 64)


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", f"{ROOT}[device]"],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    return venv


@pytest.mark.slow
def test_onnx_device_without_torch(device_venv, tmp_path):
    python = str(device_venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    numpy_only = subprocess.run([python, "-c", "import edgesplit.answers"], capture_output=True, text=True)
    assert numpy_only.returncode == 0, numpy_only.stderr[-2000:]  # detectors' and segmenters' answers

    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, SHAPE, "efficientnet_b0")
    cut = [c for c in analysis.cuts if c.record_low][2]
    export_cuts(analysis, [cut], tmp_path / "export", loaded.normalization)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    images = load_images(str(folder), SHAPE)
    mean = torch.tensor(loaded.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.normalization.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = [int(loaded.module((torch.from_numpy(i)[None].float() - mean) / std).argmax()) for i in images]

    with LiveServer(create_app(TailEngine(analysis, loaded.normalization))) as server:
        out = tmp_path / "run.json"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run(
            [str(device_venv / "bin" / "edgesplit"), "run", str(tmp_path / "export"), "--engine", "onnx",
             "--server", server.url, "--images", str(folder), "--count", "4", "--policy", f"static:{cut.name}",
             "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["executed"] for r in data["requests"]] == ["split"] * 4
    assert [r["top1"] for r in data["requests"]] == expected * 2
    assert data["summary"]["fallbacks"] == 0
