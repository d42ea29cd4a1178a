"""The device's energy: the radio model by hand, tail sharing, what the simulator records per request, and
the energy objective of dsc and the oracle.

The toy radio draws 500 mW per Mbit/s sent (100 received) plus 1 W while a burst lasts, a 1 W tail for 2 s
and a 1 W promotion of 0.5 s: a burst of 1 Mbit over 0.5 s costs 0.5 + 0.5 = 1 J; a gap of 1 s, 1 J of
tail; a gap of 3 s, 2 J of tail and 0.5 J of promotion.
"""

from __future__ import annotations

import math

import pytest

from edgesplit.device import DeviceConfig, DeviceCore, summarize
from edgesplit.energy import PHONE_COMPUTE_W, RADIOS, DeviceEnergy, Radio, RadioMeter
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.latency import LinkState, Option, ServerState
from edgesplit.policies import (LATENCY, DynamicSplit, Objective, Oracle, State, check_policy, make_policy,
                                parse_objective, rate_scenarios, scenario_energies)
from edgesplit.sim import SimConfig, Workload, simulate
from edgesplit.traces import RateTrace

MBPS = 1e6
TOY = Radio(name="toy", uplink_mw_per_mbps=500.0, downlink_mw_per_mbps=100.0, active_mw=1000.0, promotion_mw=1000.0,
            promotion_s=0.5, tail_mw=1000.0, tail_s=2.0)
LTE, WIFI = RADIOS.get("lte"), RADIOS.get("wifi")


# --- the radio -------------------------------------------------------------------------------------


def test_a_burst_and_a_gap_by_hand():
    assert TOY.burst_j(125_000, 0.5) == pytest.approx(1.0)  # 1 Mbit: 0.5 J sent, 0.5 s at 1 W
    assert TOY.burst_j(125_000, 0.5, uplink=False) == pytest.approx(0.6)  # received: 100 mJ per Mbit
    assert TOY.gap_j(1.0) == pytest.approx(1.0)  # within the tail
    assert TOY.gap_j(3.0) == TOY.gap_j(math.inf) == pytest.approx(2.5)  # the whole tail, then a promotion
    assert TOY.gap_j(0.0) == TOY.gap_j(-1.0) == 0.0


def test_lte_and_wifi_are_huang_et_al_2012():
    assert (LTE.uplink_mw_per_mbps, LTE.downlink_mw_per_mbps, LTE.active_mw) == (438.39, 51.97, 1288.04)
    assert (LTE.promotion_mw, LTE.promotion_s, LTE.tail_mw, LTE.tail_s) == (1210.7, 0.2601, 1060.0, 11.576)
    assert (WIFI.uplink_mw_per_mbps, WIFI.downlink_mw_per_mbps, WIFI.active_mw) == (283.17, 137.01, 132.86)
    assert (WIFI.promotion_mw, WIFI.promotion_s, WIFI.tail_mw, WIFI.tail_s) == (124.4, 0.0791, 119.3, 0.2381)
    # 1 Mbit sent over 1 s: (α_u · 1 Mbit/s + β) · 1 s; an idle radio: a whole tail and a promotion
    assert LTE.burst_j(125_000, 1.0) == pytest.approx(0.43839 + 1.28804)
    assert LTE.gap_j(math.inf) == pytest.approx(1.060 * 11.576 + 1.2107 * 0.2601)


def test_an_unknown_radio_lists_the_known_ones():
    with pytest.raises(EdgesplitError, match=r"unknown radio 'lt'; did you mean 'lte'\? \(known: lte, wifi\)"):
        DeviceConfig(radio="lt")
    with pytest.raises(EdgesplitError, match=r"compute power must be a finite number of watts >= 0, got -1"):
        DeviceConfig(compute_w=-1.0)
    assert DeviceConfig().energy == DeviceEnergy(PHONE_COMPUTE_W, LTE)


