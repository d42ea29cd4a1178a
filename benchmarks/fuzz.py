"""Fuzz the frame decoder at realistic sizes, then send its bombs to a real server.

Phase 1 decodes ``--frames`` mutated frames (100,000 by default), each with the server's kind of
:class:`Expectation` and without one. Frame ``i`` depends only on ``--seed`` and ``i``: the first ones
enumerate truncations at every offset before the first payload and every header field (of every
section) at its boundary values (with and without a fixed-up checksum), over 20 valid seed frames (raw
fp32/fp16/uint8, int8 and jpeg, each with none/zstd/lz4, at a (1, 24, 28, 28) cut and a (1, 3, 224, 224)
input; two frames of a skip connection's two tensors and a detection answer of named tensors); the rest
are random: bit flips, splices, insertions, deletions, field values, and coherent lies (the first
section's header changed with the lengths and checksum made to agree). Every outcome must be a decoded frame or a ``FrameError`` with a 4xx status;
anything else is listed with its reproducer (``--replay I``). Warnings are errors, as in the test suite.
It reports the slowest decodes (re-timed, best of 5: the machine is shared) and, on every
``--memory-every``-th frame, the peak of Python-visible allocations (tracemalloc: numpy, lz4 and the
decoder's buffers; not zstd's window nor Pillow's pixels).

Then come the bombs: compressed payloads that inflate far beyond their declaration, zstd frames that
ask for huge windows, 32-bit lengths at their maximum, small frames that claim 256 MiB, JPEGs that claim
huge dimensions, a progressive JPEG of thousands of scans, a body at ``max_body_bytes``. Each is decoded
with and without the expectation, and measured by tracemalloc and by this process's peak RSS growth
(VmHWM after resetting it through /proc/self/clear_refs), which sees native allocations too.

Phase 2 (``--http``) starts ``edgesplit serve mobilenet_v3_small --input-size 224`` (random weights) and
POSTs each bomb, built for that server's model id and cuts, ``--repeats`` times, while a thread GETs
/healthz every 20 ms: per bomb, the status answered, the server's peak RSS growth (VmHWM, reset before
each bomb, minus VmRSS before it) and the slowest /healthz answer while it was in flight (or in the 0.1 s
after). Two valid frames come first as controls; a body one byte over ``max_body_bytes`` and the
progressive JPEG sent 8 times at once come last.

    python benchmarks/fuzz.py [--frames 100000] [--seed 0] [--http] [--out benchmarks/results/fuzz.json]
    python benchmarks/fuzz.py --replay 1234   # decode frame 1234 again and show any traceback
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import re
import statistics
import struct
import sys
import threading
import time
import traceback
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
import lz4.block
import numpy as np
import zstandard
from PIL import Image
from rich.console import Console
from rich.progress import track
from rich.table import Table

from edgesplit.codecs import DTYPES, FLOAT32_MAX, FLOAT32_TINY, max_jpeg_bytes
from edgesplit.wire import (CODECS, COMPRESSIONS, FLOATS, OUTPUT_CUT, Expectation, Frame, Limits, decode_frame,
                            encode_frame, encode_tensors, flatten_tree, frame_checksum, frame_overhead)
from edgesplit.errors import FrameError

console = Console(width=170)
MODEL_ID = bytes.fromhex("5eed5eed5eed5eed")
INPUT_CUT, FEATURE_CUT, SKIP_CUT, POOLED_CUT = 0, 7, 11, 15
EXPECT = Expectation(MODEL_ID, {INPUT_CUT: (3, 224, 224), FEATURE_CUT: (24, 28, 28), SKIP_CUT: ((24, 28, 28), (576,)),
                                POOLED_CUT: (576,), OUTPUT_CUT: None},
                     max_batch_size=8, dtypes={INPUT_CUT: FLOATS | {"uint8"}})
MODES = {"expect": EXPECT, "none": None}
ONE_TENSOR_CUTS = {cut: shapes[0] for cut in EXPECT.shapes if len(shapes := EXPECT.tensor_shapes(cut) or ()) == 1}
HEADER = struct.Struct("<4sBBH8sII")  # the frame's: magic, version, tensor count, cut, model id, length, CRC
SECTION = struct.Struct("<BBBBBBII")  # a tensor's: dtype, codec, compression, ndim, name length, flags, lengths
CHECKSUM_AT = 20
MiB = 1 << 20
DTYPE_CODES = {dtype.name: code for code, dtype in DTYPES.items()}
CODEC_CODES = {name: code for code, name in CODECS.items()}
COMPRESSION_CODES = {name: code for code, name in COMPRESSIONS.items()}
SLOW_DECODE_S = 0.050
RETIMED = 50  # the slowest decodes, timed again: on a shared machine a first timing can be a scheduling hiccup
FLOAT32_EXTREMES = [int(np.array(x, np.float32).view(np.uint32)) for x in
                    (np.inf, -np.inf, FLOAT32_MAX, FLOAT32_MAX / 255, np.nextafter(np.float32(FLOAT32_MAX / 255), np.inf),
                     FLOAT32_TINY, np.nextafter(np.float32(FLOAT32_TINY), 0), 0.0)]


# ---- frames ---------------------------------------------------------------------------------------------

def with_checksum(data: bytes | bytearray) -> bytes:
    """``data`` carrying the checksum its bytes call for (too short to hold one: unchanged)."""
    if len(data) < CHECKSUM_AT + 4:
        return bytes(data)
    fixed = bytearray(data)
    struct.pack_into("<I", fixed, CHECKSUM_AT, frame_checksum(fixed))
    return bytes(fixed)


def frame_from(*, dtype: str, codec: str, compression: str, cut: int, shape: tuple[int, ...], payload: bytes,
               decoded_length: int, params: bytes = b"", model_id: bytes = MODEL_ID, name: bytes = b"",
               count: int = 1, rest: bytes = b"") -> bytes:
    """A frame whose first section says exactly this (``rest``: the sections after it, ``count`` in all),
    with the total length and checksum that agree with it."""
    section = (SECTION.pack(DTYPE_CODES[dtype], CODEC_CODES[codec], COMPRESSION_CODES[compression], len(shape),
                            len(name), 0, len(payload), decoded_length)
               + name + struct.pack(f"<{len(shape)}I", *shape) + params + payload)
    length = HEADER.size + len(section) + len(rest)
    return with_checksum(HEADER.pack(b"ESPL", 3, count, cut, model_id, length, 0) + section + rest)


def header_size(frame: bytes) -> int:
    """Bytes before the first payload: the frame header, then the first section's header, name, shape and
    int8 parameters."""
    _, codec, _, ndim, name_length, _, _, _ = SECTION.unpack_from(frame, HEADER.size)
    return HEADER.size + SECTION.size + name_length + 4 * ndim + (8 if codec == 1 else 0)


def header_fields(frame: bytes) -> list[tuple[str, int, int]]:
    """(name, offset, width) of every field before a payload: the frame header's, then every section's (of
    a valid frame)."""
    fields = [("magic", 0, 4), ("version", 4, 1), ("tensor count", 5, 1), ("cut", 6, 2), ("model id", 8, 8),
              ("total length", 16, 4), ("checksum", 20, 4)]
    offset = HEADER.size
    for index in range(frame[5]):
        _, codec, _, ndim, name_length, _, payload_length, _ = SECTION.unpack_from(frame, offset)
        fields += [(f"#{index} {field}", offset + at, width) for field, at, width in (
            ("dtype", 0, 1), ("codec", 1, 1), ("compression", 2, 1), ("ndim", 3, 1), ("name length", 4, 1),
            ("flags", 5, 1), ("payload length", 6, 4), ("decoded length", 10, 4))]
        fields += [(f"#{index} name byte {i}", offset + SECTION.size + i, 1) for i in range(name_length)]
        shape_at = offset + SECTION.size + name_length
        fields += [(f"#{index} dim {i}", shape_at + 4 * i, 4) for i in range(ndim)]
        params = 8 if codec == 1 else 0
        if params:
            fields += [(f"#{index} int8 scale", shape_at + 4 * ndim, 4),
                       (f"#{index} int8 zero point", shape_at + 4 * ndim + 4, 4)]
        offset = shape_at + 4 * ndim + params + payload_length
    return fields


def boundary_values(width: int) -> list[int]:
    """0, 1, the largest and the next, as unsigned and as signed; float32 extremes for 4-byte fields."""
    top = (1 << (8 * width)) - 1
    return [0, 1, top - 1, top, top >> 1, (top >> 1) + 1] + (FLOAT32_EXTREMES if width == 4 else [])


def seed_frames() -> dict[str, bytes]:
    """Valid frames as devices send them, every one accepted by ``EXPECT``."""
    rng = np.random.default_rng(0)
    feature = np.maximum(rng.standard_normal((1, *EXPECT.shapes[FEATURE_CUT])), 0).astype(np.float32)  # post-ReLU
    rows, cols = np.mgrid[0:224, 0:224]
    image = np.stack([rows, cols, (rows + cols) // 2]).astype(np.float32)[None]
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)  # gradients and noise
    tensors = {"raw fp32 (1,24,28,28)": (feature, FEATURE_CUT, "raw"),
               "raw fp16 (1,24,28,28)": (feature.astype(np.float16), FEATURE_CUT, "raw"),
               "int8 (1,24,28,28)": (feature, FEATURE_CUT, "int8"),
               "raw uint8 (1,3,224,224)": (image, INPUT_CUT, "raw"),
               "jpeg (1,3,224,224)": (image, INPUT_CUT, "jpeg")}
    seeds = {f"{name} {compression}": encode_frame(array, model_id=MODEL_ID, cut=cut, codec=codec,
                                                   compression=compression)
             for name, (array, cut, codec) in tensors.items() for compression in ("none", "zstd", "lz4")}
    seeds["raw fp32 (1,3,224,224) none"] = encode_frame(image.astype(np.float32), model_id=MODEL_ID, cut=INPUT_CUT)
    seeds["raw fp32 (8,576) zstd"] = encode_frame(rng.standard_normal((8, 576)).astype(np.float32),
                                                  model_id=MODEL_ID, cut=POOLED_CUT, compression="zstd")
    pooled = feature.mean(axis=(2, 3)).repeat(24, axis=1)  # (1, 576)
    for codecs, compression in ((["raw", "raw"], "none"), (["int8c", "bf16"], "zstd")):
        seeds[f"skip {'+'.join(codecs)} {compression}"] = encode_tensors(
            [("features", feature), ("pooled", pooled)], model_id=MODEL_ID, cut=SKIP_CUT, codec=codecs,
            compression=compression)
    detections = {"boxes": rng.uniform(0, 224, (100, 4)).astype(np.float32),
                  "scores": rng.uniform(0, 1, 100).astype(np.float32), "labels": rng.integers(0, 91, 100).astype(np.float16)}
    seeds["detection answer lz4"] = encode_tensors(flatten_tree([detections]), model_id=MODEL_ID, cut=OUTPUT_CUT,
                                                   compression="lz4")
    return seeds


SEEDS = seed_frames()
SEED_NAMES = list(SEEDS)


# ---- mutations ------------------------------------------------------------------------------------------

def enumerated_cases() -> list[tuple[str, Callable[[], bytes]]]:
    """Truncations at every header offset (and a few in the payload); every header field at every boundary
    value, with and without a fixed-up checksum."""
    cases: list[tuple[str, Callable[[], bytes]]] = []
    for name, seed in SEEDS.items():
        end = header_size(seed)
        for length in sorted({*range(end + 2), len(seed) // 2, len(seed) - 1}):
            cases.append((f"{name}: truncated to {length} bytes", lambda seed=seed, length=length: seed[:length]))
        for field, offset, width in header_fields(seed):
            for value in boundary_values(width):
                for fixed in (False, True):
                    def patched(seed: bytes = seed, offset: int = offset, width: int = width, value: int = value,
                                fixed: bool = fixed) -> bytes:
                        data = seed[:offset] + value.to_bytes(width, "little") + seed[offset + width:]
                        return with_checksum(data) if fixed else data
                    cases.append((f"{name}: {field} = {value:#x}{' (checksum fixed)' if fixed else ''}", patched))
    return cases


def _flip_bits(data: bytes, positions: np.ndarray) -> bytes:
    flipped = bytearray(data)
    for bit in positions.tolist():
        flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def _coherent_lie(seed: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One header field changed, the payload resized to what the new header needs (when small enough),
    and the lengths and checksum made to agree: the frame gets past the framing checks."""
    _, _, count, cut, model_id, _, _ = HEADER.unpack_from(seed)
    (dtype_code, codec_code, compression_code, ndim, name_length, _, payload_length,
     decoded_length) = SECTION.unpack_from(seed, HEADER.size)
    name_at = HEADER.size + SECTION.size
    name = seed[name_at:name_at + name_length]
    shape = list(struct.unpack_from(f"<{ndim}I", seed, name_at + name_length))
    end = header_size(seed)
    params, payload, rest = seed[name_at + name_length + 4 * ndim:end], seed[end:end + payload_length], \
        seed[end + payload_length:]
    what = rng.choice(["cut", "shape", "batch", "dtype", "codec", "compression", "model id"])
    if what == "cut":
        cut = int(rng.choice([*EXPECT.shapes, 1, 0xFFFF, int(rng.integers(0, 1 << 16))]))
    elif what == "shape":
        shape = [1, *ONE_TENSOR_CUTS[int(rng.choice(list(ONE_TENSOR_CUTS)))]]
    elif what == "batch":
        shape[0] = int(rng.choice([1, EXPECT.max_batch_size, EXPECT.max_batch_size + 1, 4096, (1 << 32) - 1]))
    elif what == "dtype":
        dtype_code = int(rng.choice(list(DTYPES)))
    elif what == "codec":
        codec_code = int(rng.choice(list(CODECS)))
        params = struct.pack("<fi", float(rng.uniform(1e-3, 1)), int(rng.integers(0, 256))) if codec_code == 1 else b""
    elif what == "compression":
        compression_code = int(rng.choice(list(COMPRESSIONS)))
    else:
        model_id = rng.bytes(8)
    elements = int(np.prod(shape, dtype=object))
    if CODECS[codec_code] != "jpeg":
        decoded_length = elements * (1 if CODECS[codec_code] == "int8" else DTYPES[dtype_code].itemsize)
        if COMPRESSIONS[compression_code] == "none" and decoded_length <= 8 * MiB:
            payload = (payload * (decoded_length // max(len(payload), 1) + 1))[:decoded_length]
    elif COMPRESSIONS[compression_code] == "none":
        decoded_length = len(payload)
    lie = frame_from(dtype=DTYPES[dtype_code].name, codec=CODECS[codec_code],
                     compression=COMPRESSIONS[compression_code], cut=cut, shape=tuple(shape), payload=payload,
                     decoded_length=decoded_length % (1 << 32), params=params, model_id=model_id, name=name,
                     count=count, rest=rest)
    return f"coherent lie: {what}", lie


def random_case(seed: int, index: int) -> tuple[str, bytes]:
    """Case ``index`` past the enumerated ones: a random mutation of a random seed frame."""
    rng = np.random.default_rng([seed, index])
    name = SEED_NAMES[int(rng.integers(len(SEED_NAMES)))]
    frame = SEEDS[name]
    size, end = len(frame), header_size(frame)
    kind = rng.choice(["bit flip", "bit flips", "header bit flips", "splice", "splice from another seed",
                       "insert", "delete", "header field", "coherent lie"],
                      p=[0.12, 0.12, 0.16, 0.1, 0.05, 0.08, 0.08, 0.14, 0.15])
    at = int(rng.integers(size))
    if kind == "coherent lie":
        what, data = _coherent_lie(frame, rng)
        return f"{name}: {what}", data
    if kind == "bit flip":
        bit = at * 8 + int(rng.integers(8))
        what, data = f"bit {bit}", _flip_bits(frame, np.array([bit]))
    elif kind == "bit flips":
        bits = rng.integers(0, 8 * size, int(rng.integers(2, 33)))
        what, data = f"{len(bits)} bits", _flip_bits(frame, bits)
    elif kind == "header bit flips":
        bits = rng.integers(0, 8 * end, int(rng.integers(1, 5)))
        what, data = f"header bits {sorted(bits.tolist())}", _flip_bits(frame, bits)
    elif kind in ("splice", "splice from another seed"):
        length, cut_out = int(rng.integers(1, 257)), int(rng.integers(1, 257))
        if kind == "splice":
            new = rng.bytes(length)
        else:
            other = SEEDS[SEED_NAMES[int(rng.integers(len(SEED_NAMES)))]]
            start = int(rng.integers(len(other)))
            new = other[start:start + length]
        what, data = f"{cut_out} bytes at {at} replaced by {len(new)}", frame[:at] + new + frame[at + cut_out:]
    elif kind == "insert":
        new = rng.bytes(int(rng.integers(1, 65)))
        what, data = f"{len(new)} bytes inserted at {at}", frame[:at] + new + frame[at:]
    elif kind == "delete":
        length = int(rng.integers(1, 65))
        what, data = f"{length} bytes deleted at {at}", frame[:at] + frame[at + length:]
    else:
        field, offset, width = header_fields(frame)[int(rng.integers(len(header_fields(frame))))]
        value = int(rng.integers(0, 1 << (8 * width), dtype=np.uint64))
        what, data = f"{field} = {value:#x}", frame[:offset] + value.to_bytes(width, "little") + frame[offset + width:]
    if rng.random() < 0.5:
        return f"{name}: {kind}: {what} (checksum fixed)", with_checksum(data)
    return f"{name}: {kind}: {what}", data


class Corpus:
    """Frame ``i`` of a run, rebuilt from ``seed`` and ``i`` alone."""

    def __init__(self, seed: int) -> None:
        self.seed, self.enumerated = seed, enumerated_cases()

    def case(self, index: int) -> tuple[str, bytes]:
        if index < len(self.enumerated):
            description, build = self.enumerated[index]
            return description, build()
        return random_case(self.seed, index)


# ---- bombs ----------------------------------------------------------------------------------------------

def zstd_with_window(data: bytes, window_log: int, mantissa: int = 0) -> bytes:
    """``data`` as a zstd frame whose header asks for a window of 2**window_log (+ mantissa eighths)."""
    frame = bytearray(zstandard.ZstdCompressor(level=3, write_content_size=False).compress(data))
    assert frame[4] & 0x20 == 0, "single-segment frames carry no window descriptor"
    frame[5] = ((window_log - 10) << 3) | mantissa
    return bytes(frame)


def _sos_segments(jpeg: bytes) -> list[tuple[int, int]]:
    """(start, end) of every scan: its SOS marker segment and the entropy-coded data after it."""
    at, scans = 2, []
    while jpeg[at + 1] != 0xD9:  # EOI
        length = struct.unpack_from(">H", jpeg, at + 2)[0]
        if jpeg[at + 1] != 0xDA:
            at += 2 + length
            continue
        end = at + 2 + length
        while not (jpeg[end] == 0xFF and jpeg[end + 1] != 0 and not 0xD0 <= jpeg[end + 1] <= 0xD7):
            end += 1
        scans.append((at, end))
        at = end
    return scans


def progressive_scan_bomb(height: int, width: int) -> bytes:
    """A one-colour progressive JPEG whose smallest scan (11 bytes that still visit every block) repeats
    until the JPEG is as large as a frame of this image may carry."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, "JPEG", quality=90, progressive=True)
    jpeg = buffer.getvalue()
    scans = _sos_segments(jpeg)
    start, end = min(scans, key=lambda scan: scan[1] - scan[0])
    repeats = (max_jpeg_bytes(height, width) - len(jpeg)) // (end - start)
    return jpeg[:scans[-1][1]] + jpeg[start:end] * repeats + b"\xff\xd9"


def jpeg_claiming(height: int, width: int, real: tuple[int, int] = (8, 8)) -> bytes:
    """A JPEG of ``real`` (height, width) pixels whose SOF0 header says ``height`` × ``width``."""
    buffer = io.BytesIO()
    Image.new("RGB", real[::-1], (40, 90, 200)).save(buffer, "JPEG", quality=90)
    jpeg = bytearray(buffer.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    struct.pack_into(">HH", jpeg, sof + 5, height, width)
    return bytes(jpeg)


def one_colour_jpeg(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def bombs(model_id: bytes, cuts: dict[int, tuple[int, ...]], max_batch_size: int,
          max_body_bytes: int) -> list[tuple[str, bytes]]:
    """Every bomb kind, built for a receiver with this model id, these per-sample cut shapes (cut 0 is the
    input), max batch size and max body size, so that only the bomb itself is wrong."""
    feature_cut = max((c for c in cuts if c != INPUT_CUT and len(cuts[c]) == 3), key=lambda c: np.prod(cuts[c]))
    feature = (1, *cuts[feature_cut])
    declared = int(np.prod(feature)) * 4
    height, width = cuts[INPUT_CUT][1:]
    zeros = bytes(256 * MiB)
    zstd_256 = zstandard.ZstdCompressor(level=19).compress(zeros)
    lz4_256 = lz4.block.compress(zeros, store_size=False)
    del zeros
    lz4_1k = lz4.block.compress(bytes(1024), store_size=False)
    real = np.zeros(feature, np.float32).tobytes()
    claim_batch = (256 * MiB) // declared  # the batch whose float32 tensor at this cut is 256 MiB
    big_jpeg, big_claim, scan_bomb = one_colour_jpeg(4096, 5120), jpeg_claiming(4096, 5120), \
        progressive_scan_bomb(height, width)
    at_limit = (max_body_bytes - frame_overhead(2)) // 4  # elements of a (1, n) float32 frame of max_body_bytes

    def raw(shape: tuple[int, ...], payload: bytes, decoded_length: int, compression: str) -> bytes:
        """float32 at the feature cut unless the shape says otherwise."""
        return frame_from(dtype="float32", codec="raw", compression=compression, cut=feature_cut, shape=shape,
                          payload=payload, decoded_length=decoded_length, model_id=model_id)

    def jpeg(shape: tuple[int, ...], payload: bytes) -> bytes:
        return frame_from(dtype="uint8", codec="jpeg", compression="none", cut=INPUT_CUT, shape=shape,
                          payload=payload, decoded_length=len(payload), model_id=model_id)

    def lying_about(frame: bytes, offset: int, value: int) -> bytes:
        """``frame`` with the uint32 at ``offset`` set to ``value``, checksum fixed."""
        return with_checksum(frame[:offset] + struct.pack("<I", value) + frame[offset + 4:])

    int8_bomb = frame_from(dtype="float32", codec="int8", compression="zstd", cut=feature_cut, shape=feature,
                           payload=zstd_256, decoded_length=declared // 4, params=struct.pack("<fi", 0.01, 0),
                           model_id=model_id)
    return [
        (f"zstd: {len(zstd_256) // 1024} KB inflating to 256 MiB, declared {feature}",
         raw(feature, zstd_256, declared, "zstd")),
        (f"lz4: {len(lz4_256) // 1024} KB inflating to 256 MiB, declared {feature}",
         raw(feature, lz4_256, declared, "lz4")),
        ("int8 zstd: inflating to 256 MiB", int8_bomb),
        ("zstd: window 2 TiB (descriptor's max)", raw(feature, zstd_with_window(real, 41, 7), declared, "zstd")),
        ("zstd: window 2 GiB", raw(feature, zstd_with_window(real, 31), declared, "zstd")),
        ("zstd: window 16 MiB + 1/8 (just over the limit)",
         raw(feature, zstd_with_window(real, 24, 1), declared, "zstd")),
        ("zstd: window 16 MiB (the limit: decodes)", raw(feature, zstd_with_window(real, 24), declared, "zstd")),
        ("decoded length 2^32-1, zstd", lying_about(raw(feature, zstd_256, declared, "zstd"), 34, (1 << 32) - 1)),
        ("decoded length 2^32-1 = uint8 (3,5,17,257,65537)",
         frame_from(dtype="uint8", codec="raw", compression="zstd", cut=INPUT_CUT, shape=(3, 5, 17, 257, 65537),
                    payload=zstd_256, decoded_length=(1 << 32) - 1, model_id=model_id)),
        ("payload length 2^32-1 (header only)", lying_about(raw(feature, b"", declared, "zstd"), 30, (1 << 32) - 1)),
        (f"zstd: {len(zstd_256) // 1024} KB claiming 256 MiB as batch {claim_batch}",
         raw((claim_batch, *feature[1:]), zstd_256, claim_batch * declared, "zstd")),
        (f"zstd: {len(zstd_256) // 1024} KB claiming 256 MiB as (1,64,1024,1024)",
         raw((1, 64, 1024, 1024), zstd_256, 256 * MiB, "zstd")),
        ("lz4: 1 KB claiming 256 MiB as (1,64,1024,1024)", raw((1, 64, 1024, 1024), lz4_1k, 256 * MiB, "lz4")),
        (f"lz4: 1 KB claiming batch {max_batch_size} at the largest cut",
         raw((max_batch_size, *feature[1:]), lz4_1k, max_batch_size * declared, "lz4")),
        (f"jpeg: SOF 65500×65500 in a (1,3,{height},{width}) frame",
         jpeg((1, 3, height, width), jpeg_claiming(65500, 65500))),
        ("jpeg: frame declares (1,3,65500,65500)", jpeg((1, 3, 65500, 65500), jpeg_claiming(65500, 65500))),
        (f"jpeg: SOF 5120×4096 with 8×8 pixels of data ({len(big_claim)} B)", jpeg((1, 3, 4096, 5120), big_claim)),
        (f"jpeg: a real one-colour 5120×4096 ({len(big_jpeg) // 1024} KB)", jpeg((1, 3, 4096, 5120), big_jpeg)),
        (f"jpeg: progressive, {len(scan_bomb) // 1024} KB of repeated scans, {width}×{height}",
         jpeg((1, 3, height, width), scan_bomb)),
        (f"raw float32 (1,{at_limit}): a body of max_body_bytes, not a cut's shape",
         raw((1, at_limit), bytes(4 * at_limit), 4 * at_limit, "none")),
    ]


# ---- decoding and measuring -----------------------------------------------------------------------------

@dataclass
class Outcome:
    outcome: str  # "decoded", "FrameError <status>" or "OTHER <exception type>"
    message: str
    seconds: float
    peak_bytes: int | None = None  # tracemalloc's peak during the decode, when measured


def described(frame: Frame) -> str:
    return ", ".join(f"{t.name or 'tensor'}: {t.array.dtype} {t.array.shape}" for t in frame.tensors)


def decode(data: bytes, expect: Expectation | None, measure_memory: bool) -> Outcome:
    if measure_memory:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        frame = decode_frame(data, expect=expect)
        outcome, message = "decoded", described(frame)
        del frame
    except FrameError as exc:
        bad_status = not 400 <= exc.status < 500 or not str(exc).strip()
        outcome, message = ("OTHER FrameError" if bad_status else f"FrameError {exc.status}"), str(exc)
    except Exception as exc:  # the point of fuzzing: anything the decoder should have turned into a FrameError
        outcome, message = f"OTHER {type(exc).__name__}", "".join(traceback.format_exception_only(exc)).strip()
    seconds = time.perf_counter() - started
    peak = None
    if measure_memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return Outcome(outcome, message, seconds, peak)


def best_time(data: bytes, expect: Expectation | None, repeats: int = 5) -> float:
    return min(decode(data, expect, False).seconds for _ in range(repeats))


def refusal_kind(message: str) -> str:
    """A refusal message without its numbers, up to its first colon: which check refused."""
    return re.sub(r"0x[0-9a-f]+|\d+", "N", message.split(":")[0])[:70]


def _status_line(path: str) -> dict[str, int]:
    """VmRSS and VmHWM of a /proc/<pid>/status file, in bytes."""
    values = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) * 1024
    return values


@contextlib.contextmanager
def peak_rss_growth(pid: str = "self") -> Iterator[dict[str, int]]:
    """Yields a dict that gets ``growth``: the process's peak RSS during the block minus its RSS before
    (the peak is reset first through clear_refs; where that is refused, the growth of VmHWM)."""
    result: dict[str, int] = {}
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        result["reset"] = 1
    except OSError:
        result["reset"] = 0
    before = _status_line(f"/proc/{pid}/status")
    yield result
    after = _status_line(f"/proc/{pid}/status")
    result["growth"] = after["VmHWM"] - (before["VmRSS"] if result["reset"] else before["VmHWM"])


def fuzz(corpus: Corpus, frames: int, memory_every: int) -> dict[str, object]:
    counts = {mode: Counter() for mode in MODES}
    kinds: Counter[str] = Counter()
    others: list[dict[str, object]] = []
    slowest: list[tuple[float, int, str, str, str]] = []  # (seconds, index, mode, description, outcome)
    worst_refused: dict[str, object] = {}
    worst_ratio: dict[str, object] = {}
    measured = 0
    for index in track(range(frames), description="decoding mutated frames", console=console):
        description, data = corpus.case(index)
        for mode, expect in MODES.items():
            measure = index % memory_every == 0
            result = decode(data, expect, measure)
            counts[mode][result.outcome] += 1
            if result.outcome.startswith("FrameError"):
                kinds[refusal_kind(result.message)] += 1
            elif result.outcome.startswith("OTHER"):
                others.append({"index": index, "mode": mode, "description": description, "outcome": result.outcome,
                               "message": result.message, "replay": f"python benchmarks/fuzz.py --seed "
                               f"{corpus.seed} --replay {index}",
                               "frame_base64": base64.b64encode(data).decode() if len(data) <= 4096 else None})
            slowest.append((result.seconds, index, mode, description, result.outcome))
            slowest = sorted(slowest, reverse=True)[:RETIMED] if len(slowest) > 10 * RETIMED else slowest
            if measure and result.outcome != "decoded":
                measured += 1
                entry = {"index": index, "mode": mode, "description": description, "body_bytes": len(data),
                         "peak_bytes": result.peak_bytes, "ratio": result.peak_bytes / max(len(data), 1)}
                if result.peak_bytes > worst_refused.get("peak_bytes", -1):
                    worst_refused = entry
                if len(data) >= 4096 and entry["ratio"] > worst_ratio.get("ratio", -1):
                    worst_ratio = entry
    retimed = []
    for seconds, index, mode, description, outcome in sorted(slowest, reverse=True)[:RETIMED]:
        retimed.append({"index": index, "mode": mode, "description": description, "outcome": outcome,
                        "first_s": seconds, "best_of_5_s": best_time(corpus.case(index)[1], MODES[mode])})
    retimed.sort(key=lambda row: row["best_of_5_s"], reverse=True)
    return {"counts": {mode: dict(c) for mode, c in counts.items()}, "refusals": dict(kinds.most_common()),
            "others": others, "slowest": retimed, "memory": {"refused_measured": measured,
                                                             "largest_peak": worst_refused,
                                                             "largest_ratio_body_4k_or_more": worst_ratio}}


def measure_bombs() -> list[dict[str, object]]:
    results = []
    for name, data in track(bombs(MODEL_ID, ONE_TENSOR_CUTS, EXPECT.max_batch_size, Limits().max_body_bytes),
                            description="decoding bombs", console=console):
        row: dict[str, object] = {"bomb": name, "body_bytes": len(data)}
        for mode, expect in MODES.items():
            with peak_rss_growth() as rss:
                result = decode(data, expect, measure_memory=True)
            row[mode] = {**asdict(replace(result, message=result.message[:160])), "rss_growth": rss["growth"]}
        results.append(row)
    return results


# ---- phase 2: over HTTP ---------------------------------------------------------------------------------

class HealthPoller:
    """GET /healthz every 20 ms on its own thread; the slowest answer that overlapped a time window."""

    def __init__(self, url: str) -> None:
        self.url, self.polls, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get("/healthz").status_code
                except httpx.HTTPError:
                    status = -1
                self.polls.append((started, time.perf_counter(), status))
                time.sleep(0.020)

    def worst_s(self, start: float, end: float) -> float:
        overlapping = [done - began for began, done, _ in self.polls if done >= start and began <= end]
        return max(overlapping, default=float("nan"))

    def __enter__(self) -> HealthPoller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


CONCURRENT = 8  # copies of the slowest bomb sent at once: a decode on the event loop blocks /healthz that much longer


def _post(client: httpx.Client, data: bytes, copies: int) -> list[httpx.Response]:
    headers = {"content-type": "application/vnd.edgesplit.frame"}
    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(lambda _: client.post("/v1/infer", content=data, headers=headers), range(copies)))


def _detail(answer: httpx.Response) -> str:
    if answer.status_code == 200:
        return ""
    try:
        return str(answer.json().get("detail", answer.text))
    except ValueError:
        return answer.text


def http_phase(repeats: int) -> list[dict[str, object]]:
    from edgesplit.demo import free_ports, server_process

    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "edgesplit", "serve", "mobilenet_v3_small", "--input-size", "224", "--port",
            str(port)]
    console.print(f"starting {' '.join(argv[2:])}")
    with server_process(argv, url, Path("out/fuzz-server.log")) as process, \
            httpx.Client(base_url=url, timeout=120) as client:
        info = client.get("/v1/model").json()
        cuts = {c["id"]: tuple(c["shape"]) for c in info["cuts"]}
        model_id = bytes.fromhex(info["model_id"])
        image = np.random.default_rng(0).integers(0, 256, (1, *cuts[INPUT_CUT]), dtype=np.uint8)
        cases = [("valid uint8 input (control)", encode_frame(image, model_id=model_id, cut=INPUT_CUT), 1),
                 ("valid jpeg input (control)", encode_frame(image, model_id=model_id, cut=INPUT_CUT, codec="jpeg"),
                  1),
                 *[(name, data, 1) for name, data in bombs(model_id, cuts, info["max_batch_size"],
                                                           info["max_body_bytes"])],
                 ("body of max_body_bytes + 1", bytes(info["max_body_bytes"] + 1), 1)]
        scan_bomb = next((name, data) for name, data, _ in cases if name.startswith("jpeg: progressive"))
        cases.append((f"{scan_bomb[0]}, {CONCURRENT} at once", scan_bomb[1], CONCURRENT))
        rows = []
        with HealthPoller(url) as poller:
            time.sleep(0.5)
            idle = [done - began for began, done, _ in poller.polls]
            for name, data, copies in track(cases, description="bombs over HTTP", console=console):
                statuses, growths, worst, answer_s = set(), [], [], []
                for _ in range(repeats):
                    with peak_rss_growth(str(process.pid)) as rss:
                        started = time.perf_counter()
                        answers = _post(client, data, copies)
                        answer_s.append(time.perf_counter() - started)
                    time.sleep(0.1)  # the polls during the request and the next one complete
                    statuses |= {answer.status_code for answer in answers}
                    growths.append(rss["growth"])
                    worst.append(poller.worst_s(started, started + answer_s[-1] + 0.1))
                rows.append({"bomb": name, "body_bytes": len(data), "copies": copies, "statuses": sorted(statuses),
                             "detail": _detail(answers[0]), "answer_s": max(answer_s),
                             "peak_rss_growth": max(growths), "rss_peak_reset": bool(rss["reset"]),
                             "worst_healthz_s": max(worst)})
        console.print(f"/healthz idle: median {statistics.median(idle) * 1e3:.1f} ms over {len(idle)} polls; "
                      f"all polls answered {dict(Counter(s for *_, s in poller.polls))}")
        return rows


# ---- reporting ------------------------------------------------------------------------------------------

def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f}"


def print_fuzz(report: dict[str, object], frames: int) -> None:
    table = Table(title=f"{frames} mutated frames, each decoded with and without an expectation")
    table.add_column("outcome")
    for mode in MODES:
        table.add_column(f"expect={mode}", justify="right")
    outcomes = sorted({o for c in report["counts"].values() for o in c})
    for outcome in outcomes:
        table.add_row(outcome, *[str(report["counts"][mode].get(outcome, 0)) for mode in MODES])
    console.print(table)
    kinds = Table(title="which check refused them (both modes, top 25)")
    kinds.add_column("refusal")
    kinds.add_column("count", justify="right")
    for kind, count in list(report["refusals"].items())[:25]:
        kinds.add_row(kind, str(count))
    console.print(kinds)
    slow = Table(title=f"slowest decodes, best of 5, among the {RETIMED} slowest at first "
                       f"(target < {SLOW_DECODE_S * 1e3:.0f} ms)")
    for column in ("#", "expect", "frame", "outcome", "first ms", "best of 5 ms"):
        slow.add_column(column)
    for row in report["slowest"][:10]:
        slow.add_row(str(row["index"]), row["mode"], row["description"][:80], row["outcome"],
                     f"{row['first_s'] * 1e3:.2f}", f"{row['best_of_5_s'] * 1e3:.2f}")
    console.print(slow)
    memory = report["memory"]
    for label, key in (("largest peak", "largest_peak"), ("largest peak / body (bodies ≥ 4 KiB)",
                                                          "largest_ratio_body_4k_or_more")):
        entry = memory[key]
        if entry:
            console.print(f"refused, {label}: {entry['peak_bytes']} B for a {entry['body_bytes']} B body "
                          f"(× {entry['ratio']:.2f}), #{entry['index']} expect={entry['mode']}: "
                          f"{entry['description']}")
    console.print(f"exceptions other than FrameError 4xx: {len(report['others'])}")
    for other in report["others"][:20]:
        console.print(f"  #{other['index']} expect={other['mode']} {other['outcome']}: {other['message'][:150]} "
                      f"— {other['description']} — {other['replay']}")


def print_bombs(rows: list[dict[str, object]]) -> None:
    table = Table(title="bombs, decoded in this process (tracemalloc peak; peak RSS growth)")
    for column in ("bomb", "body B", "expect: outcome", "ms", "traced MiB", "RSS MiB", "none: outcome", "ms",
                   "traced MiB", "RSS MiB"):
        table.add_column(column)
    for row in rows:
        cells = [row["bomb"], str(row["body_bytes"])]
        for mode in MODES:
            result = row[mode]
            cells += [result["outcome"], f"{result['seconds'] * 1e3:.1f}", _mib(result["peak_bytes"]),
                      _mib(result["rss_growth"])]
        table.add_row(*cells)
    console.print(table)


def print_http(rows: list[dict[str, object]]) -> None:
    table = Table(title="bombs over HTTP to edgesplit serve (targets: RSS growth < 100 MiB, /healthz < 100 ms)")
    for column in ("bomb", "body B", "status", "slowest answer ms", "peak RSS growth MiB", "worst /healthz ms",
                   "detail"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["bomb"], str(row["body_bytes"]), ",".join(map(str, row["statuses"])),
                      f"{row['answer_s'] * 1e3:.1f}", _mib(row["peak_rss_growth"]),
                      f"{row['worst_healthz_s'] * 1e3:.1f}", row["detail"][:50])
    console.print(table)


def replay(corpus: Corpus, index: int) -> None:
    description, data = corpus.case(index)
    console.print(f"#{index}: {description} ({len(data)} bytes)")
    for mode, expect in MODES.items():
        try:
            frame = decode_frame(data, expect=expect)
            console.print(f"expect={mode}: decoded {described(frame)}")
        except FrameError as exc:
            console.print(f"expect={mode}: FrameError {exc.status}: {exc}")
        except Exception:
            console.print(f"expect={mode}:")
            console.print_exception()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-every", type=int, default=20, help="tracemalloc on every N-th frame")
    parser.add_argument("--http", action="store_true", help="then send each bomb to a real server")
    parser.add_argument("--repeats", type=int, default=3, help="times each bomb is sent over HTTP")
    parser.add_argument("--replay", type=int, metavar="INDEX", help="decode frame INDEX again, with tracebacks")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzz.json"))
    args = parser.parse_args()
    warnings.simplefilter("error")  # as the test suite: a warning from the decoder is a finding
    corpus = Corpus(args.seed)
    if args.replay is not None:
        replay(corpus, args.replay)
        return
    console.print(f"{len(SEEDS)} seed frames ({', '.join(f'{k}: {len(v)} B' for k, v in SEEDS.items())}); "
                  f"{len(corpus.enumerated)} enumerated cases, then random ones")
    started = time.perf_counter()
    report = fuzz(corpus, args.frames, args.memory_every)
    fuzz_s = time.perf_counter() - started
    print_fuzz(report, args.frames)
    bomb_rows = measure_bombs()
    print_bombs(bomb_rows)
    results = {"frames": args.frames, "seed": args.seed, "fuzz_s": fuzz_s,
               "seeds": {k: len(v) for k, v in SEEDS.items()}, "enumerated": len(corpus.enumerated),
               "fuzz": report, "bombs": bomb_rows}
    if args.http:
        warnings.simplefilter("default")  # the client side's libraries are not under test
        http_rows = http_phase(args.repeats)
        print_http(http_rows)
        results["http"] = http_rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
