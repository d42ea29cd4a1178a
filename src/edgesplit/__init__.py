"""edgesplit: dynamic split computing for ordinary pretrained PyTorch models.

Discover, then act::

    from edgesplit import load_model, analyze, split
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, loaded.native_input_shape)
    cut = analysis.natural_bottlenecks()[0]
    head, tail = split(analysis, cut)          # tail(head(x)) == model(x)
"""

from edgesplit.analysis import Analysis, Cut, analyze
from edgesplit.errors import EdgesplitError
from edgesplit.models import LoadedModel, load_model
from edgesplit.split import check_exact, split

__all__ = ["Analysis", "Cut", "EdgesplitError", "LoadedModel", "analyze", "check_exact", "load_model", "split"]