def test_back_to_back_bursts_share_one_tail():
    meter = RadioMeter(TOY)
    assert meter.idle_s(0.0) == math.inf
    first = meter.burst(0.0, 0.5, 125_000)  # the radio was idle: a promotion, and the tail the run ends with
    assert first == pytest.approx(2.5 + 1.0)
    assert meter.idle_s(1.5) == pytest.approx(1.0)
    second = meter.burst(1.5, 0.5, 125_000)  # 1 s into the first one's tail: that tail is cut short
    assert second == pytest.approx(1.0 + 1.0)
    third = meter.burst(5.0, 0.5, 125_000)  # 3 s later: the tail ran out (2 s), the radio was promoted again
    assert third == pytest.approx(2.5 + 1.0)
    # the timeline: 2 promotions, 3 bursts, tails of 1 s and 2 s between them, and 2 s after the last
    assert first + second + third == pytest.approx(2 * 0.5 + 3 * 1.0 + (1.0 + 2.0) + 2.0)


def test_overlapping_bursts_pay_the_base_power_once():
    meter = RadioMeter(TOY)
    meter.burst(0.0, 1.0, 0)
    assert meter.burst(0.5, 1.0, 125_000) == pytest.approx(0.5 + 0.5)  # 1 Mbit, and 1 W past 1.0 s only
    assert meter.idle_s(1.2) == 0.0 and meter.idle_s(2.0) == pytest.approx(0.5)


# --- what the simulator records ----------------------------------------------------------------------

LOCAL = Option("local", "local", None, "-", 0.1, 0.0, 0, 0.0, {}, 0, True)
# 40000 B up in 40 ms at 8 Mbit/s; the server decodes for 2 ms and runs the model for 10 ms; 4000 B back in 1 ms
RAW = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 40_000, 0.002, {1: 0.01}, 4000, True)
OPTIONS = [LOCAL, RAW]
QUIET = dict(rtt_s=0.04, downlink_bps=32 * MBPS, probe_on_connect=False, probe_interval_s=math.inf)


def simulated(policy: str, trace: RateTrace, duration_s: float, **device) -> list:
    config = SimConfig(DeviceConfig(**{**QUIET, **device}), sequential=True, background_fps=0.0)
    return simulate(make_policy(policy, OPTIONS, LinkState(trace.mean_bps())), make_estimator("last"), OPTIONS, trace,
                    Workload(2.0, duration_s=duration_s), config)


def test_offloaded_requests_on_lte_by_hand():
    first, second = simulated("offload", RateTrace.constant(8 * MBPS), 1.0)
    upload = (0.32 * 438.39 + 0.04 * 1288.04) / 1e3  # 40000 B = 0.32 Mbit over 40 ms
    wait = 1.060 * (0.092 - 0.04)  # the tail from the upload's end to the answer's first byte (RTT, decode, model)
    answer = (0.032 * 51.97 + 0.001 * 1288.04) / 1e3  # 4000 B received over 1 ms, ending at 93 ms
    assert first.latency_s == pytest.approx(0.093)
    assert first.compute_j == 0.0  # nothing computed on the device
    assert first.radio_j == pytest.approx(LTE.gap_j(math.inf) + upload + wait + answer)
    # the second upload starts at 0.5 s, 0.407 s into the first's tail: that much tail, no promotion
    assert second.radio_j == pytest.approx(1.060 * 0.407 + upload + wait + answer)
    assert second.energy_j == second.radio_j
    summary = summarize([first, second])
    assert summary["mean_energy_mj"] == summary["mean_radio_mj"] == pytest.approx(
        (first.radio_j + second.radio_j) / 2 * 1e3)
    assert second.to_dict()["energy_mj"] == pytest.approx(second.radio_j * 1e3)


def test_local_requests_cost_their_compute_only():
    records = simulated("local", RateTrace.constant(8 * MBPS), 2.0, compute_w=2.5)
    assert [(r.compute_j, r.radio_j) for r in records] == [(pytest.approx(0.25), 0.0)] * 4  # 0.1 s at 2.5 W
    assert summarize(records)["mean_energy_mj"] == pytest.approx(250.0)


