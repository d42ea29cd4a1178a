"""The latency model and profiles: options built from hand-made profiles, latency term by term,
tail times between and beyond profiled batch sizes, and every profile-file error."""

from __future__ import annotations

import json
import math

import pytest

from edgesplit.errors import EdgesplitError
from edgesplit.latency import (LinkState, Option, ServerState, build_options, find_option, hedged_latency, latency,
                               queue_met, rest_on_device)
from edgesplit.errors import ProfileError
from edgesplit.profile import CutProfile, Profile, Timing, load_profile, with_slowdown

MBPS = 1e6


def T(median: float) -> Timing:
    return Timing(median, median * 0.9, median * 1.1, 5)


def device_profile(**changes) -> Profile:
    """A made-up device: the whole model 0.3 s; cut c1 after 0.1 s (10000 elements), c2 after 0.25 s."""
    fields = dict(
        model="tiny", role="device", input_shape=(3, 10, 10), batch_sizes=(1,), method="per-node",
        slowdown=1.0, machine={"cpu": "made-up"}, model_s={1: T(0.3)},
        cuts={
            "x": CutProfile("x", 0, 300, {1: T(0.0)}, {1: T(0.3)}, {}),
            "c1": CutProfile("c1", 2, 10_000, {1: T(0.1)}, {1: T(0.2)},
                             {"fp16": {"encode_s": 0.002, "decode_s": 0.001},
                              "int8": {"encode_s": 0.004, "decode_s": 0.003}}),
            "c2": CutProfile("c2", 5, 2_500, {1: T(0.25)}, {1: T(0.05)},
                             {"fp16": {"encode_s": 0.0005, "decode_s": 0.0002},
                              "int8": {"encode_s": 0.001, "decode_s": 0.0006}}),
        },
        input_codecs={"raw": {"bytes": 300, "encode_s": 0.0, "decode_s": 0.0},
                      "jpeg:90": {"bytes": 120.4, "encode_s": 0.003, "decode_s": 0.002}},
        output_bytes=4000, flops_per_s={1: 2e9},
    )
    fields.update(changes)
    return Profile(**fields)


def server_profile(**changes) -> Profile:
    """A made-up server, profiled at batch sizes 1 and 4: ten times faster than the device."""
    fields = dict(
        model="tiny", role="server", input_shape=(3, 10, 10), batch_sizes=(1, 4), method="per-node",
        slowdown=1.0, machine={"cpu": "made-up server"}, model_s={1: T(0.03), 4: T(0.06)},
        cuts={
            "x": CutProfile("x", 0, 300, {1: T(0.0), 4: T(0.0)}, {1: T(0.03), 4: T(0.06)}, {}),
            "c1": CutProfile("c1", 2, 10_000, {1: T(0.01), 4: T(0.02)}, {1: T(0.02), 4: T(0.05)},
                             {"fp16": {"encode_s": 0.0002, "decode_s": 0.0001},
                              "int8": {"encode_s": 0.0004, "decode_s": 0.0003}}),
            "c2": CutProfile("c2", 5, 2_500, {1: T(0.025), 4: T(0.05)}, {1: T(0.005), 4: T(0.012)},
                             {"fp16": {"encode_s": 0.00005, "decode_s": 0.00002},
                              "int8": {"encode_s": 0.0001, "decode_s": 0.00006}}),
        },
        input_codecs={"raw": {"bytes": 300, "encode_s": 0.0, "decode_s": 0.0005},
                      "jpeg:90": {"bytes": 120.4, "encode_s": 0.0003, "decode_s": 0.0007}},
        output_bytes=4000, flops_per_s={1: 2e10, 4: 4e10},
    )
    fields.update(changes)
    return Profile(**fields)


ALL_CODECS = ("fp32", "fp16", "int8")


def by_name(options: list[Option]) -> dict[str, Option]:
    return {o.name: o for o in options}


# --- build_options ----------------------------------------------------------------------------------


