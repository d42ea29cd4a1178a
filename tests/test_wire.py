"""The wire format: exact round trips, and a clear FrameError for every kind of bad frame."""

import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from edgesplit.codecs import FLOAT32_MAX, dequantize_int8, max_jpeg_bytes, quantize_int8
from edgesplit.wire import (FLOATS, MAX_TENSORS, OUTPUT_CUT, Expectation, Limits, decode_frame, encode_frame,
                            encode_tensors, flatten_tree, frame_checksum, frame_overhead, unflatten_tree)
from edgesplit.errors import FrameError

MODEL = bytes.fromhex("0123456789abcdef")
RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 24, 7, 7)).astype(np.float32)
EXPECT = Expectation(MODEL, {5: (24, 7, 7), 0: (3, 16, 16)}, max_batch_size=8,
                     dtypes={0: frozenset({"float32", "uint8"})})
# where the fields of a frame of one unnamed 4-d tensor lie: the frame header, then its section's
TOTAL_AT, CHECKSUM_AT, COUNT_AT, CUT_AT, MODEL_AT = 16, 20, 5, 6, 8
DTYPE_AT, CODEC_AT, COMPRESSION_AT, NDIM_AT, NAME_LENGTH_AT, FLAGS_AT, PAYLOAD_AT, DECODED_AT, SHAPE_AT = (
    24, 25, 26, 27, 28, 29, 30, 34, 38)
HEAD = 54  # the bytes before the payload (62 with int8's parameters)


@pytest.mark.parametrize("compression", ["none", "zstd", "lz4"])
def test_raw_fp32_round_trip_is_bit_exact(compression):
    data = encode_frame(X, model_id=MODEL, cut=5, compression=compression)
    frame = decode_frame(data, expect=EXPECT)
    assert frame.array.dtype == np.float32 and frame.array.shape == X.shape
    assert np.array_equal(frame.array, X) and frame.cut == 5 and frame.model_id == MODEL
    assert frame.codec == "raw" and frame.compression == compression
    assert [(t.name, t.codec, t.compression) for t in frame.tensors] == [("", "raw", compression)]


def test_header_layout_and_sizes():
    data = encode_frame(X, model_id=MODEL, cut=5)
    total = 24 + 14 + 4 * 4 + X.nbytes
    assert len(data) == total == frame_overhead(4) + X.nbytes
    checksum = zlib.crc32(data[24:], zlib.crc32(data[:20]))  # all but its own 4 bytes
    assert data[:HEAD] == (b"ESPL" + bytes([3, 1]) + struct.pack("<H", 5) + MODEL + struct.pack("<II", total, checksum)
                           + bytes([1, 0, 0, 4, 0, 0]) + struct.pack("<II", X.nbytes, X.nbytes)
                           + struct.pack("<4I", 2, 24, 7, 7))
    assert data[HEAD:] == X.tobytes()


def test_the_sections_of_a_frame_of_named_tensors_follow_one_another():
    a, b = np.arange(6, dtype=np.uint8).reshape(2, 3), np.ones((2,), np.float16)
    data = encode_tensors([("a", a), ("bé", b)], model_id=MODEL, cut=7)
    first = 24 + 14 + 1 + 8 + 6
    assert len(data) == first + 14 + 3 + 4 + 4 and data[5] == 2 and struct.unpack_from("<I", data, 16)[0] == len(data)
    assert data[24:first] == bytes([3, 0, 0, 2, 1, 0]) + struct.pack("<II", 6, 6) + b"a" + struct.pack("<2I", 2, 3) + a.tobytes()
    assert data[first:] == (bytes([2, 0, 0, 1, 3, 0]) + struct.pack("<II", 4, 4) + "bé".encode() + struct.pack("<I", 2)
                            + b.tobytes())
    assert frame_overhead(2, "int8", "bé") == 24 + 14 + 3 + 8 + 8


def test_multi_tensor_frames_round_trip_with_mixed_dtypes_codecs_and_compressions():
    image = RNG.integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    named = [("skip/0", X[:1]), ("skip/1", X[:1, :4].astype(np.float16)), ("image", image), ("int8", X[:1]),
             ("int4c", X[:1]), ("bf16", X[:1, 0]), ("jpeg", image)]
    codecs = ["raw", "raw", "raw", "int8", "int4c", "bf16", "jpeg"]
    compressions = ["zstd", "lz4", "none", "zstd", "none", "lz4", "none"]
    data = encode_tensors(named, model_id=MODEL, cut=3, codec=codecs, compression=compressions)
    expect = Expectation(MODEL, {3: ((24, 7, 7), (4, 7, 7), (3, 16, 16), (24, 7, 7), (24, 7, 7), (7, 7), (3, 16, 16))},
                         dtypes={3: FLOATS | {"uint8"}})
    frame = decode_frame(data, expect=expect)
    assert [(t.name, t.codec, t.compression) for t in frame.tensors] == list(zip([n for n, _ in named], codecs,
                                                                                 compressions))
    exact = frame.tensors[:3]
    assert all(t.array.dtype == a.dtype and np.array_equal(t.array, a) for t, (_, a) in zip(exact, named))
    assert np.abs(frame.tensors[3].array - X[:1]).max() <= (X[:1].max() - X[:1].min()) / 510 + 1e-6
    assert frame.tensors[4].array.shape == X[:1].shape and frame.tensors[5].array.dtype == np.float32
    assert np.allclose(frame.tensors[5].array, X[:1, 0], rtol=2**-8)
    assert frame.tensors[6].array.shape == image.shape and frame.tensors[6].array.dtype == np.uint8
    for attribute in ("array", "codec", "compression"):
        with pytest.raises(FrameError, match=r"this frame carries 7 tensors, not one: read \.tensors"):
            getattr(frame, attribute)


