"""The fleet simulator: one device on one replica is the single-device simulator, batches across devices
by hand, what a growing fleet does to each policy, the routing rules, bad input, and simulate-fleet."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from edgesplit.device import DEADLINE_PASSED, DeviceConfig
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.latency import LinkState, Option
from edgesplit.policies import make_policy
from edgesplit.sim import (FleetDevice, FleetSimConfig, SimConfig, Workload, build_fleet, simulate,
                           simulate_fleet)
from edgesplit.sim.fleet import ROUTING
from edgesplit.traces import RateTrace, read_trace
from test_cli import run
from test_cli_sim import profiles  # noqa: F401  (the toy device and server profiles)

MBPS = 1e6
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
VERIZON = TRACES / "mahimahi" / "Verizon-LTE-short.up"

# EfficientNet-B0-like: 350 ms on the device; the raw input, two cuts and the pooled features to send
B0_LOCAL = Option("local", "local", None, "-", 0.35, 0.0, 0, 0.0, {}, 0, True)
B0_RAW = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 150_528, 0.0001,
                {1: 0.062, 2: 0.09, 4: 0.15, 8: 0.28}, 4000, True)
B0_EARLY = Option("split:a:fp32", "split", "a", "fp32", 0.107, 0.0, 301_056, 0.0, {1: 0.042, 8: 0.18}, 4000, True)
B0_MID = Option("split:b:fp32", "split", "b", "fp32", 0.25, 0.0, 62_720, 0.0, {1: 0.017, 8: 0.05}, 4000, True)
B0_POOLED = Option("split:c:fp32", "split", "c", "fp32", 0.347, 0.0, 5120, 0.0, {1: 0.0005, 8: 0.001}, 4000, True)
B0 = [B0_LOCAL, B0_RAW, B0_EARLY, B0_MID, B0_POOLED]

# as in test_sim: 40000 B up at 8 Mbit/s (40 ms); decode 2 ms, the model 10 ms alone, 20 ms for 4, 30 ms for 8
LOCAL = Option("local", "local", None, "-", 0.1, 0.0, 0, 0.0, {}, 0, True)
RAW = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 40_000, 0.002, {1: 0.01, 4: 0.02, 8: 0.03}, 4000, True)
QUIET = DeviceConfig(rtt_s=0.04, downlink_bps=32 * MBPS, probe_on_connect=False, probe_interval_s=math.inf,
                     deadline_s=math.inf)  # no probes, no deadline: only the requests


def offloading(arrivals: tuple[float, ...], config: DeviceConfig = QUIET, options: list[Option] = [LOCAL, RAW],
               rate_bps: float = 8 * MBPS) -> FleetDevice:
    return FleetDevice(policy=make_policy("offload", options, LinkState(rate_bps)), estimator=make_estimator("last"),
                       options=options, trace=RateTrace.constant(rate_bps, 10.0), arrivals=arrivals, config=config)


def assert_series(series, expected) -> None:
    """A queue-length series: the lengths exactly, the times to 1e-12 s."""
    assert [n for _, n in series] == [n for _, n in expected]
    assert [t for t, _ in series] == pytest.approx([t for t, _ in expected], abs=1e-12)


# --- one device on one replica: the single-device simulator, record for record -----------------------


@pytest.mark.skipif(not VERIZON.is_file(), reason=f"shared trace {VERIZON} not found")
@pytest.mark.parametrize("device", [DeviceConfig(downlink_bps=20e6), DeviceConfig(downlink_bps=20e6, hedge=True),
                                    DeviceConfig(downlink_bps=20e6, deadline_s=0.2)],
                         ids=["deadline", "hedge", "tight-deadline"])
@pytest.mark.parametrize("policy", ["dsc", "oracle", "local", "offload", "static:b"])
def test_one_device_on_one_replica_is_the_single_device_simulator(policy, device):
    trace = read_trace(VERIZON).segment(0.0, 60.0)
    chosen = make_policy(policy, B0, LinkState(trace.mean_bps(), device.rtt_s, device.downlink_bps))
    alone = simulate(chosen, make_estimator("harmonic"), B0, trace, Workload(2.0),
                     SimConfig(device, sequential=True, background_fps=0))
    (fleet,) = build_fleet(1, policy=policy, estimator="harmonic", options=B0, allowed=B0, traces=[trace],
                           workload=Workload(2.0), device=device)
    result = simulate_fleet([fleet], FleetSimConfig(servers=1))
    assert len(alone) == 120
    assert result.records == [alone]  # every field of every request


@pytest.mark.skipif(not VERIZON.is_file(), reason=f"shared trace {VERIZON} not found")
def test_the_equivalence_runs_cover_probes_fallbacks_and_the_server():
    # the runs above are not vacuous: dsc mixes local and remote, probes; a tight deadline falls back
    trace = read_trace(VERIZON).segment(0.0, 60.0)
    runs = {}
    for name, device in (("dsc", DeviceConfig(downlink_bps=20e6)), ("offload", DeviceConfig(downlink_bps=20e6)),
                         ("offload", DeviceConfig(downlink_bps=20e6, deadline_s=0.2))):
        (fleet,) = build_fleet(1, policy=name, estimator="harmonic", options=B0, allowed=B0, traces=[trace],
                               workload=Workload(2.0), device=device)
        runs[name, device.deadline_s] = simulate_fleet([fleet]).records[0]
    dsc = runs["dsc", None]
    assert {"local", "offload"} <= {r.executed for r in dsc} and sum(r.probe_bytes > 0 for r in dsc) > 10
    assert any(r.batch_size == 1 and r.queue_s == 0.0 for r in runs["offload", None])
    assert sum(r.fallback_reason == DEADLINE_PASSED for r in runs["offload", 0.2]) > 60


# --- batching across devices, by hand ------------------------------------------------------------------


@pytest.mark.parametrize("count, latencies, batches, queue_p95", [
    # all upload 40000 B at 8 Mbit/s from 0 s and reach the server at 40 ms + RTT/2 = 60 ms; a batch of n
    # takes 2 ms + the model at n; the answer 20 ms + 4000 B at 32 Mbit/s (1 ms) later
    (1, [0.093], (1,), 0.0),
    (4, [0.103] * 4, (4,), 0.0),
    (8, [0.113] * 8, (8,), 0.0),
    (12, [0.113] * 8 + [0.135] * 4, (8, 4), 0.032),  # 4 wait 32 ms for the first batch
    (20, [0.113] * 8 + [0.145] * 8 + [0.167] * 4, (8, 8, 4), 0.064),  # the last 4 wait for two
])
def test_requests_that_arrive_together_run_in_batches_of_at_most_eight(count, latencies, batches, queue_p95):
    result = simulate_fleet([offloading((0.0, 1.0)) for _ in range(count)])
    assert [device[0].latency_s for device in result.records] == pytest.approx(latencies, abs=1e-12)
    assert [device[1].latency_s for device in result.records] == pytest.approx(latencies, abs=1e-12)  # again at 1 s
    (replica,) = result.replicas
    assert replica.batch_sizes == batches * 2 and replica.requests == 2 * count
    durations = {1: 0.012, 4: 0.022, 8: 0.032}
    assert replica.busy_s == pytest.approx(2 * sum(durations[b] for b in batches), abs=1e-12)
    assert replica.span_s == pytest.approx(1 + max(latencies), abs=1e-12)
    assert replica.utilisation == pytest.approx(replica.busy_s / replica.span_s)
    waits = [0.032 * (k // 8) for k in range(count)]  # the first 8 at once, the next 8 after one batch, ...
    assert replica.queue_waits_s == pytest.approx(waits * 2, abs=1e-12)
    assert replica.queue_p95_s == pytest.approx(queue_p95, abs=1e-12)
    assert replica.mean_batch == count / len(batches)
    assert [r.queue_s for device in result.records for r in device[:1]] == pytest.approx(waits, abs=1e-12)
    assert [r.batch_size for device in result.records for r in device[:1]] == \
        [b for b in batches for _ in range(b)]
    # the queue grows by one with each arrival, and empties by a batch at each start
    starts = [0.06 + sum(durations[b] for b in batches[:k]) for k in range(len(batches))]
    left = [count - sum(batches[:k + 1]) for k in range(len(batches))]
    first = [(0.06, k) for k in range(1, count + 1)] + list(zip(starts, left))
    assert_series(replica.queue_length[:len(first)], first)


def test_requests_given_up_while_the_server_is_busy_batch_together():
    # one device, 2 s a batch of any size, a 0.5 s deadline: each request is given up and finished here
    # (0.1 s more); the server still runs each. Requests 1-3 reach it while request 0 runs (0.06-2.06 s) and
    # run as one batch at 2.06 s. (simulate's server forms a request's batch when the request arrives, so
    # there they would run one by one: the one case where the two simulators differ.)
    slow = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 40_000, 0.0, {1: 2.0, 8: 2.0}, 4000, True)
    device = offloading((0.0, 0.6, 1.2, 1.8), DeviceConfig(rtt_s=0.04, downlink_bps=32 * MBPS, deadline_s=0.5,
                                                          probe_on_connect=False, probe_interval_s=math.inf),
                        options=[LOCAL, slow])
    result = simulate_fleet([device])
    assert [(r.latency_s, r.fallback_reason) for r in result.records[0]] == [
        (pytest.approx(0.6), DEADLINE_PASSED)] * 4
    (replica,) = result.replicas
    assert replica.batch_sizes == (1, 3)
    assert replica.queue_waits_s == pytest.approx((0.0, 1.4, 0.8, 0.2))
    assert_series(replica.queue_length, [(0.06, 1), (0.06, 0), (0.66, 1), (1.26, 2), (1.86, 3), (2.06, 0)])
    assert (replica.busy_s, replica.span_s) == (pytest.approx(4.0), pytest.approx(4.06))


# --- a growing fleet ------------------------------------------------------------------------------------


def test_offload_collapses_as_the_fleet_grows_while_dsc_moves_to_local():
    # the server runs 8 in 162 ms: about 49 requests a second, 25 devices at 2 fps; local takes 300 ms
    local = Option("local", "local", None, "-", 0.3, 0.0, 0, 0.0, {}, 0, True)
    raw = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 40_000, 0.002, {1: 0.04, 4: 0.1, 8: 0.16}, 4000,
                 True)
    trace, device = RateTrace.constant(8 * MBPS, 20.0), DeviceConfig(rtt_s=0.04, downlink_bps=32 * MBPS)
    runs = {(policy, count): simulate_fleet(build_fleet(count, policy=policy, estimator="harmonic",
                                                        options=[local, raw], allowed=[local, raw], traces=[trace],
                                                        workload=Workload(2.0), device=device))
            for policy in ("dsc", "offload") for count in (1, 8, 16, 32, 64)}
    summary = {key: result.summary(0.6) for key, result in runs.items()}
    server = {key: result.server_summary() for key, result in runs.items()}
    # alone: 40 ms up, 40 ms RTT, 2 + 40 ms on the server, 1 ms back; dsc offloads too, once it has more than
    # the one sample of its probe on connecting (its first two requests run locally, the second beside a probe)
    assert summary["offload", 1]["p95_ms"] == pytest.approx(123.0)
    assert summary["dsc", 1]["p50_ms"] == pytest.approx(123.0)
    assert summary["offload", 1]["cuts"] == {"offload:raw": 40} and summary["offload", 1]["answered"] == 40
    assert summary["dsc", 1]["cuts"] == {"local": 2, "offload:raw": 38} and summary["dsc", 1]["answered"] == 38
    # offload: the queue and the batches grow with the fleet until the server is full, then latency collapses
    assert [server["offload", n]["mean_batch"] for n in (1, 8, 16, 32, 64)] == sorted(
        server["offload", n]["mean_batch"] for n in (1, 8, 16, 32, 64))
    assert [server["offload", n]["queue_p95_ms"] for n in (1, 8, 16, 32, 64)] == sorted(
        server["offload", n]["queue_p95_ms"] for n in (1, 8, 16, 32, 64))
    assert server["offload", 1]["mean_batch"] == 1.0 and server["offload", 64]["mean_batch"] > 7.5
    assert server["offload", 64]["utilisation"] > 0.99
    assert summary["offload", 64]["p95_ms"] > 50 * summary["offload", 1]["p95_ms"]
    # dsc hears the load in its answers and keeps more and more requests on the device: up to 16 devices only
    # the start-up requests (at most two per device, while it knows one or two samples), then more and more
    shares = [summary["dsc", n]["cuts"].get("local", 0) / summary["dsc", n]["count"] for n in (1, 8, 16, 32, 64)]
    assert max(shares[:3]) <= 2 / 40 and shares[2] < shares[3] < shares[4] and shares[4] > 0.5
    assert summary["dsc", 64]["mean_ms"] < summary["offload", 64]["mean_ms"] / 10


def test_each_device_replays_the_trace_from_its_own_offset_and_phase():
    steps = RateTrace("steps", (0.0, 1.0, 2.0, 3.0), (1 * MBPS, 2 * MBPS, 3 * MBPS, 4 * MBPS), 4.0)
    other = RateTrace.constant(8 * MBPS, 4.0, name="other")
    fleet = build_fleet(5, policy="local", estimator="last", options=[LOCAL, RAW], allowed=[LOCAL, RAW],
                        traces=[steps, other], workload=Workload(2.0), device=QUIET)
    # devices 0, 2, 4 share steps (offsets 0, 4/3, 8/3 s), devices 1, 3 the other one (offsets 0, 2 s)
    assert [d.trace.rate_at(0.0) for d in fleet] == [1 * MBPS, 8 * MBPS, 2 * MBPS, 8 * MBPS, 3 * MBPS]
    assert fleet[0].trace is steps and fleet[4].trace.rate_at(1.5) == 1 * MBPS  # 8/3 + 1.5 wraps to 0.17 s
    # periodic arrivals every 0.5 s, device i shifted by i × 0.1 s, all before the end (4 s)
    assert [d.arrivals[:2] for d in fleet] == [pytest.approx((k / 10, 0.5 + k / 10)) for k in range(5)]
    assert {len(d.arrivals) for d in fleet} == {8}
    poisson = build_fleet(2, policy="local", estimator="last", options=[LOCAL, RAW], allowed=[LOCAL, RAW],
                          traces=[steps], workload=Workload(2.0, "poisson", seed=5), device=QUIET)
    assert [d.arrivals for d in poisson] == [tuple(Workload(2.0, "poisson", seed=s).times(4.0)) for s in (5, 6)]


# --- routing ----------------------------------------------------------------------------------------------


def test_round_robin_takes_the_replicas_in_turn():
    # 5 devices at 0 and 1 s: the k-th request (in arrival order, devices in order) goes to replica k mod 3
    result = simulate_fleet([offloading((0.0, 1.0)) for _ in range(5)], FleetSimConfig(servers=3,
                                                                                        routing="round-robin"))
    assert [r.requests for r in result.replicas] == [4, 3, 3]
    assert [r.batch_sizes for r in result.replicas] == [(2, 2), (2, 1), (1, 2)]


def test_random_routing_is_seeded_and_uniform():
    def counts(seed: int) -> list[int]:
        devices = [offloading(tuple(k * 0.5 for k in range(20))) for _ in range(30)]
        result = simulate_fleet(devices, FleetSimConfig(servers=4, routing="random", seed=seed))
        return [r.requests for r in result.replicas]

    assert counts(1) == counts(1) and counts(1) != counts(2)
    assert sum(counts(1)) == 600 and all(abs(c - 150) < 40 for c in counts(1))  # sd 10.6


def test_least_queue_takes_the_shorter_of_two_queues_drawn_at_random():
    lengths = [5, 0, 3, 1]
    rng, rule = random.Random(0), ROUTING.get("least-queue")
    chosen = Counter(rule(4, turn, rng, lambda k: lengths[k]) for turn in range(6000))
    # of the 6 pairs, replica 1 wins the 3 it is in, replica 3 two, replica 2 one (with 0); 0 never wins
    assert chosen[0] == 0
    assert [chosen[k] / 6000 for k in (1, 2, 3)] == pytest.approx([1 / 2, 1 / 6, 1 / 3], abs=0.02)
    tie, draws = random.Random(7), random.Random(7).sample(range(4), 2)
    assert rule(4, 0, tie, lambda k: 2) == draws[0]  # a tie: the first drawn
    assert rule(1, 0, tie, lambda k: 9) == 0  # one replica: no draw


def test_least_queue_waits_less_than_random_routing():
    local = Option("local", "local", None, "-", 0.3, 0.0, 0, 0.0, {}, 0, True)
    raw = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 40_000, 0.002, {1: 0.04, 4: 0.1, 8: 0.16}, 4000,
                 True)
    waits = {}
    for routing in ("random", "least-queue"):
        fleet = build_fleet(64, policy="offload", estimator="last", options=[local, raw], allowed=[local, raw],
                            traces=[RateTrace.constant(8 * MBPS, 20.0)], workload=Workload(2.0, "poisson"),
                            device=DeviceConfig(rtt_s=0.04, downlink_bps=32 * MBPS))
        waits[routing] = simulate_fleet(fleet, FleetSimConfig(servers=4, routing=routing)).server_summary()
    assert waits["least-queue"]["queue_p95_ms"] < 0.9 * waits["random"]["queue_p95_ms"]


def test_a_device_learns_the_load_of_the_replica_that_answered():
    # round-robin over two replicas: devices 0 and 1 reach replicas 0 and 1 at 60 ms; device 2 (from 10 ms)
    # reaches replica 0 at 70 ms, while device 0's batch runs (60-72 ms). Device 0's answer reports device 2's
    # request waiting (12 ms to run), device 1's an idle replica
    result = simulate_fleet([offloading((0.0, 1.0)), offloading((0.0, 1.0)), offloading((0.01,))],
                            FleetSimConfig(servers=2, routing="round-robin"))
    assert [r.requests for r in result.replicas] == [3, 2]
    assert result.records[2][0].queue_s == pytest.approx(0.002)
    device0, device1 = result.records[0][1], result.records[1][1]
    assert (device0.reported_queue_s, device1.reported_queue_s) == (pytest.approx(0.012), 0.0)
    # ... but replica 0 was offered 24 ms of work in its first 72 ms (ρ = 1/3): by device 0's next request,
    # 0.9 s later, the 12 ms have long been worked off, and both devices expect to wait nothing
    assert (device0.predicted_queue_s, device1.predicted_queue_s) == (0.0, 0.0)
    assert (device0.predicted_s, device1.predicted_s) == (pytest.approx(0.093), pytest.approx(0.093))
    assert device0.queue_s == device1.queue_s == 0.0


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build, message", [
    (lambda: simulate_fleet([]), "a fleet needs at least one device, got 0"),
    (lambda: build_fleet(0, policy="local", estimator="last", options=[LOCAL], allowed=[LOCAL],
                         traces=[RateTrace.constant(MBPS)], workload=Workload(2.0), device=QUIET),
     "a fleet needs at least one device, got 0"),
    (lambda: FleetSimConfig(servers=0), "--servers must be a whole number >= 1, got 0"),
    (lambda: FleetSimConfig(routing="least-queu"), "unknown routing rule 'least-queu'; did you mean 'least-queue'"),
    (lambda: FleetSimConfig(max_batch_size=0), "the max batch size must be a whole number >= 1, got 0"),
    (lambda: build_fleet(2, policy="local", estimator="last", options=[LOCAL], allowed=[LOCAL],
                         traces=[RateTrace.constant(MBPS)], workload=Workload(math.nan), device=QUIET),
     "--fps must be a finite number > 0, got nan"),
    (lambda: build_fleet(2, policy="local", estimator="last", options=[LOCAL], allowed=[LOCAL],
                         traces=[RateTrace.constant(MBPS)], workload=Workload(2.0, duration_s=math.inf), device=QUIET),
     "--duration must be a finite number > 0, got inf"),
    (lambda: offloading((1.0, 0.5)), "arrival times must be finite, >= 0 and ascending"),
])
def test_bad_input_is_an_error_that_says_what_is_allowed(build, message):
    with pytest.raises(EdgesplitError, match=re.escape(message)):
        build()


# --- the command line -------------------------------------------------------------------------------------


def _steps(folder: Path) -> str:
    path = folder / "trace.tsv"
    path.write_text("0 0.2\n5 20\n10 0.2\n15 20\n")  # Mbit/s: alternately slow and fast, 20 s
    return str(path)


def test_simulate_fleet_prints_a_table_per_fleet_size_and_writes_json_and_plots(  # noqa: F811
        profiles, monkeypatch, capsys, tmp_path):
    out = tmp_path / "fleet.json"
    code, stdout, err = run(monkeypatch, capsys, "simulate-fleet", "--device-profile", str(profiles / "device.json"),
                            "--server-profile", str(profiles / "server.json"), "--trace", _steps(tmp_path),
                            "--devices", "1,4", "--policies", "dsc,offload,local", "--servers", "2", "--routing",
                            "round-robin", "--fps", "5", "--duration", "10", "--json", str(out),
                            "--plot", str(tmp_path / "fleet"))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert (data["servers"], data["routing"], list(data["devices"])) == (2, "round-robin", ["1", "4"])
    for count, entry in data["devices"].items():
        assert list(entry) == ["policies", "server"] and list(entry["policies"]) == ["dsc", "offload", "local"]
        for summary in entry["policies"].values():
            assert list(summary) == ["mean_ms", "p50_ms", "p95_ms", "answered", "count", "fallbacks", "cuts", "load_errors",
                                     "mean_energy_mj"]
            assert summary["count"] == sum(summary["cuts"].values()) == 50 * int(count)  # 10 s at 5 fps each
        assert list(entry["server"]["offload"]) == ["utilisation", "mean_batch", "queue_p95_ms"]
        assert entry["policies"]["local"]["answered"] == 0
        assert entry["server"]["local"] == {"utilisation": 0.0, "mean_batch": 0.0, "queue_p95_ms": 0.0}
        assert entry["policies"]["offload"]["cuts"] == {"offload:raw": 50 * int(count)}
    assert data["devices"]["4"]["server"]["offload"]["utilisation"] > data["devices"]["1"]["server"]["offload"][
        "utilisation"] > 0
    for suffix in ("latency", "options"):
        assert (tmp_path / f"fleet-{suffix}.png").read_bytes()[:4] == b"\x89PNG"
    assert "4 devices" in stdout and "queue p95 ms" in stdout


@pytest.mark.parametrize("args, message", [
    (["--devices", "0"], "--devices takes whole numbers >= 1 separated by commas, e.g. 1,4,16; got '0'"),
    (["--devices", "1,x"], "got '1,x'"),
    (["--devices", "1", "--servers", "0"], "--servers must be a whole number >= 1, got 0"),
    (["--devices", "1", "--routing", "nearest"], "unknown routing rule 'nearest'"),
    (["--devices", "1", "--fps", "nan"], "--fps must be a finite number > 0, got nan"),
    (["--devices", "1", "--duration", "-1"], "--duration must be a finite number > 0, got -1"),
    (["--devices", "1", "--policies", "dcs"], "unknown policy 'dcs'; did you mean 'dsc'"),
    (["--devices", "2000000", "--duration", "10"], "more than the limit of 10,000,000"),
])
def test_simulate_fleet_bad_input_is_one_line(profiles, monkeypatch, capsys, tmp_path, args, message):  # noqa: F811
    code, _, err = run(monkeypatch, capsys, "simulate-fleet", "--device-profile", str(profiles / "device.json"),
                       "--server-profile", str(profiles / "server.json"), "--trace", _steps(tmp_path), *args)
    assert code == 2 and err.startswith("edgesplit: error: ") and message in err and err.count("\n") == 1