def test_default_options_are_local_offload_and_each_common_cut_in_fp32():
    options = build_options(device_profile(), server_profile())
    # the cut at the input (index 0) is offload:raw, not a split
    assert [o.name for o in options] == ["local", "offload:raw", "offload:jpeg:90", "split:c1:fp32", "split:c2:fp32"]
    assert [o.kind for o in options] == ["local", "offload", "offload", "split", "split"]
    assert [o.cut for o in options] == [None, None, None, "c1", "c2"]


def test_local_is_the_whole_model_on_the_device():
    local = build_options(device_profile(), server_profile())[0]
    assert local == Option("local", "local", None, "-", 0.3, 0.0, 0, 0.0, {}, 0, True, agreement=1.0)


def test_offload_options_price_the_input_codecs():
    options = by_name(build_options(device_profile(), server_profile()))
    raw, jpeg = options["offload:raw"], options["offload:jpeg:90"]
    # raw: 300 uint8 bytes, nothing to encode, normalised on the server; the server runs the whole model
    assert (raw.head_s, raw.encode_s, raw.bytes, raw.decode_s) == (0.0, 0.0, 300, 0.0005)
    assert raw.tail_s == {1: 0.03, 4: 0.06}
    assert raw.result_bytes == 4000 and raw.codec == "raw" and raw.exact
    # JPEG: encoded on the device (the device's time, not the server's), mean size rounded, lossy
    assert (jpeg.encode_s, jpeg.bytes, jpeg.decode_s) == (0.003, 120, 0.0007)
    assert jpeg.tail_s == {1: 0.03, 4: 0.06} and not jpeg.exact


def test_split_bytes_are_elements_times_the_codec_width():
    options = by_name(build_options(device_profile(), server_profile(), codecs=ALL_CODECS))
    assert [o.name for o in options.values()][3:] == [
        "split:c1:fp32", "split:c1:fp16", "split:c1:int8", "split:c2:fp32", "split:c2:fp16", "split:c2:int8"]
    assert {name: o.bytes for name, o in options.items() if o.kind == "split"} == {
        "split:c1:fp32": 40_000, "split:c1:fp16": 20_000, "split:c1:int8": 10_000,
        "split:c2:fp32": 10_000, "split:c2:fp16": 5_000, "split:c2:int8": 2_500}
    assert {name: o.exact for name, o in options.items()} == {
        "local": True, "offload:raw": True, "offload:jpeg:90": False,
        "split:c1:fp32": True, "split:c1:fp16": False, "split:c1:int8": False,
        "split:c2:fp32": True, "split:c2:fp16": False, "split:c2:int8": False}


def test_split_times_come_from_the_right_profile():
    options = by_name(build_options(device_profile(), server_profile(), codecs=ALL_CODECS))
    fp32, fp16, int8 = options["split:c1:fp32"], options["split:c1:fp16"], options["split:c1:int8"]
    assert (fp32.head_s, fp32.encode_s, fp32.decode_s) == (0.1, 0.0, 0.0)  # fp32 needs no conversion
    assert (fp16.head_s, fp16.encode_s, fp16.decode_s) == (0.1, 0.002, 0.0001)  # encode: device, decode: server
    assert (int8.encode_s, int8.decode_s) == (0.004, 0.0003)
    assert fp32.tail_s == {1: 0.02, 4: 0.05}  # the server's tail, not the device's
    assert options["split:c2:fp16"].head_s == 0.25 and options["split:c2:fp16"].tail_s == {1: 0.005, 4: 0.012}
    assert fp32.result_bytes == 4000


def test_codecs_filter_the_split_options():
    names = [o.name for o in build_options(device_profile(), server_profile(), codecs=("int8",))]
    assert names == ["local", "offload:raw", "offload:jpeg:90", "split:c1:int8", "split:c2:int8"]


def test_cuts_choose_which_cuts_and_jpeg_false_drops_jpeg():
    names = [o.name for o in build_options(device_profile(), server_profile(), cuts=["c2", "x"], jpeg=False)]
    assert names == ["local", "offload:raw", "split:c2:fp32"]  # the input cut x is never a split