def test_one_codec_and_compression_for_all_tensors_or_one_each():
    named = [("a", X[:1]), ("b", X[1:])]
    frame = decode_frame(encode_tensors(named, model_id=MODEL, cut=1, codec="int8", compression="zstd"))
    assert [(t.codec, t.compression) for t in frame.tensors] == [("int8", "zstd")] * 2
    with pytest.raises(FrameError, match=r"2 tensors need one codec each, or one for all: got 3"):
        encode_tensors(named, model_id=MODEL, cut=1, codec=["raw"] * 3)


def test_fp16_and_int8_are_close_and_smaller():
    half = decode_frame(encode_frame(X.astype(np.float16), model_id=MODEL, cut=5))
    assert half.array.dtype == np.float16 and np.allclose(half.array, X, atol=2e-3)
    data = encode_frame(X, model_id=MODEL, cut=5, codec="int8")
    assert len(data) == 24 + 14 + 16 + 8 + X.size == frame_overhead(4, "int8") + X.size
    q = decode_frame(data).array
    step = (X.max() - min(X.min(), 0)) / 255
    assert q.dtype == np.float32 and np.abs(q - X).max() <= step / 2 + 1e-6


def test_quantize_int8_known_values():
    q, scale, zero = quantize_int8(np.array([-1.0, 0.0, 0.5, 1.0], dtype=np.float32))
    assert scale == pytest.approx(2 / 255) and zero == 128
    assert q.tolist() == [1, 128, 192, 255]  # -1 / scale is -127.49999…, 1 / scale clips
    assert dequantize_int8(q, scale, zero)[1] == 0.0


def test_jpeg_offload_frame():
    image = RNG.integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    frame = decode_frame(encode_frame(image, model_id=MODEL, cut=0, codec="jpeg"), expect=EXPECT)
    assert frame.array.shape == (1, 3, 16, 16) and frame.array.dtype == np.uint8
    with pytest.raises(FrameError, match=r"jpeg frames carry one uint8 image of shape \(1, 3, H, W\)"):
        encode_frame(image.astype(np.float32), model_id=MODEL, cut=0, codec="jpeg")


def test_output_frames_use_the_output_cut_id():
    logits = RNG.standard_normal((3, 1000)).astype(np.float32)
    frame = decode_frame(encode_frame(logits, model_id=MODEL, cut=OUTPUT_CUT))
    assert frame.cut == 65535 and np.array_equal(frame.array, logits)


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _recrc(data: bytes) -> bytes:
    return _patch(data, CHECKSUM_AT, "<I", frame_checksum(data))


def _relength(data: bytes) -> bytes:
    """``data`` with the total length and checksum its bytes call for."""
    return _recrc(_patch(data, TOTAL_AT, "<I", len(data)))


def _with_payload(head: bytes, payload: bytes, decoded_length: int | None = None, compression: int | None = None) -> bytes:
    """The headers ``head`` of a one-tensor frame with another payload, the lengths and checksum made to agree."""
    data = _patch(head, PAYLOAD_AT, "<II", len(payload), len(payload) if decoded_length is None else decoded_length)
    if compression is not None:
        data = _patch(data, COMPRESSION_AT, "<B", compression)
    return _relength(data + payload)


GOOD = encode_frame(X, model_id=MODEL, cut=5)
NAMED = encode_tensors([("a", X)], model_id=MODEL, cut=5)
TINY = encode_tensors([("a", np.zeros(1, np.uint8))], model_id=MODEL, cut=5)  # 44 bytes
TWO = encode_tensors([("a", X), ("b", X)], model_id=MODEL, cut=5)
SECOND = len(TWO) // 2 + 12  # where the second section starts: the header is 24 bytes, each section as long


