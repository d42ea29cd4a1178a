"""Policies on hand-built options whose crossover rates are exact binary fractions.

    local            0.5 s on the device
    offload:raw      2 Mbit (250000 B) + rtt 0.0625 + tail 0.0625        = 0.125 + 2e6 / r
    split:c:fp32     head 0.125 + 1 Mbit (125000 B) + rtt + tail         = 0.25  + 1e6 / r

so local and the split tie at r = 4 Mbit/s (0.5 s each), the split and offload at r = 8 Mbit/s
(0.375 s each): below 4 Mbit/s local wins, between them the split, above 8 Mbit/s offload.
"""

from __future__ import annotations

import copy

import pytest

from edgesplit.errors import EdgesplitError
from edgesplit.latency import LinkState, Option, ServerState
from edgesplit.policies import (
    POLICIES,
    BestStatic,
    Decision,
    DynamicSplit,
    Fixed,
    Oracle,
    State,
    allowed_options,
    argmin,
    make_policy,
)

MBPS = 1e6
RTT = 0.0625

LOCAL = Option("local", "local", None, "-", 0.5, 0.0, 0, 0.0, {}, 0, True)
RAW = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 250_000, 0.0, {1: 0.0625, 4: 0.125}, 0, True)
JPEG = Option("offload:jpeg90", "offload", None, "jpeg90", 0.0, 0.01, 50_000, 0.005, {1: 0.0625, 4: 0.125}, 0,
              False)
FP32 = Option("split:c:fp32", "split", "c", "fp32", 0.125, 0.0, 125_000, 0.0, {1: 0.0625, 4: 0.125}, 0, True)
FP16 = Option("split:c:fp16", "split", "c", "fp16", 0.125, 0.001, 62_500, 0.001, {1: 0.0625, 4: 0.125}, 0, False)
ALL = [LOCAL, RAW, JPEG, FP32, FP16]
EXACT = [LOCAL, RAW, FP32]


def state(mbps: float, wait: float = 0.0, *, actual_mbps: float | None = None,
          current_wait: float | None = None) -> State:
    return State(LinkState(mbps * MBPS, RTT), ServerState(wait),
                 None if actual_mbps is None else LinkState(actual_mbps * MBPS, RTT),
                 None if current_wait is None else ServerState(current_wait))


# --- dsc --------------------------------------------------------------------------------------------


def test_dsc_runs_locally_on_a_slow_link():
    decision = DynamicSplit().choose(state(2), EXACT)
    assert decision == Decision(LOCAL, 0.5)


def test_dsc_splits_on_a_middle_link():
    decision = DynamicSplit().choose(state(5), EXACT)
    assert decision.option is FP32
    assert decision.predicted_s == pytest.approx(0.25 + 1 / 5)


def test_dsc_offloads_on_a_fast_link():
    decision = DynamicSplit().choose(state(16), EXACT)
    assert decision == Decision(RAW, 0.25)  # 0.125 + 2e6 / 16e6


def test_dsc_local_split_crossover_is_at_4_mbps():
    dsc = DynamicSplit()
    assert dsc.choose(state(4 * (1 - 1e-9)), EXACT).option is LOCAL
    tie = dsc.choose(state(4), EXACT)
    assert tie == Decision(LOCAL, 0.5)  # an exact tie: the earlier option
    assert dsc.choose(state(4 * (1 + 1e-9)), EXACT).option is FP32
    assert dsc.choose(state(4), [FP32, LOCAL, RAW]) == Decision(FP32, 0.5)  # the earlier one, whichever it is


def test_dsc_split_offload_crossover_is_at_8_mbps():
    dsc = DynamicSplit()
    assert dsc.choose(state(8 * (1 - 1e-9)), EXACT).option is FP32
    assert dsc.choose(state(8), EXACT) == Decision(RAW, 0.375)  # tie: offload comes before the split
    assert dsc.choose(state(8), [LOCAL, FP32, RAW]) == Decision(FP32, 0.375)
    assert dsc.choose(state(8 * (1 + 1e-9)), EXACT).option is RAW


