"""ONNX export of heads and tails, one pair per cut, with a manifest a device without torch can read.

Each file takes and returns float32 with a dynamic batch dimension. Every exported graph is run once with
ONNX Runtime against torch and the largest difference is written to the manifest (the issue's bar: 1e-4).
The exporter used is torch's TorchScript-based one (``dynamo=False``): it needs no extra package.
A model's post-processing (a segmentation model's classes, a detector's boxes) is described under the
manifest's ``"postprocess"`` (a detector's anchors in ``anchors.npy``), for :mod:`edgesplit.answers` to run.
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
from edgesplit.outputs import PixelClasses, Postprocess, as_tensors
from edgesplit.splitter import split
from edgesplit.wire import flatten_tree

FORMAT = "edgesplit-export/1"
TOLERANCE = 1e-4


def export_cuts(analysis: Analysis, cuts: list[Cut], out_dir: str | os.PathLike[str], normalization: Normalization,
                opset: int = 17, postprocess: Postprocess | None = None) -> dict[str, Any]:
    """Write ``model.onnx``, ``head_<id>.onnx`` / ``tail_<id>.onnx`` per cut and ``manifest.json``; with the
    model's ``postprocess``, its description too (:func:`describe_postprocess`), which a device without torch
    runs after the model (:mod:`edgesplit.answers`).

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
    if postprocess is not None:
        manifest["postprocess"] = describe_postprocess(postprocess, out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    worst = max([whole, *(max(e["head_max_abs_diff"], e["tail_max_abs_diff"]) for e in entries)])
    if worst > TOLERANCE:
        raise EdgesplitError(f"ONNX Runtime differs from torch by {worst:.3g} (> {TOLERANCE}); see {out}/manifest.json")
    return manifest


def describe_postprocess(postprocess: Postprocess, out_dir: Path) -> dict[str, Any]:
    """The manifest's ``"postprocess"``: ``{"kind": "pixel_classes"}``, or a torchvision detector's settings
    read from the detector itself, with its anchors written to ``anchors.npy`` in ``out_dir``."""
    from edgesplit.detection import DetectionPostprocess

    if isinstance(postprocess, PixelClasses):
        return {"kind": "pixel_classes"}
    if not isinstance(postprocess, DetectionPostprocess):
        raise EdgesplitError(f"{type(postprocess).__name__} has no numpy version for a device without torch "
                             "(exportable: PixelClasses, DetectionPostprocess of SSD, RetinaNet, FCOS)")
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection._utils import BoxLinearCoder

    detector = postprocess.detector
    kinds = {SSD: "ssd", RetinaNet: "retinanet", FCOS: "fcos"}
    kind = next((k for cls, k in kinds.items() if isinstance(detector, cls)), None)
    if kind is None:
        raise EdgesplitError(f"a {type(detector).__name__} detector's post-processing has no numpy version for a "
                             "device without torch (SSD, RetinaNet and FCOS have)")
    anchors = postprocess.anchors(torch.device("cpu"), torch.float32).numpy()
    np.save(out_dir / "anchors.npy", anchors, allow_pickle=False)
    coder = detector.box_coder
    entry: dict[str, Any] = {
        "kind": kind, "input_size": list(postprocess.input_size), "score_thresh": float(detector.score_thresh),
        "nms_thresh": float(detector.nms_thresh), "detections_per_img": int(detector.detections_per_img),
        "topk_candidates": int(detector.topk_candidates), "anchors": "anchors.npy"}
    if isinstance(coder, BoxLinearCoder):  # FCOS's
        entry["normalize_by_size"] = bool(coder.normalize_by_size)
    else:  # a BoxCoder: SSD's, RetinaNet's
        entry.update(weights=[float(w) for w in coder.weights], bbox_xform_clip=float(coder.bbox_xform_clip))
    if kind != "ssd":  # RetinaNet and FCOS take the top-k level by level
        entry["anchors_per_level"] = postprocess.anchors_per_level(len(anchors))
    return entry


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
