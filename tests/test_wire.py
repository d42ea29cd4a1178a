"""The wire format: exact round trips, and a clear FrameError for every kind of bad frame."""

import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from edgesplit.codecs import FLOAT32_MAX, dequantize_int8, max_jpeg_bytes, quantize_int8
from edgesplit.wire import OUTPUT_CUT, Expectation, Limits, decode_frame, encode_frame, frame_checksum
from edgesplit.errors import FrameError

MODEL = bytes.fromhex("0123456789abcdef")
RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 24, 7, 7)).astype(np.float32)
EXPECT = Expectation(MODEL, {5: (24, 7, 7), 0: (3, 16, 16)}, max_batch_size=8,
                     dtypes={0: frozenset({"float32", "uint8"})})


@pytest.mark.parametrize("compression", ["none", "zstd", "lz4"])
def test_raw_fp32_round_trip_is_bit_exact(compression):
    data = encode_frame(X, model_id=MODEL, cut=5, compression=compression)
    frame = decode_frame(data, expect=EXPECT)
    assert frame.array.dtype == np.float32 and frame.array.shape == X.shape
    assert np.array_equal(frame.array, X) and frame.cut == 5 and frame.model_id == MODEL
    assert frame.codec == "raw" and frame.compression == compression


def test_header_layout_and_sizes():
    data = encode_frame(X, model_id=MODEL, cut=5)
    assert len(data) == 32 + 4 * 4 + X.nbytes
    assert data[:4] == b"ESPL" and data[4] == 2 and data[5] == 1 and data[6] == 0 and data[7] == 0
    assert struct.unpack_from("<H8sII", data, 10) == (5, MODEL, X.nbytes, X.nbytes)
    # the checksum covers the header and the payload, all but its own 4 bytes
    assert struct.unpack_from("<I", data, 28)[0] == zlib.crc32(data[32:], zlib.crc32(data[:28]))
    assert struct.unpack_from("<4I", data, 32) == (2, 24, 7, 7)


def test_fp16_and_int8_are_close_and_smaller():
    half = decode_frame(encode_frame(X.astype(np.float16), model_id=MODEL, cut=5))
    assert half.array.dtype == np.float16 and np.allclose(half.array, X, atol=2e-3)
    data = encode_frame(X, model_id=MODEL, cut=5, codec="int8")
    assert len(data) == 32 + 16 + 8 + X.size
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


GOOD = encode_frame(X, model_id=MODEL, cut=5)


def _recrc(data: bytes) -> bytes:
    return _patch(data, 28, "<I", frame_checksum(data))


@pytest.mark.parametrize("data,message", [
    (b"", r"truncated frame: 0 bytes, the header alone needs 32"),
    (GOOD[:20], r"truncated frame: 20 bytes"),
    (GOOD[:40], r"truncated frame: 40 bytes, the header and shape need 48"),
    (GOOD[:-1], r"frame length mismatch: \d+ bytes, the header says \d+"),
    (GOOD + b"x", r"frame length mismatch"),
    (b"GIF8" + GOOD[4:], r"not an edgesplit frame: magic b'GIF8', expected b'ESPL'"),
    (_patch(GOOD, 4, "<B", 3), r"unsupported frame version 3; this side speaks version 2 only$"),
    (_patch(GOOD, 4, "<B", 1), r"unsupported frame version 1; this side speaks version 2 only \(version 1 "
                               r"checksummed only the payload: update the sender\)"),
    (_patch(GOOD, 5, "<B", 9), r"unknown dtype code 9"),
    (_patch(GOOD, 6, "<B", 8), r"unknown codec code 8"),
    (_patch(GOOD, 7, "<B", 5), r"unknown compression code 5"),
    (_patch(GOOD, 8, "<B", 0), r"ndim must be 1..8, got 0"),
    (_patch(GOOD, 8, "<B", 9), r"ndim must be 1..8, got 9"),
    (_patch(GOOD, 9, "<B", 1), r"unknown flags 0x01"),
    (_patch(GOOD, 32, "<I", 0), r"has an empty dimension"),
    (_patch(GOOD, 32, "<I", 3), r"decoded length 9408 does not match shape \(3, 24, 7, 7\) of float32"),
    (_patch(GOOD, 32, "<I", 4_000_000_000), r"more than max_elements"),
    (_patch(GOOD, 5, "<B", 2), r"decoded length 9408 does not match shape .* of float16"),
    (GOOD[:-4] + b"\x00\x00\x00\x00", r"checksum mismatch: the frame was corrupted in transit"),
    (_patch(GOOD, 28, "<I", zlib.crc32(GOOD[48:])), r"checksum mismatch"),  # a version 1 checksum
    (_patch(GOOD, 12, "<B", GOOD[12] ^ 1), r"checksum mismatch"),  # the model id
    (_recrc(_patch(GOOD, 20, "<I", 9000)), r"frame length mismatch"),
    (bytes(RNG.integers(0, 256, 300, dtype=np.uint8)), r"not an edgesplit frame"),
])
def test_malformed_frames(data, message):
    with pytest.raises(FrameError, match=message):
        decode_frame(data, expect=EXPECT)


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
    data = bytearray(GOOD[:48])
    data[7] = {"zstd": 1, "lz4": 2}[compression]
    struct.pack_into("<II", data, 20, len(payload), 2 * 24 * 7 * 7 * 4)
    frame = _recrc(bytes(data) + payload)
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
    truncated = encode_frame(X, model_id=MODEL, cut=5, compression="zstd")[:-10]
    truncated = _patch(truncated, 20, "<I", struct.unpack_from("<I", truncated, 20)[0] - 10)
    with pytest.raises(FrameError, match=r"zstd payload does not decompress to the declared 9408 bytes"):
        decode_frame(_recrc(truncated))
    image = RNG.integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    jpeg = encode_frame(image, model_id=MODEL, cut=0, codec="jpeg")
    wrong_size = _recrc(_patch(jpeg, 40, "<II", 32, 32))  # claims 32x32
    with pytest.raises(FrameError, match=r"jpeg is 16×16, the frame declares 32×32"):
        decode_frame(wrong_size)
    garbage = jpeg[:48] + bytes(len(jpeg) - 50) + b"\xff\xd9"
    with pytest.raises(FrameError, match=r"jpeg payload cannot be decoded"):
        decode_frame(_recrc(garbage))


