"""The wire format: versioned binary frames that carry one tensor, never pickled.

A frame is a 32-byte header, the shape, codec parameters, then the payload (all little-endian)::

    offset  size  field
    0       4     magic b"ESPL"
    4       1     version (2)
    5       1     dtype of the decoded tensor: 1 float32, 2 float16, 3 uint8
    6       1     codec: 0 raw, 1 int8 (affine, uint8 payload), 2 jpeg (full offload of a uint8 image),
                  3 int8c (affine per channel), 4 int4c (4 bits per channel, packed), 5 bf16
    7       1     compression of the payload: 0 none, 1 zstd, 2 lz4
    8       1     ndim (1..8)
    9       1     flags (0)
    10      2     cut id (uint16; 65535 = the model's output)
    12      8     model id (the first 8 bytes of the model's SHA-256, see GET /v1/model)
    20      4     payload length in bytes (as sent)
    24      4     decoded length in bytes (after decompression; bounds every allocation)
    28      4     CRC-32 of everything else: bytes 0..27, then from 32 to the end
    32      4×n   shape (uint32 each, batch first)
    ...     8     int8 codec only: scale (float32), zero point (int32)
    ...           payload (int8c and int4c: the per-channel lows and steps, float32, before the codes)

:func:`decode_frame` checks everything before it allocates: sizes against :class:`Limits`, the decoded
length against what the shape and dtype allow, the checksum (which covers the header, so a flipped bit in
a cut id or a scale is caught), then (given an :class:`Expectation`) the model id, the cut, the
per-sample shape and the dtype. Decompression streams and stops one byte past the declared decoded
length, so a decompression bomb fails after using no more memory than its frame may. Version 1 frames
(whose checksum covered only the payload) are refused by name. Only numpy is needed (a device without
torch can speak it). ``docs/wire.md`` is the reference.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edgesplit.codecs import DTYPES, WIRE_CODECS, ZSTD_LEVEL, Jpeg, max_jpeg_bytes, wire_codec_by_code
from edgesplit.errors import FrameError

MAGIC = b"ESPL"
FRAME_TYPE = "application/vnd.edgesplit.frame"  # the media type of a frame over HTTP
VERSION = 2
OUTPUT_CUT = 0xFFFF
MAX_NDIM = 8
_HEADER = struct.Struct("<4sBBBBBBH8sIII")
_CHECKSUM_AT = 28  # the CRC field: the checksum covers the bytes before and after it
DECOMPRESS_CHUNK_BYTES = 1 << 20
MAX_ZSTD_WINDOW_BYTES = 1 << 24  # zstd level 3 uses at most 2 MiB; a frame asking for more is refused
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
CODECS = {WIRE_CODECS.get(name).code: name for name in WIRE_CODECS}
COMPRESSIONS = {0: "none", 1: "zstd", 2: "lz4"}
MAX_PARAM_BYTES = 8  # the largest header parameters of any codec (int8's scale and zero point)


@dataclass(frozen=True)
class Limits:
    """Bounds checked before anything is allocated (names as in starlette and Triton)."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_elements: int = 64 * 1024 * 1024
    max_decoded_bytes: int = 256 * 1024 * 1024  # after decompression, whatever the shape says


FLOATS = frozenset({"float32", "float16"})


