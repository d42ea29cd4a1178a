"""Property-based fuzzing of the wire format: every frame round-trips, and every bad frame is a FrameError.

Four properties, each derandomised (the same examples on every run), half of the examples decoded with a
server-like :class:`Expectation` and half without:

- round trip: any small array, dtype, codec and compression decodes to the array sent (exactly for raw,
  within half a quantisation step for int8, within 2 for a one-colour jpeg), and so does any list of
  named tensors in one frame;
- mutations of valid frames of one tensor and of several (bit flips, truncations, insertions, deletions,
  splices, header fields at their boundary values), with and without a fixed-up checksum, decode or raise
  FrameError 4xx — and a mutation whose checksum was not fixed up is never decoded; what decodes respects
  the limits it was decoded under;
- arbitrary bytes, and well-framed frames of one to three sections of arbitrary header values, names and
  payloads, likewise;
- compressed payloads that inflate beyond their declared length are refused without allocating what
  they inflate to.

``benchmarks/fuzz.py`` runs the same kinds of mutation over 100,000 frames at realistic sizes.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import tracemalloc
from collections.abc import Callable

import lz4.block
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from edgesplit.codecs import FLOAT32_MAX, FLOAT32_TINY
from edgesplit.wire import (FLOATS, MAX_TENSORS, OUTPUT_CUT, Expectation, Frame, Limits, decode_frame, encode_frame,
                            encode_tensors, flatten_tree, frame_checksum)
from edgesplit.errors import FrameError

MODEL = bytes.fromhex("0123456789abcdef")
INPUT_CUT, FEATURE_CUT, SKIP_CUT, POOLED_CUT = 0, 4, 6, 9
EXPECT = Expectation(MODEL, {INPUT_CUT: (3, 16, 16), FEATURE_CUT: (8, 4, 4), SKIP_CUT: ((8, 4, 4), (10,)),
                             POOLED_CUT: (10,), OUTPUT_CUT: None},
                     max_batch_size=4, dtypes={INPUT_CUT: FLOATS | {"uint8"}})
EXPECTATIONS = st.sampled_from([EXPECT, None])
COMPRESSIONS = st.sampled_from(["none", "zstd", "lz4"])
TIGHT = Limits(max_body_bytes=4096, max_elements=300, max_decoded_bytes=1000)  # below what some seeds need
CHECKSUM_AT = 20
HEADER_BYTES, SECTION_BYTES = 24, 14


def fuzz(max_examples: int) -> settings:
    """The same examples on every run, no example database written, no per-example deadline."""
    return settings(derandomize=True, deadline=None, database=None, max_examples=max_examples)


def _seed_frames() -> list[bytes]:
    """Valid frames for every codec, dtype and compression, each accepted by ``EXPECT``."""
    rng = np.random.default_rng(0)
    feature = np.maximum(rng.standard_normal((2, *EXPECT.shapes[FEATURE_CUT])), 0).astype(np.float32)
    image = rng.integers(0, 256, (1, *EXPECT.shapes[INPUT_CUT]), dtype=np.uint8)
    pooled = rng.standard_normal((3, *EXPECT.shapes[POOLED_CUT])).astype(np.float32)
    tensors = [(feature, FEATURE_CUT, "raw"), (feature.astype(np.float16), FEATURE_CUT, "raw"),
               (feature, FEATURE_CUT, "int8"), (pooled, POOLED_CUT, "raw"), (image, INPUT_CUT, "raw"),
               (image, INPUT_CUT, "jpeg"), (feature, FEATURE_CUT, "int8c"), (feature, FEATURE_CUT, "int4c"),
               (pooled[:1, :7], POOLED_CUT, "int4c"), (pooled, POOLED_CUT, "bf16"), (feature, FEATURE_CUT, "ecq5"),
               (pooled, POOLED_CUT, "ecq4")]
    single = [encode_frame(array, model_id=MODEL, cut=cut, codec=codec, compression=compression)
              for array, cut, codec in tensors for compression in ("none", "zstd", "lz4")]
    skips = [encode_tensors([("features", feature), ("pooled/0", pooled[:2])], model_id=MODEL, cut=SKIP_CUT,
                            codec=codecs, compression=compression)
             for codecs in (["raw", "raw"], ["int8c", "int8"], ["int4c", "bf16"], ["ecq6", "int8"]) for compression in ("none", "zstd")]
    detections = {"boxes": rng.standard_normal((5, 4)).astype(np.float32), "scores": pooled[0, :5],
                  "labels": np.arange(5, dtype=np.float16)}
    answers = [encode_tensors(flatten_tree([detections, {"mask": image.astype(np.float16)}]), model_id=MODEL, cut=OUTPUT_CUT,
                              compression=compression) for compression in ("none", "lz4")]
    return single + skips + answers


SEEDS = _seed_frames()


def _with_checksum(data: bytes) -> bytes:
    """``data`` carrying the checksum its bytes call for (a frame too short to hold one is left as is)."""
    if len(data) < CHECKSUM_AT + 4:
        return data
    fixed = bytearray(data)
    struct.pack_into("<I", fixed, CHECKSUM_AT, frame_checksum(fixed))
    return bytes(fixed)


def _with_length(data: bytes) -> bytes:
    """``data`` carrying the total length and checksum its bytes call for (too short: left as is)."""
    if len(data) < HEADER_BYTES:
        return data
    return _with_checksum(data[:16] + struct.pack("<I", len(data)) + data[20:])


def _header_fields(frame: bytes) -> list[tuple[int, int]]:
    """(offset, width) of every field before a payload that ``frame`` holds: the frame header, then per
    section (as far as its lengths lead) its header, each byte of its name, each dimension, the int8
    parameters, the ecqN step."""
    fields = [(0, 4), (4, 1), (5, 1), (6, 2), (8, 8), (16, 4), (20, 4)]
    offset = HEADER_BYTES
    for _ in range(frame[5] if len(frame) > 5 else 0):
        if offset + SECTION_BYTES > len(frame):
            break
        codec, ndim, name_length = frame[offset + 1], frame[offset + 3], frame[offset + 4]
        fields += [(offset + i, 1) for i in range(6)] + [(offset + 6, 4), (offset + 10, 4)]
        fields += [(offset + SECTION_BYTES + i, 1) for i in range(name_length)]
        shape_at = offset + SECTION_BYTES + name_length
        fields += [(shape_at + 4 * i, 4) for i in range(ndim)]
        params = {1: 8, 8: 4, 9: 4, 10: 4}.get(codec, 0)  # int8: scale, zero point; ecqN: step
        fields += [(shape_at + 4 * ndim + i, 4) for i in range(0, params, 4)]
        offset = shape_at + 4 * ndim + params + struct.unpack_from("<I", frame, offset + 6)[0]
    return [(offset, width) for offset, width in fields if offset + width <= len(frame)]


# the int8 scale is a float32: its extremes as bit patterns (inf, -inf, the largest finite, the largest
# scale accepted (zero point 0) and the next float up, the least accepted and the next float down, 0)
FLOAT32_EXTREMES = [int(np.array(x, np.float32).view(np.uint32)) for x in
                    (np.inf, -np.inf, FLOAT32_MAX, FLOAT32_MAX / 255, np.nextafter(np.float32(FLOAT32_MAX / 255), np.inf),
                     FLOAT32_TINY, np.nextafter(np.float32(FLOAT32_TINY), 0), 0.0)]


def _boundary_values(width: int) -> list[int]:
    top = (1 << (8 * width)) - 1
    extremes = [0, 1, top - 1, top, top >> 1, (top >> 1) + 1]  # unsigned, then signed
    return extremes + (FLOAT32_EXTREMES if width == 4 else [])


@st.composite
def _mutations(draw: st.DrawFn, frame: bytes) -> bytes:
    """``frame`` changed in one of the ways a link, a bug or an attacker changes it."""
    size = len(frame)
    at = draw(st.integers(0, size - 1))
    kinds = ["flip", "truncate", "insert", "delete", "splice"] + (["field"] if size >= HEADER_BYTES else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "flip":
        flipped = bytearray(frame)
        for index in draw(st.lists(st.integers(0, 8 * size - 1), min_size=1, max_size=8)):
            flipped[index // 8] ^= 1 << (index % 8)
        return bytes(flipped)
    if kind == "truncate":
        return frame[:at]
    if kind == "insert":
        return frame[:at] + draw(st.binary(min_size=1, max_size=16)) + frame[at:]
    if kind == "delete":
        return frame[:at] + frame[at + draw(st.integers(1, 16)):]
    if kind == "splice":
        return frame[:at] + draw(st.binary(min_size=1, max_size=64)) + frame[at + draw(st.integers(1, 64)):]
    offset, width = draw(st.sampled_from(_header_fields(frame)))
    value = draw(st.sampled_from(_boundary_values(width)))
    return frame[:offset] + value.to_bytes(width, "little") + frame[offset + width:]


def _decode_or_refuse(data: bytes, expect: Expectation | None, limits: Limits = Limits()) -> Frame | None:
    """The frame decoded, or None when refused with a 4xx FrameError that says why; anything else raises.
    What decodes keeps to ``limits`` and ``expect``."""
    try:
        frame = decode_frame(data, expect=expect, limits=limits)
    except FrameError as exc:
        assert 400 <= exc.status < 500, (exc.status, str(exc))
        assert str(exc).strip()
        return None
    assert 1 <= len(frame.tensors) <= MAX_TENSORS and len(data) <= limits.max_body_bytes
    assert len({t.name for t in frame.tensors}) == len(frame.tensors)
    assert sum(t.array.size for t in frame.tensors) <= limits.max_elements
    for tensor in frame.tensors:
        assert tensor.array.flags.writeable and tensor.array.ndim >= 1
        if tensor.codec not in ("raw", "bf16"):  # every other codec's checks keep its values finite
            assert np.isfinite(tensor.array).all()
        if tensor.codec == "raw":
            assert tensor.array.nbytes <= limits.max_decoded_bytes
    if expect is not None:
        assert frame.model_id == expect.model_id and frame.cut in expect.shapes
        shapes = expect.tensor_shapes(frame.cut)
        if shapes is not None:
            assert [t.array.shape[1:] for t in frame.tensors] == list(shapes)
            batches = {t.array.shape[0] for t in frame.tensors}
            assert len(batches) == 1 and batches.pop() <= expect.max_batch_size
        assert all(t.array.dtype.name in expect.allowed(frame.cut) for t in frame.tensors)
    return frame


def _decode_both_ways(data: bytes) -> tuple[Frame | None, Frame | None]:
    """Decoded without and with ``EXPECT``; the expectation only adds checks, so it never accepts more."""
    free, expected = _decode_or_refuse(data, None), _decode_or_refuse(data, EXPECT)
    if expected is not None:
        assert free is not None and len(free.tensors) == len(expected.tensors)
        for a, b in zip(free.tensors, expected.tensors):
            assert (a.name, a.array.dtype, a.array.shape) == (b.name, b.array.dtype, b.array.shape)
            assert a.array.tobytes() == b.array.tobytes()
    return free, expected


def _peak_allocation(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# (a) round trips

@fuzz(150)
@given(array=hnp.arrays(st.sampled_from([np.float32, np.float16, np.uint8]),
                        hnp.array_shapes(min_dims=1, max_dims=4, max_side=6)),
       compression=COMPRESSIONS, cut=st.integers(0, 0xFFFF))
def test_raw_frames_round_trip_bit_exactly(array: np.ndarray, compression: str, cut: int) -> None:
    frame = decode_frame(encode_frame(array, model_id=MODEL, cut=cut, compression=compression))
    assert frame.array.dtype == array.dtype and frame.array.shape == array.shape
    assert frame.array.tobytes() == array.tobytes()  # NaN payloads and -0.0 included
    assert (frame.cut, frame.codec, frame.compression) == (cut, "raw", compression)


@fuzz(150)
@given(array=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
                        elements=st.floats(-2.0**100, 2.0**100, width=32, allow_subnormal=False)),
       compression=COMPRESSIONS)
def test_int8_frames_round_trip_within_half_a_step(array: np.ndarray, compression: str) -> None:
    decoded = decode_frame(encode_frame(array, model_id=MODEL, cut=FEATURE_CUT, codec="int8",
                                        compression=compression)).array
    step = (max(float(array.max()), 0.0) - min(float(array.min()), 0.0)) / 255
    assert decoded.dtype == np.float32 and decoded.shape == array.shape
    # half a step, plus float32 rounding of x / scale and of the product (a few ulps of the largest value)
    assert np.abs(decoded.astype(np.float64) - array).max() <= step * (0.5 + 1e-4) + 1e-6 * np.abs(array).max()


@fuzz(40)
@given(colour=st.tuples(*[st.integers(0, 255)] * 3), height=st.integers(1, 40), width=st.integers(1, 40),
       compression=COMPRESSIONS)
def test_one_colour_jpeg_frames_round_trip_within_two(colour: tuple[int, int, int], height: int, width: int,
                                                      compression: str) -> None:
    image = np.broadcast_to(np.array(colour, np.uint8)[None, :, None, None], (1, 3, height, width))
    decoded = decode_frame(encode_frame(image, model_id=MODEL, cut=INPUT_CUT, codec="jpeg",
                                        compression=compression)).array
    assert decoded.dtype == np.uint8 and decoded.shape == image.shape
    assert np.abs(decoded.astype(int) - image).max() <= 2


NAMES = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=16)


@fuzz(150)
@given(arrays=st.lists(hnp.arrays(st.sampled_from([np.float32, np.float16, np.uint8]),
                                  hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)), min_size=1, max_size=6),
       names=st.lists(NAMES, min_size=6, max_size=6, unique=True), data=st.data())
def test_named_tensors_round_trip_bit_exactly(arrays: list[np.ndarray], names: list[str], data: st.DataObject) -> None:
    compressions = data.draw(st.lists(COMPRESSIONS, min_size=len(arrays), max_size=len(arrays)), label="compressions")
    named = list(zip(names, arrays))
    frame = decode_frame(encode_tensors(named, model_id=MODEL, cut=SKIP_CUT, compression=compressions))
    assert [(t.name, t.codec, t.compression) for t in frame.tensors] == [(n, "raw", c) for n, c in zip(names, compressions)]
    for tensor, array in zip(frame.tensors, arrays):
        assert tensor.array.dtype == array.dtype and tensor.array.tobytes() == array.tobytes()


# (b) mutations of valid frames

@st.composite
def _mutated_frames(draw: st.DrawFn) -> tuple[bytes, bytes, bool]:
    """(seed frame, the frame after one to three mutations, whether its checksum (and, half the time, its
    total length) was fixed up after)."""
    seed = draw(st.sampled_from(SEEDS))
    mutated = seed
    for _ in range(draw(st.integers(1, 3))):
        mutated = draw(_mutations(mutated)) or mutated  # a frame truncated to nothing stays empty
    fix = draw(st.sampled_from([None, _with_checksum, _with_length]))
    return seed, fix(mutated) if fix else mutated, fix is not None


@fuzz(3000)
@given(case=_mutated_frames())
def test_mutated_frames_decode_or_raise_frame_error(case: tuple[bytes, bytes, bool]) -> None:
    seed, mutated, fixed_up = case
    free, _ = _decode_both_ways(mutated)
    if not fixed_up and mutated != seed:
        assert free is None, "a changed frame with its old checksum was accepted"


@fuzz(500)
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_every_header_field_at_every_boundary_value(seed: bytes, data: st.DataObject) -> None:
    """Each field, each value, explicitly: the shrinker's favourite corners, not left to chance."""
    offset, width = data.draw(st.sampled_from(_header_fields(seed)), label="field")
    value = data.draw(st.sampled_from(_boundary_values(width)), label="value")
    patched = seed[:offset] + value.to_bytes(width, "little") + seed[offset + width:]
    _decode_both_ways(patched)
    _decode_both_ways(_with_checksum(patched))