def test_dsc_weighs_the_reported_load():
    # at 16 Mbit/s offload takes 0.25 s, the split 0.3125 s; a reported wait of 0.3 s makes local best
    assert DynamicSplit().choose(state(16, wait=0.25), EXACT) == Decision(LOCAL, 0.5)  # offload ties at 0.5
    assert DynamicSplit().choose(state(16, wait=0.2), EXACT) == Decision(RAW, 0.45)
    assert DynamicSplit().choose(state(16, wait=0.3), EXACT) == Decision(LOCAL, 0.5)


def test_dsc_ignores_the_true_link_and_load():
    decision = DynamicSplit().choose(state(2, actual_mbps=100, current_wait=0.0), EXACT)
    assert decision.option is LOCAL


def test_dsc_picks_lossy_options_only_when_given_them():
    # at 8 Mbit/s: fp16 = 0.125 + 0.001 + 0.0625 + 0.0625 + 0.0625 + 0.001 = 0.314; jpeg = 0.01 + 0.05 + ...
    decision = DynamicSplit().choose(state(8), ALL)
    assert decision.option is JPEG
    assert decision.predicted_s == pytest.approx(0.01 + 0.05 + 0.0625 + 0.0625 + 0.005)
    assert DynamicSplit().choose(state(8), allowed_options(ALL, private=True, lossy=True)).option is FP16
    assert DynamicSplit().choose(state(8), allowed_options(ALL, private=False, lossy=False)).option is RAW


def test_argmin_reports_the_latency_of_its_choice():
    # in a batch of 4 both remote tails take 0.125: split 0.125 + 1/6 + 0.0625 + 0.125 = 0.479,
    # offload 1/3 + 0.0625 + 0.125 = 0.521, local 0.5
    assert argmin(EXACT, LinkState(6 * MBPS, RTT), ServerState(0.0, 4)) == Decision(
        FP32, pytest.approx(0.125 + 1 / 6 + 0.0625 + 0.125))
    # at 5 Mbit/s the batch-4 tail tips the split (0.5125) over local
    assert argmin(EXACT, LinkState(5 * MBPS, RTT), ServerState(0.0, 4)) == Decision(LOCAL, 0.5)


# --- oracle -----------------------------------------------------------------------------------------


def test_oracle_uses_the_true_rate_not_the_estimate():
    assert Oracle().choose(state(1, actual_mbps=16), EXACT) == Decision(RAW, 0.25)
    assert Oracle().choose(state(100, actual_mbps=2), EXACT) == Decision(LOCAL, 0.5)
    decision = Oracle().choose(state(100, actual_mbps=5), EXACT)
    assert decision.option is FP32 and decision.predicted_s == pytest.approx(0.45)


def test_oracle_uses_the_true_load_when_it_knows_it():
    # the server reported no wait, but 0.3 s is true now: local beats offload's 0.55
    assert Oracle().choose(state(16, wait=0.0, actual_mbps=16, current_wait=0.3), EXACT) == Decision(LOCAL, 0.5)
    # and the other way round
    assert Oracle().choose(state(16, wait=0.3, actual_mbps=16, current_wait=0.0), EXACT) == Decision(RAW, 0.25)


def test_oracle_falls_back_to_the_reported_load():
    assert Oracle().choose(state(16, wait=0.3, actual_mbps=16), EXACT) == Decision(LOCAL, 0.5)


def test_oracle_without_the_true_link_is_an_error():
    with pytest.raises(EdgesplitError, match="the oracle policy needs the true link rate"):
        Oracle().choose(state(16), EXACT)


# --- static policies --------------------------------------------------------------------------------


