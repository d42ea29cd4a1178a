"""The paper's grid (``edgesplit grid``) on hand-made profiles whose answers follow by hand.

Every time is linear in the batch size, so each cell's winner depends on the rate only. Per input: the
device runs the whole model in 1 s; split ``a`` (1 MB crossing) costs 0.1 s of head and 0.010 s of tail,
split ``c`` (0.1 MB) 0.3 s and 0.001 s; so at r MB/s, a takes 0.11 + 1/r and c 0.301 + 0.1/r: c wins
up to 4 MB/s, a from 5 MB/s on. Cut ``b`` is larger than ``a`` and comes after it: not record-low, so the
seed's option set leaves it out. Raw offload (0.75 MB of uint8, 0.011 s on the server) beats both splits
from 3 MB/s on.
"""

import json
from dataclasses import replace

import numpy as np
import pytest

from edgesplit.errors import EdgesplitError, ProfileError
from edgesplit.profile import CutProfile, Profile, Timing
from edgesplit.sim.grid import PAPER_RATES_MBPS, grid_variants, record_low_cuts, sweep
from test_cli import run

INPUT_SHAPE = (3, 500, 500)  # 750,000 elements
CUTS = {"a": (1, 250_000), "b": (2, 400_000), "c": (3, 25_000)}  # name: (index, elements)
HEAD_S = {"a": 0.1, "b": 0.2, "c": 0.3}  # device, per input
TAIL_S = {"a": 0.010, "b": 0.005, "c": 0.001}  # server, per input
RATES = PAPER_RATES_MBPS


def _timings(per_input_s: float) -> dict[int, Timing]:
    return {b: Timing(per_input_s * b, per_input_s * b, per_input_s * b, 3) for b in (1, 64)}


def _profile(role: str) -> Profile:
    whole, head, tail = (1.0, HEAD_S, {n: 1.0 - s for n, s in HEAD_S.items()}) if role == "device" else \
        (0.011, {n: 0.011 - s for n, s in TAIL_S.items()}, TAIL_S)
    cuts = {n: CutProfile(n, i, e, _timings(head[n]), _timings(tail[n]), {}) for n, (i, e) in CUTS.items()}
    codecs = {"raw": {"bytes": 750_000, "encode_s": 0.0, "decode_s": 0.0},
              "jpeg:90": {"bytes": 75_000, "encode_s": 0.0, "decode_s": 0.0}}
    return Profile("hand-made", role, INPUT_SHAPE, (1, 64), "per-node", 1.0, {}, _timings(whole), cuts, codecs, 4000)


def _gain(static: np.ndarray, best: np.ndarray) -> dict[str, float]:
    gain = (static - best) / static
    return {"mean": pytest.approx(float(gain.mean())), "max": pytest.approx(float(gain.max()))}


def test_record_low_cuts_follow_the_papers_rule():
    assert record_low_cuts(_profile("server")) == ["a", "c"]


def test_seed_prices_local_and_the_record_low_splits_only():
    (seed,) = grid_variants(_profile("device"), _profile("server"), "seed")
    assert seed.names == ["local", "split:a:fp32", "split:c:fp32"]
    data = seed.to_dict()
    assert data["split_share"] == 1.0 and data["share"] == {"local": 0.0, "offload": 0.0, "split": 1.0}
    assert data["best_counts"] == {"split:a:fp32": 123 * 62, "split:c:fp32": 4 * 62}
    a, c = 0.11 + 1 / RATES, 0.301 + 0.1 / RATES
    best = np.minimum(a, c)
    assert data["dynamic_gain"] == {"local": _gain(np.ones_like(RATES), best), "split:a:fp32": _gain(a, best),
                                    "split:c:fp32": _gain(c, best)}
    assert data["dynamic_gain"]["split:a:fp32"]["max"] == pytest.approx((1.11 - 0.401) / 1.11)
    assert data["best_static"] == "split:a:fp32"
    assert data["moves_with_rate"] == 1.0 and data["moves_with_batch"] == 0.0