def test_only_cuts_in_both_profiles_are_split_options():
    server = server_profile()
    server = server_profile(cuts={"c2": server.cuts["c2"]})
    assert [o.name for o in build_options(device_profile(), server)] == [
        "local", "offload:raw", "offload:jpeg:90", "split:c2:fp32"]


def test_a_requested_cut_missing_from_a_profile_is_an_error():
    with pytest.raises(ProfileError, match=r"the device profile of tiny has no cut 'c9'; it has x, c1, c2"):
        build_options(device_profile(), server_profile(), cuts=["c9"])


def test_private_drops_offload():
    options = build_options(device_profile(), server_profile(), codecs=ALL_CODECS, private=True)
    assert [o.name for o in options] == ["local", "split:c1:fp32", "split:c1:fp16", "split:c1:int8",
                                         "split:c2:fp32", "split:c2:fp16", "split:c2:int8"]
    assert all(o.kind != "offload" for o in options)


def test_private_without_a_cut_leaves_nothing_to_choose():
    with pytest.raises(EdgesplitError, match="local is the only option"):
        build_options(device_profile(), server_profile(), cuts=[], private=True)


def test_profiles_of_different_models_do_not_mix():
    with pytest.raises(ProfileError, match=r"the device profile is of tiny \[3, 10, 10\] but the server profile "
                                           r"of other \[3, 10, 10\]"):
        build_options(device_profile(), server_profile(model="other"))


def test_profiles_of_different_input_shapes_do_not_mix():
    with pytest.raises(ProfileError, match=r"tiny \[3, 10, 10\] but the server profile of tiny \[3, 20, 20\]"):
        build_options(device_profile(), server_profile(input_shape=(3, 20, 20)))


def test_an_unknown_codec_is_an_error_naming_the_known_ones():
    with pytest.raises(EdgesplitError, match=r"unknown codec 'bf61'; did you mean 'bf16'\? "
                                             r"\(known: bf16, ecq4, ecq5, ecq6, fp16, fp32, int4c, int5c, int6c, int8, "
                                             r"int8c\)"):
        build_options(device_profile(), server_profile(), codecs=("fp32", "bf61"))
    with pytest.raises(EdgesplitError, match=r"codec 'int8:gzip': the argument names a lossless compression: "
                                             r"zstd or lz4, not 'gzip'"):
        build_options(device_profile(), server_profile(), codecs=("int8:gzip",))


def test_a_codec_the_profile_did_not_measure_is_an_error_saying_to_profile_again():
    with pytest.raises(ProfileError, match=r"the device profile of tiny did not measure codec 'bf16' at c1 "
                                           r"\(it has fp16, int8\); profile again"):
        build_options(device_profile(), server_profile(), codecs=("fp32", "bf16"))


# --- latency ----------------------------------------------------------------------------------------

LINK = LinkState(uplink_bps=8 * MBPS, rtt_s=0.05, downlink_bps=32 * MBPS)
BUSY = ServerState(queue_wait_s=0.02, batch_size=1)


@pytest.fixture(scope="module")
def options() -> dict[str, Option]:
    return by_name(build_options(device_profile(), server_profile(), codecs=ALL_CODECS))


def test_latency_of_local_is_the_device_time_whatever_the_link(options):
    assert latency(options["local"], LINK, BUSY) == 0.3
    assert latency(options["local"], LinkState(1.0), ServerState(100.0, 8)) == 0.3


