"""How a tensor or an image travels: codecs as registered objects, named by one grammar ``name[:arg]``.

A **split codec** carries the tensor that crosses a cut; its argument, if any, names a lossless
compression of the frame's payload (``int8:zstd``, ``fp16:lz4``)::

    name    on the wire, per element      decodes to  exactness
    fp32    32 bits                        float32     exact
    fp16    16 bits                        float16     round to nearest: relative error ≤ 2⁻¹¹ (±inf beyond ±65504)
    bf16    16 bits                        float32     round to nearest: relative error ≤ 2⁻⁸, float32's range
    int8    8 bits, one affine map         float32     error ≤ half a step: (max - min) / 510 over the tensor
    int8c   8 bits, an affine map per      float32     error ≤ half a step of each channel's own range
            channel (+ 8 bytes a channel)
    int6c   6, 5 or 4 bits, packed, per     float32     2⁶, 2⁵ or 2⁴ levels per channel over a clipped range;
    int5c   channel (+ 8 bytes each)                   the clip is chosen per channel to minimise the
    int4c                                              tensor's squared error
    ecq6    int8 codes about per-channel   float32     one uniform step over the tensor, 2^(2.05 - N) × the
    ecq5    int16 offsets, always zstd-                channels' RMS deviation or coarser: error ≤ half a
    ecq4    compressed: about 6, 5, 4 bits              step, nothing clipped (entropy-coded quantisation)

Channels are dimension 1 (batch first) of tensors with at least 3 dimensions and more than one element
per channel; a feature vector (``(N, C)`` or ``(N, C, 1, 1)``) is one channel. zstd runs at level 3: on EfficientNet-Lite0's int8 cuts levels 1, 3, 6 and 9 gave bytes
within 0.3 % of each other (11–14 % saved at the conv cuts, 42 % at the pooled features) in 0.04–0.16 ms;
lz4 saved nothing there (it suits fp32/fp16 tensors with many zeros).

An **input codec** carries the image itself (full offload): ``raw`` (uint8, exact; the server
normalises it) or ``jpeg:Q`` (quality 1–100, baseline JPEG, lossy).

:mod:`edgesplit.wire` writes and reads the frames; this module holds the numerical part (numpy only,
so a device without torch can encode) and the validation of each codec's parameters, which a receiver
runs on what a sender claims: everything that fails raises :class:`FrameError` naming the problem.
"""

from __future__ import annotations

import functools
import math
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesplit.errors import EdgesplitError, FrameError
from edgesplit.registry import Registry, unknown_name_message

FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32: the least int8 scale
COMPRESSIONS = ("none", "zstd", "lz4")
ZSTD_LEVEL = 3
CLIP_RATIOS = (1.0, 0.9, 0.8, 0.65, 0.5)  # intNc: clips tried per channel, as a share of its range about its mean
CLIP_DEVIATIONS = (2.0, 3.0, 4.0)  # ... and as standard deviations about its mean (a far outlier's range is no guide)
ENTROPY_OFFSET_BITS = 2.05  # ecqN: log2(sqrt(2 pi e)), a unit Gaussian's differential entropy in bits
ECQ_MAX_CODE = 127  # ecqN: codes are int8 within ±127 ...
ECQ_MAX_OFFSET = 32767  # ... about int16 offsets
ECQ_MAX_STEPS = ECQ_MAX_OFFSET + ECQ_MAX_CODE + 1  # bounds |offset + code|: steps * this must stay finite
_STEP = struct.Struct("<f")


def parse_spec(spec: str, kind: str) -> tuple[str, str]:
    """``name[:arg]`` -> (name, arg); one ':' at most."""
    name, _, arg = spec.partition(":")
    if not name or ":" in arg or (spec.endswith(":") and not arg):
        raise EdgesplitError(f"malformed {kind} {spec!r}: write NAME or NAME:ARG")
    return name, arg


# ----------------------------------------------------------------------------------------------------
# Wire codecs: how a frame's payload encodes its tensor (the frame's codec byte).


