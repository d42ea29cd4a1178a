"""Policies on hand-built options whose crossover rates are exact binary fractions.

    local            0.5 s on the device
    offload:raw      2 Mbit (250000 B) + rtt 0.0625 + tail 0.0625        = 0.125 + 2e6 / r
    split:c:fp32     head 0.125 + 1 Mbit (125000 B) + rtt + tail         = 0.25  + 1e6 / r

so local and the split tie at r = 4 Mbit/s (0.5 s each), the split and offload at r = 8 Mbit/s
(0.375 s each): below 4 Mbit/s local wins, between them the split, above 8 Mbit/s offload.
"""

from __future__ import annotations

import copy
import math

import pytest

from edgesplit.errors import EdgesplitError
from edgesplit.estimators import RECENT_SAMPLES
from edgesplit.latency import LinkState, Option, ServerState
from edgesplit.policies import (
    MAX_AGE_S,
    POLICIES,
    STANDARD_ERRORS,
    BestStatic,
    Decision,
    DynamicSplit,
    Fixed,
    Oracle,
    State,
    allowed_options,
    argmin,
    check_policy,
    make_policy,
    rate_scenarios,
)

MBPS = 1e6
RTT = 0.0625

LOCAL = Option("local", "local", None, "-", 0.5, 0.0, 0, 0.0, {}, 0, True)
RAW = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 250_000, 0.0, {1: 0.0625, 4: 0.125}, 0, True)
JPEG = Option("offload:jpeg:90", "offload", None, "jpeg:90", 0.0, 0.01, 50_000, 0.005, {1: 0.0625, 4: 0.125}, 0,
              False)
FP32 = Option("split:c:fp32", "split", "c", "fp32", 0.125, 0.0, 125_000, 0.0, {1: 0.0625, 4: 0.125}, 0, True)
FP16 = Option("split:c:fp16", "split", "c", "fp16", 0.125, 0.001, 62_500, 0.001, {1: 0.0625, 4: 0.125}, 0, False)
ALL = [LOCAL, RAW, JPEG, FP32, FP16]
EXACT = [LOCAL, RAW, FP32]
PRIVATE = [LOCAL, FP32, FP16]  # what --private builds: no offload


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


def test_dsc_with_default_state_fields_is_argmin_at_the_estimate():
    # no recent samples, a fresh estimate and no deadline: the one scenario is the estimate itself
    for mbps in (0.5, 2, 3.5, 4, 6.2, 7, 8, 14, 100):
        for wait in (0.0, 0.2):
            s = state(mbps, wait)
            for options in (EXACT, ALL):
                assert DynamicSplit().choose(s, options) == argmin(options, s.estimated, s.reported), (mbps, wait)


# --- risk-aware dsc ---------------------------------------------------------------------------------
#
# rtt 0, a batch-1 tail of 0.0625 s, local 0.5 s:
#     offload:big       0.4 Mbit (50000 B)                    = 0.0625 + 4e5 / r
#     split:late:fp32   head 0.28125 + 0.05 Mbit (6250 B)     = 0.34375 + 5e4 / r
# at 1.6 Mbit/s (the harmonic mean of 1 and 4) big takes 0.3125 s, late 0.375 s; at 1 Mbit/s big 0.4625,
# late 0.39375; at 4 Mbit/s big 0.1625, late 0.35625.

BIG = Option("offload:big", "offload", None, "big", 0.0, 0.0, 50_000, 0.0, {1: 0.0625}, 0, True)
LATE = Option("split:late:fp32", "split", "late", "fp32", 0.28125, 0.0, 6_250, 0.0, {1: 0.0625}, 0, True)
RISKY = [LOCAL, BIG, LATE]


def risky(mbps: float, recent_mbps: tuple[float, ...], deadline: float = math.inf) -> State:
    return State(LinkState(mbps * MBPS), ServerState(), recent_bps=tuple(r * MBPS for r in recent_mbps),
                 deadline_s=deadline)