@pytest.mark.parametrize("data,message", [
    (b"", r"truncated frame: 0 bytes, the header alone needs 24"),
    (GOOD[:20], r"truncated frame: 20 bytes"),
    (GOOD[:40], r"frame length mismatch: 40 bytes, the header says 9462"),
    (GOOD[:-1], r"frame length mismatch: \d+ bytes, the header says \d+"),
    (GOOD + b"x", r"frame length mismatch"),
    (b"GIF8" + GOOD[4:], r"not an edgesplit frame: magic b'GIF8', expected b'ESPL'"),
    (_patch(GOOD, 4, "<B", 4), r"unsupported frame version 4; this side speaks version 3 only$"),
    (_patch(GOOD, 4, "<B", 2), r"unsupported frame version 2; this side speaks version 3 only \(version 2 carried "
                               r"one unnamed tensor per frame: update the sender\)"),
    (_patch(GOOD, 4, "<B", 1), r"unsupported frame version 1; this side speaks version 3 only \(version 1 "
                               r"checksummed only the payload: update the sender\)"),
    (_patch(GOOD, COUNT_AT, "<B", 0), r"tensor count 0: a frame carries 1 to 64 tensors"),
    (_patch(GOOD, COUNT_AT, "<B", MAX_TENSORS + 1), r"tensor count 65: a frame carries 1 to 64 tensors"),
    (_patch(GOOD, DTYPE_AT, "<B", 9), r"unknown dtype code 9"),
    (_patch(GOOD, CODEC_AT, "<B", 11), r"unknown codec code 11"),
    (_patch(GOOD, COMPRESSION_AT, "<B", 5), r"unknown compression code 5"),
    (_patch(GOOD, NDIM_AT, "<B", 0), r"ndim must be 1..8, got 0"),
    (_patch(GOOD, NDIM_AT, "<B", 9), r"ndim must be 1..8, got 9"),
    (_patch(GOOD, FLAGS_AT, "<B", 1), r"unknown flags 0x01"),
    (_patch(GOOD, NAME_LENGTH_AT, "<B", 65), r"^name of 65 bytes is longer than 64$"),
    (_patch(GOOD, SHAPE_AT, "<I", 0), r"has an empty dimension"),
    (_patch(GOOD, SHAPE_AT, "<I", 3), r"decoded length 9408 does not match shape \(3, 24, 7, 7\) of float32"),
    (_patch(GOOD, SHAPE_AT, "<I", 4_000_000_000), r"more than max_elements"),
    (_patch(GOOD, DTYPE_AT, "<B", 2), r"decoded length 9408 does not match shape .* of float16"),
    (GOOD[:-4] + b"\x00\x00\x00\x00", r"checksum mismatch: the frame was corrupted in transit"),
    (_patch(GOOD, CHECKSUM_AT, "<I", zlib.crc32(GOOD[HEAD:])), r"checksum mismatch"),  # a version 1 checksum
    (_patch(GOOD, MODEL_AT, "<B", GOOD[MODEL_AT] ^ 1), r"checksum mismatch"),  # the model id
    (_recrc(_patch(GOOD, PAYLOAD_AT, "<I", 9500)), r"^truncated section: a payload of 9500 bytes from byte 54 runs "
                                                   r"past the frame's 9462 bytes$"),
    (_recrc(_patch(GOOD, PAYLOAD_AT, "<I", 9000)), r"uncompressed payload of 9000 bytes, but the decoded length says "
                                                   r"9408"),
    (_recrc(_patch(NAMED, COUNT_AT, "<B", 2)), r"^truncated section: tensor 2 of 2 starts at byte 9463, its header "
                                               r"needs 14 bytes, the frame has 9463$"),
    (_recrc(_patch(TINY, NDIM_AT, "<B", 8)), r"^truncated section: tensor 1 of 1 needs bytes up to 71 for its name, "
                                             r"shape and codec parameters, the frame has 44$"),
    (_relength(GOOD + b"tail"), r"^sections do not add up to the frame: they end at byte 9462, the frame has 9466 "
                                r"bytes$"),
    (_recrc(_patch(TWO, SECOND + 14, "<B", ord("a"))), r"^tensor 2 of 2: duplicate tensor name 'a'$"),
    (_recrc(_patch(NAMED, 24 + 14, "<B", 0xFF)), r"^tensor 1 of 1: name b'\\xff' is not valid UTF-8 \(invalid start "
                                                 r"byte\)$"),
    (_recrc(_patch(NAMED, 24 + 14, "<B", 0x07)), r"^tensor 1 of 1: name '\\x07' contains a control character$"),
    (_relength(_patch(TWO, NAME_LENGTH_AT, "<B", 0)[:24 + 14] + TWO[24 + 15:]),  # the first name removed
     r"^tensor 1 of 2: the empty name is only for a frame of one tensor$"),
    (_recrc(_patch(TWO, SECOND + 1, "<B", 11)), r"^tensor 2 of 2: unknown codec code 11$"),
    (bytes(RNG.integers(0, 256, 300, dtype=np.uint8)), r"not an edgesplit frame"),
])
def test_malformed_frames(data, message):
    with pytest.raises(FrameError, match=message) as info:
        decode_frame(data, expect=EXPECT)
    assert info.value.status == (413 if "max_elements" in message else 400)


@pytest.mark.parametrize("kwargs,expect,message", [
    ({"model_id": bytes(8), "cut": 5}, EXPECT,
     r"model id 0000000000000000 is not this server's model \(0123456789abcdef\)"),
    ({"model_id": MODEL, "cut": 9}, EXPECT, r"unknown cut id 9; this model has cut ids 0, 5"),
    ({"model_id": MODEL, "cut": 0}, EXPECT, r"shape \(2, 24, 7, 7\) does not fit cut 0: expected \(batch, 3, 16, 16\)"),
    ({"model_id": MODEL, "cut": 5}, Expectation(MODEL, {5: (24, 7, 7)}, max_batch_size=1),
     r"batch of 2 exceeds max_batch_size=1"),
])
def test_frames_for_another_model_cut_or_shape(kwargs, expect, message):
    with pytest.raises(FrameError, match=message):
        decode_frame(encode_frame(X, **kwargs), expect=expect)