def test_best_static_is_fixed_at_the_mean_link_whatever_the_state():
    policy = BestStatic(LinkState(6 * MBPS, RTT))  # at 6 Mbit/s: split 0.4167, offload 0.4583, local 0.5
    for mbps, wait in [(0.5, 0.0), (4, 0.0), (1000, 0.0), (1000, 2.0)]:
        assert policy.choose(state(mbps, wait, actual_mbps=mbps), EXACT).option is FP32
    # its prediction is the latency model under the state it was given
    assert policy.choose(state(4), EXACT) == Decision(FP32, 0.5)
    assert policy.choose(state(8, wait=0.125), EXACT) == Decision(FP32, 0.5)


def test_best_static_from_make_policy_uses_the_mean_link():
    assert make_policy("best-static", LinkState(16 * MBPS, RTT)).choose(state(1), EXACT).option is RAW
    assert make_policy("best-static", LinkState(2 * MBPS, RTT)).choose(state(100), EXACT).option is LOCAL
    assert make_policy("best-static", LinkState(16 * MBPS, RTT)).name == "best-static"


@pytest.mark.parametrize("spec, name, option", [
    ("local", "local", "local"),
    ("offload", "offload", "offload:raw"),
    ("offload:jpeg90", "offload:jpeg90", "offload:jpeg90"),
    ("static:c", "static:c", "split:c:fp32"),
    ("static:split:c:fp16", "static:split:c:fp16", "split:c:fp16"),
    ("static:offload:jpeg90", "static:offload:jpeg90", "offload:jpeg90"),
    ("static:local", "static:local", "local"),
])
def test_fixed_policies_resolve_their_option(spec, name, option):
    policy = make_policy(spec, LinkState(MBPS))
    assert isinstance(policy, Fixed)
    assert (policy.name, policy.option_name) == (name, option)
    for mbps in (0.1, 5, 1000):
        assert policy.choose(state(mbps), ALL).option.name == option


def test_fixed_policies_predict_under_the_estimate_and_the_report():
    policy = make_policy("static:c", LinkState(MBPS))
    assert policy.choose(state(5), ALL) == Decision(FP32, pytest.approx(0.45))
    assert policy.choose(state(8, wait=0.125), ALL) == Decision(FP32, 0.5)
    assert make_policy("local", LinkState(MBPS)).choose(state(8, wait=5.0), ALL) == Decision(LOCAL, 0.5)


def test_a_fixed_policy_whose_option_is_not_allowed_names_the_allowed_ones():
    with pytest.raises(EdgesplitError, match=r"unknown option 'split:c:fp16'; did you mean 'split:c:fp32'\? "
                                             r"\(known: local, offload:raw, split:c:fp32\)"):
        make_policy("static:split:c:fp16", LinkState(MBPS)).choose(state(5), EXACT)
    with pytest.raises(EdgesplitError, match=r"unknown option 'split:d:fp32'"):
        make_policy("static:d", LinkState(MBPS)).choose(state(5), EXACT)


# --- make_policy ------------------------------------------------------------------------------------


def test_policy_names():
    assert POLICIES.names() == ["best-static", "dsc", "local", "offload", "oracle", "static"]
    assert isinstance(make_policy("dsc", LinkState(MBPS)), DynamicSplit)
    assert isinstance(make_policy("oracle", LinkState(MBPS)), Oracle)
    assert make_policy("dsc", LinkState(MBPS)).name == "dsc" and make_policy("oracle", LinkState(MBPS)).name == "oracle"


def test_an_unknown_policy_suggests_a_close_name():
    with pytest.raises(EdgesplitError, match=r"unknown policy 'dcs'; did you mean 'dsc'\? \(known: best-static, "
                                             r"dsc, local, offload, oracle, static\)"):
        make_policy("dcs", LinkState(MBPS))
    with pytest.raises(EdgesplitError, match=r"unknown policy 'split'"):
        make_policy("split:c:fp32", LinkState(MBPS))