def test_encoding_errors():
    with pytest.raises(FrameError, match="model id must be 8 bytes, got 3"):
        encode_frame(X, model_id=b"abc", cut=0)
    with pytest.raises(FrameError, match="cut id must be 0..65535, got 70000"):
        encode_frame(X, model_id=MODEL, cut=70000)
    with pytest.raises(FrameError, match="raw frames carry float32, float16 or uint8, not int64"):
        encode_frame(np.zeros(3, dtype=np.int64), model_id=MODEL, cut=0)
    with pytest.raises(FrameError, match="unknown codec 'png'"):
        encode_frame(X, model_id=MODEL, cut=0, codec="png")
    with pytest.raises(FrameError, match="unknown compression 'gzip'"):
        encode_frame(X, model_id=MODEL, cut=0, compression="gzip")


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
        decode_frame(_patch(GOOD, 10, "<H", 4), expect=expect)
    assert decode_frame(_recrc(_patch(GOOD, 10, "<H", 4)), expect=expect).cut == 4  # a true cut 4 frame


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
        decode_frame(_recrc(_patch(INT8, 48, "<fi", scale, zero_point)), expect=EXPECT)


@pytest.mark.parametrize("zero_point", [0, 128, 255])
def test_the_largest_int8_scale_decodes_to_finite_floats(zero_point):
    scale = np.float32(FLOAT32_MAX / max(zero_point, 255 - zero_point))
    scale = scale if scale * max(zero_point, 255 - zero_point) <= FLOAT32_MAX else np.nextafter(scale, np.float32(0))
    frame = _recrc(_patch(INT8[:56] + bytes([0, 255]) * (len(INT8[56:]) // 2), 48, "<fi", scale, zero_point))
    q = decode_frame(frame, expect=EXPECT).array
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
    padded = jpeg + bytes(max_jpeg_bytes(16, 16) + 1 - (len(jpeg) - 48))
    padded = _recrc(_patch(padded, 20, "<II", len(padded) - 48, len(padded) - 48))
    with pytest.raises(FrameError, match=r"jpeg of 67073 bytes for a 16×16 image: at most 67072 bytes") as info:
        decode_frame(padded, expect=EXPECT)
    assert info.value.status == 413


def _with_jpeg(payload: bytes, side: int = 16) -> bytes:
    frame = encode_frame(np.zeros((1, 3, side, side), np.uint8), model_id=MODEL, cut=0, codec="jpeg")[:48] + payload
    return _recrc(_patch(frame, 20, "<II", len(payload), len(payload)))


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
        decode_frame(_recrc(_patch(jpeg, 24, "<I", 5)))


def test_a_frame_claiming_more_than_its_cut_allows_allocates_nothing_near_its_claim():
    """8 KB of zstd that declares 256 MiB of float32: refused by the cut's shape before decompressing."""
    import zstandard

    payload = zstandard.ZstdCompressor().compress(bytes(8 * 1024 * 1024))
    data = bytearray(GOOD[:48])
    data[7] = 1
    struct.pack_into("<4I", data, 32, 1 << 10, 1 << 10, 8, 8)
    struct.pack_into("<II", data, 20, len(payload), 256 << 20)
    frame = _recrc(bytes(data) + payload)
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
    assert expect.max_frame_bytes() == 32 + 4 * 4 + 8 + raw + raw // 128 + 1024
    noise = RNG.standard_normal((8, 3, 64, 64)).astype(np.float32)
    for compression in ("none", "zstd", "lz4"):  # noise: the compressors' worst case
        assert len(encode_frame(noise, model_id=MODEL, cut=0, compression=compression)) <= expect.max_frame_bytes()
    one_small_image = Expectation(MODEL, {0: (3, 16, 16)}, max_batch_size=1)  # a JPEG may be longer than raw
    assert one_small_image.max_frame_bytes() == 32 + 16 + 8 + max_jpeg_bytes(16, 16)