class WireCodec(ABC):
    """One value of a frame's codec byte: encodes an array into header parameters and a payload, and
    checks and decodes what a sender claims."""

    name: str
    code: int
    header_params: int = 0  # bytes of parameters between the shape and the payload

    @abstractmethod
    def payload_bytes(self, shape: tuple[int, ...], itemsize: int) -> int:
        """The decoded payload length a tensor of ``shape`` needs (an upper bound for jpeg)."""

    @abstractmethod
    def encode(self, array: np.ndarray) -> tuple[np.dtype, bytes, bytes]:
        """(the decoded dtype, header parameters, payload)."""

    def check(self, shape: tuple[int, ...], dtype: np.dtype, decoded_length: int) -> None:
        """Refuse a header whose dtype or decoded length this codec cannot produce for ``shape``."""
        if dtype != np.float32:
            raise FrameError(f"{self.name} frames decode to float32, this one says {dtype.name}")
        if decoded_length != self.payload_bytes(shape, 4):
            raise FrameError(f"{self.name} frame of shape {shape} carries {self.payload_bytes(shape, 4)} payload "
                             f"bytes, the header says {decoded_length}")

    def check_params(self, params: bytes) -> None:
        """Refuse header parameters that would not decode to finite values (checked before decompression)."""

    @abstractmethod
    def decode(self, payload: bytearray, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> np.ndarray: ...


WIRE_CODECS: Registry[WireCodec] = Registry("codec", FrameError)


def _wire(cls: type[WireCodec]) -> type[WireCodec]:
    WIRE_CODECS.register(cls.name)(cls())
    return cls


def wire_codec_by_code(code: int) -> WireCodec:
    for name in WIRE_CODECS:
        if WIRE_CODECS.get(name).code == code:
            return WIRE_CODECS.get(name)
    raise FrameError(f"unknown codec code {code}")


DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("u1"), 4: np.dtype("<i4")}  # int32: raw only


@_wire
class Raw(WireCodec):
    """The array's own bytes: float32, float16, uint8 or int32."""

    name, code = "raw", 0

    def payload_bytes(self, shape: tuple[int, ...], itemsize: int) -> int:
        return math.prod(shape) * itemsize

    def encode(self, array: np.ndarray) -> tuple[np.dtype, bytes, bytes]:
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in DTYPES.values():
            raise FrameError(f"raw frames carry float32, float16, uint8 or int32, not {array.dtype}")
        return dtype, b"", array.astype(dtype, copy=False).tobytes()

    def check(self, shape: tuple[int, ...], dtype: np.dtype, decoded_length: int) -> None:
        if decoded_length != self.payload_bytes(shape, dtype.itemsize):
            raise FrameError(f"decoded length {decoded_length} does not match shape {shape} of {dtype.name} "
                             f"({self.payload_bytes(shape, dtype.itemsize)} bytes)")

    def decode(self, payload: bytearray, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> np.ndarray:
        return np.frombuffer(payload, dtype=dtype).reshape(shape)


_AFFINE = struct.Struct("<fi")


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Affine uint8 quantisation over the whole tensor: x ≈ (q - zero_point) * scale."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise FrameError(f"int8 frames carry finite values only: this tensor has "
                         f"{np.count_nonzero(~np.isfinite(x))} NaN or infinite")
    scale = max((high - low) / 255, FLOAT32_TINY)
    zero_point = int(round(-low / scale))
    if not int8_scale_is_valid(scale, zero_point):
        raise FrameError(f"a tensor spanning [{low:.4g}, {high:.4g}] exceeds what int8 frames carry: use fp32")
    q = np.clip(np.rint(x / scale) + zero_point, 0, 255).astype(np.uint8)
    return q, scale, zero_point


def int8_scale_is_valid(scale: float, zero_point: int) -> bool:
    """Whether every uint8 value decodes, with ``scale`` and ``zero_point``, to a finite float32 (a float32
    times an integer under 256 is exact in a Python float, so the test is exact). False for NaN."""
    return FLOAT32_TINY <= scale and scale * max(zero_point, 255 - zero_point) <= FLOAT32_MAX