@fuzz(1000)
@given(case=_mutated_frames())
def test_what_decodes_under_tight_limits_keeps_to_them(case: tuple[bytes, bytes, bool]) -> None:
    _, mutated, _ = case
    _decode_or_refuse(mutated, None, TIGHT)
    _decode_or_refuse(mutated, EXPECT, TIGHT)


def test_every_truncation_of_a_frame_of_several_tensors_is_refused() -> None:
    """Even with its length and checksum made to agree: the sections no longer fit."""
    for seed in SEEDS:
        if seed[5] > 1:
            for length in range(len(seed)):
                assert _decode_or_refuse(_with_length(seed[:length]), None) is None


@fuzz(300)
@given(case=_mutated_frames())
def test_decoding_with_the_expectation_allocates_little_beyond_the_body(case: tuple[bytes, bytes, bool]) -> None:
    """With the expectation, every shape it accepts is a few KB: nothing may allocate much past the body."""
    _, mutated, _ = case
    peak = _peak_allocation(lambda: _decode_or_refuse(mutated, EXPECT))
    assert peak <= 4 * len(mutated) + (256 << 10), (peak, len(mutated))


# (c) arbitrary bytes

@fuzz(800)
@given(data=st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(lambda tail: b"ESPL\x03" + tail)),
       fixed_up=st.booleans(), expect=EXPECTATIONS)