def test_latency_of_a_split_term_by_term(options):
    # head 0.1 + encode 0 + 40000 B at 8 Mbit/s (0.04) + rtt 0.05 + wait 0.02 + tail(1) 0.02 + decode 0
    # + result 4000 B at 32 Mbit/s (0.001)
    assert latency(options["split:c1:fp32"], LINK, BUSY) == pytest.approx(0.231, abs=1e-12)
    # in a batch of 3 the tail is interpolated between the profiled batches 1 (0.02) and 4 (0.05): 0.04
    assert latency(options["split:c1:fp32"], LINK, ServerState(0.02, 3)) == pytest.approx(0.251, abs=1e-12)
    # fp16: encode 0.002 + 20000 B (0.02) + decode 0.0001
    assert latency(options["split:c1:fp16"], LINK, BUSY) == pytest.approx(
        0.1 + 0.002 + 0.02 + 0.05 + 0.02 + 0.02 + 0.0001 + 0.001, abs=1e-12)
    # int8: encode 0.004 + 10000 B (0.01) + decode 0.0003
    assert latency(options["split:c1:int8"], LINK, BUSY) == pytest.approx(0.2053, abs=1e-12)


def test_latency_of_offload_term_by_term(options):
    # head 0 + encode 0 + 300 B (0.0003) + rtt 0.05 + wait 0.02 + whole model 0.03 + normalise 0.0005 + 0.001
    assert latency(options["offload:raw"], LINK, BUSY) == pytest.approx(0.1018, abs=1e-12)
    # JPEG: encode 0.003 + 120 B (0.00012) + rtt + wait + 0.03 + decode 0.0007 + 0.001
    assert latency(options["offload:jpeg:90"], LINK, BUSY) == pytest.approx(0.10482, abs=1e-12)


def test_the_wait_is_the_reported_one_aged_to_the_requests_arrival(options):
    split = options["split:c1:fp32"]
    # the frame reaches the server 0.1 (head) + 0.04 (upload) + 0.025 (half the RTT) = 0.165 s after the decision;
    # the report is 0.2 s old then and the queue grew 0.5 s per second: 0.02 + 0.5 × (0.2 + 0.165)
    growing = ServerState(0.02, growth=0.5, age_s=0.2)
    assert queue_met(split, LINK, growing) == pytest.approx(0.02 + 0.5 * 0.365, abs=1e-12)
    assert latency(split, LINK, growing) == pytest.approx(0.231 + 0.5 * 0.365, abs=1e-12)
    # a draining queue (nothing arrives: -1 s per second) is empty by then, never negative
    assert queue_met(split, LINK, ServerState(0.02, growth=-1.0, age_s=0.2)) == 0.0
    assert latency(split, LINK, ServerState(0.02, growth=-1.0, age_s=0.2)) == pytest.approx(0.211, abs=1e-12)
    # without a growth (a server that does not report its offered load) the report is taken as it is
    assert queue_met(split, LINK, ServerState(0.02, age_s=5.0)) == 0.02
    # never below the waits the device's own requests met lately
    assert queue_met(split, LINK, ServerState(0.02, growth=-1.0, age_s=0.2, met_s=0.07)) == 0.07
    assert queue_met(split, LINK, ServerState(0.02, growth=0.5, age_s=0.2, met_s=0.07)) == pytest.approx(0.2025)


def test_post_processing_counts_once_where_it_runs():
    # a detector's boxes: 20 ms on the device after a local run, 4 ms on the server after the tail
    options = by_name(build_options(device_profile(answer_s=0.02), server_profile(answer_s=0.004)))
    local, split, raw = options["local"], options["split:c1:fp32"], options["offload:raw"]
    assert latency(local, LINK, BUSY) == pytest.approx(0.3 + 0.02, abs=1e-12)
    assert latency(split, LINK, BUSY) == pytest.approx(0.231 + 0.004, abs=1e-12)  # term by term as above
    assert latency(raw, LINK, BUSY) == pytest.approx(0.1018 + 0.004, abs=1e-12)
    # the server's compute scale measures its tails, not its post-processing: the tail (0.02) doubles, alone
    assert latency(split, LINK, ServerState(0.02, compute_scale=2.0)) == pytest.approx(0.231 + 0.02 + 0.004, abs=1e-12)
    # a device that finishes the split itself runs the tail and its own post-processing: 0.2 + 0.02
    assert rest_on_device(split, local.head_s) == pytest.approx(0.22, abs=1e-12)


