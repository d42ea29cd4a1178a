"""edgesplit: dynamic split computing for ordinary pretrained PyTorch models.

Discover, then act::

    from edgesplit import load_model, analyze, split
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, loaded.native_input_shape)
    cut = analysis.natural_bottlenecks()[0]
    head, tail = split(analysis, cut)          # tail(head(x)) == model(x)

The names below load on first use, so a device with only ONNX Runtime (``edgesplit[device]``) can import
the wire format, estimators and policies without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Analysis": "edgesplit.analysis", "Cut": "edgesplit.analysis", "analyze": "edgesplit.analysis",
    "EdgesplitError": "edgesplit.errors", "LoadedModel": "edgesplit.models", "load_model": "edgesplit.models",
    "check_exact": "edgesplit.splitter", "split": "edgesplit.splitter",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgesplit' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