def test_arbitrary_bytes_raise_frame_error(data: bytes, fixed_up: bool, expect: Expectation | None) -> None:
    assert _decode_or_refuse(_with_checksum(data) if fixed_up else data, expect) is None


def _compressed(data: bytes, compression: int) -> bytes:
    if compression == 1:
        return zstandard.ZstdCompressor(level=19).compress(data)
    if compression == 2:
        return lz4.block.compress(data, store_size=False)
    return data


@st.composite
def _well_framed_section(draw: st.DrawFn) -> bytes:
    """A section of known codes, a small shape and a name (mostly valid) whose content is arbitrary bytes
    (for jpeg, sometimes a real JPEG of the declared size), mostly of the length the shape needs,
    compressed as declared or replaced by arbitrary bytes: payloads reach the decompressors, the int8
    parameters and the JPEG decoder, which a mutation of a valid frame seldom gets past the checksum to do."""
    codec = draw(st.sampled_from([0, 1, 2]))  # raw, int8, jpeg
    dtype = draw(st.sampled_from({0: [1, 2, 3], 1: [1, 1, 1, 2], 2: [3, 3, 3, 1]}[codec]))  # mostly as required
    compression = draw(st.sampled_from([0, 1, 2]))
    if codec == 2:
        shape = (1, 3, draw(st.integers(1, 16)), draw(st.integers(1, 16)))
    else:
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    length = math.prod(shape) * (1 if codec == 1 else {1: 4, 2: 2, 3: 1}[dtype])
    if codec == 2 and draw(st.booleans()):
        image = Image.frombytes("RGB", shape[:1:-1], draw(st.binary(min_size=length, max_size=length)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        content = buffer.getvalue()
    else:
        size = draw(st.sampled_from([length] * 4 + [max(length - 1, 0), length + 1]))
        content = draw(st.binary(min_size=size, max_size=size))
    payload = draw(st.one_of(st.just(_compressed(content, compression)), st.binary(max_size=64)))
    params = b""
    if codec == 1:
        params = draw(st.one_of(st.binary(min_size=8, max_size=8),
                                st.tuples(st.floats(2.0**-20, 2.0**20, width=32), st.integers(0, 255)).map(
                                    lambda affine: struct.pack("<fi", *affine))))
    name = draw(st.one_of(NAMES.map(str.encode), st.sampled_from([b"", b"x", b"\xff", b"a\x00", b"n" * 64, b"n" * 65])))
    header = struct.pack("<BBBBBBII", dtype, codec, compression, len(shape), len(name), 0, len(payload), len(content))
    return header + name + struct.pack(f"<{len(shape)}I", *shape) + params + payload


@st.composite
def _well_framed(draw: st.DrawFn) -> bytes:
    """One to three well-framed sections under a frame header of a right length and checksum."""
    sections = draw(st.lists(_well_framed_section(), min_size=1, max_size=3))
    body = b"".join(sections)
    header = struct.pack("<4sBBH8sII", b"ESPL", 3, len(sections),
                         draw(st.sampled_from([INPUT_CUT, FEATURE_CUT, SKIP_CUT, POOLED_CUT, 1, OUTPUT_CUT])),
                         draw(st.sampled_from([MODEL, MODEL, bytes(8)])), HEADER_BYTES + len(body), 0)
    return _with_checksum(header + body)


@fuzz(1000)
@given(data=_well_framed())
def test_well_framed_frames_of_arbitrary_fields_decode_or_raise_frame_error(data: bytes) -> None:
    _decode_both_ways(data)


# compression bombs

@functools.lru_cache(maxsize=None)
def _inflating_payload(compression: int, inflated_bytes: int) -> bytes:
    return _compressed(bytes(inflated_bytes), compression)


@fuzz(30)
@given(compression=st.sampled_from(["zstd", "lz4"]), inflation=st.sampled_from([2, 64, 4096]),
       batch=st.integers(1, 4), expect=EXPECTATIONS)
def test_payloads_that_inflate_beyond_their_declaration_are_refused_in_bounded_memory(
        compression: str, inflation: int, batch: int, expect: Expectation | None) -> None:
    declared = batch * int(np.prod(EXPECT.shapes[FEATURE_CUT])) * 4
    payload = _inflating_payload({"zstd": 1, "lz4": 2}[compression], declared * inflation)
    head = HEADER_BYTES + SECTION_BYTES + 4 * 4  # the headers of a frame of one unnamed 4-d tensor
    header = bytearray(encode_frame(np.zeros((batch, *EXPECT.shapes[FEATURE_CUT]), np.float32), model_id=MODEL,
                                    cut=FEATURE_CUT)[:head])
    header[HEADER_BYTES + 2] = {"zstd": 1, "lz4": 2}[compression]
    struct.pack_into("<II", header, HEADER_BYTES + 6, len(payload), declared)
    struct.pack_into("<I", header, 16, head + len(payload))
    bomb = _with_checksum(bytes(header) + payload)

    def refuse() -> None:
        with pytest.raises(FrameError, match=rf"{compression} payload does not decompress to the declared "
                                             rf"{declared} bytes"):
            decode_frame(bomb, expect=expect)

    assert _peak_allocation(refuse) <= 2 * len(bomb) + declared + (1 << 20) + (64 << 10)
