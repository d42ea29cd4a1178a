"""One model, able to run from any single-tensor cut to the end (no model copy per cut)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgesplit.analysis import Analysis
from edgesplit.codec import FLOATS, Expectation
from edgesplit.images import normalizer
from edgesplit.models import Normalization
from edgesplit.splitter import split

INPUT_CUT = 0


@dataclass(frozen=True)
class CutInfo:
    """A cut a client may send: its id (the cut's index in the analysis), name and per-sample shape."""

    id: int
    name: str
    shape: tuple[int, ...]  # without the batch dimension
    ratio: float
    natural_bottleneck: bool

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "shape": list(self.shape), "dtype": "float32",
                "ratio": self.ratio, "natural_bottleneck": self.natural_bottleneck}


def model_id(module: nn.Module) -> bytes:
    """8 bytes of SHA-256 over the architecture (its repr) and every parameter and buffer."""
    digest = hashlib.sha256(f"{type(module).__qualname__}\n{module!r}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()[:8]


class TailEngine:
    """Runs the model's tail from any accepted cut; tails share the model's parameters and are built once."""

    def __init__(self, analysis: Analysis, normalization: Normalization) -> None:
        self.analysis = analysis
        self.normalization = normalization
        self.model = analysis.graph.model.eval()
        self.model_id = model_id(self.model)
        batch_dims = analysis.graph.batch_dims
        self.cuts: dict[int, CutInfo] = {
            c.index: CutInfo(c.index, c.name, tuple(c.shapes[0][1:]), c.ratio, c.natural_bottleneck)
            for c in analysis.cuts if c.single_tensor and batch_dims.get(c.crossing[0]) == 0}
        self._tails: dict[int, nn.Module] = {INPUT_CUT: self.model}
        self._normalize = normalizer(normalization.mean, normalization.std)

    def expectation(self, max_batch_size: int) -> Expectation:
        return Expectation(self.model_id, {i: c.shape for i, c in self.cuts.items()}, max_batch_size,
                           {INPUT_CUT: FLOATS | {"uint8"}})

    def tail(self, cut_id: int) -> nn.Module:
        if cut_id not in self._tails:
            self._tails[cut_id] = split(self.analysis, self.cuts[cut_id].name)[1]
        return self._tails[cut_id]

    def run(self, cut_id: int, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch that crossed at ``cut_id``; uint8 input at the input cut is normalised here."""
        if cut_id == INPUT_CUT and batch.dtype == np.uint8:
            batch = self._normalize(batch)
        with torch.inference_mode():
            return self.tail(cut_id)(torch.from_numpy(batch).float()).numpy()

    def warm_up(self) -> int:
        """Build and run once every natural-bottleneck tail and the whole model, so that no client's
        first request at a cut pays for it; returns how many were warmed."""
        warmed = [INPUT_CUT, *(i for i, c in self.cuts.items() if c.natural_bottleneck)]
        for cut_id in warmed:
            shape = self.analysis.input_shape if cut_id == INPUT_CUT else self.cuts[cut_id].shape
            self.run(cut_id, np.zeros((1, *shape), np.float32))
        return len(warmed)

    def describe(self) -> dict[str, Any]:
        return {"model": self.analysis.model, "model_id": self.model_id.hex(),
                "input_shape": list(self.analysis.input_shape), "normalization": self.normalization.to_dict(),
                "cuts": [c.to_dict() for c in self.cuts.values()]}
