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
from edgesplit.outputs import as_tensors
from edgesplit.splitter import split
from edgesplit.wire import flatten_tree

FORMAT = "edgesplit-export/1"
TOLERANCE = 1e-4


def export_cuts(analysis: Analysis, cuts: list[Cut], out_dir: str | os.PathLike[str], normalization: Normalization,
                opset: int = 17) -> dict[str, Any]:
    """Write ``model.onnx``, ``head_<id>.onnx`` / ``tail_<id>.onnx`` per cut and ``manifest.json``.

    A head returns, and its tail takes, ``crossing`` (one tensor) or ``crossing_0``, ``crossing_1``, … (a cut
    where several tensors cross); the whole model and every tail return the model's outputs, named
    ``logits`` for a single tensor, else by their paths in the model's output (``out`` for
    ``{"out": masks}``, ``0``, ``1`` for a tuple).
    """
    try:
        import onnxruntime
    except ImportError:
        raise EdgesplitError("checking the export needs onnxruntime: pip install 'edgesplit[device]'") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = analysis.graph.model.eval()
    x = example_input(model, analysis.input_shape, batch_size=2)
    with torch.inference_mode():
        outputs = output_names(model(x))
    entries = []
    whole = _export(model, (x,), out / "model.onnx", ["input"], outputs, opset)
    for cut in cuts:
        if cut.index == 0 or len(cut.shapes) != len(cut.crossing):
            raise EdgesplitError(f"cut {cut.name!r} is not exportable: only cuts after the input where nothing "
                                 "but tensors cross (natural bottlenecks are)")
        head, tail = split(analysis, cut)
        with torch.inference_mode():
            mid = head(x)
        mid = as_tensors(mid)
        names = ["crossing"] if len(mid) == 1 else [f"crossing_{k}" for k in range(len(mid))]
        shapes = [list(shape[1:]) for shape in cut.shapes]
        entries.append({
            "id": cut.index, "name": cut.name, **({"shape": shapes[0]} if len(shapes) == 1 else {}),
            "shapes": shapes, "crossing": names, "ratio": cut.ratio,
            "head": f"head_{cut.index}.onnx", "tail": f"tail_{cut.index}.onnx",
            "head_max_abs_diff": _export(head, (x,), out / f"head_{cut.index}.onnx", ["input"], names, opset),
            "tail_max_abs_diff": _export(tail, mid, out / f"tail_{cut.index}.onnx", names, outputs, opset)})
    manifest = {"format": FORMAT, "model": analysis.model, "model_id": model_id(model).hex(),
                "input_shape": list(analysis.input_shape), "normalization": normalization.to_dict(),
                "opset": opset, "onnxruntime": onnxruntime.__version__, "model_file": "model.onnx",
                "outputs": outputs, "model_max_abs_diff": whole, "cuts": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    worst = max([whole, *(max(e["head_max_abs_diff"], e["tail_max_abs_diff"]) for e in entries)])
    if worst > TOLERANCE:
        raise EdgesplitError(f"ONNX Runtime differs from torch by {worst:.3g} (> {TOLERANCE}); see {out}/manifest.json")
    return manifest


def output_names(output: Any) -> list[str]:
    """The names of a model's output tensors, in the order ONNX flattens them: each tensor's path in the
    output, as the wire names an answer's tensors (:func:`edgesplit.wire.flatten_tree`), so that a device
    rebuilds the output with ``unflatten_tree``; ``logits`` for a lone tensor."""
    return [name or "logits" for name, _ in flatten_tree(output)]


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
            outputs: list[str], opset: int) -> float:
    """Export ``module`` for inputs ``args`` and return ONNX Runtime's max abs difference from torch over
    every output."""
    import onnxruntime

    batch = {name: {0: "batch"} for name in [*input_names, *outputs]}
    with warnings.catch_warnings():  # the TorchScript exporter announces its successor; it works as is
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module, args, str(path), input_names=input_names, output_names=outputs,
                              dynamic_axes=batch, opset_version=opset, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: a.numpy() for name, a in zip(input_names, args)})
    with torch.inference_mode():
        expected = torch.utils._pytree.tree_leaves(module(*args))
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))