@dataclass(frozen=True)
class Expectation:
    """What the receiver accepts: its model id, per cut id the per-sample shape (no batch dim), and the
    decoded dtypes allowed at each cut (floats unless said otherwise; uint8 images at the input)."""

    model_id: bytes
    shapes: Mapping[int, tuple[int, ...]]
    max_batch_size: int = 1 << 16
    dtypes: Mapping[int, frozenset[str]] = field(default_factory=dict)

    def allowed(self, cut: int) -> frozenset[str]:
        return self.dtypes.get(cut, FLOATS)

    def max_frame_bytes(self) -> int:
        """The longest frame this receiver can accept: a full batch of float32 (the widest dtype) at its
        largest cut (or of int8c, whose per-channel parameters can outweigh a tiny tensor), the worst case
        of zstd's or lz4's expansion of incompressible data on top, or a JPEG of an image cut (batches of
        one); a longer body is refused before any of it is kept."""
        def longest(shape: tuple[int, ...]) -> int:
            elements = self.max_batch_size * math.prod(shape)
            raw = max(4 * elements, elements + 8 * (shape[0] if len(shape) >= 2 else 1))
            jpeg = max_jpeg_bytes(shape[1], shape[2]) if len(shape) == 3 and shape[0] == 3 else 0
            return _HEADER.size + 4 * (len(shape) + 1) + MAX_PARAM_BYTES + max(raw + raw // 128 + 1024, jpeg)

        return max(longest(tuple(shape)) for shape in self.shapes.values())


@dataclass(frozen=True)
class Frame:
    model_id: bytes
    cut: int
    array: np.ndarray  # decoded: float32, float16 or uint8, batch first
    codec: str
    compression: str


def encode_frame(array: np.ndarray, *, model_id: bytes, cut: int, codec: str = "raw",
                 compression: str = "none", jpeg_quality: int = Jpeg.quality) -> bytes:
    """One tensor as a frame. ``codec``: a wire codec (:mod:`edgesplit.codecs`): raw (float32/float16/
    uint8 as given), int8, int8c, int4c, bf16 (float → fewer bits) or jpeg (one uint8 image (1, 3, H, W))."""
    if len(model_id) != 8:
        raise FrameError(f"model id must be 8 bytes, got {len(model_id)}")
    if not 0 <= cut <= 0xFFFF:
        raise FrameError(f"cut id must be 0..65535, got {cut}")
    array = np.ascontiguousarray(array)
    if array.ndim < 1 or array.ndim > MAX_NDIM:
        raise FrameError(f"a frame carries 1 to {MAX_NDIM} dimensions, got {array.ndim}")
    wire = WIRE_CODECS.get(codec)
    decoded_dtype, params, data = (wire.encode(array, jpeg_quality) if isinstance(wire, Jpeg)
                                   else wire.encode(array))
    payload = _compress(data, compression)
    header = _HEADER.pack(MAGIC, VERSION, DTYPE_CODES[decoded_dtype], wire.code,
                          _code(COMPRESSIONS, compression, "compression"), array.ndim, 0, cut, model_id,
                          len(payload), len(data), 0)
    frame = bytearray(header + struct.pack(f"<{array.ndim}I", *array.shape) + params + payload)
    struct.pack_into("<I", frame, _CHECKSUM_AT, frame_checksum(frame))
    return bytes(frame)


def frame_checksum(frame: bytes | bytearray | memoryview) -> int:
    """The CRC-32 a frame must carry at byte 28: over every byte but the checksum field itself."""
    view = memoryview(frame)
    return zlib.crc32(view[_CHECKSUM_AT + 4:], zlib.crc32(view[:_CHECKSUM_AT]))


def decode_frame(data: bytes | bytearray, *, limits: Limits = Limits(), expect: Expectation | None = None) -> Frame:
    """Validate and decode a frame; every problem raises :class:`FrameError` naming it."""
    if len(data) > limits.max_body_bytes:
        raise FrameError(f"frame of {len(data)} bytes exceeds max_body_bytes={limits.max_body_bytes}", 413)
    if len(data) < _HEADER.size:
        raise FrameError(f"truncated frame: {len(data)} bytes, the header alone needs {_HEADER.size}")
    (magic, version, dtype_code, codec_code, compression_code, ndim, flags, cut, model_id, payload_length,
     decoded_length, checksum) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"not an edgesplit frame: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}; this side speaks version {VERSION} only"
                         + (" (version 1 checksummed only the payload: update the sender)" if version == 1 else ""))
    dtype = _lookup(DTYPES, dtype_code, "dtype")
    codec = wire_codec_by_code(codec_code)
    compression = _lookup(COMPRESSIONS, compression_code, "compression")
    if not 1 <= ndim <= MAX_NDIM:
        raise FrameError(f"ndim must be 1..{MAX_NDIM}, got {ndim}")
    if flags:
        raise FrameError(f"unknown flags {flags:#04x}")
    offset = _HEADER.size + 4 * ndim + codec.header_params
    if len(data) < offset:
        raise FrameError(f"truncated frame: {len(data)} bytes, the header and shape need {offset}")
    shape = struct.unpack_from(f"<{ndim}I", data, _HEADER.size)
    if any(d == 0 for d in shape):
        raise FrameError(f"shape {shape} has an empty dimension")
    elements = math.prod(shape)  # Python integers: no wrap-around
    if elements > limits.max_elements:
        raise FrameError(f"shape {shape} has {elements} elements, more than max_elements={limits.max_elements}",
                         413)
    if len(data) != offset + payload_length:
        raise FrameError(f"frame length mismatch: {len(data)} bytes, the header says {offset + payload_length}")
    codec.check(shape, dtype, decoded_length)
    if decoded_length > limits.max_decoded_bytes:
        raise FrameError(f"decoded length {decoded_length} exceeds max_decoded_bytes={limits.max_decoded_bytes}",
                         413)
    if compression == "none" and decoded_length != payload_length:
        raise FrameError(f"uncompressed payload of {payload_length} bytes, but the decoded length says "
                         f"{decoded_length}")
    if frame_checksum(data) != checksum:
        raise FrameError("checksum mismatch: the frame was corrupted in transit")
    params = bytes(data[offset - codec.header_params:offset])
    codec.check_params(params)
    payload = memoryview(data)[offset:]
    if expect is not None:
        _check_expectation(expect, model_id, cut, shape)
        if dtype.name not in expect.allowed(cut):
            raise FrameError(f"dtype {dtype.name} is not accepted at cut {cut} (accepted: "
                             f"{', '.join(sorted(expect.allowed(cut)))})", 422)
    raw = _decompress(payload, compression, decoded_length)
    return Frame(model_id, cut, codec.decode(raw, shape, dtype, params), codec.name, compression)