SKIPS = Expectation(MODEL, {3: ((4,), (2, 2)), OUTPUT_CUT: None}, max_batch_size=4)


@pytest.mark.parametrize("named,message", [
    ([("a", np.zeros((2, 4), np.float32)), ("b", np.zeros((2, 3), np.float32))],
     r"^tensor 2 of 2 'b': shape \(2, 3\) does not fit cut 3: expected \(batch, 2, 2\)$"),
    ([("a", np.zeros((2, 4), np.float32)), ("b", np.zeros((1, 2, 2), np.float32))],
     r"^tensor 2 of 2 'b': batch of 1 differs from tensor 1's 2: the tensors of a frame at cut 3 share their batch "
     r"size$"),
    ([("a", np.zeros((2, 4), np.float32))], r"^cut 3 carries 2 tensors, this frame has 1$"),
    ([("a", np.zeros((2, 4), np.float32)), ("b", np.zeros((2, 2, 2), np.uint8))],
     r"^tensor 2 of 2 'b': dtype uint8 is not accepted at cut 3 \(accepted: float16, float32\)$"),
])
def test_the_tensors_of_a_multi_tensor_cut_are_checked_one_by_one(named, message):
    with pytest.raises(FrameError, match=message) as info:
        decode_frame(encode_tensors(named, model_id=MODEL, cut=3), expect=SKIPS)
    assert info.value.status == 422
    with pytest.raises(FrameError, match=r"^batch of 5 exceeds max_batch_size=4$"):
        decode_frame(encode_tensors([("a", np.zeros((5, 4), np.float32)), ("b", np.zeros((5, 2, 2), np.float32))],
                                    model_id=MODEL, cut=3), expect=SKIPS)


def test_a_cut_without_shapes_accepts_any_tensors_within_the_limits():
    detections = [("boxes", np.zeros((7, 4), np.float32)), ("scores", np.zeros(7, np.float32)),
                  ("labels", np.zeros(7, np.float16))]
    frame = decode_frame(encode_tensors(detections, model_id=MODEL, cut=OUTPUT_CUT), expect=SKIPS)
    assert [t.array.shape for t in frame.tensors] == [(7, 4), (7,), (7,)]
    assert decode_frame(encode_frame(np.zeros((9, 1), np.float32), model_id=MODEL, cut=OUTPUT_CUT),
                        expect=SKIPS).array.shape == (9, 1)  # no batch limit: the answer's own structure
    with pytest.raises(FrameError, match=r"^tensor 3 of 3 'labels': shape \(7,\) has 7 elements, 42 with the tensors "
                                         r"before it, more than max_elements=40$"):
        decode_frame(encode_tensors(detections, model_id=MODEL, cut=OUTPUT_CUT), limits=Limits(max_elements=40),
                     expect=SKIPS)


def test_int32_tensors_round_trip_raw_beside_floats():
    labels = np.array([[1, -7, 2**31 - 1, -2**31]], np.int32)
    named = [("boxes", np.zeros((4, 4), np.float32)), ("labels", labels[0]), ("big", labels.astype(">i4"))]
    data = encode_tensors(named, model_id=MODEL, cut=OUTPUT_CUT, compression=["none", "zstd", "lz4"])
    assert (data[DTYPE_AT], data[DTYPE_AT + 14 + 5 + 8 + 64]) == (1, 4)  # dtype codes: float32, then int32
    frame = decode_frame(data, expect=Expectation(MODEL, {OUTPUT_CUT: None}, dtypes={OUTPUT_CUT: FLOATS | {"int32"}}))
    assert [t.array.dtype.name for t in frame.tensors] == ["float32", "int32", "int32"]
    assert np.array_equal(frame.tensors[1].array, labels[0]) and np.array_equal(frame.tensors[2].array, labels)
    with pytest.raises(FrameError, match=r"^tensor 2 of 3 'labels': dtype int32 is not accepted at cut 65535 "
                                         r"\(accepted: float16, float32\)$") as info:
        decode_frame(data, expect=Expectation(MODEL, {OUTPUT_CUT: None}))  # floats only, unless said otherwise
    assert info.value.status == 422


@pytest.mark.parametrize("codec", ["int8", "int8c", "int4c", "bf16", "jpeg"])
def test_int32_tensors_refuse_lossy_codecs(codec):
    with pytest.raises(FrameError, match=rf"^tensor 1 of 1 'labels': int32 tensors travel raw only: codec {codec} "
                                         r"would not carry their integers$"):
        encode_tensors([("labels", np.zeros((1, 3, 4, 4), np.int32))], model_id=MODEL, cut=0, codec=codec)
    with pytest.raises(FrameError, match=rf"^int64 tensors travel raw only: codec {codec}"):
        encode_frame(np.zeros((1, 3, 4, 4), np.int64), model_id=MODEL, cut=0, codec=codec)


@pytest.mark.parametrize("codec", ["int8", "jpeg"])
def test_a_header_saying_int32_with_a_lossy_codec_is_refused(codec):
    image = RNG.integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    frame = encode_frame(X[:1] if codec == "int8" else image, model_id=MODEL, cut=0, codec=codec)
    with pytest.raises(FrameError, match=rf"^an int32 tensor travels raw only, not {codec}$"):
        decode_frame(_recrc(_patch(frame, DTYPE_AT, "<B", 4)))


