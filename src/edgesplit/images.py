"""Images as classifiers expect them: real photos (they ship with scikit-image) or files, framed to the
model's input, as uint8 numpy arrays (3, H, W). Needs only numpy and Pillow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgesplit.errors import EdgesplitError

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def photo(name: str) -> np.ndarray:
    """One of scikit-image's colour photos, uint8 (3, H, W)."""
    try:
        from skimage import data
    except ImportError:
        raise EdgesplitError("the built-in photos need scikit-image: pip install scikit-image, or pass --images") from None
    if name not in PHOTOS:
        raise EdgesplitError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    return np.ascontiguousarray(getattr(data, name)().transpose(2, 0, 1))


def fit(image: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Resize the shorter side to 8/7 of the input (bilinear, antialiased) and centre-crop to (H, W)."""
    _, height, width = input_shape
    picture = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    scale = round(min(height, width) * 8 / 7) / min(picture.size)
    resized = picture.resize((max(width, round(picture.width * scale)), max(height, round(picture.height * scale))),
                             Image.BILINEAR)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height))).transpose(2, 0, 1).copy()


def load_images(folder: str | None, input_shape: tuple[int, ...]) -> list[np.ndarray]:
    """The folder's images (sorted by name), else the built-in photos, framed to ``input_shape``."""
    if folder is None:
        return [fit(photo(name), input_shape) for name in PHOTOS]
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise EdgesplitError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        except OSError as exc:
            raise EdgesplitError(f"cannot read image {path}: {exc}") from exc
        images.append(fit(array, input_shape))
    return images


def lite_normalize(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 as EfficientNet-Lite expects: (x - 127) / 128."""
    return (image.astype(np.float32) - 127.0) / 128.0


def normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch (N, C, H, W) -> float32, (x - mean) / std per channel."""
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return lambda batch: ((batch.astype(np.float32) - m) / s).astype(np.float32)