def test_latency_without_rtt_load_or_downlink_cost_is_compute_plus_upload(options):
    assert latency(options["split:c2:fp32"], LinkState(4 * MBPS), ServerState()) == pytest.approx(
        0.25 + 10_000 * 8 / 4e6 + 0.005, abs=1e-12)
    assert LinkState(1.0).downlink_bps == math.inf and LinkState(1.0).rtt_s == 0.0


def test_latency_scales_with_the_uplink(options):
    slow = latency(options["split:c1:fp32"], LinkState(1 * MBPS, 0.05, 32 * MBPS), BUSY)
    fast = latency(options["split:c1:fp32"], LINK, BUSY)
    assert slow - fast == pytest.approx(40_000 * 8 / 1e6 - 40_000 * 8 / 8e6, abs=1e-12)  # 0.32 - 0.04


def test_tail_at_interpolates_between_profiled_batch_sizes(options):
    split = options["split:c1:fp32"]  # tail 0.02 at batch 1, 0.05 at batch 4: 0.01 more per item between
    assert [split.tail_at(b) for b in (1, 2, 3, 4)] == pytest.approx([0.02, 0.03, 0.04, 0.05], abs=1e-15)
    assert options["offload:raw"].tail_at(2) == pytest.approx(0.04)  # 0.03 + (0.06 - 0.03) / 3


def test_tail_at_below_the_smallest_profiled_batch_is_the_smallest():
    option = Option("split:c:fp32", "split", "c", "fp32", 0.0, 0.0, 4, 0.0, {2: 0.2, 8: 0.5}, 0, True)
    assert option.tail_at(1) == 0.2 and option.tail_at(5) == pytest.approx(0.35)


def test_tail_at_extrapolates_linearly_beyond_the_largest_batch(options):
    split = options["split:c1:fp32"]
    assert split.tail_at(8) == pytest.approx(0.1)  # 0.05 × 8 / 4
    assert split.tail_at(6) == pytest.approx(0.075)
    assert options["offload:raw"].tail_at(12) == pytest.approx(0.18)  # 0.06 × 12 / 4


def test_tail_at_of_local_is_zero(options):
    assert options["local"].tail_at(1) == 0.0 and options["local"].tail_at(16) == 0.0


def test_option_to_dict(options):
    assert options["split:c1:fp16"].to_dict() == {
        "name": "split:c1:fp16", "kind": "split", "cut": "c1", "codec": "fp16", "bytes": 20_000,
        "head_s": 0.1, "tail_s_batch1": 0.02, "agreement": None}


def test_find_option(options):
    listed = list(options.values())
    assert find_option(listed, "split:c2:int8") is options["split:c2:int8"]
    with pytest.raises(EdgesplitError) as error:
        find_option(listed, "split:c3:fp32")
    message = str(error.value)
    assert message.startswith("unknown option 'split:c3:fp32'; did you mean ")
    assert "'split:c2:fp32'" in message
    assert "(known: local, offload:jpeg:90, offload:raw, split:c1:fp16," in message
    assert message.endswith("split:c2:int8)")


# --- profiles ---------------------------------------------------------------------------------------


def test_profile_save_then_load_is_the_same_profile(tmp_path):
    for profile in (device_profile(), server_profile()):
        path = tmp_path / f"{profile.role}.json"
        profile.save(path)
        loaded = load_profile(path)
        assert loaded == profile
        assert loaded.input_shape == (3, 10, 10) and isinstance(loaded.input_shape, tuple)
        assert list(loaded.cuts) == ["x", "c1", "c2"]  # the order of the cuts survives


def test_loaded_profiles_build_the_same_options(tmp_path):
    device_profile().save(tmp_path / "d.json")
    server_profile().save(tmp_path / "s.json")
    assert build_options(load_profile(tmp_path / "d.json"), load_profile(tmp_path / "s.json"), codecs=ALL_CODECS) \
        == build_options(device_profile(), server_profile(), codecs=ALL_CODECS)


