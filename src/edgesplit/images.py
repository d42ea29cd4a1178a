"""Real photos (they ship with scikit-image) and the input codecs of full offload: raw uint8 and JPEG."""

from __future__ import annotations

import io

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image

from edgesplit.errors import EdgesplitError

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")


def photo(name: str) -> torch.Tensor:
    """One of scikit-image's colour photos as a uint8 tensor (3, H, W)."""
    try:
        from skimage import data
    except ImportError:
        raise EdgesplitError("real photos need scikit-image: pip install scikit-image") from None
    if name not in PHOTOS:
        raise EdgesplitError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    return torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).contiguous()


def fit(image: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Resize the shorter side to 8/7 of the input and centre-crop to (H, W), the usual ImageNet framing."""
    _, height, width = input_shape
    resized = F.resize(image, round(min(height, width) * 8 / 7), antialias=True)
    return F.center_crop(resized, [height, width])


def lite_normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> float as EfficientNet-Lite expects: (x - 127) / 128."""
    return (image.float() - 127.0) / 128.0


def jpeg_encode(image: torch.Tensor, quality: int) -> bytes:
    """A uint8 (3, H, W) tensor as JPEG bytes (Pillow, libjpeg)."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_decode(data: bytes) -> torch.Tensor:
    """JPEG bytes back to a uint8 (3, H, W) tensor."""
    with Image.open(io.BytesIO(data)) as decoded:
        return torch.from_numpy(np.asarray(decoded.convert("RGB")).copy()).permute(2, 0, 1)
