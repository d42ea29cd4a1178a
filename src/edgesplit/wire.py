"""The wire format: versioned binary frames that carry one or more named tensors, never pickled.

A frame is a 24-byte header, then one section per tensor, one after another (all little-endian)::

    offset  size  field
    0       4     magic b"ESPL"
    4       1     version (3)
    5       1     tensor count (1..64)
    6       2     cut id (uint16; 65535 = the model's output)
    8       8     model id (the first 8 bytes of the model's SHA-256, see GET /v1/model)
    16      4     total length of the frame in bytes
    20      4     CRC-32 of everything else: bytes 0..19, then from 24 to the end
    24            the first section

    a section, from its own first byte:
    0       1     dtype of the decoded tensor: 1 float32, 2 float16, 3 uint8, 4 int32 (raw codec only)
    1       1     codec: 0 raw, 1 int8 (affine, uint8 payload), 2 jpeg (full offload of a uint8 image),
                  3 int8c (affine per channel), 4 int4c, 6 int6c, 7 int5c (4, 6, 5 bits per channel,
                  packed), 5 bf16, 8 ecq4, 9 ecq5, 10 ecq6 (one step, int8 codes, meant for zstd)
    2       1     compression of the payload: 0 none, 1 zstd, 2 lz4
    3       1     ndim (1..8)
    4       1     name length in bytes (0..64)
    5       1     flags (0)
    6       4     payload length in bytes (as sent)
    10      4     decoded length in bytes (after decompression; bounds every allocation)
    14      n     name (UTF-8, no control characters; "" only for a frame's only tensor)
    14+n    4×d   shape (uint32 each, batch first)
    ...     8     int8 codec only: scale (float32), zero point (int32)
    ...     4     ecqN codecs only: the step (float32)
    ...           payload (int8c and intNc: the per-channel lows and steps, float32, before the codes;
                  ecqN: the per-channel offsets, int16, before the codes)

A frame of one unnamed tensor costs 38 + 4 × ndim bytes (and the codec's parameters) beyond its
payload: :func:`frame_overhead`. :func:`decode_frame` checks everything before it allocates: sizes
against :class:`Limits` (the elements and decoded lengths summed over the tensors), int32 tensors
travelling raw, no empty dimension (except at a cut whose :class:`Expectation` accepts any shapes: a
detector's answer for an image without boxes), every section
inside the frame and the sections adding up to its length, names, the decoded lengths against what each
shape and dtype allow, the checksum (which covers every header, so a flipped bit in a cut id or a scale
is caught), then (given an :class:`Expectation`) the model id, the cut, the tensors' count, per-sample
shapes, shared batch size and dtypes. Decompression streams and stops one byte past the declared
decoded length, so a decompression bomb fails after using no more memory than its frame may. Versions 1
and 2 are refused by name. :func:`flatten_tree` and :func:`unflatten_tree` turn answers of any
structure (dicts, lists, a bare array) into named tensors and back. Only numpy is needed (a device
without torch can speak it). ``docs/wire.md`` is the reference.
"""

from __future__ import annotations

import io
import math
import numbers
import struct
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edgesplit.codecs import (DTYPES, WIRE_CODECS, ZSTD_LEVEL, Jpeg, WireCodec, max_jpeg_bytes,
                              wire_codec_by_code)
from edgesplit.errors import FrameError