def test_load_profile_rejects_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "edgesplit-profile/1",')
    with pytest.raises(ProfileError, match=r"broken\.json is not a profile \(invalid JSON: "):
        load_profile(path)


def test_load_profile_rejects_another_format(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "something/2", "model": "tiny"}))
    with pytest.raises(ProfileError, match=r"other\.json is not an edgesplit profile \(format 'something/2', "
                                           r"expected 'edgesplit-profile/1'\)"):
        load_profile(path)


def test_load_profile_rejects_json_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ProfileError, match=r"list\.json is a malformed profile \(AttributeError"):
        load_profile(path)


@pytest.mark.parametrize("key", ["cuts", "model_s", "output_bytes", "input_codecs"])
def test_load_profile_names_a_missing_key(tmp_path, key):
    data = device_profile().to_dict()
    del data[key]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=rf"partial\.json is a malformed profile \(KeyError: '{key}'\)"):
        load_profile(path)


def test_load_profile_names_a_missing_timing_field(tmp_path):
    data = device_profile().to_dict()
    del data["cuts"][1]["tail_s"]["1"]["p90_s"]
    path = tmp_path / "timing.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"timing\.json is a malformed profile \(KeyError: 'p90_s'\)"):
        load_profile(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.001])
def test_load_profile_refuses_a_time_that_is_not_finite_and_positive(tmp_path, value):
    data = device_profile().to_dict()
    data["cuts"][1]["tail_s"]["1"]["median_s"] = value
    path = tmp_path / "timing.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=rf"timing\.json is a malformed profile \(a time of {value!r} s\)"):
        load_profile(path)


def test_a_profile_without_answer_s_loads_as_none_spent_and_a_bad_one_is_refused(tmp_path):
    data = device_profile(answer_s=0.02).to_dict()
    path = tmp_path / "answer.json"
    path.write_text(json.dumps(data))
    assert load_profile(path).answer_s == 0.02
    del data["answer_s"]  # written before profiles measured the post-processing
    path.write_text(json.dumps(data))
    assert load_profile(path) == device_profile() and load_profile(path).answer_s == 0.0
    for value in (float("nan"), float("inf"), -0.001):
        path.write_text(json.dumps({**data, "answer_s": value}))
        with pytest.raises(ProfileError, match=rf"answer\.json is a malformed profile \(an answer_s of {value!r} s\)"):
            load_profile(path)


def test_load_profile_of_a_missing_file(tmp_path):
    with pytest.raises(ProfileError, match=r"cannot read profile .*nowhere\.json"):
        load_profile(tmp_path / "nowhere.json")


def test_a_missing_cut_names_what_exists():
    with pytest.raises(ProfileError, match=r"the server profile of tiny has no cut 'c7'; it has x, c1, c2 "
                                           r"\(profile again with --cuts\)"):
        server_profile().cut("c7")
    with pytest.raises(ProfileError, match=r"has no cut 'c7'; it has none"):
        server_profile(cuts={}).cut("c7")


def test_tail_s_interpolates_and_names_a_missing_batch_size():
    server = server_profile()
    assert server.tail_s(None, 1) == 0.03 and server.tail_s(None, 3) == pytest.approx(0.05)  # 0.03 + 0.03 × 2/3
    assert server.tail_s("c1", 2) == pytest.approx(0.03)
    assert server.head_s("c2") == 0.025
    with pytest.raises(ProfileError, match=r"the server profile of tiny has no batch size 8 \(it has \[1, 4\]\); "
                                           r"profile again with --batch-sizes"):
        server.tail_s("c1", 8)
    with pytest.raises(ProfileError, match=r"device profile of tiny has no batch size 2 \(it has \[1\]\)"):
        device_profile().tail_s(None, 2)