def test_an_empty_dimension_only_in_a_raw_answer_of_any_shapes():
    """A detector's answer for an image without boxes: (0, 4) boxes, where the receiver expects any shapes."""
    named = [("boxes", np.zeros((0, 4), np.float32)), ("labels", np.zeros(0, np.int32))]
    data = encode_tensors(named, model_id=MODEL, cut=OUTPUT_CUT)
    anything = Expectation(MODEL, {OUTPUT_CUT: None}, dtypes={OUTPUT_CUT: FLOATS | {"int32"}})
    assert [t.array.shape for t in decode_frame(data, expect=anything).tensors] == [(0, 4), (0,)]
    with pytest.raises(FrameError, match=r"^tensor 1 of 2 'boxes': shape \(0, 4\) has an empty dimension$"):
        decode_frame(data)  # no expectation: refused as ever
    with pytest.raises(FrameError, match=r"shape \(0, 4\) has an empty dimension"):
        decode_frame(data, expect=Expectation(MODEL, {OUTPUT_CUT: (4,)}, dtypes=anything.dtypes))
    with pytest.raises(FrameError, match=r"shape \(0, 4\) has an empty dimension"):
        decode_frame(encode_frame(np.zeros((0, 4), np.float32), model_id=MODEL, cut=OUTPUT_CUT, codec="bf16"),
                     expect=anything)


def test_the_sums_over_a_frames_tensors_are_bounded():
    named = [("a", np.zeros((1, 600), np.float32)), ("b", np.zeros((1, 600), np.float32))]
    data = encode_tensors(named, model_id=MODEL, cut=1)
    decode_frame(data, limits=Limits(max_elements=1200, max_decoded_bytes=4800))
    with pytest.raises(FrameError, match=r"^tensor 2 of 2 'b': shape \(1, 600\) has 600 elements, 1200 with the "
                                         r"tensors before it, more than max_elements=1000$") as info:
        decode_frame(data, limits=Limits(max_elements=1000))
    assert info.value.status == 413
    with pytest.raises(FrameError, match=r"^tensor 2 of 2 'b': decoded length 2400, 4800 with the tensors before it "
                                         r"exceeds max_decoded_bytes=4000$") as info:
        decode_frame(data, limits=Limits(max_decoded_bytes=4000))
    assert info.value.status == 413


def test_the_longest_acceptable_frame_sums_a_cuts_tensors():
    expect = Expectation(MODEL, {3: ((4,), (2, 2))}, max_batch_size=4)
    section = 14 + 64 + 8  # its header, the longest name, int8's parameters
    assert expect.max_frame_bytes() == 24 + (section + 8 + 64 + 1024) + (section + 12 + 64 + 1024)
    longest = encode_tensors([("a" * 64, RNG.standard_normal((4, 4)).astype(np.float32)),
                              ("b" * 64, RNG.standard_normal((4, 2, 2)).astype(np.float32))],
                             model_id=MODEL, cut=3, compression="zstd")
    assert len(longest) <= expect.max_frame_bytes()
    limits = Limits(max_body_bytes=1 << 20)
    assert SKIPS.max_frame_bytes(limits) == 1 << 20 and SKIPS.max_frame_bytes() == Limits().max_body_bytes


def test_oversize_body_is_refused_before_parsing():
    with pytest.raises(FrameError, match=r"frame of \d+ bytes exceeds max_body_bytes=1000"):
        decode_frame(GOOD, limits=Limits(max_body_bytes=1000))


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_decompression_bomb_is_refused(compression):
    # a tiny payload that inflates to 64 MiB, declared as one 7x7x24 tensor
    import zstandard
    import lz4.block

    bomb = bytes(64 * 1024 * 1024)
    payload = zstandard.ZstdCompressor().compress(bomb) if compression == "zstd" else \
        lz4.block.compress(bomb, store_size=False)
    frame = _with_payload(GOOD[:HEAD], payload, 2 * 24 * 7 * 7 * 4, {"zstd": 1, "lz4": 2}[compression])
    del bomb
    tracemalloc.start()
    with pytest.raises(FrameError, match=rf"{compression} payload does not decompress to the declared 9408 bytes"):
        decode_frame(frame, expect=EXPECT)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # nothing near the 64 MiB the payload inflates to