MAGIC = b"ESPL"
FRAME_TYPE = "application/vnd.edgesplit.frame"  # the media type of a frame over HTTP
VERSION = 3
OUTPUT_CUT = 0xFFFF
MAX_NDIM = 8
# A cut of a dense-prediction model crosses a handful of tensors (a U-Net's skip connections: 4-5, an
# FPN's levels: 4-6) and a detection answer is a few per image ({boxes, scores, labels}: a batch of 16
# is 48). 64 leaves room for those and bounds what a hostile frame makes a receiver walk through
# before its checksum: at most 64 section headers, names and shapes (64 × 118 bytes).
MAX_TENSORS = 64
MAX_NAME_BYTES = 64
NAME_SEPARATOR = "/"  # joins the segments of a name made by flatten_tree
_HEADER = struct.Struct("<4sBBH8sII")
_SECTION = struct.Struct("<BBBBBBII")
_CHECKSUM_AT = 20  # the CRC field: the checksum covers the bytes before and after it
DECOMPRESS_CHUNK_BYTES = 1 << 20
MAX_ZSTD_WINDOW_BYTES = 1 << 24  # zstd level 3 uses at most 2 MiB; a frame asking for more is refused
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
CODECS = {WIRE_CODECS.get(name).code: name for name in WIRE_CODECS}
COMPRESSIONS = {0: "none", 1: "zstd", 2: "lz4"}
MAX_PARAM_BYTES = 8  # the largest header parameters of any codec (int8's scale and zero point)
_PARAM_BYTES = {WIRE_CODECS.get(name).code: WIRE_CODECS.get(name).header_params for name in WIRE_CODECS}
_OLD_VERSIONS = {1: "version 1 checksummed only the payload", 2: "version 2 carried one unnamed tensor per frame"}


@dataclass(frozen=True)
class Limits:
    """Bounds checked before anything is allocated (names as in starlette and Triton); elements and
    decoded bytes are summed over a frame's tensors."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_elements: int = 64 * 1024 * 1024
    max_decoded_bytes: int = 256 * 1024 * 1024  # after decompression, whatever the shapes say


FLOATS = frozenset({"float32", "float16"})
INTEGER_DTYPE = "int32"  # labels and ids; travels raw only (a lossy codec would change the numbers)
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Expectation:
    """What the receiver accepts: its model id; per cut id the per-sample shape (no batch dim) of its one
    tensor, a tuple of such shapes (one per tensor, in order) or None (any tensors, bounded only by
    :class:`Limits`, empty dimensions included: a detector's answer without boxes); and the decoded dtypes allowed at each cut (floats unless said otherwise; uint8
    images at the input). The tensors of a cut with shapes share their batch size (dim 0)."""

    model_id: bytes
    shapes: Mapping[int, Shape | tuple[Shape, ...] | None]
    max_batch_size: int = 1 << 16
    dtypes: Mapping[int, frozenset[str]] = field(default_factory=dict)

    def allowed(self, cut: int) -> frozenset[str]:
        return self.dtypes.get(cut, FLOATS)

    def tensor_shapes(self, cut: int) -> tuple[Shape, ...] | None:
        """The per-sample shapes of the tensors at ``cut``, in order; None when any are accepted."""
        entry = self.shapes[cut]
        if entry is None:
            return None
        if all(isinstance(d, numbers.Integral) for d in entry):  # a plain shape: one tensor
            return (tuple(int(d) for d in entry),)
        return tuple(tuple(int(d) for d in shape) for shape in entry)

    def max_frame_bytes(self, limits: Limits = Limits()) -> int:
        """The longest frame this receiver can accept: per tensor of a cut, a full batch of float32 (the
        widest dtype) (or of int8c, whose per-channel parameters can outweigh a tiny tensor), the worst
        case of zstd's or lz4's expansion of incompressible data on top, or a JPEG of an image cut (batches
        of one), with the longest name; summed over the cut's tensors, at its largest cut. A cut of any
        tensors (None) is bounded by ``limits``. A longer body is refused before any of it is kept."""
        def longest(shape: Shape) -> int:
            elements = self.max_batch_size * math.prod(shape)
            raw = max(4 * elements, elements + 8 * (shape[0] if len(shape) >= 2 else 1))
            jpeg = max_jpeg_bytes(shape[1], shape[2]) if len(shape) == 3 and shape[0] == 3 else 0
            return _section_bound(len(shape) + 1) + max(raw + raw // 128 + 1024, jpeg)

        def longest_at(cut: int) -> int:
            shapes = self.tensor_shapes(cut)
            if shapes is None:
                decoded = limits.max_decoded_bytes
                bound = MAX_TENSORS * (_section_bound(MAX_NDIM) + 1024) + decoded + decoded // 128
                return min(limits.max_body_bytes, _HEADER.size + bound)
            return _HEADER.size + sum(longest(shape) for shape in shapes)

        return max(longest_at(cut) for cut in self.shapes)


def _section_bound(ndim: int) -> int:
    """The most bytes a section of ``ndim`` dimensions takes besides its payload."""
    return _SECTION.size + MAX_NAME_BYTES + 4 * ndim + MAX_PARAM_BYTES


@dataclass(frozen=True)
class NamedTensor:
    """One tensor of a frame, decoded: float32, float16, uint8 or int32, batch first."""

    name: str
    array: np.ndarray
    codec: str
    compression: str


@dataclass(frozen=True)
class Frame:
    model_id: bytes
    cut: int
    tensors: tuple[NamedTensor, ...]

    @property
    def array(self) -> np.ndarray:
        """The frame's only tensor."""
        return self._only().array

    @property
    def codec(self) -> str:
        return self._only().codec

    @property
    def compression(self) -> str:
        return self._only().compression

    @property
    def named(self) -> list[tuple[str, np.ndarray]]:
        """(name, array) of every tensor, in order: what :func:`unflatten_tree` takes."""
        return [(t.name, t.array) for t in self.tensors]

    def _only(self) -> NamedTensor:
        if len(self.tensors) != 1:
            raise FrameError(f"this frame carries {len(self.tensors)} tensors, not one: read .tensors")
        return self.tensors[0]