@pytest.mark.parametrize("spec", ["dsc:3", "oracle:x", "local:fast", "best-static:c"])
def test_a_policy_without_an_argument_refuses_one(spec):
    name = spec.partition(":")[0]
    with pytest.raises(EdgesplitError, match=rf"policy '{name}' takes no argument \(got '{spec}'\)"):
        make_policy(spec, LinkState(MBPS))


@pytest.mark.parametrize("spec", ["static", "static:"])
def test_static_needs_an_option(spec):
    with pytest.raises(EdgesplitError, match=r"static needs an option: static:CUT \(fp32\) or "
                                             r"static:split:CUT:CODEC"):
        make_policy(spec, LinkState(MBPS))


# --- allowed_options --------------------------------------------------------------------------------


@pytest.mark.parametrize("private, lossy, names", [
    (False, False, ["local", "offload:raw", "split:c:fp32"]),
    (False, True, ["local", "offload:raw", "offload:jpeg90", "split:c:fp32", "split:c:fp16"]),
    (True, False, ["local", "split:c:fp32"]),
    (True, True, ["local", "split:c:fp32", "split:c:fp16"]),
])
def test_allowed_options(private, lossy, names):
    allowed = allowed_options(ALL, private=private, lossy=lossy)
    assert [o.name for o in allowed] == names
    assert all(a is b for a, b in zip(allowed, [o for o in ALL if o.name in names]))  # the same objects, in order


# --- purity -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["local", "offload", "static:c", "best-static", "dsc", "oracle"])
def test_policies_are_pure(spec):
    policy = make_policy(spec, LinkState(6 * MBPS, RTT))
    before = copy.deepcopy(vars(policy))
    states = [state(2, actual_mbps=16), state(5, 0.3, actual_mbps=2, current_wait=0.1),
              state(16, actual_mbps=5)]
    first = [policy.choose(s, EXACT) for s in states]
    again = [policy.choose(s, EXACT) for s in reversed(states)][::-1]
    assert first == again  # the same state gives the same decision, whatever came before
    assert vars(policy) == before  # nothing is remembered
    fresh = make_policy(spec, LinkState(6 * MBPS, RTT))
    assert [fresh.choose(s, EXACT) for s in states] == first


def test_hedged_dsc_sends_what_may_win_since_the_device_runs_the_rest_anyway():
    # at 2 Mbit/s local (0.5 s) beats offload (1.125 s) and the split (0.75 s); unhedged, dsc stays local
    state = State(LinkState(2 * MBPS, RTT), ServerState())
    assert DynamicSplit().choose(state, [LOCAL, RAW, FP32]).option is LOCAL
    # hedged, with recent samples of 2 and 16 Mbit/s: offload is min(1.125, 0.5) or min(0.25, 0.5), 0.375 s
    # expected; the split min(0.75, 0.5) or min(0.3125, 0.5), 0.40625 s: offload it is
    hedged = State(LinkState(2 * MBPS, RTT), ServerState(), hedged=True, recent_bps=(2 * MBPS, 16 * MBPS))
    decision = DynamicSplit().choose(hedged, [LOCAL, RAW, FP32])
    assert decision.option is RAW and decision.predicted_s == pytest.approx(0.375)
    # when no recent rate lets the server win, nothing is sent
    slow = State(LinkState(2 * MBPS, RTT), ServerState(), hedged=True, recent_bps=(2 * MBPS, 3 * MBPS))
    assert DynamicSplit().choose(slow, [LOCAL, RAW, FP32]) == Decision(LOCAL, 0.5)
    # nor when the expected saving is under HEDGE_MIN_GAIN_S (1 ms): at 4 and 4.01 Mbit/s the split is
    # expected at (0.5 + 0.49938) / 2 = 0.49969 s, 0.3 ms better than local
    close = State(LinkState(4 * MBPS, RTT), ServerState(), hedged=True, recent_bps=(4.0 * MBPS, 4.01 * MBPS))
    assert DynamicSplit().choose(close, [LOCAL, FP32]).option is LOCAL
