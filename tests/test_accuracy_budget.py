"""An accuracy budget: options carry their measured agreement, --min-agreement keeps those that meet it."""

from __future__ import annotations

import json

import pytest
from test_latency import device_profile, server_profile

from edgesplit.errors import EdgesplitError, ProfileError
from edgesplit.latency import build_options
from edgesplit.policies import allowed_options
from edgesplit.profile import load_profile, read_agreement, with_agreement

FIDELITY = {"model": "tiny", "images": 20, "augmented": 500, "results": [
    {"cut": "input", "codec": "raw", "agreement": 1.0},
    {"cut": "input", "codec": "jpeg:90", "agreement": 0.81},
    {"cut": "c1", "codec": "fp32", "agreement": 1.0},
    {"cut": "c1", "codec": "int8", "agreement": 0.995},
    {"cut": "c1", "codec": "fp16", "agreement": 1.0},
    {"cut": "c2", "codec": "int8", "agreement": 0.97},
]}


def names(options) -> list[str]:
    return [o.name for o in options]


def test_agreements_are_read_by_option_name(tmp_path):
    path = tmp_path / "fidelity.json"
    path.write_text(json.dumps(FIDELITY))
    assert read_agreement(path) == {"offload:raw": 1.0, "offload:jpeg:90": 0.81, "split:c1:fp32": 1.0,
                                    "split:c1:int8": 0.995, "split:c1:fp16": 1.0, "split:c2:int8": 0.97}


def test_a_segmentation_models_budget_reads_its_pixel_agreement(tmp_path):
    path = tmp_path / "fidelity.json"
    path.write_text(json.dumps({"results": [{"cut": "c1", "codec": "int8", "pixel_agreement": 0.992, "miou": 0.9},
                                            {"cut": "input", "codec": "raw", "pixel_agreement": 1.0}]}))
    assert read_agreement(path) == {"split:c1:int8": 0.992, "offload:raw": 1.0}


@pytest.mark.parametrize("text, message", [
    ("{", "is not a fidelity.json of edgesplit fidelity (JSONDecodeError"),
    ('{"results": [{"cut": "c1"}]}', "is not a fidelity.json of edgesplit fidelity (KeyError: 'codec')"),
    ('{"results": [{"cut": "c1", "codec": "int8", "agreement": 1.5}]}',
     "the agreement of split:c1:int8 must be in [0, 1], got 1.5"),
    ('{"results": [{"cut": "c1", "codec": "int8", "agreement": "x"}]}', "ValueError"),
])
def test_a_broken_fidelity_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "fidelity.json"
    path.write_text(text)
    with pytest.raises(ProfileError) as error:
        read_agreement(path)
    assert message in str(error.value)
    with pytest.raises(ProfileError, match="cannot read fidelity results"):
        read_agreement(tmp_path / "missing.json")


def test_options_carry_their_agreement_and_the_budget_keeps_those_that_meet_it(tmp_path):
    path = tmp_path / "fidelity.json"
    path.write_text(json.dumps(FIDELITY))
    device = with_agreement(device_profile(), read_agreement(path))
    options = build_options(device, server_profile(), codecs=("fp32", "fp16", "int8"))
    agreement = {o.name: o.agreement for o in options}
    assert agreement == {"local": 1.0, "offload:raw": 1.0, "offload:jpeg:90": 0.81, "split:c1:fp32": 1.0,
                         "split:c1:fp16": 1.0, "split:c1:int8": 0.995, "split:c2:fp32": 1.0,
                         "split:c2:fp16": None, "split:c2:int8": 0.97}  # c2 fp16 was not measured
    assert names(allowed_options(options, private=False, lossy=False, min_agreement=0.99)) == [
        "local", "offload:raw", "split:c1:fp32", "split:c1:fp16", "split:c1:int8", "split:c2:fp32"]
    assert names(allowed_options(options, private=True, lossy=False, min_agreement=0.8)) == [
        "local", "split:c1:fp32", "split:c1:fp16", "split:c1:int8", "split:c2:fp32", "split:c2:int8"]
    assert names(allowed_options(options, private=False, lossy=False)) == [
        "local", "offload:raw", "split:c1:fp32", "split:c2:fp32"]  # without a budget: exact only, as before
    # the profile keeps them through its file
    device.save(tmp_path / "device.json")
    assert load_profile(tmp_path / "device.json").agreement == device.agreement


def test_jpeg_offload_can_be_kept_out_of_the_dynamic_policies_reach(tmp_path):
    """The demo and the fleet let JPEG offload compete only under a budget: without one, their dynamic policies
    may pick lossy splits but not JPEG (far less faithful), and a policy may still name it."""
    path = tmp_path / "fidelity.json"
    path.write_text(json.dumps(FIDELITY))
    options = build_options(with_agreement(device_profile(), read_agreement(path)), server_profile(),
                            codecs=("fp32", "int8"))
    assert names(allowed_options(options, private=False, lossy=True, jpeg=False)) == [
        "local", "offload:raw", "split:c1:fp32", "split:c1:int8", "split:c2:fp32", "split:c2:int8"]
    assert "offload:jpeg:90" in names(allowed_options(options, private=False, lossy=True))
    assert names(allowed_options(options, private=False, lossy=True, min_agreement=0.8)) == [
        "local", "offload:raw", "offload:jpeg:90", "split:c1:fp32", "split:c1:int8", "split:c2:fp32",
        "split:c2:int8"]  # under a budget JPEG competes: 0.81 >= 0.8
    assert "offload:jpeg:90" not in names(allowed_options(options, private=False, lossy=True, min_agreement=0.9))


def test_a_budget_without_any_measured_agreement_says_where_to_get_one():
    options = build_options(device_profile(), server_profile(), codecs=("fp32", "int8"))
    with pytest.raises(EdgesplitError, match=r"--min-agreement needs measured agreements, and none of the 3 lossy "
                                             r"options has one: pass --fidelity FILE"):
        allowed_options(options, private=False, lossy=False, min_agreement=0.99)
    exact_only = build_options(device_profile(), server_profile(), codecs=("fp32",), jpeg=False)
    assert names(allowed_options(exact_only, private=False, lossy=False, min_agreement=0.99)) == names(exact_only)


def test_a_compression_the_profile_did_not_measure_is_priced_as_its_codec_without_it():
    options = {o.name: o for o in build_options(device_profile(), server_profile(), codecs=("int8", "int8:lz4",
                                                                                             "fp32:lz4"))}
    plain, packed = options["split:c1:int8"], options["split:c1:int8:lz4"]
    assert (packed.bytes, packed.encode_s, packed.decode_s) == (plain.bytes, plain.encode_s, plain.decode_s)
    assert (options["split:c1:fp32:lz4"].bytes, options["split:c1:fp32:lz4"].encode_s) == (40_000, 0.0)
