"""How a crossing tensor is represented on the wire: fp32 (exact), fp16, int8 affine (lossy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgesplit.errors import EdgesplitError
from edgesplit.registry import Registry


@dataclass(frozen=True)
class SplitCodec:
    name: str
    bytes_per_element: int
    exact: bool  # decoding returns the very tensor the head produced


SPLIT_CODECS: Registry[SplitCodec] = Registry("codec", EdgesplitError)
for _codec in (SplitCodec("fp32", 4, True), SplitCodec("fp16", 2, False), SplitCodec("int8", 1, False)):
    SPLIT_CODECS.register(_codec.name)(_codec)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Affine uint8 quantisation over the whole tensor: (q, scale, zero_point), x ≈ (q - zero_point) * scale."""
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (high - low) / 255 or 1.0
    zero_point = int(round(-low / scale))
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255).to(torch.uint8)
    return q, scale, zero_point


def dequantize_int8(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return (q.float() - zero_point) * scale