def dequantize_int8(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)


@_wire
class Int8(WireCodec):
    """Affine uint8 over the whole tensor; scale and zero point in the header."""

    name, code, header_params = "int8", 1, _AFFINE.size

    def payload_bytes(self, shape: tuple[int, ...], itemsize: int) -> int:
        return math.prod(shape)

    def encode(self, array: np.ndarray) -> tuple[np.dtype, bytes, bytes]:
        q, scale, zero_point = quantize_int8(array.astype(np.float32, copy=False))
        return np.dtype("<f4"), _AFFINE.pack(scale, zero_point), q.tobytes()

    def check(self, shape: tuple[int, ...], dtype: np.dtype, decoded_length: int) -> None:
        if decoded_length != math.prod(shape) or dtype != np.float32:
            raise FrameError(f"int8 frame must decode to float32 with {math.prod(shape)} payload bytes, got "
                             f"{dtype.name} and {decoded_length}")

    def check_params(self, params: bytes) -> None:
        scale, zero_point = _AFFINE.unpack(params)
        if not 0 <= zero_point <= 255:
            raise FrameError(f"int8 zero point must be in 0..255, got {zero_point}")
        if not int8_scale_is_valid(scale, zero_point):
            raise FrameError(f"int8 scale {scale:.4g} with zero point {zero_point} does not decode to finite "
                             f"float32 (the scale must be at least {FLOAT32_TINY:.4g} and at most "
                             f"{FLOAT32_MAX / max(zero_point, 255 - zero_point):.4g})")

    def decode(self, payload: bytearray, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> np.ndarray:
        scale, zero_point = _AFFINE.unpack(params)
        return dequantize_int8(np.frombuffer(payload, dtype=np.uint8).reshape(shape), scale, zero_point)


@_wire
class Jpeg(WireCodec):
    """One uint8 image (1, 3, H, W) as a baseline JPEG (the quality is the encoder's choice)."""

    name, code = "jpeg", 2
    quality = 90

    def payload_bytes(self, shape: tuple[int, ...], itemsize: int) -> int:
        return max_jpeg_bytes(shape[2], shape[3])

    def encode(self, array: np.ndarray, quality: int | None = None) -> tuple[np.dtype, bytes, bytes]:
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] != 1 or array.shape[1] != 3:
            raise FrameError(f"jpeg frames carry one uint8 image of shape (1, 3, H, W), got {array.dtype} "
                             f"{tuple(array.shape)}")
        return np.dtype("u1"), b"", jpeg_encode(array[0], quality or self.quality)

    def check(self, shape: tuple[int, ...], dtype: np.dtype, decoded_length: int) -> None:
        if dtype != np.uint8 or len(shape) != 4 or shape[:2] != (1, 3):
            raise FrameError(f"jpeg frame must be one uint8 image (1, 3, H, W), got {dtype.name} {shape}")
        if decoded_length > max_jpeg_bytes(shape[2], shape[3]):
            raise FrameError(f"jpeg of {decoded_length} bytes for a {shape[3]}×{shape[2]} image: at most "
                             f"{max_jpeg_bytes(shape[2], shape[3])} bytes are accepted", 413)

    def decode(self, payload: bytearray, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> np.ndarray:
        return jpeg_decode(payload, shape)[None]


def _channels(shape: tuple[int, ...]) -> int:
    return shape[1] if len(shape) >= 3 and math.prod(shape[2:]) > 1 else 1


def _per_channel(x: np.ndarray) -> np.ndarray:
    """(channels, everything else): the view quantisation statistics are taken over."""
    channels = _channels(x.shape)
    return np.moveaxis(x, 1, 0).reshape(channels, -1) if channels > 1 else x.reshape(1, -1)


def _finite_float32(array: np.ndarray, codec: str) -> np.ndarray:
    """``array`` as float32; a NaN or infinity is refused, naming ``codec``."""
    x = array.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise FrameError(f"{codec} frames carry finite values only: this tensor has "
                         f"{np.count_nonzero(~np.isfinite(x))} NaN or infinite")
    return x


def _broadcast(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return values.reshape((1, -1) + (1,) * (len(shape) - 2)) if _channels(shape) > 1 else values.reshape(())


class PerChannel(WireCodec):
    """``levels`` + 1 evenly spaced values per channel: x ≈ low[c] + q × step[c]. The payload starts with
    the lows, then the steps (float32 each, one per channel), then the codes."""

    levels: int

    def payload_bytes(self, shape: tuple[int, ...], itemsize: int) -> int:
        return 8 * _channels(shape) + self.code_bytes(math.prod(shape))

    def code_bytes(self, elements: int) -> int:
        return elements

    def range(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each channel's (low, high) to spread the levels over."""
        return channels.min(axis=1), channels.max(axis=1)

    def encode(self, array: np.ndarray) -> tuple[np.dtype, bytes, bytes]:
        x = _finite_float32(array, self.name)
        low, high = (v.astype(np.float64) for v in self.range(_per_channel(x)))
        step = (high - low) / self.levels
        if not np.isfinite(step).all() or (np.abs(low) + self.levels * step > FLOAT32_MAX).any():
            raise FrameError(f"a tensor spanning [{low.min():.4g}, {high.max():.4g}] exceeds what {self.name} "
                             "frames carry: use fp32")
        low32, step32 = low.astype(np.float32), step.astype(np.float32)
        codes = _quantize(x, _broadcast(low32, x.shape), _broadcast(step32, x.shape), self.levels)
        return np.dtype("<f4"), b"", low32.tobytes() + step32.tobytes() + self.pack(codes.reshape(-1))

    def pack(self, codes: np.ndarray) -> bytes:
        return codes.tobytes()

    def unpack(self, data: memoryview, elements: int) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, payload: bytearray, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> np.ndarray:
        channels = _channels(shape)
        low = np.frombuffer(payload, dtype="<f4", count=channels)
        step = np.frombuffer(payload, dtype="<f4", count=channels, offset=4 * channels)
        if not (np.isfinite(low).all() and np.isfinite(step).all() and (step >= 0).all()):
            raise FrameError(f"{self.name} parameters must be finite with steps >= 0")
        if (np.abs(low.astype(np.float64)) + self.levels * step.astype(np.float64) > FLOAT32_MAX).any():
            raise FrameError(f"{self.name} parameters do not decode to finite float32")
        codes = self.unpack(memoryview(payload)[8 * channels:], math.prod(shape)).reshape(shape)
        return (_broadcast(low, shape) + codes.astype(np.float32) * _broadcast(step, shape)).astype(np.float32)


def _quantize(x: np.ndarray, low: np.ndarray, step: np.ndarray, levels: int) -> np.ndarray:
    safe = np.where(step > 0, step, 1.0).astype(np.float32)
    return np.clip(np.rint((x - low) / safe), 0, levels).astype(np.uint8)


@_wire
class Int8PerChannel(PerChannel):
    name, code, levels = "int8c", 3, 255


class Packed(PerChannel):
    """``bits`` per code, packed most significant bit first, the codes one after another; the last byte is
    padded with zero bits. The clip of each channel is chosen among :data:`CLIP_RATIOS` of its range (shrunk
    towards its mean) and :data:`CLIP_DEVIATIONS` standard deviations about its mean, for the least squared
    error of its own values: with few levels, clipping a few values pays for finer steps for the rest."""

    bits: int

    def code_bytes(self, elements: int) -> int:
        return (elements * self.bits + 7) // 8

    def range(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low, high, centre, spread = channels.min(axis=1), channels.max(axis=1), channels.mean(axis=1), channels.std(axis=1)
        clips = [(centre + (low - centre) * r, centre + (high - centre) * r) for r in CLIP_RATIOS]
        clips += [(np.maximum(low, centre - k * spread), np.minimum(high, centre + k * spread)) for k in CLIP_DEVIATIONS]
        best = (np.full(channels.shape[0], np.inf), low, high)
        for lo, hi in clips:
            step = ((hi - lo) / self.levels)[:, None]
            codes = np.clip(np.rint((channels - lo[:, None]) / np.where(step > 0, step, 1.0)), 0, self.levels)
            error = ((lo[:, None] + codes * step - channels) ** 2).sum(axis=1)
            better = error < best[0]
            best = (np.where(better, error, best[0]), np.where(better, lo, best[1]), np.where(better, hi, best[2]))
        return best[1], best[2]

    def pack(self, codes: np.ndarray) -> bytes:
        bits = np.unpackbits(codes[:, None], axis=1)[:, 8 - self.bits:]
        return np.packbits(bits.reshape(-1)).tobytes()

    def unpack(self, data: memoryview, elements: int) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        if bits[elements * self.bits:].any():
            raise FrameError(f"{self.name} padding bits must be 0")
        planes = np.zeros((elements, 8), np.uint8)
        planes[:, 8 - self.bits:] = bits[:elements * self.bits].reshape(elements, self.bits)
        return np.packbits(planes, axis=1).reshape(-1)


@_wire
class Int4PerChannel(Packed):
    name, code, bits, levels = "int4c", 4, 4, 15


@_wire
class Int6PerChannel(Packed):
    name, code, bits, levels = "int6c", 6, 6, 63


@_wire
class Int5PerChannel(Packed):
    name, code, bits, levels = "int5c", 7, 5, 31


class EntropyCoded(WireCodec):
    """Uniform quantisation meant for entropy coding: one step over the tensor, an int8 code per element
    about its channel's offset, x ≈ (offset[c] + q) × step. The step is ``2^(2.05 - bits)`` × the RMS of
    the channels' standard deviations (a Gaussian quantised so has about ``bits`` bits of entropy per
    element) or coarser where that keeps every code within ±127 and every offset within int16: the error is
    at most half a step, nothing is clipped. The step is a header parameter; the payload is the offsets
    (int16, one per channel), then the codes (int8, in the tensor's order). Sent zstd-compressed, which
    brings the codes near their entropy: fixed-width packing of a clipped range (intNc) spends the bits
    that an unclipped, finer step buys accuracy with."""

    bits: int
    header_params = _STEP.size

    def payload_bytes(self, shape: tuple[int, ...], itemsize: int) -> int:
        return 2 * _channels(shape) + math.prod(shape)

    def encode(self, array: np.ndarray) -> tuple[np.dtype, bytes, bytes]:
        x = _finite_float32(array, self.name)
        channels = _per_channel(x).astype(np.float64)
        centre = channels.mean(axis=1)
        spread = math.sqrt(float((channels.std(axis=1) ** 2).mean()))
        reach = float(np.abs(channels - centre[:, None]).max()) if channels.size else 0.0
        step = max(2.0 ** (ENTROPY_OFFSET_BITS - self.bits) * spread, reach / (ECQ_MAX_CODE - 0.5),
                   float(np.abs(centre).max(initial=0.0)) / (ECQ_MAX_OFFSET - 1), FLOAT32_TINY)
        step = float(np.float32(step))
        if step * ECQ_MAX_STEPS > FLOAT32_MAX:
            raise FrameError(f"a tensor reaching {float(np.abs(x).max()):.4g} exceeds what {self.name} frames "
                             "carry: use fp32")
        offset = np.rint(centre / step)
        codes = np.clip(np.rint(x / np.float64(step) - _broadcast(offset, x.shape)), -ECQ_MAX_CODE, ECQ_MAX_CODE)
        return np.dtype("<f4"), _STEP.pack(step), offset.astype("<i2").tobytes() + codes.astype(np.int8).tobytes()

    def check_params(self, params: bytes) -> None:
        (step,) = _STEP.unpack(params)
        if not (FLOAT32_TINY <= step and step * ECQ_MAX_STEPS <= FLOAT32_MAX):
            raise FrameError(f"{self.name} step {step:.4g} does not decode to finite float32 (it must be at least "
                             f"{FLOAT32_TINY:.4g} and at most {FLOAT32_MAX / ECQ_MAX_STEPS:.4g})")

    def decode(self, payload: bytearray, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> np.ndarray:
        (step,) = _STEP.unpack(params)
        channels = _channels(shape)
        offsets = np.frombuffer(payload, dtype="<i2", count=channels).astype(np.int32)
        codes = np.frombuffer(payload, dtype=np.int8, offset=2 * channels).reshape(shape)
        return ((_broadcast(offsets, shape) + codes).astype(np.float32) * np.float32(step)).astype(np.float32)


@_wire
class EntropyCoded4(EntropyCoded):
    name, code, bits = "ecq4", 8, 4


@_wire
class EntropyCoded5(EntropyCoded):
    name, code, bits = "ecq5", 9, 5


@_wire
class EntropyCoded6(EntropyCoded):
    name, code, bits = "ecq6", 10, 6


@_wire
class BFloat16(WireCodec):
    """The upper 16 bits of each float32, rounded to nearest even; decodes to float32."""

    name, code = "bf16", 5

    def payload_bytes(self, shape: tuple[int, ...], itemsize: int) -> int:
        return 2 * math.prod(shape)

    def encode(self, array: np.ndarray) -> tuple[np.dtype, bytes, bytes]:
        bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
        rounded[np.isnan(array)] = 0x7FC0  # rounding could carry a NaN's payload into the exponent: inf
        return np.dtype("<f4"), b"", rounded.tobytes()

    def decode(self, payload: bytearray, shape: tuple[int, ...], dtype: np.dtype, params: bytes) -> np.ndarray:
        return (np.frombuffer(payload, dtype="<u2").astype("<u4") << 16).view("<f4").reshape(shape)


# ----------------------------------------------------------------------------------------------------
# Split and input codecs: what options, profiles, policies and the client name.


@dataclass(frozen=True)
class SplitCodec:
    """How the tensor crossing a cut travels: a wire codec, the dtype a raw frame carries, a compression."""

    name: str  # the spec: "int8", "int8c:zstd"
    wire: str  # the frame's codec
    dtype: str  # what the array is cast to before a raw frame (float32 or float16)
    compression: str
    exact: bool
    exactness: str  # in words

    @property
    def base(self) -> str:
        return self.name.partition(":")[0]

    def payload_bytes(self, shape: tuple[int, ...]) -> int:
        """Payload bytes (parameters included) for a tensor of ``shape`` (batch first) before compression:
        what the codec costs when nothing compresses."""
        return WIRE_CODECS.get(self.wire).payload_bytes(tuple(shape), np.dtype(self.dtype).itemsize)

    def frame(self, array: np.ndarray | tuple[np.ndarray, ...], *, model_id: bytes, cut: int) -> bytes:
        """The tensor crossing ``cut`` as a frame; where several cross (a tuple, in the cut's order), one
        frame of them named "0", "1", …, each sent with this codec."""
        from edgesplit.wire import encode_frame, encode_tensors

        if isinstance(array, tuple):
            named = [(str(k), a.astype(self.dtype, copy=False)) for k, a in enumerate(array)]
            return encode_tensors(named, model_id=model_id, cut=cut, codec=self.wire, compression=self.compression)
        return encode_frame(array.astype(self.dtype, copy=False), model_id=model_id, cut=cut, codec=self.wire,
                            compression=self.compression)

    def roundtrip(self, array: np.ndarray) -> tuple[np.ndarray, int]:
        """What the receiver decodes from ``array`` sent with this codec, and the frame's payload bytes."""
        from edgesplit.wire import decode_frame

        frame = self.frame(array, model_id=bytes(8), cut=0)
        return decode_frame(frame).array, payload_length(frame)


_BASES = {  # name: (wire codec, raw dtype, exact, exactness)
    "fp32": ("raw", "float32", True, "exact"),
    "fp16": ("raw", "float16", False, "float16 rounding: relative error <= 2^-11, +-inf beyond +-65504"),
    "bf16": ("bf16", "float32", False, "bfloat16 rounding: relative error <= 2^-8, float32's range"),
    "int8": ("int8", "float32", False, "affine uint8 over the tensor: error <= (max - min) / 510"),
    "int8c": ("int8c", "float32", False, "affine uint8 per channel: error <= each channel's (max - min) / 510"),
    "int6c": ("int6c", "float32", False, "64 levels per channel over a clip chosen for least squared error"),
    "int5c": ("int5c", "float32", False, "32 levels per channel over a clip chosen for least squared error"),
    "int4c": ("int4c", "float32", False, "16 levels per channel over a clip chosen for least squared error"),
    **{f"ecq{bits}": (f"ecq{bits}", "float32", False, f"one uniform step over the tensor, 2^({ENTROPY_OFFSET_BITS} - "
                      f"{bits}) x the channels' RMS deviation or coarser, codes zstd-compressed (about {bits} bits "
                      "an element on Gaussian-like maps): error <= half a step, nothing clipped")
       for bits in (6, 5, 4)},
}
ENTROPY_CODED = ("ecq6", "ecq5", "ecq4")  # zstd-compressed always: the codes are made for it
SPLIT_CODEC_NAMES = tuple(_BASES)
PROFILED_CODECS = tuple(f"{name}{arg}" for name in SPLIT_CODEC_NAMES for arg in ("", ":zstd")
                        if f"{name}{arg}" != "fp32" and not (arg and name in ENTROPY_CODED))  # what a profile prices (fp32 costs nothing to encode)
COSTED_SAMPLES = 3  # tensors a profile sends through each codec


@functools.lru_cache(maxsize=None)
def split_codec(spec: str) -> SplitCodec:
    """The split codec ``spec`` names: ``NAME`` or ``NAME:COMPRESSION`` (zstd, lz4)."""
    name, compression = parse_spec(spec, "codec")
    if name not in _BASES:
        hint = " (an image crosses as offload:raw or offload:jpeg:Q)" if name in ("raw", "jpeg") else ""
        raise EdgesplitError(unknown_name_message("codec", name, _BASES) + hint)
    if compression and compression not in COMPRESSIONS[1:]:
        raise EdgesplitError(f"codec {spec!r}: the argument names a lossless compression: "
                             f"{' or '.join(COMPRESSIONS[1:])}, not {compression!r}")
    if name in ENTROPY_CODED:
        if compression:
            raise EdgesplitError(f"codec {spec!r}: {name} is zstd-compressed already; write {name}")
        compression = "zstd"
    wire, dtype, exact, exactness = _BASES[name]
    return SplitCodec(spec, wire, dtype, compression or "none", exact, exactness)


@dataclass(frozen=True)
class InputCodec:
    """How the image itself travels (full offload)."""

    name: str  # "raw", "jpeg:90"
    quality: int | None  # JPEG only

    @property
    def exact(self) -> bool:
        return self.quality is None

    def frame(self, image: np.ndarray, *, model_id: bytes) -> bytes:
        """One uint8 image (3, H, W) as a frame at the input cut (0)."""
        from edgesplit.wire import encode_frame

        if self.quality is None:
            return encode_frame(image[None], model_id=model_id, cut=0)
        return encode_frame(image[None], model_id=model_id, cut=0, codec="jpeg", jpeg_quality=self.quality)


@functools.lru_cache(maxsize=None)
def input_codec(spec: str) -> InputCodec:
    """The input codec ``spec`` names: ``raw`` or ``jpeg:Q`` (Q an integer 1..100)."""
    name, arg = parse_spec(spec, "input codec")
    if name == "raw" and not arg:
        return InputCodec("raw", None)
    if name == "jpeg":
        if not (arg.isdigit() and 1 <= int(arg) <= 100):
            raise EdgesplitError(f"input codec {spec!r}: write jpeg:Q with a quality Q from 1 to 100")
        return InputCodec(f"jpeg:{int(arg)}", int(arg))
    raise EdgesplitError(f"unknown input codec {spec!r} (known: raw, jpeg:Q with Q 1..100)")


def payload_length(frame: bytes) -> int:
    """The payload bytes of an encoded frame, as sent (after compression), over its tensors."""
    from edgesplit.wire import sent_payload_bytes

    return sent_payload_bytes(frame)


def split_codec_costs(values: list[np.ndarray], specs: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """Per split codec (default :data:`PROFILED_CODECS`): the payload bytes it sends for a cut's tensors
    ``values`` (batch 1 each; the mean over the first ``COSTED_SAMPLES``: what a compression saves depends
    on the data) and the time to make the frame and to decode it (medians over those frames, after one
    untimed; at least three)."""
    import statistics
    import time

    from edgesplit.wire import decode_frame

    samples = values[:COSTED_SAMPLES]
    samples = samples + samples[:1] * max(0, 3 - len(samples))
    out: dict[str, dict[str, float]] = {}
    for spec in specs or (PROFILED_CODECS if values else ()):
        codec = split_codec(spec)
        codec.frame(samples[0], model_id=bytes(8), cut=0)  # untimed: the first call of a codec is slower
        frames, encode, decode = [], [], []
        for value in samples:
            started = time.perf_counter()
            frames.append(codec.frame(value, model_id=bytes(8), cut=0))
            encoded = time.perf_counter()
            decode_frame(frames[-1])
            decode.append(time.perf_counter() - encoded)
            encode.append(encoded - started)
        out[spec] = {"bytes": statistics.fmean(payload_length(f) for f in frames),
                     "encode_s": statistics.median(encode), "decode_s": statistics.median(decode)}
    return out


def describe() -> list[dict[str, Any]]:
    """Every split codec's name and exactness, for ``edgesplit codecs`` and the docs."""
    return [{"name": name, "exact": exact, "exactness": exactness}
            for name, (_, _, exact, exactness) in _BASES.items()]


# ----------------------------------------------------------------------------------------------------
# JPEG, with the checks a receiver needs.

JPEG_SLACK_BYTES = 64 * 1024  # markers, tables and metadata a JPEG may carry beyond its pixels


def max_jpeg_bytes(height: int, width: int) -> int:
    """The largest JPEG accepted for an image of this size: twice its raw pixels plus room for headers
    (Pillow's quality-100 JPEGs of noise take 0.7 × the raw size)."""
    return 2 * 3 * height * width + JPEG_SLACK_BYTES


def jpeg_encode(image: np.ndarray, quality: int) -> bytes:
    """A uint8 (3, H, W) image as JPEG bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_decode(data: bytes | bytearray, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a complete baseline JPEG, only after its own header says it has the declared size (no pixel
    bombs). Progressive JPEGs are refused: each scan revisits every block, so a payload of repeated scans
    took 1.5 s to decode at 448×448 (encode_frame sends baseline). A JPEG must end with its end-of-image
    marker: a truncated one would decode to grey where its data is missing."""
    import io

    from PIL import Image

    if not data.endswith(b"\xff\xd9"):
        raise FrameError("jpeg payload is truncated: it does not end with the end-of-image marker")
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            if (image.height, image.width) != tuple(shape[2:]):
                raise FrameError(f"jpeg is {image.width}×{image.height}, the frame declares "
                                 f"{shape[3]}×{shape[2]}")
            if image.info.get("progressive") or image.info.get("progression"):
                raise FrameError("jpeg payload is progressive: only baseline JPEG is accepted")
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(rgb).transpose(2, 0, 1).copy()
    except FrameError:
        raise
    except Exception as exc:  # Pillow's errors for a corrupt image
        raise FrameError(f"jpeg payload cannot be decoded ({exc})") from exc
