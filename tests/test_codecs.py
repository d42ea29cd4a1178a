"""Split and input codecs: what each keeps of a tensor, the bytes it sends, and what a receiver refuses."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgesplit.codecs import (ENTROPY_CODED, PROFILED_CODECS, SPLIT_CODEC_NAMES, input_codec, payload_length,
                              split_codec, split_codec_costs)
from edgesplit.errors import EdgesplitError, FrameError
from edgesplit.wire import decode_frame, encode_frame, frame_checksum

MODEL = bytes(8)
RNG = np.random.default_rng(0)
# 6 channels of very different ranges: what per-channel codecs are for
TENSOR = (RNG.standard_normal((2, 6, 5, 7)) * np.array([0.01, 0.1, 1, 10, 100, 3]).reshape(1, 6, 1, 1)).astype(np.float32)


def channel_range(x: np.ndarray) -> np.ndarray:
    flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    return (flat.max(1) - flat.min(1)).reshape(1, -1, 1, 1)


def test_fp32_is_bit_exact_with_and_without_compression():
    for spec in ("fp32", "fp32:zstd", "fp32:lz4"):
        decoded, sent = split_codec(spec).roundtrip(TENSOR)
        assert decoded.dtype == np.float32 and np.array_equal(decoded, TENSOR)
        assert split_codec(spec).exact
    assert split_codec("fp32").roundtrip(TENSOR)[1] == TENSOR.size * 4


def test_each_lossy_codec_keeps_what_it_says():
    half, _ = split_codec("fp16").roundtrip(TENSOR)
    assert half.dtype == np.float16 and np.all(np.abs(half - TENSOR) <= np.abs(TENSOR) * 2.0 ** -11 + 6e-8)
    brain, _ = split_codec("bf16").roundtrip(TENSOR)
    assert brain.dtype == np.float32 and np.all(np.abs(brain - TENSOR) <= np.abs(TENSOR) * 2.0 ** -8)
    tensor_wide, _ = split_codec("int8").roundtrip(TENSOR)
    span = float(max(TENSOR.max(), 0) - min(TENSOR.min(), 0))
    assert np.abs(tensor_wide - TENSOR).max() <= span / 510 * 1.0001
    per_channel, _ = split_codec("int8c").roundtrip(TENSOR)
    assert np.all(np.abs(per_channel - TENSOR) <= channel_range(TENSOR) / 510 * 1.0001 + 1e-7)
    # the small channels are what per-channel codecs save: int8 over the whole tensor rounds them away
    assert np.abs(per_channel - TENSOR)[:, 0].max() < np.abs(tensor_wide - TENSOR)[:, 0].max() / 100
    four, _ = split_codec("int4c").roundtrip(TENSOR)
    # uniform rounding over the whole range would give range / (15 √12) ≈ range / 52; clipping does better
    assert np.all(np.sqrt(((four - TENSOR) ** 2).mean(axis=(0, 2, 3))) <= channel_range(TENSOR).ravel() / 50)


@pytest.mark.parametrize("spec", ["int4c", "int5c", "int6c"])
def test_packed_codecs_clip_an_outlier_rather_than_spend_their_levels_on_it(spec: str):
    x = np.zeros((1, 1, 40, 50), np.float32)
    x[0, 0] = np.linspace(-1, 1, 2000).reshape(40, 50)
    x[0, 0, 0, 0] = 40.0  # one value far out
    decoded, _ = split_codec(spec).roundtrip(x)
    unclipped_step = 41 / 15
    assert np.abs(decoded - x).ravel()[1:].max() < unclipped_step / 4  # the rest keeps fine levels


def test_bf16_rounds_to_nearest_even_and_keeps_nan_and_inf():
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, np.inf, -np.inf, np.nan, 3.0e38, -0.0], np.float32)
    decoded, sent = split_codec("bf16").roundtrip(x)
    assert sent == 16
    assert decoded[:3].tolist() == [1.0, 1.0, 1 + 4 * 2 ** -8]  # ties go to the even neighbour
    assert decoded[3] == np.inf and decoded[4] == -np.inf and np.isnan(decoded[5])
    assert np.isfinite(decoded[6]) and np.signbit(decoded[7])


@pytest.mark.parametrize("spec", SPLIT_CODEC_NAMES)
def test_payload_bytes_are_what_the_frame_carries_uncompressed(spec: str):
    codec = split_codec(spec)
    for shape in ((2, 6, 5, 7), (1, 1280), (1, 3, 1, 1), (1, 5, 3)):
        x = RNG.standard_normal(shape).astype(np.float32)
        frame = encode_frame(x.astype(codec.dtype), model_id=MODEL, cut=0, codec=codec.wire)  # uncompressed
        assert payload_length(frame) == codec.payload_bytes(shape)
        assert spec in ENTROPY_CODED or codec.roundtrip(x)[1] == codec.payload_bytes(shape)
    assert {s: split_codec(s).payload_bytes((1, 40, 28, 28)) for s in SPLIT_CODEC_NAMES} == {
        "fp32": 125440, "fp16": 62720, "bf16": 62720, "int8": 31360, "int8c": 31360 + 320, "int6c": 23520 + 320,
        "int5c": 19600 + 320, "int4c": 15680 + 320, "ecq6": 31360 + 80, "ecq5": 31360 + 80, "ecq4": 31360 + 80}
    # a feature vector, pooled or flat, is one channel: per-channel parameters would outweigh it
    assert split_codec("int8c").payload_bytes((1, 1280, 1, 1)) == split_codec("int8c").payload_bytes((1, 1280)) == 1288


def test_compression_shrinks_a_sparse_int8_tensor_and_decodes_to_the_same_values():
    x = np.maximum(RNG.standard_normal((1, 16, 14, 14)), 0).astype(np.float32)  # half zeros, as after a ReLU
    plain, plain_bytes = split_codec("int8").roundtrip(x)
    packed, packed_bytes = split_codec("int8:zstd").roundtrip(x)
    assert np.array_equal(plain, packed) and packed_bytes < 0.8 * plain_bytes


@pytest.mark.parametrize("spec, message", [
    ("ecq5:zstd", "codec 'ecq5:zstd': ecq5 is zstd-compressed already; write ecq5"),
    ("ecq5:lz4", "codec 'ecq5:lz4': ecq5 is zstd-compressed already; write ecq5"),
    ("int9", "unknown codec 'int9'; did you mean 'int8' or 'int8c' or 'int6c'?"),
    ("int8:gzip", "codec 'int8:gzip': the argument names a lossless compression: zstd or lz4, not 'gzip'"),
    ("int8:zstd:3", "malformed codec 'int8:zstd:3': write NAME or NAME:ARG"),
    ("int8:", "malformed codec 'int8:': write NAME or NAME:ARG"),
    ("jpeg", "(an image crosses as offload:raw or offload:jpeg:Q)"),
])
def test_a_malformed_codec_spec_says_what_is_wrong(spec: str, message: str):
    with pytest.raises(EdgesplitError) as error:
        split_codec(spec)
    assert message in str(error.value)


def test_input_codecs_parse_one_grammar():
    assert input_codec("raw").exact and input_codec("jpeg:90").quality == 90 and not input_codec("jpeg:90").exact
    for spec in ("jpeg", "jpeg:0", "jpeg:101", "jpeg:x", "jpeg90", "png:9"):
        with pytest.raises(EdgesplitError, match="input codec"):
            input_codec(spec)
    image = RNG.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    frame = decode_frame(input_codec("raw").frame(image, model_id=MODEL))
    assert frame.codec == "raw" and np.array_equal(frame.array[0], image)
    assert decode_frame(input_codec("jpeg:50").frame(image, model_id=MODEL)).codec == "jpeg"


def test_codec_costs_measure_bytes_on_the_given_tensors():
    values = [TENSOR[:1], TENSOR[1:]]
    costs = split_codec_costs(values)
    assert set(costs) == set(PROFILED_CODECS)
    assert costs["int8"]["bytes"] == TENSOR[:1].size and costs["int4c"]["bytes"] == (TENSOR[:1].size + 1) // 2 + 48
    assert costs["int5c"]["bytes"] == (TENSOR[:1].size * 5 + 7) // 8 + 48
    assert all(c["encode_s"] > 0 and c["decode_s"] > 0 for c in costs.values())
    assert split_codec_costs([]) == {}


def _refit(frame: bytes, payload: bytes) -> bytes:
    """``frame`` with another (uncompressed) payload of the same length, checksum fixed up."""
    body = bytearray(frame[:len(frame) - len(payload)] + payload)
    struct.pack_into("<I", body, 20, frame_checksum(body))
    return bytes(body)


def _per_channel_frame(spec: str, shape: tuple[int, ...]) -> tuple[bytes, int]:
    frame = encode_frame(RNG.standard_normal(shape).astype(np.float32), model_id=MODEL, cut=1, codec=spec)
    return frame, payload_length(frame)


@pytest.mark.parametrize("spec", ["int8c", "int6c", "int5c", "int4c"])
@pytest.mark.parametrize("low, step, message", [
    (np.nan, 0.1, "parameters must be finite with steps >= 0"),
    (0.0, -0.1, "parameters must be finite with steps >= 0"),
    (0.0, np.inf, "parameters must be finite with steps >= 0"),
    (3.0e38, 1.0e37, "parameters do not decode to finite float32"),
])
def test_per_channel_parameters_that_do_not_decode_finite_are_refused(spec, low, step, message):
    frame, length = _per_channel_frame(spec, (1, 2, 3, 3))
    payload = bytearray(frame[-length:])
    struct.pack_into("<ff", payload, 0, low, 0.0)  # both lows
    struct.pack_into("<ff", payload, 8, step, 0.1)  # both steps
    with pytest.raises(FrameError, match=f"{spec} {message}"):
        decode_frame(_refit(frame, bytes(payload)))


@pytest.mark.parametrize("spec", ["int4c", "int5c", "int6c"])
def test_packed_padding_bits_must_be_zero(spec: str):
    frame, length = _per_channel_frame(spec, (1, 1, 1, 3))  # 3 codes of 4-6 bits: the last byte has padding
    payload = bytearray(frame[-length:])
    payload[-1] |= 0x01
    with pytest.raises(FrameError, match=f"{spec} padding bits must be 0"):
        decode_frame(_refit(frame, bytes(payload)))


@pytest.mark.parametrize("spec, bits", [("int4c", 4), ("int5c", 5), ("int6c", 6)])
def test_packed_codes_round_trip_every_level(spec: str, bits: int):
    levels = 2 ** bits - 1
    x = np.arange(levels + 1, dtype=np.float32).reshape(1, 1, 1, -1)  # one channel, every level once
    decoded, sent = split_codec(spec).roundtrip(x)
    assert np.array_equal(decoded, x) and sent == 8 + ((levels + 1) * bits + 7) // 8


def test_a_per_channel_frame_whose_length_disagrees_with_its_shape_is_refused_before_decoding():
    frame, length = _per_channel_frame("int8c", (1, 2, 3, 3))
    body = bytearray(frame)
    struct.pack_into("<I", body, 34, length + 1)  # the decoded length
    struct.pack_into("<I", body, 20, frame_checksum(body))
    with pytest.raises(FrameError, match=r"int8c frame of shape \(1, 2, 3, 3\) carries 34 payload bytes, the "
                                         r"header says 35"):
        decode_frame(bytes(body))


@pytest.mark.parametrize("spec", ["int8c", "int5c", "int4c"])
def test_non_finite_tensors_are_refused_by_the_encoder(spec: str):
    x = TENSOR.copy()
    x[0, 2, 1, 1] = np.nan
    with pytest.raises(FrameError, match=f"{spec} frames carry finite values only: this tensor has 1 NaN"):
        split_codec(spec).roundtrip(x)


def _step(frame: bytes) -> float:
    """The step an ecqN frame of one 4-d tensor carries (its header parameter, after the shape)."""
    return struct.unpack_from("<f", frame, 38 + 16)[0]


@pytest.mark.parametrize("spec, bits", [("ecq6", 6), ("ecq5", 5), ("ecq4", 4)])
def test_entropy_coded_quantisation_sends_about_its_bits_and_errs_by_half_a_step_at_most(spec: str, bits: int):
    rng = np.random.default_rng(1)
    scales = np.array([0.5, 1.0, 1.5, 2.0]).reshape(1, 4, 1, 1)
    x = (rng.standard_normal((1, 4, 64, 64)) * scales + np.array([0, 3, -7, 100]).reshape(1, 4, 1, 1)).astype(np.float32)
    codec = split_codec(spec)
    frame = codec.frame(x, model_id=MODEL, cut=0)
    decoded = decode_frame(frame).array
    step = _step(frame)
    rms_deviation = float(np.sqrt((scales ** 2).mean()))
    assert step == pytest.approx(2.0 ** (2.05 - bits) * rms_deviation, rel=0.02)  # one step, from the spread
    assert np.abs(decoded - x).max() <= step / 2 * 1.0001 + 1e-5  # nothing clipped, however far a mean lies
    sent_bits = 8 * payload_length(frame) / x.size
    assert bits - 0.25 <= sent_bits <= bits + 0.25, sent_bits  # zstd brings the codes near their entropy
    assert not codec.exact and codec.compression == "zstd"


def test_entropy_coded_quantisation_coarsens_its_step_rather_than_clip_an_outlier():
    x = np.zeros((1, 2, 40, 50), np.float32)
    x[0, :] = np.linspace(-1, 1, 2000).reshape(40, 50)
    x[0, 1, 0, 0] = 400.0  # 127 steps of the spread's step would not reach it
    frame = split_codec("ecq5").frame(x, model_id=MODEL, cut=0)
    decoded, step = decode_frame(frame).array, _step(frame)
    assert step > 2.0 ** (2.05 - 5) * x.std(axis=(0, 2, 3)).max()  # coarser than the spread asks
    assert abs(decoded[0, 1, 0, 0] - 400.0) <= step / 2 * 1.0001 and np.abs(decoded - x).max() <= step / 2 * 1.0001


def test_entropy_coded_quantisation_of_zeros_and_of_a_feature_vector():
    zeros = np.zeros((1, 8, 3, 3), np.float32)
    decoded, sent = split_codec("ecq4").roundtrip(zeros)
    assert np.array_equal(decoded, zeros) and sent < 30  # 16 B of offsets and 72 zero codes, compressed
    vector = RNG.standard_normal((1, 1280)).astype(np.float32)
    frame = encode_frame(vector, model_id=MODEL, cut=0, codec="ecq6")
    assert payload_length(frame) == 2 + 1280  # one channel: one offset


@pytest.mark.parametrize("step, message", [
    (np.nan, "ecq5 step nan does not decode to finite float32"),
    (0.0, "ecq5 step 0 does not decode to finite float32"),
    (-0.5, "ecq5 step -0.5 does not decode to finite float32"),
    (np.inf, "ecq5 step inf does not decode to finite float32"),
    (3.0e35, "ecq5 step 3e\\+35 does not decode to finite float32"),
])
def test_an_entropy_coded_step_that_does_not_decode_finite_is_refused(step: float, message: str):
    frame = encode_frame(TENSOR[:1], model_id=MODEL, cut=1, codec="ecq5", compression="zstd")
    body = bytearray(frame)
    struct.pack_into("<f", body, 38 + 16, step)
    struct.pack_into("<I", body, 20, frame_checksum(body))
    with pytest.raises(FrameError, match=message):
        decode_frame(bytes(body))


def test_entropy_coded_quantisation_refuses_non_finite_and_too_wide_tensors():
    x = TENSOR.copy()
    x[0, 2, 1, 1] = np.inf
    with pytest.raises(FrameError, match="ecq6 frames carry finite values only: this tensor has 1 NaN or infinite"):
        split_codec("ecq6").roundtrip(x)
    with pytest.raises(FrameError, match="exceeds what ecq6 frames carry: use fp32"):
        split_codec("ecq6").roundtrip(np.array([[-3e38, 3e38]], np.float32))
