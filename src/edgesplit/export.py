"""ONNX export of heads and tails, one pair per cut, with a manifest a device without torch can read.

Each file takes and returns float32 with a dynamic batch dimension. Every exported graph is run once with
ONNX Runtime against torch and the largest difference is written to the manifest (the issue's bar: 1e-4).
The exporter used is torch's TorchScript-based one (``dynamo=False``): it needs no extra package.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgesplit.analysis import Analysis, Cut, example_input
from edgesplit.errors import EdgesplitError
from edgesplit.models import Normalization
from edgesplit.runtime.tail_engine import model_id
from edgesplit.splitter import split

FORMAT = "edgesplit-export/1"
TOLERANCE = 1e-4


def export_cuts(analysis: Analysis, cuts: list[Cut], out_dir: str | os.PathLike[str], normalization: Normalization,
                opset: int = 17) -> dict[str, Any]:
    """Write ``model.onnx``, ``head_<id>.onnx`` / ``tail_<id>.onnx`` per cut and ``manifest.json``."""
    try:
        import onnxruntime
    except ImportError:
        raise EdgesplitError("checking the export needs onnxruntime: pip install 'edgesplit[device]'") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = analysis.graph.model.eval()
    x = example_input(model, analysis.input_shape, batch_size=2)
    entries = []
    whole = _export(model, x, out / "model.onnx", "input", "logits", opset)
    for cut in cuts:
        if not cut.single_tensor or cut.index == 0:
            raise EdgesplitError(f"cut {cut.name!r} is not a single-tensor cut after the input; export natural "
                                 "bottlenecks or other single-tensor cuts")
        head, tail = split(analysis, cut)
        with torch.inference_mode():
            mid = head(x)
        entries.append({
            "id": cut.index, "name": cut.name, "shape": list(cut.shapes[0][1:]), "ratio": cut.ratio,
            "head": f"head_{cut.index}.onnx", "tail": f"tail_{cut.index}.onnx",
            "head_max_abs_diff": _export(head, x, out / f"head_{cut.index}.onnx", "input", "crossing", opset),
            "tail_max_abs_diff": _export(tail, mid, out / f"tail_{cut.index}.onnx", "crossing", "logits", opset)})
    manifest = {"format": FORMAT, "model": analysis.model, "model_id": model_id(model).hex(),
                "input_shape": list(analysis.input_shape), "normalization": normalization.to_dict(),
                "opset": opset, "onnxruntime": onnxruntime.__version__, "model_file": "model.onnx",
                "model_max_abs_diff": whole, "cuts": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    worst = max([whole, *(max(e["head_max_abs_diff"], e["tail_max_abs_diff"]) for e in entries)])
    if worst > TOLERANCE:
        raise EdgesplitError(f"ONNX Runtime differs from torch by {worst:.3g} (> {TOLERANCE}); see {out}/manifest.json")
    return manifest


def _export(module: nn.Module, x: torch.Tensor, path: Path, input_name: str, output_name: str, opset: int) -> float:
    """Export ``module`` for input ``x`` and return ONNX Runtime's max abs difference from torch."""
    import onnxruntime

    with warnings.catch_warnings():  # the TorchScript exporter announces its successor; it works as is
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module, (x,), str(path), input_names=[input_name], output_names=[output_name],
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                              opset_version=opset, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {input_name: x.numpy()})[0]
    with torch.inference_mode():
        expected = module(x).numpy()
    return float(np.abs(got - expected).max())