def test_dsc_avoids_an_option_ruinous_if_the_link_dips_before_the_deadline():
    # samples 1, 4, 4, 4, 4 Mbit/s (harmonic mean 2.5); deadline 0.375 s: at 1 Mbit/s both are late, big
    # costing 0.375 + 0.5 (all on the device) = 0.875, late 0.375 + (0.5 - 0.28125) = 0.59375; at 4 Mbit/s
    # both are in time. big: mean (0.875 + 4 × 0.1625) / 5 = 0.305, sd 0.285, bound + 2 sd/√5 = 0.559909;
    # late: mean (0.59375 + 4 × 0.35625) / 5 = 0.40375, sd 0.095, bound 0.488719 (local: 0.5): late is chosen
    assert STANDARD_ERRORS == 2
    assert argmin(RISKY, LinkState(2.5 * MBPS), ServerState()).option is BIG
    assert DynamicSplit().choose(risky(2.5, (1, 4, 4, 4, 4), 0.375), RISKY) == Decision(LATE, pytest.approx(0.40375))
    # without a deadline the dip costs what it takes: big's mean (0.4625 + 4 × 0.1625) / 5 = 0.2225 (bound
    # 0.329833) beats late's 0.36375 (bound 0.377166)
    assert DynamicSplit().choose(risky(2.5, (1, 4, 4, 4, 4)), RISKY) == Decision(BIG, pytest.approx(0.2225))
    # a steady link at the same estimate, or only the high samples: big is never late, and certain
    assert DynamicSplit().choose(risky(1.6, (1.6, 1.6), 0.375), RISKY) == Decision(BIG, pytest.approx(0.3125))
    assert DynamicSplit().choose(risky(4, (4, 4), 0.375), RISKY) == Decision(BIG, pytest.approx(0.1625))


def test_dsc_leaves_local_only_for_a_gain_clear_of_its_standard_errors():
    # samples 1 and 4 Mbit/s, deadline 0.375 s: late's expected 0.475 s beats local's 0.5 s, but its two
    # scenarios (0.59375, 0.35625) have sd 0.11875, so its bound 0.475 + 2 × 0.11875 / √2 = 0.642938 does not
    assert DynamicSplit().choose(risky(1.6, (1, 4), 0.375), RISKY) == Decision(LOCAL, 0.5)
    # the same spread seen in twice as many samples halves the variance of the mean: 0.475 + 2 × 0.11875 / 2
    assert DynamicSplit().choose(risky(1.6, (1, 4, 1, 4), 0.375), RISKY) == Decision(LOCAL, 0.5)
    # eight samples: 0.475 + 2 × 0.11875 / √8 = 0.558969, still not clear; a narrower spread is
    assert DynamicSplit().choose(risky(1.6, (1, 4) * 4, 0.375), RISKY) == Decision(LOCAL, 0.5)
    narrow = risky(1.6, (1.5, 1.6, 1.7), 0.375)
    assert DynamicSplit().choose(narrow, RISKY).option is BIG


def test_an_option_late_in_every_scenario_costs_the_deadline_plus_the_rest():
    # the split's head ends at 0.125 s and its answer never comes before 0.25 s: with the deadline at 0.125 s
    # every scenario costs 0.125 + (0.5 - 0.125) = 0.5, exactly local's time (a tie: the earlier option)
    late = State(LinkState(16 * MBPS, RTT), ServerState(), recent_bps=(2 * MBPS, 32 * MBPS), sample_age_s=4,
                 volatility=0.5, deadline_s=0.125)
    assert DynamicSplit().choose(late, [FP32, LOCAL]) == Decision(FP32, 0.5)
    assert DynamicSplit().choose(late, [LOCAL, FP32]) == Decision(LOCAL, 0.5)
    # offload (0.25 s at 16 Mbit/s, best without the deadline) costs 0.125 + 0.5 = 0.625 in every scenario
    assert DynamicSplit().choose(late, [RAW, LOCAL]) == Decision(LOCAL, 0.5)


# --- rate_scenarios ---------------------------------------------------------------------------------


def scenarios(mbps: float, recent_mbps: tuple[float, ...] = (), volatility: float = 0.0,
              age: float = 0.0, ceilings: tuple[bool, ...] = ()) -> tuple[float, ...]:
    return rate_scenarios(State(LinkState(mbps * MBPS), ServerState(), recent_bps=tuple(r * MBPS for r in recent_mbps),
                                ceilings=ceilings, sample_age_s=age, volatility=volatility))


def test_without_samples_the_one_scenario_is_the_estimate():
    for mbps in (1, 3.5, 6.2, 7):
        assert scenarios(mbps) == (mbps * MBPS,)