def test_with_slowdown_scales_every_time_and_no_size():
    device = device_profile()
    slow = with_slowdown(device, 2.0)
    assert slow.slowdown == 2.0
    assert slow.model_s[1] == Timing(0.6, 0.27 * 2, 0.33 * 2, 5)
    c1 = slow.cuts["c1"]
    assert (c1.head_s[1].median_s, c1.head_s[1].p10_s, c1.head_s[1].p90_s) == pytest.approx((0.2, 0.18, 0.22))
    assert c1.tail_s[1].median_s == pytest.approx(0.4)
    assert c1.codec_s == {"fp16": {"encode_s": 0.004, "decode_s": 0.002},
                          "int8": {"encode_s": 0.008, "decode_s": 0.006}}
    assert slow.input_codecs == {"raw": {"bytes": 300, "encode_s": 0.0, "decode_s": 0.0},
                                 "jpeg:90": {"bytes": 120.4, "encode_s": 0.006, "decode_s": 0.004}}
    assert slow.flops_per_s == {1: 1e9}  # half the FLOP/s
    # sizes, names and everything else stay
    assert [(c.name, c.index, c.elements) for c in slow.cuts.values()] == [
        (c.name, c.index, c.elements) for c in device.cuts.values()]
    assert (slow.output_bytes, slow.model, slow.role, slow.input_shape, slow.batch_sizes, slow.machine) == (
        4000, "tiny", "device", (3, 10, 10), (1,), {"cpu": "made-up"})
    assert with_slowdown(device_profile(answer_s=0.02), 2.0).answer_s == pytest.approx(0.04)
    assert slow.cuts["c1"].head_s[1].repeats == 5
    # and the options built from it: times doubled, bytes unchanged
    options = by_name(build_options(slow, server_profile()))
    assert options["local"].head_s == pytest.approx(0.6) and options["split:c1:fp32"].head_s == pytest.approx(0.2)
    assert options["split:c1:fp32"].bytes == 40_000 and options["offload:jpeg:90"].encode_s == pytest.approx(0.006)


def test_with_slowdown_composes():
    twice = with_slowdown(with_slowdown(device_profile(), 2.0), 2.0)
    assert twice.model_s[1].median_s == pytest.approx(1.2)
    assert twice.slowdown == 4.0  # the record says what the times say
    assert with_slowdown(with_slowdown(device_profile(), 2.0), 3.0).slowdown == 6.0
    assert with_slowdown(with_slowdown(device_profile(), 2.0), 0.5).model_s == device_profile().model_s
    assert with_slowdown(with_slowdown(device_profile(), 2.0), 0.5).slowdown == 1.0


@pytest.mark.parametrize("head_s,added_s", [(0.1, 0.0), (0.01, 0.03), (0.0, 0.04)])
def test_uplink_backlog_counts_only_where_the_head_does_not_hide_it(head_s, added_s):
    option = Option("split:c:fp32", "split", "c", "fp32", head_s, 0.0, 8_000, 0.0, {1: 0.01}, 0, True)
    free = LinkState(8e6)
    busy = LinkState(8e6, backlog_bytes=40_000)  # 0.04 s of the device's earlier bytes still queued
    assert latency(option, busy, ServerState()) - latency(option, free, ServerState()) == pytest.approx(added_s)


def test_hedged_latency_is_the_first_answer_averaged_over_the_rates_given():
    split = Option("split:c:fp32", "split", "c", "fp32", 0.1, 0.01, 100_000, 0.0, {1: 0.05}, 0, True)
    link = LinkState(8e6, 0.04)
    # at 8 Mbit/s: 0.11 ready + 0.1 upload + 0.04 + 0.05 = 0.3 s; at 1 Mbit/s 1.0 s, capped at 0.5 + 0.01
    assert hedged_latency(split, link, ServerState(), 0.5) == pytest.approx(0.3)
    assert hedged_latency(split, link, ServerState(), 0.5, (8e6, 1e6)) == pytest.approx((0.3 + 0.51) / 2)
    local = Option("local", "local", None, "-", 0.5, 0.0, 0, 0.0, {}, 0, True)
    assert hedged_latency(local, link, ServerState(), 0.5, (1e6,)) == 0.5