def _check_expectation(expect: Expectation, model_id: bytes, cut: int, shape: tuple[int, ...]) -> None:
    if model_id != expect.model_id:
        raise FrameError(f"model id {model_id.hex()} is not this server's model ({expect.model_id.hex()}); "
                         "client and server must load the same architecture and weights", 409)
    if cut not in expect.shapes:
        raise FrameError(f"unknown cut id {cut}; this model has cut ids {_ranges(sorted(expect.shapes))}", 422)
    if shape[0] > expect.max_batch_size:
        raise FrameError(f"batch of {shape[0]} exceeds max_batch_size={expect.max_batch_size}", 413)
    if tuple(shape[1:]) != tuple(expect.shapes[cut]):
        raise FrameError(f"shape {tuple(shape)} does not fit cut {cut}: expected (batch, "
                         f"{', '.join(map(str, expect.shapes[cut]))})", 422)


def _ranges(ids: list[int]) -> str:
    return ", ".join(map(str, ids)) if len(ids) <= 12 else f"{ids[0]}..{ids[-1]} ({len(ids)} in all)"


def _code(table: dict[int, str], name: str, what: str) -> int:
    for code, known in table.items():
        if known == name:
            return code
    raise FrameError(f"unknown {what} {name!r}; known: {', '.join(table.values())}")


def _lookup(table: Mapping[int, object], code: int, what: str):  # type: ignore[no-untyped-def]
    if code not in table:
        raise FrameError(f"unknown {what} code {code}")
    return table[code]


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "zstd":
        return _zstd().ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    if compression == "lz4":
        return _lz4().compress(data, store_size=False)
    raise FrameError(f"unknown compression {compression!r}; known: {', '.join(COMPRESSIONS.values())}")


def _decompress(payload: memoryview, compression: str, decoded_length: int) -> bytearray:
    """The payload decoded, in a new writable buffer (the arrays made from it can be handed to torch)."""
    try:
        if compression == "none":
            raw = bytearray(payload)
        elif compression == "zstd":
            raw = _unzstd(payload, decoded_length)
        else:  # lz4 blocks carry no size: the buffer is the declared length, already checked against the shape
            raw = _lz4().decompress(payload, uncompressed_size=decoded_length, return_bytearray=True)
    except FrameError:
        raise
    except Exception as exc:  # the libraries raise their own types for corrupt or oversized input
        raise FrameError(f"{compression} payload does not decompress to the declared {decoded_length} bytes "
                         f"({exc})") from exc
    if len(raw) != decoded_length:
        raise FrameError(f"{compression} payload does not decompress to the declared {decoded_length} bytes "
                         f"({'more' if len(raw) > decoded_length else len(raw)})")
    return raw if isinstance(raw, bytearray) else bytearray(raw)


def _unzstd(payload: memoryview, decoded_length: int) -> bytearray:
    """Decompress in chunks, at most one byte past ``decoded_length``: memory grows with what the payload
    really decodes to, and a bomb stops one byte past its declaration."""
    raw = bytearray()
    decompressor = _zstd().ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW_BYTES)
    with decompressor.stream_reader(io.BytesIO(payload), read_size=DECOMPRESS_CHUNK_BYTES) as reader:
        while len(raw) <= decoded_length:
            chunk = reader.read(min(DECOMPRESS_CHUNK_BYTES, decoded_length + 1 - len(raw)))
            if not chunk:
                break
            raw += chunk
    return raw


def _zstd():  # type: ignore[no-untyped-def]
    try:
        import zstandard
    except ImportError:
        raise FrameError("zstd compression needs zstandard: pip install zstandard") from None
    return zstandard


def _lz4():  # type: ignore[no-untyped-def]
    try:
        import lz4.block
    except ImportError:
        raise FrameError("lz4 compression needs lz4: pip install lz4") from None
    return lz4.block
