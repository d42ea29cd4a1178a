"""Real photos (they ship with scikit-image) and the input codecs of full offload: raw uint8 and JPEG."""

from __future__ import annotations

import time

import torch
import torchvision.transforms.functional as F
from torchvision.io import decode_jpeg, encode_jpeg

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
    return encode_jpeg(image, quality=quality).numpy().tobytes()


def jpeg_decode(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def measure_jpeg(images: list[torch.Tensor], quality: int, repeats: int = 5) -> dict[str, float]:
    """Mean compressed size and median encode/decode time of ``images`` at JPEG ``quality``."""
    sizes, encode, decode = [], [], []
    for image in images:
        for _ in range(repeats):
            start = time.perf_counter()
            data = jpeg_encode(image, quality)
            encode.append(time.perf_counter() - start)
            start = time.perf_counter()
            jpeg_decode(data)
            decode.append(time.perf_counter() - start)
        sizes.append(len(data))
    return {"bytes": sum(sizes) / len(sizes), "encode_s": _median(encode), "decode_s": _median(decode)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