def test_a_fallback_costs_the_rest_on_the_device_and_what_was_sent():
    trace = RateTrace("outage", (0.0, 0.02), (8 * MBPS, 0.0), 10.0)  # 20 ms of 8 Mbit/s, then nothing
    (record,) = simulated("offload", trace, 0.5, deadline_s=0.5, radio="wifi")
    assert record.executed == "local" and record.upload_s == pytest.approx(0.5)
    assert record.compute_j == pytest.approx(0.1 * PHONE_COMPUTE_W)  # the whole model, after giving up
    sent = (0.16 * 283.17 + 0.5 * 132.86) / 1e3  # 20000 B left in the first 20 ms; the radio up for 0.5 s
    assert record.radio_j == pytest.approx(WIFI.gap_j(math.inf) + sent)


def test_probes_are_charged_to_the_request_they_go_beside():
    records = simulated("local", RateTrace.constant(8 * MBPS), 1.0, probe_interval_s=0.4, probe_bytes=16_000,
                        radio="wifi")
    probe = (0.128 * 283.17 + 0.016 * 132.86) / 1e3  # 16000 B over 16 ms
    answered = 0.016 + 0.04  # its 204 answer, an RTT later
    assert records[0].probe_bytes == 16_000
    assert records[0].radio_j == pytest.approx(WIFI.gap_j(math.inf) + probe + WIFI.gap_j(answered - 0.016))
    # request 1 (0.5 s): the probe's sample is 0.5 s old, older than 0.4 s: another probe, 0.444 s after
    # the last answer (the Wi-Fi tail is 0.238 s: a tail and a promotion)
    assert records[1].radio_j == pytest.approx(WIFI.gap_j(0.5 - answered) + probe + WIFI.gap_j(0.04))


# --- objectives ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, objective", [
    ("latency", LATENCY), ("energy", Objective(0.0, 1.0)), ("2*latency+0.5*energy", Objective(2.0, 0.5)),
    ("energy + 3 * latency", Objective(3.0, 1.0)), ("latency+1e-3*energy", Objective(1.0, 0.001)),
    ("0*latency+energy", Objective(0.0, 1.0)),
])
def test_objectives_parse(spec, objective):
    assert parse_objective(spec) == objective


@pytest.mark.parametrize("spec, message", [
    ("", r"objective '': '' is not a term"),
    ("speed", r"objective 'speed': 'speed' is not a term; use latency, energy or A\*latency\+B\*energy \(A per "
              r"second, B per joule\)"),
    ("latency+latency", r"'latency' twice"),
    ("x*energy", r"weight 'x' is not a number"),
    ("*energy", r"'\*energy' is not a term"),
    ("-1*energy", r"weight '-1' must be a finite number >= 0"),
    ("nan*latency", r"weight 'nan' must be a finite number >= 0"),
    ("0*latency+0*energy", r"weighs nothing: give latency or energy a weight > 0"),
    ("energy+", r"'' is not a term"),
])
def test_malformed_objectives_say_what_is_allowed(spec, message):
    with pytest.raises(EdgesplitError, match=message):
        parse_objective(spec)
    with pytest.raises(EdgesplitError, match=rf"policy 'dsc:{spec.replace('*', '[*]').replace('+', '[+]')}': "):
        check_policy(f"dsc:{spec}")


def test_dsc_and_oracle_take_an_objective():
    assert make_policy("dsc", OPTIONS, LinkState(MBPS)).name == "dsc"
    assert make_policy("dsc:latency", OPTIONS, LinkState(MBPS)).name == "dsc"
    assert make_policy("dsc:energy", OPTIONS, LinkState(MBPS)).name == "dsc:energy"
    assert make_policy("dsc:2*latency+energy", OPTIONS, LinkState(MBPS)).name == "dsc:2*latency+energy"
    assert make_policy("oracle:energy", OPTIONS, LinkState(MBPS)).name == "oracle:energy"
    with pytest.raises(EdgesplitError, match=r"policy 'oracle:': objective '': '' is not a term"):
        check_policy("oracle:")