def frame_overhead(ndim: int, codec: str = "raw", name: str = "") -> int:
    """The bytes a frame of one tensor of ``ndim`` dimensions sends besides its payload."""
    return _HEADER.size + _SECTION.size + len(name.encode("utf-8")) + 4 * ndim + WIRE_CODECS.get(codec).header_params


def encode_frame(array: np.ndarray, *, model_id: bytes, cut: int, codec: str = "raw",
                 compression: str = "none", jpeg_quality: int = Jpeg.quality) -> bytes:
    """One unnamed tensor as a frame. ``codec``: a wire codec (:mod:`edgesplit.codecs`): raw (float32/
    float16/uint8 as given), int8, int8c, int6c, int5c, int4c, bf16, ecq4, ecq5, ecq6 (float → fewer bits) or jpeg (one
    uint8 image (1, 3, H, W))."""
    return encode_tensors([("", array)], model_id=model_id, cut=cut, codec=codec, compression=compression,
                          jpeg_quality=jpeg_quality)


def encode_tensors(named: Sequence[tuple[str, np.ndarray]], *, model_id: bytes, cut: int,
                   codec: str | Sequence[str] = "raw", compression: str | Sequence[str] = "none",
                   jpeg_quality: int = Jpeg.quality) -> bytes:
    """Named tensors as one frame, in order. ``codec`` and ``compression``: one for all, or one per tensor.
    Names: UTF-8 of at most 64 bytes, unique, no control characters; "" only for a frame's only tensor."""
    if len(model_id) != 8:
        raise FrameError(f"model id must be 8 bytes, got {len(model_id)}")
    if not 0 <= cut <= 0xFFFF:
        raise FrameError(f"cut id must be 0..65535, got {cut}")
    count = len(named)
    if not 1 <= count <= MAX_TENSORS:
        raise FrameError(f"a frame carries 1 to {MAX_TENSORS} tensors, got {count}")
    codecs, compressions = _one_each(codec, count, "codec"), _one_each(compression, count, "compression")
    names: set[str] = set()
    sections = []
    for index, ((name, array), wire, packing) in enumerate(zip(named, codecs, compressions)):
        if not isinstance(name, str):
            raise FrameError(f"tensor {index + 1} of {count}: a name is a str, not {type(name).__name__}")
        try:
            encoded_name = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise FrameError(f"tensor {index + 1} of {count}: name {name!r} is not valid UTF-8 ({exc.reason})") from None
        _check_name(name, encoded_name, index, count, names)
        with _naming(_label(index, count, name)):
            sections.append(_encode_section(encoded_name, array, wire, packing, jpeg_quality))
    total = _HEADER.size + sum(len(section) for section in sections)
    if total > 0xFFFFFFFF:
        raise FrameError(f"a frame of {total} bytes exceeds the 4 GiB a frame's length field can say")
    frame = bytearray(_HEADER.pack(MAGIC, VERSION, count, cut, model_id, total, 0))
    for section in sections:
        frame += section
    struct.pack_into("<I", frame, _CHECKSUM_AT, frame_checksum(frame))
    return bytes(frame)