def test_samples_are_scaled_to_the_estimate_as_their_harmonic_mean():
    # the harmonic mean of 1 and 4 Mbit/s is 2 / (1 + 1/4) = 1.6
    assert scenarios(1.6, (1, 4)) == pytest.approx((1 * MBPS, 4 * MBPS))
    assert scenarios(0.8, (1, 4)) == pytest.approx((0.5 * MBPS, 2 * MBPS))
    assert scenarios(3.2, (1, 4)) == pytest.approx((2 * MBPS, 8 * MBPS))


FULL = (1, 4, 4, 4, 4)  # a full window of samples (RECENT_SAMPLES), harmonic mean 2.5 Mbit/s


def test_an_aged_estimate_spreads_each_sample_both_ways():
    # volatility 0.5 after 4 s: exp(0.5 * sqrt(4)) = e
    e = math.e
    assert len(FULL) == RECENT_SAMPLES
    assert scenarios(2.5, FULL, volatility=0.5, age=4) == pytest.approx(
        (MBPS / e, MBPS * e) + (4 * MBPS / e, 4 * MBPS * e) * 4)
    # no spread when the factor is 1: a fresh sample, or a steady link
    assert scenarios(2.5, FULL, volatility=0.5, age=0) == pytest.approx(tuple(r * MBPS for r in FULL))
    assert scenarios(1.6, (1, 4), volatility=0.0, age=4) == pytest.approx((1 * MBPS, 4 * MBPS))


def test_an_estimate_from_few_samples_counts_as_older():
    # each sample missing from the window adds MAX_AGE_S / RECENT_SAMPLES = 2 s: one fresh sample is 8 s old,
    # two samples 1 s old are 7 s old, a full window is as old as its newest sample
    assert RECENT_SAMPLES == 5
    one = math.exp(0.5 * math.sqrt(8))
    assert scenarios(3, (3,), volatility=0.5, age=0) == pytest.approx((3 * MBPS / one, 3 * MBPS * one))
    two = math.exp(0.5 * math.sqrt(7))
    assert scenarios(1.6, (1, 4), volatility=0.5, age=1) == pytest.approx(
        (MBPS / two, MBPS * two, 4 * MBPS / two, 4 * MBPS * two))
    assert scenarios(2.5, FULL, volatility=0.5, age=1) == pytest.approx(
        (MBPS / math.exp(0.5), MBPS * math.exp(0.5)) + (4 * MBPS / math.exp(0.5), 4 * MBPS * math.exp(0.5)) * 4)
    # no sample at all: the estimate (the prior) is as uncertain as it gets
    capped = math.exp(0.5 * math.sqrt(MAX_AGE_S))
    assert scenarios(2, volatility=0.5, age=0) == pytest.approx((2 * MBPS / capped, 2 * MBPS * capped))


def test_dsc_stays_local_on_one_sample_that_an_outage_may_follow():
    # the probe on connecting says 7.3 Mbit/s and nothing else is known (volatility at its prior 0.5): at
    # the estimate raw offload (0.0625 + 0.274 s) beats local's 0.5 s, but with the spread of a single
    # sample a dip past the deadline (0.5 s) costs 1 s; with a full window of such samples it is sent
    one = State(LinkState(7.3 * MBPS), ServerState(), recent_bps=(7.3 * MBPS,), volatility=0.5, deadline_s=0.5)
    assert argmin([LOCAL, RAW], one.estimated, one.reported).option is RAW
    assert DynamicSplit().choose(one, [LOCAL, RAW]).option is LOCAL
    full = State(LinkState(7.3 * MBPS), ServerState(), recent_bps=(7.3 * MBPS,) * 5, volatility=0.5, deadline_s=0.5)
    assert DynamicSplit().choose(full, [LOCAL, RAW]).option is RAW