# Options whose latencies tie at 4 and 8 Mbit/s (tests/test_policies.py): local 0.5 s, the split 0.125 s of
# head and 1 Mbit, offload 2 Mbit, 62.5 ms of RTT and 62.5 ms of server either way
P_LOCAL = Option("local", "local", None, "-", 0.5, 0.0, 0, 0.0, {}, 0, True)
P_RAW = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 250_000, 0.0, {1: 0.0625}, 0, True)
P_SPLIT = Option("split:c:fp32", "split", "c", "fp32", 0.125, 0.0, 125_000, 0.0, {1: 0.0625}, 0, True)
P_OPTIONS = [P_LOCAL, P_RAW, P_SPLIT]


def policy_state(mbps: float, energy: DeviceEnergy, **fields) -> State:
    link = LinkState(mbps * MBPS, 0.0625)
    return State(link, ServerState(), actual=link, recent_bps=(mbps * MBPS,) * 4, energy=energy, **fields)


@pytest.mark.parametrize("mbps", [0.5, 2, 3.9, 4, 4.1, 6, 8, 8.5, 30])
@pytest.mark.parametrize("extra", [{}, {"radio_idle_s": 0.0, "probe_due_s": 0.0, "probe_bytes": 16_000},
                                   {"sample_age_s": 3.0, "volatility": 0.5, "deadline_s": 0.6, "radio_idle_s": 20.0}])
def test_dsc_alone_decides_exactly_as_before(mbps, extra):
    """dsc, dsc:latency: the least bound of DynamicSplit.bounds, the code dsc ran before objectives, whatever
    the energy fields of the state say."""
    for energy in (DeviceEnergy(), DeviceEnergy(0.1, WIFI)):
        state = policy_state(mbps, energy, **extra)
        bound, expected, option = min(DynamicSplit.bounds(state, P_OPTIONS, P_LOCAL), key=lambda b: b[0])
        for spec in ("dsc", "dsc:latency"):
            decision = make_policy(spec, P_OPTIONS, LinkState(MBPS)).choose(state, P_OPTIONS)
            assert (decision.option, decision.predicted_s) == (option, expected)


def test_dsc_alone_simulates_exactly_as_dsc_latency():
    trace = RateTrace("steps", (0.0, 3.0, 6.0), (2 * MBPS, 9 * MBPS, 0.5 * MBPS), 9.0)
    config = SimConfig(DeviceConfig(rtt_s=0.0625), sequential=True)
    runs = [simulate(make_policy(spec, P_OPTIONS, LinkState(MBPS)), make_estimator("harmonic"), P_OPTIONS, trace,
                     Workload(2.0), config) for spec in ("dsc", "dsc:latency")]
    assert runs[0] == runs[1] and len({r.option for r in runs[0]}) >= 2  # it does change its mind


def test_dsc_energy_sends_over_a_fast_cheap_link():
    wifi = DeviceEnergy(3.0, WIFI)  # local: 0.5 s at 3 W = 1.5 J; offload at 30 Mbit/s: 0.57 J of Wi-Fi
    decision = make_policy("dsc:energy", P_OPTIONS, LinkState(MBPS)).choose(policy_state(30, wifi), P_OPTIONS)
    assert decision.option is P_RAW
    assert decision.predicted_s == pytest.approx(0.0625 + 0.0625 + 2 / 30)  # it reports the expected latency
    oracle = Oracle(parse_objective("energy")).choose(policy_state(30, wifi), P_OPTIONS)
    assert oracle.option is P_RAW