def _one_each(value: str | Sequence[str], count: int, what: str) -> list[str]:
    values = [value] * count if isinstance(value, str) else list(value)
    if len(values) != count:
        raise FrameError(f"{count} tensors need one {what} each, or one for all: got {len(values)}")
    return values


def _encode_section(name: bytes, array: np.ndarray, codec: str, compression: str, jpeg_quality: int) -> bytes:
    array = np.ascontiguousarray(array)
    if array.ndim < 1 or array.ndim > MAX_NDIM:
        raise FrameError(f"a frame carries 1 to {MAX_NDIM} dimensions, got {array.ndim}")
    wire = WIRE_CODECS.get(codec)
    if array.dtype.kind == "i" and wire.name != "raw":
        raise FrameError(f"{array.dtype} tensors travel raw only: codec {codec} would not carry their integers")
    decoded_dtype, params, data = (wire.encode(array, jpeg_quality) if isinstance(wire, Jpeg)
                                   else wire.encode(array))
    payload = _compress(data, compression)
    header = _SECTION.pack(DTYPE_CODES[decoded_dtype], wire.code, _code(COMPRESSIONS, compression, "compression"),
                           array.ndim, len(name), 0, len(payload), len(data))
    return header + name + struct.pack(f"<{array.ndim}I", *array.shape) + params + payload


def frame_checksum(frame: bytes | bytearray | memoryview) -> int:
    """The CRC-32 a frame must carry at byte 20: over every byte but the checksum field itself."""
    view = memoryview(frame)
    return zlib.crc32(view[_CHECKSUM_AT + 4:], zlib.crc32(view[:_CHECKSUM_AT]))


def sent_payload_bytes(frame: bytes) -> int:
    """The payload bytes (as sent, after compression) of a frame this side encoded, over its tensors."""
    return sum(fields[6] for fields in _section_headers(frame))


def is_raw_uncompressed(frame: bytes | bytearray) -> bool:
    """Whether every section of ``frame`` says codec raw and no compression (a frame cheap to decode), read
    from the section headers alone; False where they do not lead through the frame. Nothing is validated."""
    sections = list(_section_headers(frame))
    return bool(sections) and len(sections) == frame[5] and all(fields[1:3] == (0, 0) for fields in sections)


def _section_headers(frame: bytes | bytearray) -> Iterator[tuple[int, ...]]:
    """The fields of each section header, as far as the lengths they give lead through ``frame``."""
    offset = _HEADER.size
    for _ in range(frame[5] if len(frame) >= _HEADER.size else 0):
        if offset + _SECTION.size > len(frame):
            return
        fields = _SECTION.unpack_from(frame, offset)
        _, codec_code, _, ndim, name_length, _, payload_length, _ = fields
        yield fields
        offset += _SECTION.size + name_length + 4 * ndim + _PARAM_BYTES.get(codec_code, 0) + payload_length


@dataclass(frozen=True)
class _Section:
    """One tensor's header, checked, and where its payload lies."""

    name: str
    dtype: np.dtype
    codec: WireCodec
    compression: str
    shape: Shape
    params: bytes
    payload: memoryview
    decoded_length: int