def test_corrupt_compressed_and_jpeg_payloads():
    data = bytearray(encode_frame(X, model_id=MODEL, cut=5, compression="zstd"))
    data[-5] ^= 0xFF
    with pytest.raises(FrameError, match=r"checksum mismatch"):
        decode_frame(bytes(data))
    compressed = encode_frame(X, model_id=MODEL, cut=5, compression="zstd")
    truncated = _with_payload(compressed[:HEAD], compressed[HEAD:-10], X.nbytes)
    with pytest.raises(FrameError, match=r"zstd payload does not decompress to the declared 9408 bytes"):
        decode_frame(truncated)
    image = RNG.integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    jpeg = encode_frame(image, model_id=MODEL, cut=0, codec="jpeg")
    wrong_size = _recrc(_patch(jpeg, SHAPE_AT + 8, "<II", 32, 32))  # claims 32x32
    with pytest.raises(FrameError, match=r"jpeg is 16×16, the frame declares 32×32"):
        decode_frame(wrong_size)
    garbage = jpeg[:HEAD] + bytes(len(jpeg) - HEAD - 2) + b"\xff\xd9"
    with pytest.raises(FrameError, match=r"jpeg payload cannot be decoded"):
        decode_frame(_recrc(garbage))
    two = encode_tensors([("x", X), ("image", image)], model_id=MODEL, cut=0, codec=["raw", "jpeg"])
    with pytest.raises(FrameError, match=r"^tensor 2 of 2 'image': jpeg payload cannot be decoded"):
        decode_frame(_recrc(two[:len(two) - len(jpeg) + HEAD] + bytes(len(jpeg) - HEAD - 2) + b"\xff\xd9"))


def test_encoding_errors():
    with pytest.raises(FrameError, match="model id must be 8 bytes, got 3"):
        encode_frame(X, model_id=b"abc", cut=0)
    with pytest.raises(FrameError, match="cut id must be 0..65535, got 70000"):
        encode_frame(X, model_id=MODEL, cut=70000)
    with pytest.raises(FrameError, match="raw frames carry float32, float16, uint8 or int32, not int64"):
        encode_frame(np.zeros(3, dtype=np.int64), model_id=MODEL, cut=0)
    with pytest.raises(FrameError, match="unknown codec 'png'"):
        encode_frame(X, model_id=MODEL, cut=0, codec="png")
    with pytest.raises(FrameError, match="unknown compression 'gzip'"):
        encode_frame(X, model_id=MODEL, cut=0, compression="gzip")


@pytest.mark.parametrize("named,message", [
    ([], r"^a frame carries 1 to 64 tensors, got 0$"),
    ([(f"t{i}", X[:1]) for i in range(MAX_TENSORS + 1)], r"^a frame carries 1 to 64 tensors, got 65$"),
    ([("a", X), ("a", X)], r"^tensor 2 of 2: duplicate tensor name 'a'$"),
    ([("", X), ("b", X)], r"^tensor 1 of 2: the empty name is only for a frame of one tensor$"),
    ([("é" * 33, X)], r"^tensor 1 of 1: name of 66 bytes is longer than 64$"),
    ([("a\nb", X)], r"^tensor 1 of 1: name 'a\\nb' contains a control character$"),
    ([("\ud800", X)], r"^tensor 1 of 1: name '\\ud800' is not valid UTF-8 \(surrogates not allowed\)$"),
    ([(1, X)], r"^tensor 1 of 1: a name is a str, not int$"),
    ([("a", X), ("b", np.zeros(3, np.int64))], r"^tensor 2 of 2 'b': raw frames carry float32, float16, uint8 or "
                                               r"int32, not int64$"),
])
def test_names_and_counts_are_checked_when_encoding(named, message):
    with pytest.raises(FrameError, match=message):
        encode_tensors(named, model_id=MODEL, cut=0)


def test_dtypes_are_checked_per_cut():
    image = np.zeros((1, 3, 16, 16), np.uint8)
    assert decode_frame(encode_frame(image, model_id=MODEL, cut=0), expect=EXPECT).array.dtype == np.uint8
    with pytest.raises(FrameError, match=r"dtype uint8 is not accepted at cut 5 \(accepted: float16, float32\)") as info:
        decode_frame(encode_frame(np.zeros((1, 24, 7, 7), np.uint8), model_id=MODEL, cut=5), expect=EXPECT)
    assert info.value.status == 422


def test_a_flipped_bit_in_the_cut_id_is_caught():
    """Cut 4 has cut 5's shape: only the header's checksum tells the two apart (v1 ran the wrong tail)."""
    expect = Expectation(MODEL, {4: (24, 7, 7), 5: (24, 7, 7)})
    with pytest.raises(FrameError, match=r"checksum mismatch"):
        decode_frame(_patch(GOOD, CUT_AT, "<H", 4), expect=expect)
    assert decode_frame(_recrc(_patch(GOOD, CUT_AT, "<H", 4)), expect=expect).cut == 4  # a true cut 4 frame


INT8 = encode_frame(X, model_id=MODEL, cut=5, codec="int8")


@pytest.mark.parametrize("scale,zero_point,message", [
    (0.0, 0, r"int8 scale 0 with zero point 0 does not decode to finite float32 \(the scale must be at least "
             r"1\.175e-38 and at most 1\.334e\+36\)"),
    (-1.0, 0, r"int8 scale -1 with zero point 0 does not decode"),
    (float("nan"), 0, r"int8 scale nan with zero point 0 does not decode"),
    (float("inf"), 0, r"int8 scale inf with zero point 0 does not decode"),
    (1e-40, 0, r"int8 scale 1e-40 with zero point 0 does not decode"),  # subnormal
    (3e36, 128, r"int8 scale 3e\+36 with zero point 128 does not decode .* at most 2\.658e\+36\)"),
    (0.1, -1, r"int8 zero point must be in 0\.\.255, got -1"),
    (0.1, 256, r"int8 zero point must be in 0\.\.255, got 256"),
])
def test_int8_parameters_are_validated(scale, zero_point, message):
    with pytest.raises(FrameError, match=message):
        decode_frame(_recrc(_patch(INT8, HEAD, "<fi", scale, zero_point)), expect=EXPECT)