def test_all_adds_raw_offload_every_cut_and_then_rtt_and_jpeg():
    plain, rtt = grid_variants(_profile("device"), _profile("server"), "all", rtt_ms=40)
    assert plain.names == ["local", "offload:raw", "split:a:fp32", "split:b:fp32", "split:c:fp32"]
    assert rtt.names == ["local", "offload:raw", "offload:jpeg:90", "split:a:fp32", "split:b:fp32", "split:c:fp32"]
    # c (0.301 + 0.1/r) against raw offload (0.011 + 0.75/r): c up to 2 MB/s, offload from 3 MB/s
    assert plain.best_counts() == {"offload:raw": 125 * 62, "split:c:fp32": 2 * 62}
    assert plain.best_static() == "offload:raw"
    # 40 ms once per batch of B: JPEG (0.011 + 0.075/r per input) wins every cell
    assert rtt.best_counts() == {"offload:jpeg:90": 127 * 62}
    assert rtt.seconds[rtt.names.index("offload:jpeg:90"), 0, 0] == pytest.approx(0.04 + 0.011 + 0.075)


def test_bad_option_sets_and_settings_are_refused():
    device, server = _profile("device"), _profile("server")
    with pytest.raises(EdgesplitError, match="unknown option set 'paper'; known: seed, all"):
        grid_variants(device, server, "paper")
    with pytest.raises(EdgesplitError, match="--rtt-ms applies to --options all"):
        grid_variants(device, server, "seed", rtt_ms=40)
    with pytest.raises(EdgesplitError, match="--rtt-ms must be finite"):
        grid_variants(device, server, "all", rtt_ms=float("nan"))
    with pytest.raises(ProfileError, match="do not both have the cut 'z'"):
        sweep(device, server, name="x", title="x", cuts=["z"])
    with pytest.raises(ProfileError, match="no input codec 'jpeg:75'"):
        sweep(device, server, name="x", title="x", offload=("jpeg:75",))
    short = replace(server, batch_sizes=(1, 8))
    with pytest.raises(ProfileError, match="goes up to batch size 8 but 62 is needed"):
        grid_variants(device, short, "seed")
    assert grid_variants(device, short, "seed", extrapolate_batches=True)[0].best_counts() == \
        {"split:a:fp32": 123 * 62, "split:c:fp32": 4 * 62}
    wide = replace(server, cuts={"b": server.cuts["b"]}, input_shape=(3, 100, 100))  # b: c > 1
    with pytest.raises(ProfileError, match="share no record-low cut"):
        grid_variants(device, wide, "seed")


@pytest.fixture
def profile_files(tmp_path):
    for role in ("device", "server"):
        _profile(role).save(tmp_path / f"{role}.json")
    return tmp_path


def test_cli_writes_the_documented_json(profile_files, monkeypatch, capsys):
    files = ["--device-profile", str(profile_files / "device.json"),
             "--server-profile", str(profile_files / "server.json")]
    for option_set, names in (("seed", ["seed"]), ("all", ["no-rtt", "rtt-40ms"])):
        out = profile_files / f"{option_set}.json"
        code, stdout, err = run(monkeypatch, capsys, "grid", *files, "--options", option_set, "--json", str(out))
        assert code == 0, err
        data = json.loads(out.read_text())
        assert data["options"] == option_set and [v["name"] for v in data["variants"]] == names
        for variant in data["variants"]:
            assert {"name", "options", "split_share", "best_static", "dynamic_gain"} <= set(variant)
            assert set(variant["dynamic_gain"]) == set(variant["options"])
        assert "best static" in stdout
    code, stdout, err = run(monkeypatch, capsys, "grid", *files)  # seed is the default
    assert code == 0 and "seed: local + fp32 splits" in stdout and "offload:raw" not in stdout
    assert "split:a:fp32" in stdout  # printed as text, not as rich's :a: emoji


@pytest.mark.parametrize("args,message", [
    (["--options", "paper"], "'paper' is not one of 'seed', 'all'"),
    (["--rtt-ms", "40"], "--rtt-ms applies to --options all"),
    (["--options", "all", "--rtt-ms", "-1"], "-1.0 is not in the range x>=0"),
])
def test_cli_refuses_bad_options(profile_files, monkeypatch, capsys, args, message):
    code, _, err = run(monkeypatch, capsys, "grid", "--device-profile", str(profile_files / "device.json"),
                       "--server-profile", str(profile_files / "server.json"), *args)
    assert code == 2 and message in err