def decode_frame(data: bytes | bytearray, *, limits: Limits = Limits(), expect: Expectation | None = None) -> Frame:
    """Validate and decode a frame; every problem raises :class:`FrameError` naming it."""
    if len(data) > limits.max_body_bytes:
        raise FrameError(f"frame of {len(data)} bytes exceeds max_body_bytes={limits.max_body_bytes}", 413)
    if len(data) < _HEADER.size:
        raise FrameError(f"truncated frame: {len(data)} bytes, the header alone needs {_HEADER.size}")
    magic, version, count, cut, model_id, total_length, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"not an edgesplit frame: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}; this side speaks version {VERSION} only"
                         + (f" ({_OLD_VERSIONS[version]}: update the sender)" if version in _OLD_VERSIONS else ""))
    if not 1 <= count <= MAX_TENSORS:
        raise FrameError(f"tensor count {count}: a frame carries 1 to {MAX_TENSORS} tensors")
    if total_length != len(data):
        raise FrameError(f"frame length mismatch: {len(data)} bytes, the header says {total_length}")
    sections = _read_sections(data, count, limits, _any_shapes(expect, cut))
    if frame_checksum(data) != checksum:
        raise FrameError("checksum mismatch: the frame was corrupted in transit")
    for index, section in enumerate(sections):
        with _naming(_label(index, count, section.name)):
            section.codec.check_params(section.params)
    if expect is not None:
        _check_expectation(expect, model_id, cut, sections)
    tensors = []
    for index, section in enumerate(sections):
        with _naming(_label(index, count, section.name)):
            raw = _decompress(section.payload, section.compression, section.decoded_length)
            array = section.codec.decode(raw, section.shape, section.dtype, section.params)
        tensors.append(NamedTensor(section.name, array, section.codec.name, section.compression))
    return Frame(model_id, cut, tuple(tensors))


def _any_shapes(expect: Expectation | None, cut: int) -> bool:
    """Whether ``expect`` accepts tensors of any shape at ``cut`` (then an empty dimension is no error)."""
    return expect is not None and cut in expect.shapes and expect.shapes[cut] is None


def _read_sections(data: bytes | bytearray, count: int, limits: Limits, empty_allowed: bool = False
                   ) -> list[_Section]:
    """Every section's header, checked against the frame's length and ``limits`` (summed over the
    sections) before anything is allocated; an empty dimension only in a raw tensor where ``empty_allowed``."""
    sections: list[_Section] = []
    names: set[str] = set()
    offset, elements, decoded = _HEADER.size, 0, 0
    for index in range(count):
        where = f"tensor {index + 1} of {count}"
        if offset + _SECTION.size > len(data):
            raise FrameError(f"truncated section: {where} starts at byte {offset}, its header needs "
                             f"{_SECTION.size} bytes, the frame has {len(data)}")
        (dtype_code, codec_code, compression_code, ndim, name_length, flags, payload_length,
         decoded_length) = _SECTION.unpack_from(data, offset)
        with _naming(f"{where}: " if count > 1 else ""):
            dtype = _lookup(DTYPES, dtype_code, "dtype")
            codec = wire_codec_by_code(codec_code)
            if dtype.name == INTEGER_DTYPE and codec.name != "raw":
                raise FrameError(f"an {INTEGER_DTYPE} tensor travels raw only, not {codec.name}")
            compression = _lookup(COMPRESSIONS, compression_code, "compression")
            if not 1 <= ndim <= MAX_NDIM:
                raise FrameError(f"ndim must be 1..{MAX_NDIM}, got {ndim}")
            if flags:
                raise FrameError(f"unknown flags {flags:#04x}")
            if name_length > MAX_NAME_BYTES:
                raise FrameError(f"name of {name_length} bytes is longer than {MAX_NAME_BYTES}")
        name_at = offset + _SECTION.size
        payload_at = name_at + name_length + 4 * ndim + codec.header_params
        if payload_at > len(data):
            raise FrameError(f"truncated section: {where} needs bytes up to {payload_at} for its name, shape and "
                             f"codec parameters, the frame has {len(data)}")
        raw_name = bytes(data[name_at:name_at + name_length])
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(f"{where}: name {raw_name!r} is not valid UTF-8 ({exc.reason})") from None
        _check_name(name, raw_name, index, count, names)
        with _naming(_label(index, count, name)):
            shape = struct.unpack_from(f"<{ndim}I", data, name_at + name_length)
            if any(d == 0 for d in shape) and not (empty_allowed and codec.name == "raw"):
                raise FrameError(f"shape {shape} has an empty dimension")
            size = math.prod(shape)  # Python integers: no wrap-around
            elements += size
            if elements > limits.max_elements:
                raise FrameError(f"shape {shape} has {size} elements"
                                 + (f", {elements} with the tensors before it" if elements > size else "")
                                 + f", more than max_elements={limits.max_elements}", 413)
            end = payload_at + payload_length
            if end > len(data):
                raise FrameError(f"truncated section: a payload of {payload_length} bytes from byte {payload_at} "
                                 f"runs past the frame's {len(data)} bytes")
            codec.check(shape, dtype, decoded_length)
            decoded += decoded_length
            if decoded > limits.max_decoded_bytes:
                raise FrameError(f"decoded length {decoded_length}"
                                 + (f", {decoded} with the tensors before it" if decoded > decoded_length else "")
                                 + f" exceeds max_decoded_bytes={limits.max_decoded_bytes}", 413)
            if compression == "none" and decoded_length != payload_length:
                raise FrameError(f"uncompressed payload of {payload_length} bytes, but the decoded length says "
                                 f"{decoded_length}")
        sections.append(_Section(name, dtype, codec, compression, shape, bytes(data[payload_at - codec.header_params:
                                                                                      payload_at]),
                                 memoryview(data)[payload_at:end], decoded_length))
        offset = end
    if offset != len(data):
        raise FrameError(f"sections do not add up to the frame: they end at byte {offset}, the frame has "
                         f"{len(data)} bytes")
    return sections