@pytest.mark.parametrize("zero_point", [0, 128, 255])
def test_the_largest_int8_scale_decodes_to_finite_floats(zero_point):
    scale = np.float32(FLOAT32_MAX / max(zero_point, 255 - zero_point))
    scale = scale if scale * max(zero_point, 255 - zero_point) <= FLOAT32_MAX else np.nextafter(scale, np.float32(0))
    codes = INT8[:HEAD + 8] + bytes([0, 255]) * (len(INT8[HEAD + 8:]) // 2)
    q = decode_frame(_recrc(_patch(codes, HEAD, "<fi", scale, zero_point)), expect=EXPECT).array
    assert np.isfinite(q).all() and np.abs(q).max() > 3e38


@pytest.mark.parametrize("values,message", [
    ([np.nan, 1.0], r"int8 frames carry finite values only: this tensor has 1 NaN or infinite"),
    ([np.inf, 0.0, -np.inf], r"int8 frames carry finite values only: this tensor has 2 NaN or infinite"),
    ([-FLOAT32_MAX, FLOAT32_MAX], r"a tensor spanning \[-3\.403e\+38, 3\.403e\+38\] exceeds what int8 frames carry: "
                                  r"use fp32"),
])
def test_int8_encoding_refuses_what_it_cannot_carry(values, message):
    with pytest.raises(FrameError, match=message):
        encode_frame(np.array(values, np.float32), model_id=MODEL, cut=5, codec="int8")


@pytest.mark.parametrize("values,error", [([0.0, 1e-45], 1e-38), ([-3e38, 3e38], 1.001 * 6e38 / 255 / 2)])  # half a step
def test_int8_encodes_extreme_finite_values_to_a_valid_frame(values, error):
    x = np.array(values, np.float32)
    assert np.abs(decode_frame(encode_frame(x, model_id=MODEL, cut=5, codec="int8")).array - x).max() <= error


def test_a_jpeg_larger_than_its_image_allows_is_refused():
    image = RNG.integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    jpeg = encode_frame(image, model_id=MODEL, cut=0, codec="jpeg")
    padded = _with_payload(jpeg[:HEAD], jpeg[HEAD:] + bytes(max_jpeg_bytes(16, 16) + 1 - (len(jpeg) - HEAD)))
    with pytest.raises(FrameError, match=r"jpeg of 67073 bytes for a 16×16 image: at most 67072 bytes") as info:
        decode_frame(padded, expect=EXPECT)
    assert info.value.status == 413


def _with_jpeg(payload: bytes, side: int = 16) -> bytes:
    return _with_payload(encode_frame(np.zeros((1, 3, side, side), np.uint8), model_id=MODEL, cut=0,
                                      codec="jpeg")[:HEAD], payload)


def test_progressive_and_truncated_jpegs_are_refused():
    import io

    from PIL import Image

    image = Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    progressive, baseline = io.BytesIO(), io.BytesIO()
    image.save(progressive, format="JPEG", progressive=True)
    image.save(baseline, format="JPEG")
    with pytest.raises(FrameError, match=r"jpeg payload is progressive: only baseline JPEG is accepted"):
        decode_frame(_with_jpeg(progressive.getvalue()), expect=EXPECT)
    with pytest.raises(FrameError, match=r"jpeg payload is truncated: it does not end with the end-of-image marker"):
        decode_frame(_with_jpeg(baseline.getvalue()[:-40]), expect=EXPECT)
    assert decode_frame(_with_jpeg(baseline.getvalue()), expect=EXPECT).array.shape == (1, 3, 16, 16)


def test_a_jpeg_frame_accepts_jpeg_only():
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (16, 16)).save(png, format="PNG")
    with pytest.raises(FrameError, match=r"jpeg payload cannot be decoded \(cannot identify image file"):
        decode_frame(_with_jpeg(png.getvalue() + b"\xff\xd9"), expect=EXPECT)  # a PNG with a JPEG's last bytes


def test_decoded_length_is_capped_whatever_the_shape():
    with pytest.raises(FrameError, match=r"decoded length 9408 exceeds max_decoded_bytes=9000") as info:
        decode_frame(GOOD, limits=Limits(max_decoded_bytes=9000))
    assert info.value.status == 413


def test_an_uncompressed_payload_must_be_its_decoded_length():
    jpeg = encode_frame(np.zeros((1, 3, 16, 16), np.uint8), model_id=MODEL, cut=0, codec="jpeg")
    with pytest.raises(FrameError, match=r"uncompressed payload of \d+ bytes, but the decoded length says 5"):
        decode_frame(_recrc(_patch(jpeg, DECODED_AT, "<I", 5)))