def test_a_bound_spreads_only_downwards():
    # the device gave up on an upload at 1 Mbit/s: the link gave at most that, however old the samples
    e = math.e
    assert scenarios(2.5, FULL, volatility=0.5, age=4, ceilings=(True,) + (False,) * 4) == pytest.approx(
        (MBPS / e, MBPS) + (4 * MBPS / e, 4 * MBPS * e) * 4)
    assert scenarios(2.5, FULL, volatility=0.5, age=4, ceilings=(False,) * 4 + (True,)) == pytest.approx(
        (MBPS / e, MBPS * e) + (4 * MBPS / e, 4 * MBPS * e) * 3 + (4 * MBPS / e, 4 * MBPS))
    # flags that do not match the samples (a caller's mistake) are ignored rather than misapplied
    assert scenarios(2.5, FULL, volatility=0.5, age=4, ceilings=(True,)) == scenarios(2.5, FULL, 0.5, 4)


def test_the_spread_stops_growing_at_max_age():
    assert MAX_AGE_S == 10.0
    spread = math.exp(0.5 * math.sqrt(10))  # 4.85
    capped = scenarios(2.5, FULL, volatility=0.5, age=10)
    assert capped == pytest.approx((MBPS / spread, MBPS * spread) + (4 * MBPS / spread, 4 * MBPS * spread) * 4)
    assert scenarios(2.5, FULL, volatility=0.5, age=40) == capped
    assert scenarios(2.5, FULL, volatility=0.5, age=math.inf) == capped  # no sample yet
    assert scenarios(2.5, FULL, volatility=0.5, age=9) != capped


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
    assert make_policy("best-static", ALL, LinkState(16 * MBPS, RTT)).choose(state(1), EXACT).option is RAW
    assert make_policy("best-static", ALL, LinkState(2 * MBPS, RTT)).choose(state(100), EXACT).option is LOCAL
    assert make_policy("best-static", ALL, LinkState(16 * MBPS, RTT)).name == "best-static"


@pytest.mark.parametrize("spec, name, option", [
    ("local", "local", LOCAL),
    ("offload", "offload", RAW),
    ("offload:jpeg:90", "offload:jpeg:90", JPEG),
    ("static:c", "static:c", FP32),
    ("static:split:c:fp16", "static:split:c:fp16", FP16),
    ("static:offload:jpeg:90", "static:offload:jpeg:90", JPEG),
    ("static:local", "static:local", LOCAL),
])
def test_fixed_policies_resolve_their_option(spec, name, option):
    policy = make_policy(spec, ALL, LinkState(MBPS))
    assert isinstance(policy, Fixed)
    assert policy.name == name and policy.option is option  # resolved at build: the very object
    for mbps in (0.1, 5, 1000):
        assert policy.choose(state(mbps), ALL).option is option


def test_fixed_policies_predict_under_the_estimate_and_the_report():
    policy = make_policy("static:c", ALL, LinkState(MBPS))
    assert policy.choose(state(5), ALL) == Decision(FP32, pytest.approx(0.45))
    assert policy.choose(state(8, wait=0.125), ALL) == Decision(FP32, 0.5)
    assert make_policy("local", ALL, LinkState(MBPS)).choose(state(8, wait=5.0), ALL) == Decision(LOCAL, 0.5)
    # the options the device may pick do not move it
    assert policy.choose(state(5), [LOCAL]) == Decision(FP32, pytest.approx(0.45))


def test_a_fixed_policy_whose_option_is_missing_fails_at_build_naming_the_known_ones():
    with pytest.raises(EdgesplitError) as error:
        make_policy("static:split:c:fp16", EXACT, LinkState(MBPS))
    assert str(error.value) == ("unknown option 'split:c:fp16'; did you mean 'split:c:fp32'? "
                                "(known: local, offload:raw, split:c:fp32)")
    with pytest.raises(EdgesplitError) as error:
        make_policy("static:d", EXACT, LinkState(MBPS))
    assert str(error.value) == ("unknown option 'split:d:fp32'; did you mean 'split:c:fp32'? "
                                "(known: local, offload:raw, split:c:fp32)")
    with pytest.raises(EdgesplitError) as error:
        make_policy("offload:jpeg:90", EXACT, LinkState(MBPS))
    assert str(error.value) == ("unknown option 'offload:jpeg:90'; did you mean 'offload:raw'? "
                                "(known: local, offload:raw, split:c:fp32)")


PRIVATE_ERROR = ("policy {!r} sends the input to the server, but these options keep it on the device (--private): "
                 "drop it from the policies")