def _check_name(name: str, encoded: bytes, index: int, count: int, seen: set[str]) -> None:
    """Refuse a name that is too long, has a control character, is empty beside other tensors or repeats
    one of ``seen`` (to which it is added)."""
    where = f"tensor {index + 1} of {count}"
    if len(encoded) > MAX_NAME_BYTES:
        raise FrameError(f"{where}: name of {len(encoded)} bytes is longer than {MAX_NAME_BYTES}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise FrameError(f"{where}: name {name!r} contains a control character")
    if not name and count > 1:
        raise FrameError(f"{where}: the empty name is only for a frame of one tensor")
    if name in seen:
        raise FrameError(f"{where}: duplicate tensor name {name!r}")
    seen.add(name)


def _label(index: int, count: int, name: str) -> str:
    """How a message names a tensor: not at all when it is a frame's only, unnamed one."""
    if count == 1 and not name:
        return ""
    return f"tensor {index + 1} of {count}" + (f" {name!r}" if name else "") + ": "


@contextmanager
def _naming(label: str) -> Iterator[None]:
    """Prefix the FrameErrors raised inside with the tensor they are about."""
    try:
        yield
    except FrameError as exc:
        if not label:
            raise
        raise FrameError(label + str(exc), exc.status) from exc


def _check_expectation(expect: Expectation, model_id: bytes, cut: int, sections: list[_Section]) -> None:
    if model_id != expect.model_id:
        raise FrameError(f"model id {model_id.hex()} is not this server's model ({expect.model_id.hex()}); "
                         "client and server must load the same architecture and weights", 409)
    if cut not in expect.shapes:
        raise FrameError(f"unknown cut id {cut}; this model has cut ids {_ranges(sorted(expect.shapes))}", 422)
    expected = expect.tensor_shapes(cut)
    count = len(sections)
    if expected is not None:
        if count != len(expected):
            raise FrameError(f"cut {cut} carries {len(expected)} tensor{'s' if len(expected) > 1 else ''}, this "
                             f"frame has {count}", 422)
        batch = sections[0].shape[0]
        if batch > expect.max_batch_size:
            raise FrameError(f"batch of {batch} exceeds max_batch_size={expect.max_batch_size}", 413)
        for index, (section, shape) in enumerate(zip(sections, expected)):
            label = _label(index, count, section.name)
            if section.shape[0] != batch:
                raise FrameError(f"{label}batch of {section.shape[0]} differs from tensor 1's {batch}: the tensors "
                                 f"of a frame at cut {cut} share their batch size", 422)
            if tuple(section.shape[1:]) != shape:
                raise FrameError(f"{label}shape {tuple(section.shape)} does not fit cut {cut}: expected "
                                 f"({', '.join(['batch', *map(str, shape)])})", 422)
    for index, section in enumerate(sections):
        if section.dtype.name not in expect.allowed(cut):
            raise FrameError(f"{_label(index, count, section.name)}dtype {section.dtype.name} is not accepted at "
                             f"cut {cut} (accepted: {', '.join(sorted(expect.allowed(cut)))})", 422)


def flatten_tree(tree: object) -> list[tuple[str, np.ndarray]]:
    """An answer of any structure as named arrays, depth first in its own order: a name is the path of
    dict keys and sequence indices (decimal) joined by "/"; a bare array is the single name "". Leaves are
    numpy arrays or anything with ``__array__`` (a CPU torch tensor)."""
    named: list[tuple[str, np.ndarray]] = []
    _flatten(tree, [], named)
    return named


def _flatten(node: object, path: list[str], named: list[tuple[str, np.ndarray]]) -> None:
    where = NAME_SEPARATOR.join(path) or "the root"
    if isinstance(node, Mapping):
        children = list(node.items())
    elif isinstance(node, (list, tuple)):
        children = [(str(index), child) for index, child in enumerate(node)]
    elif hasattr(node, "__array__"):
        named.append((NAME_SEPARATOR.join(path), np.asarray(node)))
        return
    else:
        raise FrameError(f"{where}: a {type(node).__name__} is not an array; leaves must be arrays")
    if not children:
        raise FrameError(f"{where}: an empty {type(node).__name__} carries no tensor")
    for key, child in children:
        if not isinstance(key, str) or not key or NAME_SEPARATOR in key:
            raise FrameError(f"{where}: dict key {key!r} cannot be a name's segment (a non-empty str without "
                             f"{NAME_SEPARATOR!r})")
        _flatten(child, [*path, key], named)


def unflatten_tree(named: Iterable[tuple[str, np.ndarray]]) -> object:
    """The structure :func:`flatten_tree` flattened: dicts, and lists where a level's segments are exactly
    "0".."n-1" (a tuple comes back as a list); the single name "" is a bare array."""
    items = list(named)
    if len(items) == 1 and items[0][0] == "":
        return items[0][1]
    if not items:
        raise FrameError("no tensors to unflatten")
    root: dict[str, object] = {}
    for name, array in items:
        segments = name.split(NAME_SEPARATOR)
        if not all(segments):
            raise FrameError(f"tensor name {name!r} has an empty segment")
        node = root
        for depth, segment in enumerate(segments[:-1]):
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                prefix = NAME_SEPARATOR.join(segments[:depth + 1])
                raise FrameError(f"conflicting tensor names {prefix!r} and {name!r}: {prefix!r} is an array, "
                                 "not a container")
            node = child
        last = segments[-1]
        if isinstance(node.get(last), dict):
            raise FrameError(f"conflicting tensor names {name!r} and {_first_leaf(node[last], name)!r}: {name!r} "
                             "is a container, not an array")
        if last in node:
            raise FrameError(f"duplicate tensor name {name!r}")
        node[last] = array
    return _with_lists(root)


def _first_leaf(node: object, path: str) -> str:
    """The name of the first array under ``node``, the container named ``path``."""
    while isinstance(node, dict):
        key, node = next(iter(node.items()))
        path += NAME_SEPARATOR + key
    return path


def _with_lists(node: object) -> object:
    if not isinstance(node, dict):
        return node
    children = {key: _with_lists(child) for key, child in node.items()}
    if set(children) == {str(index) for index in range(len(children))}:
        return [children[str(index)] for index in range(len(children))]
    return children


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