def test_a_frame_claiming_more_than_its_cut_allows_allocates_nothing_near_its_claim():
    """8 KB of zstd that declares 256 MiB of float32: refused by the cut's shape before decompressing."""
    import zstandard

    payload = zstandard.ZstdCompressor().compress(bytes(8 * 1024 * 1024))
    frame = _with_payload(_patch(GOOD[:HEAD], SHAPE_AT, "<4I", 1 << 10, 1 << 10, 8, 8), payload, 256 << 20, 1)
    tracemalloc.start()
    with pytest.raises(FrameError, match=r"batch of 1024 exceeds max_batch_size=8"):
        decode_frame(frame, expect=EXPECT)
    with pytest.raises(FrameError, match=r"zstd payload does not decompress to the declared 268435456 bytes \(8388608\)"):
        decode_frame(frame)  # no expectation: the payload's real 8 MiB, not the claimed 256
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 1024 * 1024


def test_the_longest_acceptable_frame_is_a_full_batch_of_float32_at_the_largest_cut():
    expect = Expectation(MODEL, {5: (24, 7, 7), 0: (3, 64, 64)}, max_batch_size=8)
    raw = 8 * 3 * 64 * 64 * 4
    assert expect.max_frame_bytes() == 24 + 14 + 64 + 4 * 4 + 8 + raw + raw // 128 + 1024  # the longest name
    noise = RNG.standard_normal((8, 3, 64, 64)).astype(np.float32)
    for compression in ("none", "zstd", "lz4"):  # noise: the compressors' worst case
        assert len(encode_tensors([("n" * 64, noise)], model_id=MODEL, cut=0,
                                  compression=compression)) <= expect.max_frame_bytes()
    one_small_image = Expectation(MODEL, {0: (3, 16, 16)}, max_batch_size=1)  # a JPEG may be longer than raw
    assert one_small_image.max_frame_bytes() == 24 + 14 + 64 + 16 + 8 + max_jpeg_bytes(16, 16)


# answers of any structure

class _TensorLike:
    """What a torch tensor offers numpy: ``__array__``."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __array__(self, dtype=None, copy=None):
        return self.array


MASKS = RNG.standard_normal((1, 21, 8, 8)).astype(np.float32)
BOXES = RNG.standard_normal((1, 5, 4)).astype(np.float32)


@pytest.mark.parametrize("tree,names", [
    (MASKS, [""]),
    ({"out": MASKS}, ["out"]),
    ({"out": MASKS, "aux": MASKS[:, :3]}, ["out", "aux"]),
    ({"boxes": BOXES, "levels": [MASKS, {"p3": MASKS[:, :1], "p4": [BOXES, BOXES[:, :2]]}]},
     ["boxes", "levels/0", "levels/1/p3", "levels/1/p4/0", "levels/1/p4/1"]),
    ([BOXES, BOXES[:, :1]], ["0", "1"]),
])
def test_trees_flatten_to_named_tensors_and_back(tree, names):
    named = flatten_tree(tree)
    assert [name for name, _ in named] == names
    frame = decode_frame(encode_tensors(named, model_id=MODEL, cut=OUTPUT_CUT))
    rebuilt = unflatten_tree(frame.named)

    def same(a, b) -> bool:
        if isinstance(a, dict):
            return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
        return isinstance(b, np.ndarray) and np.array_equal(a, b)

    assert same(tree, rebuilt)


def test_tuples_come_back_as_lists_and_array_likes_as_arrays():
    named = flatten_tree({"pair": (BOXES, _TensorLike(MASKS))})
    assert [name for name, _ in named] == ["pair/0", "pair/1"] and isinstance(named[1][1], np.ndarray)
    rebuilt = unflatten_tree(named)
    assert isinstance(rebuilt["pair"], list) and np.array_equal(rebuilt["pair"][1], MASKS)
    assert unflatten_tree([("10", BOXES), ("2", BOXES)]).keys() == {"10", "2"}  # not 0..n-1: a dict


@pytest.mark.parametrize("tree,message", [
    ({"a/b": MASKS}, r"^the root: dict key 'a/b' cannot be a name's segment \(a non-empty str without '/'\)$"),
    ({"a": {"": MASKS}}, r"^a: dict key '' cannot be a name's segment"),
    ({1: MASKS}, r"^the root: dict key 1 cannot be a name's segment"),
    ({"a": [MASKS, "text"]}, r"^a/1: a str is not an array; leaves must be arrays$"),
    ({"a": {}}, r"^a: an empty dict carries no tensor$"),
    ([], r"^the root: an empty list carries no tensor$"),
])
def test_trees_that_do_not_flatten(tree, message):
    with pytest.raises(FrameError, match=message):
        flatten_tree(tree)


@pytest.mark.parametrize("named,message", [
    ([("a", MASKS), ("a/b", MASKS)], r"^conflicting tensor names 'a' and 'a/b': 'a' is an array, not a container$"),
    ([("a/b", MASKS), ("a", MASKS)], r"^conflicting tensor names 'a' and 'a/b': 'a' is a container, not an array$"),
    ([("a", MASKS), ("a", MASKS)], r"^duplicate tensor name 'a'$"),
    ([("a//b", MASKS)], r"^tensor name 'a//b' has an empty segment$"),
    ([("", MASKS), ("b", MASKS)], r"^tensor name '' has an empty segment$"),
    ([], r"^no tensors to unflatten$"),
])
def test_names_that_do_not_unflatten(named, message):
    with pytest.raises(FrameError, match=message):
        unflatten_tree(named)