@pytest.mark.parametrize("spec, named", [
    ("offload", "offload"),
    ("offload:jpeg:90", "offload:jpeg:90"),
    ("static:offload:jpeg:90", "static:offload:jpeg:90"),  # the spec to drop, as written
])
def test_offload_over_private_options_says_to_drop_it(spec, named):
    with pytest.raises(EdgesplitError) as error:
        make_policy(spec, PRIVATE, LinkState(MBPS))
    assert str(error.value) == PRIVATE_ERROR.format(named)


def test_the_other_policies_build_over_private_options():
    for spec in ("local", "static:c", "static:split:c:fp16", "best-static", "dsc", "oracle"):
        make_policy(spec, PRIVATE, LinkState(MBPS))


# --- make_policy ------------------------------------------------------------------------------------


def test_policy_names():
    assert POLICIES.names() == ["best-static", "dsc", "local", "offload", "oracle", "static"]
    assert isinstance(make_policy("dsc", ALL, LinkState(MBPS)), DynamicSplit)
    assert isinstance(make_policy("oracle", ALL, LinkState(MBPS)), Oracle)
    assert make_policy("dsc", ALL, LinkState(MBPS)).name == "dsc"
    assert make_policy("oracle", ALL, LinkState(MBPS)).name == "oracle"
    assert check_policy("dsc") == (POLICIES.get("dsc"), "")
    assert check_policy("static:split:c:fp16") == (POLICIES.get("static"), "split:c:fp16")
    assert check_policy("offload:jpeg:90") == (POLICIES.get("offload"), "jpeg:90")


def build_or_check(how: str, spec: str) -> object:
    return check_policy(spec) if how == "check" else make_policy(spec, ALL, LinkState(MBPS))


@pytest.mark.parametrize("how", ["check", "make"])
def test_an_unknown_policy_suggests_a_close_name(how):
    with pytest.raises(EdgesplitError, match=r"unknown policy 'dcs'; did you mean 'dsc'\? \(known: best-static, "
                                             r"dsc, local, offload, oracle, static\)"):
        build_or_check(how, "dcs")
    with pytest.raises(EdgesplitError, match=r"unknown policy 'split'"):
        build_or_check(how, "split:c:fp32")


@pytest.mark.parametrize("how", ["check", "make"])
@pytest.mark.parametrize("spec", ["local:fast", "best-static:c"])
def test_a_policy_without_an_argument_refuses_one(spec, how):
    name = spec.partition(":")[0]
    with pytest.raises(EdgesplitError, match=rf"policy '{name}' takes no argument \(got '{spec}'\)"):
        build_or_check(how, spec)


@pytest.mark.parametrize("how", ["check", "make"])
@pytest.mark.parametrize("spec", ["dsc:3", "oracle:x"])
def test_dsc_and_oracle_take_only_an_objective(spec, how):  # tests/test_energy.py: the objectives themselves
    with pytest.raises(EdgesplitError, match=rf"policy '{spec}': objective '.*' is not a term; use latency, energy "
                                             r"or A\*latency\+B\*energy"):
        build_or_check(how, spec)


@pytest.mark.parametrize("spec", ["static", "static:"])
def test_static_needs_an_option(spec):
    with pytest.raises(EdgesplitError, match=r"static needs an option: static:CUT \(fp32\) or "
                                             r"static:split:CUT:CODEC"):
        make_policy(spec, ALL, LinkState(MBPS))


# --- allowed_options --------------------------------------------------------------------------------


@pytest.mark.parametrize("private, lossy, names", [
    (False, False, ["local", "offload:raw", "split:c:fp32"]),
    (False, True, ["local", "offload:raw", "offload:jpeg:90", "split:c:fp32", "split:c:fp16"]),
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
    policy = make_policy(spec, ALL, LinkState(6 * MBPS, RTT))
    before = copy.deepcopy(vars(policy))
    states = [state(2, actual_mbps=16), state(5, 0.3, actual_mbps=2, current_wait=0.1),
              state(16, actual_mbps=5)]
    first = [policy.choose(s, EXACT) for s in states]
    again = [policy.choose(s, EXACT) for s in reversed(states)][::-1]
    assert first == again  # the same state gives the same decision, whatever came before
    assert vars(policy) == before  # nothing is remembered
    fresh = make_policy(spec, ALL, LinkState(6 * MBPS, RTT))
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