def test_dsc_energy_stays_local_when_the_radio_costs_more_than_the_compute():
    lte = DeviceEnergy(0.5, LTE)  # local: 0.25 J; 2 Mbit on LTE alone is 0.88 J, whatever the rate
    for mbps in (4, 30, 300):
        assert make_policy("dsc:energy", P_OPTIONS, LinkState(MBPS)).choose(policy_state(mbps, lte),
                                                                            P_OPTIONS).option is P_LOCAL
        assert Oracle(parse_objective("energy")).choose(policy_state(mbps, lte), P_OPTIONS).option is P_LOCAL
    # at 30 Mbit/s dsc (latency) sends: the two objectives disagree
    assert make_policy("dsc", P_OPTIONS, LinkState(MBPS)).choose(policy_state(30, lte), P_OPTIONS).option is P_RAW


def test_a_weighted_objective_trades_latency_for_energy():
    # Wi-Fi at 6 Mbit/s: the split answers in 0.4167 s for 0.375 J of compute and ~0.33 J of radio;
    # offload in 0.4583 s for ~0.67 J of radio; local in 0.5 s for 1.5 J
    wifi, state = DeviceEnergy(3.0, WIFI), policy_state(6, DeviceEnergy(3.0, WIFI))
    assert make_policy("dsc", P_OPTIONS, LinkState(MBPS)).choose(state, P_OPTIONS).option is P_SPLIT
    assert make_policy("dsc:energy", P_OPTIONS, LinkState(MBPS)).choose(state, P_OPTIONS).option is P_RAW
    assert make_policy("dsc:100*latency+energy", P_OPTIONS, LinkState(MBPS)).choose(state, P_OPTIONS).option is P_SPLIT
    assert wifi.compute_j(0.125) == pytest.approx(0.375)


def test_the_expectation_runs_over_dsc_rate_scenarios():
    wifi = DeviceEnergy(3.0, WIFI)
    # two equally likely rates, 1 and 30 Mbit/s (their harmonic mean is the estimate), a deadline of 0.6 s
    risky = State(LinkState(60 / 31 * MBPS, 0.0625), ServerState(), recent_bps=(1 * MBPS, 30 * MBPS), energy=wifi,
                  deadline_s=0.6)
    rates = rate_scenarios(risky)
    assert rates == pytest.approx((1 * MBPS, 30 * MBPS))
    slow, fast = scenario_energies(P_RAW, risky, risky.estimated, risky.reported, rates, 0.5, 0.6)
    # at 1 Mbit/s the answer would come at 2.125 s: given up at 0.6 s, 75000 B sent, the whole model here
    assert slow == pytest.approx(1.5 + WIFI.gap_j(math.inf) + WIFI.burst_j(75_000, 0.6))
    # at 30 Mbit/s: 2 Mbit up, 125 ms of tail until the (empty) answer
    assert fast == pytest.approx(WIFI.gap_j(math.inf) + WIFI.burst_j(250_000, 2 / 30) + WIFI.gap_j(0.125))
    # sending saves energy on average (1.21 J against 1.5 J) but not by more than its standard error
    assert (slow + fast) / 2 < 1.5
    assert make_policy("dsc:energy", P_OPTIONS, LinkState(MBPS)).choose(risky, P_OPTIONS).option is P_LOCAL
    sure = State(LinkState(30 * MBPS, 0.0625), ServerState(), recent_bps=(30 * MBPS,) * 2, energy=wifi, deadline_s=0.6)
    assert make_policy("dsc:energy", P_OPTIONS, LinkState(MBPS)).choose(sure, P_OPTIONS).option is P_RAW


def test_the_core_tells_the_policy_how_long_its_radio_has_been_idle():
    core = DeviceCore(make_policy("local", OPTIONS, LinkState(MBPS)), make_estimator("last"), OPTIONS,
                      DeviceConfig(probe_interval_s=0.4))
    assert core.state(0.0).radio_idle_s == math.inf and core.state(0.0).probe_due_s == 0.0  # nothing heard yet
    core.transferred(1.0, 0.5, 10_000)
    assert core.state(1.2).radio_idle_s == 0.0 and core.state(2.0).radio_idle_s == pytest.approx(0.5)
    core.probe_sent(2.0)
    assert core.state(2.1).probe_due_s == pytest.approx(0.3) and core.state(2.5).probe_due_s == 0.0
