"""The trace-driven simulator: exact latencies on hand-made traces, FIFO device and uplink, what the
estimator may know and when, probes, the batching server, and the summary."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterator

import pytest

from edgesplit.errors import EdgesplitError
from edgesplit.estimators import LastSample, make_estimator
from edgesplit.latency import LinkState, Option, ServerState, latency
from edgesplit.policies import Decision, Policy, State, make_policy
from edgesplit.device import (MET_MAX_AGE_S, ROUND_TRIPS, DeviceConfig, DeviceCore, LoadUpdate, Outcome, RateBound,
                              RateSample, RequestRecord, RoundTrip, summarize)
from edgesplit.sim import SimConfig, Workload, simulate
from edgesplit.load import LoadReport
from edgesplit.sim.server import BatchingServer, Served, _Job
from edgesplit.traces import LoadTrace, RateTrace

MBPS = 1e6

LOCAL = Option("local", "local", None, "-", 0.1, 0.0, 0, 0.0, {}, 0, True)
# 40000 B up; the server decodes for 2 ms and runs the model (10 ms alone, 20 ms for 4, 30 ms for 8); 4000 B back
RAW = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 40_000, 0.002, {1: 0.01, 4: 0.02, 8: 0.03}, 4000, True)
SPLIT = Option("split:c:fp32", "split", "c", "fp32", 0.03, 0.0, 10_000, 0.0, {1: 0.008, 4: 0.016}, 4000, True)
OPTIONS = [LOCAL, RAW, SPLIT]


def config(sequential: bool = False, background_fps: float = 2.0, **device) -> SimConfig:
    """The arithmetic below: 40 ms RTT, 32 Mbit/s down, 2 Mbit/s prior, a probe at most every second, no
    probe on connecting, no deadline; ``device`` overrides."""
    return SimConfig(DeviceConfig(**{"rtt_s": 0.04, "downlink_bps": 32 * MBPS, "prior_bps": 2 * MBPS,
                                     "probe_interval_s": 1.0, "probe_on_connect": False,
                                     "deadline_s": math.inf, **device}), sequential=sequential,
                     background_fps=background_fps)


CONFIG = config()


def run(policy: str | Policy, trace: RateTrace, *, fps: float = 2.0, duration_s: float | None = None,
        options: list[Option] = OPTIONS, config: SimConfig = CONFIG, estimator: str = "last",
        load: LoadTrace | None = None, arrivals: str = "periodic", seed: int = 0) -> list[RequestRecord]:
    if isinstance(policy, str):
        policy = make_policy(policy, options, LinkState(trace.mean_bps(), config.device.rtt_s,
                                                        config.device.downlink_bps))
    return simulate(policy, make_estimator(estimator), options, trace, Workload(fps, arrivals, duration_s, seed),
                    config, load)  # type: ignore[arg-type]


class Script(Policy):
    """A test policy that plays a fixed sequence of options (not pure: for driving the loop only)."""

    name = "script"

    def __init__(self, *names: str) -> None:
        self._names: Iterator[str] = iter(names)

    def choose(self, state: State, options: list[Option]) -> Decision:
        name = next(self._names)
        return Decision(next(o for o in options if o.name == name), 0.0)


# --- one request: the simulator agrees with the latency model -------------------------------------


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_a_lone_request_at_a_constant_rate_takes_what_the_model_says(option):
    records = run(f"static:{option.name}", RateTrace.constant(8 * MBPS), fps=1.0, duration_s=1.0)
    assert len(records) == 1
    r = records[0]
    expected = latency(option, LinkState(8 * MBPS, 0.04, 32 * MBPS), ServerState())
    assert r.latency_s == pytest.approx(expected, rel=1e-12)
    # the model's prediction used the prior, 2 Mbit/s: the link was not known yet
    assert r.predicted_s == pytest.approx(latency(option, LinkState(2 * MBPS, 0.04, 32 * MBPS), ServerState()))
    assert (r.index, r.arrival_s, r.option, r.kind, r.cut, r.bytes_sent) == (
        0, 0.0, option.name, option.kind, option.cut, option.bytes)
    assert (r.true_bps, r.estimated_bps) == (8 * MBPS, 2 * MBPS)
    if option.kind == "local":
        assert (r.upload_s, r.queue_s, r.compute_s, r.batch_size, r.measured_bps) == (None, None, None, 0, None)
        assert (r.executed, r.fallback_reason, r.bytes_sent) == ("local", None, 0)
    else:
        assert r.upload_s == pytest.approx(option.bytes * 8 / 8e6)
        assert r.queue_s == 0.0 and r.batch_size == 1
        assert r.compute_s == pytest.approx(option.tail_at(1))  # the tail alone, as a server's Server-Timing says
        assert r.measured_bps == pytest.approx(8 * MBPS)  # timed at the receiver: the rate itself
        assert (r.executed, r.fallback_reason, r.bytes_sent) == (option.kind, None, option.bytes)


def test_the_lone_offload_request_term_by_term():
    (r,) = run("offload", RateTrace.constant(8 * MBPS), fps=1.0, duration_s=1.0)
    # 40000 B at 8 Mbit/s 0.04 + rtt 0.04 + tail 0.01 + decode 0.002 + 4000 B at 32 Mbit/s 0.001
    assert r.latency_s == pytest.approx(0.093, abs=1e-12)


def test_the_servers_post_processing_comes_after_the_batch_once_per_request():
    made = dataclasses.replace(RAW, answer_s=0.005)  # a segmenter's classes, a detector's boxes: 5 ms each
    (r,) = run("offload", RateTrace.constant(8 * MBPS), fps=1.0, duration_s=1.0, options=[LOCAL, made])
    assert r.latency_s == pytest.approx(0.093 + 0.005, abs=1e-12)
    assert r.compute_s == pytest.approx(0.01)  # the tail alone, as a server's Server-Timing says
    assert r.latency_s == pytest.approx(latency(made, LinkState(8 * MBPS, 0.04, 32 * MBPS), ServerState()), rel=1e-12)


def test_a_transfer_across_a_rate_change_takes_the_integrated_time():
    # 1 Mbit/s for 1 s, then 3 Mbit/s; the head ends at 0.5 s: 2 Mbit = 0.5 Mbit by 1 s + 1.5 Mbit in 0.5 s
    step = RateTrace("step", (0.0, 1.0), (1 * MBPS, 3 * MBPS), 2.0)
    option = Option("split:c:fp32", "split", "c", "fp32", 0.5, 0.0, 250_000, 0.0, {1: 0.1}, 0, True)
    (r,) = run("static:c", step, fps=0.5, options=[LOCAL, option])
    assert r.upload_s == pytest.approx(1.0, abs=1e-12)
    assert r.latency_s == pytest.approx(0.5 + 1.0 + 0.04 + 0.1, abs=1e-12)
    assert r.true_bps == 1 * MBPS  # the rate when it was decided


def test_a_transfer_across_an_outage_waits_it_out():
    outage = RateTrace("outage", (0.0, 1.0, 2.0), (1 * MBPS, 0.0, 1 * MBPS), 3.0)
    option = Option("split:c:fp32", "split", "c", "fp32", 0.5, 0.0, 125_000, 0.0, {1: 0.1}, 0, True)
    (r,) = run("static:c", outage, fps=0.5, duration_s=2.0, options=[LOCAL, option])
    assert r.upload_s == pytest.approx(2.0, abs=1e-12)  # 0.5 Mbit, 1 s of nothing, 0.5 Mbit


def test_the_next_estimate_is_the_goodput_timed_at_the_receiver():
    step = RateTrace("step", (0.0, 1.0), (1 * MBPS, 3 * MBPS), 2.0)
    option = Option("split:c:fp32", "split", "c", "fp32", 0.5, 0.0, 250_000, 0.0, {1: 0.1}, 0, True)
    records = run("static:c", step, fps=0.5, duration_s=4.0, options=[LOCAL, option])
    # the first 1448 B arrive 11.584 ms after the upload starts (at 1 Mbit/s); the other 248552 B by 1.0 s
    assert [r.estimated_bps for r in records] == [2 * MBPS, pytest.approx(248_552 * 8 / (1.0 - 0.011584))]
    assert records[1].upload_s == pytest.approx(1.0)  # the trace repeats: the same crossing at 2.5 s


def test_a_frame_too_small_to_time_teaches_nothing_so_the_device_probes():
    # 2896 B = two segments: one after the first, less than MIN_TIMED_BYTES (2 × 1448): no sample from it.
    # The newest sample is older than the probe interval (1 s) at 1.5 s: a probe goes after the answer
    small = Option("split:d:fp32", "split", "d", "fp32", 0.01, 0.0, 2896, 0.0, {1: 0.001}, 0, True)
    records = run("static:d", RateTrace.constant(8 * MBPS, 4.0), fps=2.0, options=[LOCAL, small])
    assert {r.measured_bps for r in records} == {None}
    # each probe goes after the answer of request 0, 3 and 6, before the next is taken up (counted with it)
    probes = [r.index for r in records if r.probe_bytes]
    assert probes == [1, 4, 7] and {records[i].probe_bytes for i in probes} == {16_000}
    # the first probe (sent after request 0's answer at 0.057 s, 16000 B at 8 Mbit/s, known 0.04 s after) teaches
    assert [r.estimated_bps for r in records[:2]] == [2 * MBPS, pytest.approx(8 * MBPS)]
    summary = summarize(records)
    assert summary["probe_bytes_per_s"] == pytest.approx(3 * 16_000 / 3.5)


# --- arrivals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps, duration, count", [(2.0, 3.0, 6), (2.5, 4.0, 10), (4.0, 2.5, 10), (0.5, 1.0, 1),
                                                   (2.5, 1.0, 3), (100.0, 0.29, 29)])
def test_periodic_arrivals(fps, duration, count):
    times = Workload(fps).times(duration)  # every k / fps before the end
    assert len(times) == count and all(t < duration for t in times)
    assert times == pytest.approx([k / fps for k in range(count)])


def test_the_simulation_covers_one_pass_over_the_trace_by_default():
    records = run("local", RateTrace.constant(8 * MBPS, duration_s=3.0), fps=2.0)
    assert [r.arrival_s for r in records] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [r.index for r in records] == list(range(6))
    assert len(run("local", RateTrace.constant(8 * MBPS, duration_s=3.0), fps=2.0, duration_s=7.5)) == 15


def test_poisson_arrivals_are_seeded_and_have_the_right_rate():
    workload = Workload(10.0, "poisson", seed=7)
    times = workload.times(1000.0)
    assert times == Workload(10.0, "poisson", seed=7).times(1000.0)  # reproducible
    assert times != Workload(10.0, "poisson", seed=8).times(1000.0)
    assert all(0 < a < b < 1000 for a, b in zip(times, times[1:]))
    assert len(times) / 1000 == pytest.approx(10.0, rel=0.03)  # 10000 expected, sd 100
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert statistics.fmean(gaps) == pytest.approx(0.1, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(0.1, rel=0.05)  # exponential: sd = mean


def test_poisson_arrivals_in_the_simulation():
    first = run("dsc", RateTrace.constant(8 * MBPS, 50.0), fps=4.0, arrivals="poisson", seed=3)
    again = run("dsc", RateTrace.constant(8 * MBPS, 50.0), fps=4.0, arrivals="poisson", seed=3)
    assert first == again
    assert [r.arrival_s for r in first] == Workload(4.0, "poisson", seed=3).times(50.0)


@pytest.mark.parametrize("fps", [0.0, -1.0, float("nan"), float("inf")])
def test_an_fps_that_is_not_finite_and_positive_is_an_error(fps):
    with pytest.raises(EdgesplitError, match=rf"--fps must be a finite number > 0, got {fps:g}"):
        Workload(fps).times(10.0)


# --- the device, the uplink and the estimator -------------------------------------------------------


def test_the_device_queues_requests_first_come_first_served():
    slow = Option("local", "local", None, "-", 0.3, 0.0, 0, 0.0, {}, 0, True)
    records = run("local", RateTrace.constant(8 * MBPS, 2.0), fps=5.0, options=[slow, RAW])
    # each request waits 0.3 - 0.2 s longer than the one before it
    assert [r.latency_s for r in records] == pytest.approx([0.3 + 0.1 * k for k in range(10)], abs=1e-12)


def test_the_uplink_queues_transfers_first_come_first_served():
    # 40000 B take 0.16 s at 2 Mbit/s but a request arrives every 0.1 s: each waits 0.06 s more for the link
    records = run("offload", RateTrace.constant(2 * MBPS, 1.0), fps=10.0)
    alone = 0.16 + 0.04 + 0.012 + 0.001
    assert [r.latency_s for r in records] == pytest.approx([alone + 0.06 * k for k in range(10)], abs=1e-12)
    assert all(r.upload_s == pytest.approx(0.16) for r in records)  # the wait is not the transfer
    assert all(r.queue_s == 0.0 for r in records)  # the server keeps up


def test_the_estimator_learns_only_from_answers_that_came_back():
    # a request every 0.05 s, each answered 0.093 s after it starts: request 1 is decided before request 0's
    # answer is back, so it still sees the prior; request 2 sees request 0's goodput
    records = run("offload", RateTrace.constant(8 * MBPS, 0.5), fps=20.0)
    assert [r.estimated_bps for r in records[:4]] == [2 * MBPS, 2 * MBPS, pytest.approx(8 * MBPS),
                                                      pytest.approx(8 * MBPS)]
    prior = latency(RAW, LinkState(2 * MBPS, 0.04, 32 * MBPS), ServerState())
    # request 1 believes request 0's 40000 B still queued, less what 2 Mbit/s carried in 0.05 s: 27500 B
    queued = latency(RAW, LinkState(2 * MBPS, 0.04, 32 * MBPS, backlog_bytes=27_500), ServerState())
    assert queued == pytest.approx(prior + 0.11)
    assert [r.predicted_s for r in records[:3]] == pytest.approx([prior, queued, 0.093])


def test_the_estimate_follows_the_last_completed_transfer():
    # 8 Mbit/s until 0.5 s, then 4 Mbit/s: each answer is back before the next request (every 0.25 s)
    step = RateTrace("step", (0.0, 0.5), (8 * MBPS, 4 * MBPS), 1.0)
    records = run("offload", step, fps=4.0)
    assert [r.true_bps for r in records] == [8 * MBPS, 8 * MBPS, 4 * MBPS, 4 * MBPS]
    assert [r.estimated_bps for r in records] == pytest.approx([2 * MBPS, 8 * MBPS, 8 * MBPS, 4 * MBPS])


def test_probes_teach_a_device_that_runs_locally():
    # a probe is 16000 B: 0.016 s at 8 Mbit/s, known after the rtt (0.056 s); the next probe once the newest
    # sample is over 1 s old (at 1.1 s, still 8 Mbit/s; at 2.2 s, now 4 Mbit/s, known at 2.272 s)
    step = RateTrace("step", (0.0, 2.0), (8 * MBPS, 4 * MBPS), 4.0)
    quick = Option("local", "local", None, "-", 0.05, 0.0, 0, 0.0, {}, 0, True)
    records = run("local", step, fps=10.0, duration_s=3.0, options=[quick, RAW])
    assert [r.estimated_bps for r in records] == pytest.approx([2 * MBPS] + [8 * MBPS] * 22 + [4 * MBPS] * 7)
    assert all(r.latency_s == pytest.approx(0.05) for r in records)  # probing costs the requests nothing


def test_the_device_measures_its_uplink_when_it_connects():
    trace = RateTrace("steps", (0.0, 1.0), (8 * MBPS, 1 * MBPS), 2.0)
    records = run("local", trace, fps=2.0, config=config(probe_interval_s=math.inf, probe_on_connect=True))
    assert [r.estimated_bps for r in records] == [8 * MBPS] * 4  # the link at 0, not the prior; no probe after
    outage = RateTrace("outage", (0.0, 1.0), (0.0, 1 * MBPS), 2.0)
    records = run("local", outage, fps=2.0, config=config(probe_interval_s=math.inf, probe_on_connect=True))
    assert records[0].estimated_bps == 2 * MBPS  # a probe into an outage tells nothing: the prior it is


def test_no_probe_without_a_stale_sample():
    records = run("local", RateTrace.constant(8 * MBPS, 3.0), fps=10.0,
                  config=config(rtt_s=0.04, prior_bps=2 * MBPS, probe_interval_s=math.inf, probe_on_connect=False))
    assert {r.estimated_bps for r in records} == {2 * MBPS}  # no probe: the prior throughout


def test_answers_known_at_the_same_instant_are_both_learnt():
    # request 0 offloads 1 Mbit at 4 Mbit/s (0.25 s) and is answered at 0.625 s; request 1 runs locally at
    # 0.25 s and sends a 0.5 Mbit probe (0.125 s) known at 0.625 s too: both samples are 4 Mbit/s
    offload = Option("offload:raw", "offload", None, "raw", 0.0, 0.0, 125_000, 0.0, {1: 0.125}, 0, True)
    local = Option("local", "local", None, "-", 0.25, 0.0, 0, 0.0, {}, 0, True)
    cfg = config(rtt_s=0.25, prior_bps=2 * MBPS, probe_bytes=62_500, probe_on_connect=False)
    records = run(Script("offload:raw", "local", "local", "local"), RateTrace.constant(4 * MBPS), fps=4.0,
                  options=[local, offload], config=cfg)
    assert records[0].latency_s == 0.625
    assert [r.estimated_bps for r in records] == pytest.approx([2 * MBPS, 2 * MBPS, 2 * MBPS, 4 * MBPS])


# --- the batching server ----------------------------------------------------------------------------


def tail(base: float, per_item: float):
    return lambda b: base + per_item * b


def enqueue(server: BatchingServer, arrival_s: float, key: str, tail_time) -> _Job:
    """Queue a job without running the server (serve() always runs until its job is done)."""
    return server.submit(arrival_s, key, tail_time)


def test_jobs_for_the_same_key_run_as_one_batch():
    server = BatchingServer(8, None, 0.0, tail(0, 0))
    a, b = enqueue(server, 0.0, "k", tail(0.1, 0.05)), enqueue(server, 0.0, "k", tail(0.1, 0.05))
    served = server.serve(0.0, "k", tail(0.1, 0.05))
    assert served == Served(queue_s=0.0, tail_s=pytest.approx(0.25), done_s=pytest.approx(0.25), batch_size=3)
    assert (a.start_s, a.done_s, a.batch_size) == (0.0, pytest.approx(0.25), 3)
    assert (b.start_s, b.done_s, b.batch_size) == (0.0, pytest.approx(0.25), 3)
    assert server.free_at == pytest.approx(0.25)


def test_batches_are_at_most_max_batch_size():
    server = BatchingServer(2, None, 0.0, tail(0, 0))
    a, b = enqueue(server, 0.0, "k", tail(0.1, 0.05)), enqueue(server, 0.0, "k", tail(0.1, 0.05))
    served = server.serve(0.0, "k", tail(0.1, 0.05))
    assert (a.batch_size, b.batch_size, a.done_s) == (2, 2, pytest.approx(0.2))
    assert served == Served(pytest.approx(0.2), pytest.approx(0.15), pytest.approx(0.35), 1)


def test_different_keys_run_as_separate_batches_first_come_first_served():
    server = BatchingServer(8, None, 0.0, tail(0, 0))
    a = enqueue(server, 0.0, "a", tail(0.1, 0.0))
    b = enqueue(server, 0.01, "b", tail(0.2, 0.0))
    served = server.serve(0.02, "c", tail(0.3, 0.0))
    assert (a.start_s, a.done_s, a.batch_size) == (0.0, 0.1, 1)
    assert (b.start_s, b.done_s, b.batch_size) == (0.1, pytest.approx(0.3), 1)
    assert served == Served(pytest.approx(0.28), pytest.approx(0.3), pytest.approx(0.6), 1)


def test_a_later_job_joins_the_oldest_jobs_batch():
    # x keeps the server busy until 1 s; then the oldest waiting job is a, and c (same key) joins its batch
    # ahead of b; a job that arrives after a batch started waits for the next one
    server = BatchingServer(8, None, 0.0, tail(0, 0))
    server.serve(0.0, "x", tail(1.0, 0.0))
    a, b = enqueue(server, 0.1, "a", tail(0.1, 0.1)), enqueue(server, 0.2, "b", tail(0.5, 0.0))
    served = server.serve(0.3, "a", tail(0.1, 0.1))
    assert served == Served(pytest.approx(0.7), pytest.approx(0.3), pytest.approx(1.3), 2)
    assert (a.start_s, a.done_s, a.batch_size) == (1.0, pytest.approx(1.3), 2)
    late = server.serve(1.2, "b", tail(0.5, 0.0))  # b has waited since 0.2 s: they run together at 1.3 s
    assert (b.start_s, b.batch_size) == (pytest.approx(1.3), 2)
    assert late == Served(pytest.approx(0.1), 0.5, pytest.approx(1.8), 2)


def test_the_report_counts_the_remaining_and_the_queued_work():
    server = BatchingServer(2, None, 0.0, tail(0, 0))
    assert server.report(0.0) == LoadReport(0.0, 0, 2, 0.0)
    server.serve(0.0, "x", tail(1.0, 0.0))  # brings 1 s of work
    assert server.report(0.4) == LoadReport(pytest.approx(0.6), 0, 2, 1.0 / 0.4)  # the batch in progress
    enqueue(server, 0.5, "a", tail(0.1, 0.1))  # a new batch: 0.2 s
    enqueue(server, 0.6, "b", tail(0.5, 0.0))  # 0.5 s
    enqueue(server, 0.7, "a", tail(0.1, 0.1))  # joins a's batch: 0.3 - 0.2 s
    enqueue(server, 0.75, "a", tail(0.1, 0.1))  # a's batch is full (2): a new one, 0.2 s
    # 0.2 s left of x, then a in batches of at most 2 (0.3 s + 0.2 s), and b (0.5 s); 2 s of work in 0.8 s
    assert server.report(0.8) == LoadReport(pytest.approx(0.2 + 0.3 + 0.2 + 0.5), 4, 2, pytest.approx(2.0 / 0.8))
    # at 1.1 s the first a batch (a at 0.5 and 0.7) has run for 0.1 s: 0.2 s of it left, then b, then a
    assert server.report(1.1) == LoadReport(pytest.approx(0.2 + 0.5 + 0.2), 2, 2, pytest.approx(2.0 / 1.1))
    # everything has run by then, and nothing arrived in the last WORK_WINDOW_S
    assert server.report(5.0) == LoadReport(0.0, 0, 2, 0.0)


def test_background_load_is_seeded():
    def serve_all(seed: int) -> list[Served]:
        server = BatchingServer(4, LoadTrace.constant(10), 5.0, tail(0.01, 0.005), seed=seed)
        return [server.serve(0.1 * k, "ours", tail(0.01, 0.005)) for k in range(50)]

    assert serve_all(1) == serve_all(1)
    assert serve_all(1) != serve_all(2)


def test_no_background_without_load():
    for load in (None, LoadTrace.constant(0)):
        server = BatchingServer(4, load, 5.0, tail(0.01, 0.005))
        served = [server.serve(0.1 * k, "ours", tail(0.01, 0.005)) for k in range(20)]
        assert all(s == Served(0.0, pytest.approx(0.015), pytest.approx(0.1 * k + 0.015), 1)
                   for k, s in enumerate(served))


def test_a_loaded_server_makes_requests_wait():
    trace = RateTrace.constant(8 * MBPS, 20.0)
    quiet = run("offload", trace, fps=5.0)
    # 30 other clients at 5 fps: 150 whole-model requests a second, batched up to 8 (30 ms a batch)
    busy = run("offload", trace, fps=5.0, load=LoadTrace.constant(30),
               config=config(rtt_s=0.04, downlink_bps=32 * MBPS, background_fps=5.0))
    assert all(r.queue_s == 0.0 for r in quiet)
    assert sum(r.queue_s > 0 for r in busy) > len(busy) / 2
    assert statistics.fmean(r.latency_s for r in busy) > statistics.fmean(r.latency_s for r in quiet) + 0.005
    for r in busy:  # the latency is the sum of its parts: the frame's decoding (2 ms), its 4000 B back (1 ms)
        assert r.latency_s == pytest.approx(r.upload_s + 0.04 + r.queue_s + RAW.decode_s + r.compute_s + 0.001)


def test_dsc_comes_back_when_a_load_spike_ends():
    # 40 other clients for the first second, then none; offload (0.093 s) beats local (0.1 s) on an idle server.
    # The probes' answers report the load: busy at first (dsc stays local), idle from the probe at 1.2 s on
    spike = LoadTrace("spike", (0.0, 1.0), (40.0, 0.0), 10.0)
    records = run("dsc", RateTrace.constant(8 * MBPS, 10.0), fps=5.0, duration_s=4.0, load=spike,
                  options=[LOCAL, RAW], config=config(rtt_s=0.04, downlink_bps=32 * MBPS, background_fps=5.0,
                                                         probe_on_connect=False))
    assert [r.option for r in records if r.arrival_s < 1.3] == ["local"] * 7
    after = [r for r in records if r.arrival_s > 1.3]
    assert [r.option for r in after] == ["offload:raw"] * 13
    assert [r.latency_s for r in after] == pytest.approx([0.093] * 13)


# --- policies over a changing link ------------------------------------------------------------------


ALTERNATING = RateTrace("alternating", (0.0, 5.0), (1 * MBPS, 100 * MBPS), 10.0)  # local, then offload wins


def mean_ms(policy: str) -> float:
    records = run(policy, ALTERNATING, fps=2.0, duration_s=40.0, options=[LOCAL, RAW])
    return summarize(records)["mean_ms"]


def test_dynamic_split_beats_both_static_options_and_the_oracle_beats_it():
    local, offload, dsc, oracle = (mean_ms(p) for p in ("local", "offload", "dsc", "oracle"))
    assert local == pytest.approx(100.0)
    # offload: 0.373 s at 1 Mbit/s, 0.0562 s at 100 Mbit/s (but a transfer that meets the drop is slower)
    assert offload > (373 + 56.2) / 2
    assert oracle <= dsc < min(local, offload)
    # the oracle picks the best option for the rate at each request: half 100 ms, half 56.2 ms
    assert oracle == pytest.approx((100 + 56.2) / 2, abs=1e-9)


def test_dsc_switches_with_the_link():
    # local from the start (prior 2 Mbit/s); probes at 0, 1.5, 3, 4.5 s see 1 Mbit/s (16000 B: 0.128 s + rtt);
    # the one at 6 s sees 100 Mbit/s, known at 6.041 s: offload from 6.5 s; the request at 10 s still offloads
    # (into the drop: 0.32 s up) and its goodput, 1 Mbit/s, sends dsc back to local at 10.5 s
    records = run("dsc", ALTERNATING, fps=2.0, duration_s=20.0, options=[LOCAL, RAW])
    period = ["local"] * 13 + ["offload:raw"] * 7
    assert [r.option for r in records] == period + ["offload:raw"] + period[1:]
    assert records[20].latency_s == pytest.approx(0.373)
    assert [r.estimated_bps for r in records[12:15]] == pytest.approx([1 * MBPS, 100 * MBPS, 100 * MBPS])


# --- summarize --------------------------------------------------------------------------------------


def record(index: int, latency_s: float, option: str = "local", bytes_: int = 0, *, true_bps: float | None = 1e6,
           estimated_bps: float = 1e6, fallback: str | None = None, probe_bytes: int = 0) -> RequestRecord:
    kind = option.partition(":")[0]
    return RequestRecord(index, index * 0.5, option, kind, None, "-", 0.1, estimated_bps, true_bps, latency_s,
                         probe_bytes, "local" if fallback else kind, fallback, bytes_, None, None, None, None, 0, None)


def test_summarize_exact_statistics():
    records = [record(0, 0.4, "split:c:fp32", 1000), record(1, 0.1), record(2, 1.0, "offload:raw", 4000),
               record(3, 0.2), record(4, 0.3, "split:c:fp32", 1000)]
    summary = summarize(records, deadline_s=0.35)
    assert summary == {
        "mean_ms": pytest.approx(400.0),
        "p50_ms": pytest.approx(300.0),
        "p95_ms": pytest.approx(880.0),  # position 3.8 of [100, 200, 300, 400, 1000]: 400 + 0.8 × 600
        "p99_ms": pytest.approx(976.0),  # position 3.96
        "miss_rate": 0.4,  # 0.4 s and 1.0 s
        "mean_bytes": 1200.0,
        "count": 5,
        "mean_energy_mj": 0.0,  # these records hold no energy: tests/test_energy.py
        "mean_radio_mj": 0.0,
        "fallbacks": 0,
        "probe_bytes_per_s": 0.0,
        "stale_estimate_s": 0.0,
        "cuts": {"split:c:fp32": 2, "local": 2, "offload:raw": 1},
    }
    assert list(summary["cuts"]) == ["split:c:fp32", "local", "offload:raw"]  # most used first, ties in order


def test_summarize_without_a_deadline_misses_nothing():
    summary = summarize([record(0, 5.0), record(1, 7.0)])
    assert summary["miss_rate"] == 0.0
    assert (summary["mean_ms"], summary["p50_ms"], summary["p99_ms"]) == (6000.0, 6000.0, pytest.approx(6980.0))


def test_summarize_of_one_request():
    summary = summarize([record(0, 0.25)], deadline_s=0.25)
    assert summary["p50_ms"] == summary["p95_ms"] == summary["p99_ms"] == summary["mean_ms"] == 250.0
    assert summary["miss_rate"] == 0.0  # exactly on the deadline is in time


def test_summarize_of_nothing_is_an_error():
    with pytest.raises(EdgesplitError, match="no request arrived"):
        summarize([])


def test_fallbacks_and_probes_in_the_summary():
    records = [record(0, 0.3, probe_bytes=16_000), record(1, 0.3, "offload:raw", 40, fallback="deadline"),
               record(2, 0.3, probe_bytes=16_000), record(3, 0.3, "offload:raw", 40, fallback="deadline")]
    summary = summarize(records)
    assert (summary["fallbacks"], summary["probe_bytes_per_s"]) == (2, 32_000 / 1.5)  # over 0 … 1.5 s


def test_the_stale_estimate_is_the_longest_blind_stretch():
    # blind: the true rate more than twice an estimate that stays within 1 %
    estimates = [1e6, 1e6, 1.005e6, 1e6, 3e6, 1e6, 1e6, 1e6, 1e6]
    truths = [3e6, 3e6, 3e6, 3e6, 3e6, 3e6, 3e6, 1.5e6, 3e6]
    records = [record(k, 0.1, true_bps=t, estimated_bps=e) for k, (e, t) in enumerate(zip(estimates, truths))]
    assert summarize(records)["stale_estimate_s"] == 1.5  # requests 0–3 (0 … 1.5 s); 5–6 make 0.5 s
    assert summarize([record(0, 0.1, true_bps=None)])["stale_estimate_s"] is None  # unknown truth


def test_request_to_dict():
    assert record(2, 0.3, "offload:raw", 40).to_dict() == {
        "index": 2, "arrival_s": 1.0, "option": "offload:raw", "kind": "offload", "cut": None, "codec": "-",
        "probe_bytes": 0, "executed": "offload", "fallback_reason": None, "bytes_sent": 40, "batch_size": 0,
        "top1": None, "predicted_ms": 100.0, "latency_ms": 300.0, "upload_ms": None, "queue_ms": None,
        "compute_ms": None, "estimated_mbps": 1.0, "true_mbps": 1.0, "measured_mbps": None,
        "reported_queue_ms": None, "predicted_queue_ms": None, "edge": None, "answer": None, "compute_mj": 0.0,
        "radio_mj": 0.0, "energy_mj": 0.0}


def test_the_estimator_is_reset_for_each_run():
    estimator = LastSample()
    estimator.update(123.0)
    policy = make_policy("dsc", OPTIONS, LinkState(8 * MBPS))
    records = simulate(policy, estimator, OPTIONS, RateTrace.constant(8 * MBPS), Workload(2.0), CONFIG)
    assert records[0].estimated_bps == 2 * MBPS  # the prior, not the stale 123 bit/s


# --- behaving like the live client: one request at a time, and a deadline that falls back locally --


def test_a_sequential_device_starts_a_request_only_once_the_previous_is_answered():
    trace = RateTrace.constant(8 * MBPS)
    pipelined = run(Script("offload:raw", "offload:raw"), trace, fps=20.0, duration_s=0.1)
    sequential = run(Script("offload:raw", "offload:raw"), trace, fps=20.0, duration_s=0.1,
                     config=config(rtt_s=0.04, downlink_bps=32 * MBPS, sequential=True))
    first = 0.04 + 0.04 + 0.002 + 0.01 + 4000 * 8 / (32 * MBPS)  # upload, RTT, decode, model, answer
    assert pipelined[0].latency_s == pytest.approx(first) and sequential[0].latency_s == pytest.approx(first)
    # pipelined, the second request (at 50 ms) finds the uplink free again; sequential, it waits for the answer
    assert pipelined[1].latency_s == pytest.approx(first)
    assert sequential[1].latency_s == pytest.approx(2 * first - 0.05)


def test_past_the_deadline_the_device_drops_the_upload_and_finishes_locally():
    trace = RateTrace("outage", (0.0, 1.0), (8 * MBPS, 0.0), 10.0)
    cfg = config(rtt_s=0.04, downlink_bps=32 * MBPS, deadline_s=0.5, sequential=True)
    records = run(Script("split:c:fp32", "split:c:fp32", "local"), trace, fps=1.0, duration_s=3.0,
                  config=cfg, estimator="last")
    assert records[0].latency_s == pytest.approx(0.03 + 0.01 + 0.04 + 0.008 + 0.001)  # answered in time
    stuck = records[1]  # its upload starts at 1.03 s, in the outage: given up at 1.5 s, the tail runs here
    assert stuck.latency_s == pytest.approx(0.5 + (0.1 - 0.03))
    assert records[2].latency_s == pytest.approx(0.1)  # the uplink was freed: nothing waits for it


def test_a_given_up_request_teaches_at_most_its_bytes_over_the_time_waited():
    trace = RateTrace.constant(8 * MBPS)
    cfg = config(rtt_s=0.04, downlink_bps=32 * MBPS, prior_bps=2 * MBPS, deadline_s=0.05, sequential=True,
                 probe_interval_s=math.inf)
    records = run(Script("offload:raw", "local"), trace, fps=1.0, duration_s=2.0, config=cfg)
    assert records[0].latency_s == pytest.approx(0.05 + 0.1)  # gave up at 50 ms, then the whole model here
    assert records[1].estimated_bps == pytest.approx(40_000 * 8 / 0.05)  # what the live client learns too
    # probing: the upload taught no sample, so a probe follows the fallback and measures the link itself
    cfg = config(downlink_bps=32 * MBPS, deadline_s=0.05, sequential=True, probe_interval_s=0.0)
    records = run(Script("offload:raw", "local"), trace, fps=1.0, duration_s=2.0, config=cfg)
    # counted with request 1: the probe after request 0's fallback, and one beside its own local run
    assert (records[1].probe_bytes, records[1].estimated_bps) == (32_000, pytest.approx(8 * MBPS))


def test_the_policy_is_told_which_recent_rates_are_bounds():
    local = Option("local", "local", None, "-", 0.1, 0.0, 0, 0.0, {}, 0, True)
    core = DeviceCore(make_policy("local", [local], LinkState(MBPS)), make_estimator("harmonic"), [local])
    core.learn([RateBound(2.0, 1 * MBPS), RateSample(1.0, 8 * MBPS), RateSample(3.0, 4 * MBPS)])  # learnt in time order
    state = core.state(3.5)
    assert state.recent_bps == (8 * MBPS, 1 * MBPS, 4 * MBPS)
    assert state.ceilings == (False, True, False)
    assert state.sample_age_s == pytest.approx(0.5)  # a bound is not a sample: it does not make the estimate fresh
    core.learn([RateSample(4.0 + k, 4 * MBPS) for k in range(4)])  # the bound leaves the window with its flag
    assert core.state(8.0).ceilings == (False,) * 5


def test_the_device_ages_the_load_report_and_remembers_the_waits_its_requests_met():
    local = Option("local", "local", None, "-", 0.1, 0.0, 0, 0.0, {}, 0, True)
    core = DeviceCore(make_policy("local", [local], LinkState(MBPS)), make_estimator("last"), [local],
                      DeviceConfig(rtt_s=0.04))
    assert core.reported(0.0) == ServerState()  # nothing heard yet
    core.learn([LoadUpdate(1.0, LoadReport(0.05, 2, 8, 1.5))])
    # made half an RTT before it was learnt: 0.02 + 0.5 s old at 1.5 s
    assert core.reported(1.5) == ServerState(0.05, growth=0.5, age_s=pytest.approx(0.52))
    decision, state = core.decide(1.5)
    for k, wait in enumerate((0.1, 0.2)):  # two answers that met 100 and 200 ms at the server
        core.record(2.0 + k, decision, state, Outcome("offload", queue_s=wait), 0.3)
    met = 0.7 * 0.1 + 0.3 * 0.2
    assert core.reported(3.3).met_s == pytest.approx(met)
    assert core.reported(3.3 + MET_MAX_AGE_S + 0.1).met_s == 0.0  # forgotten: not heard of for too long


def test_what_an_answer_says_of_the_server_counts_from_when_it_is_learnt():
    """A simulator that pipelines records request k before request k+1 is decided, with k's answer still
    to come: the wait it met and the server's speed must not reach k+1's decision early."""
    core = DeviceCore(make_policy("offload", OPTIONS, LinkState(MBPS)), make_estimator("last"), OPTIONS)
    decision, state = core.decide(0.0)
    core.record(1.0, decision, state, Outcome("offload", queue_s=0.1, compute_s=0.02, batch_size=1), 0.5)
    assert (core.reported(1.2).met_s, core.reported(1.2).compute_scale) == (0.0, 1.0)  # answered at 1.5 s
    assert core.reported(1.6).met_s == pytest.approx(0.1)
    assert core.reported(1.6).compute_scale == pytest.approx(2.0)


def test_the_device_learns_how_much_slower_than_its_profile_the_server_computes():
    """Server-Timing's compute over the profile's tail time (a geometric moving average): a server that
    other tenants slow down makes remote options dearer, within 4× either way, and is forgotten after
    MET_MAX_AGE_S without news."""
    core = DeviceCore(make_policy("offload", OPTIONS, LinkState(MBPS)), make_estimator("last"), OPTIONS)
    decision, state = core.decide(0.0)
    assert decision.option is RAW and state.reported.compute_scale == 1.0
    core.record(1.0, decision, state, Outcome("offload", compute_s=0.02, batch_size=1), 0.3)  # 2× the 10 ms profiled
    core.record(2.0, decision, state, Outcome("offload", compute_s=0.06, batch_size=4), 0.3)  # 3× the 20 ms of a 4-batch
    core.record(3.0, decision, state, Outcome("local", "deadline", compute_s=None), 0.9)  # no answer: teaches nothing
    scale = math.exp(0.7 * math.log(2) + 0.3 * math.log(3))
    assert core.reported(3.5).compute_scale == pytest.approx(scale)
    slower = latency(RAW, LinkState(MBPS), core.reported(3.5)) - latency(RAW, LinkState(MBPS), ServerState())
    assert slower == pytest.approx((scale - 1) * 0.01)
    core.record(4.0, decision, state, Outcome("offload", compute_s=10.0, batch_size=1), 0.3)  # 1000×: taken as 4×
    assert core.reported(4.5).compute_scale == pytest.approx(math.exp(0.7 * math.log(scale) + 0.3 * math.log(4)))
    assert core.reported(4.3 + MET_MAX_AGE_S + 0.1).compute_scale == 1.0


def test_the_device_measures_its_round_trip_from_what_its_answers_took():
    """An answer's exchange less its upload (at the rate it measured, else the estimate), the server's queue
    and compute, and what the profiles price (decode, the answer's download): the round trip the device
    prices remote options with, the median of the recent ones, the configured one until the first."""
    core = DeviceCore(make_policy("offload", OPTIONS, LinkState(MBPS)), make_estimator("last"), OPTIONS,
                      DeviceConfig(rtt_s=0.04, downlink_bps=32 * MBPS, prior_bps=2 * MBPS))
    assert core.rtt_s == 0.04 and core.state(0.0).estimated.rtt_s == 0.04
    timed = Outcome("offload", None, 40_000, 8 * MBPS, None, 0.005, 0.01, 1)
    # 0.2 s from sending to the answer: 0.04 s upload, 0.005 queue, 0.01 compute, 0.002 decode, 0.001 download
    assert core.round_trip(1.0, RAW, timed, 0.2) == RoundTrip(1.0, pytest.approx(0.142))
    untimed = Outcome("offload", None, 40_000, None, None, 0.005, 0.01, 1)  # at the prior 2 Mbit/s: 0.16 s upload
    assert core.round_trip(1.0, RAW, untimed, 0.2).seconds == pytest.approx(0.022)
    assert core.round_trip(1.0, RAW, untimed, 0.1).seconds == 0.0  # faster than priced: no negative round trip
    assert core.round_trip(1.0, RAW, Outcome("local", "deadline", 40_000), 0.5) is None  # no answer
    assert core.round_trip(1.0, RAW, Outcome("offload", None, 40_000), 0.2) is None  # no Server-Timing
    core.learn([RoundTrip(1.0, 0.10), RoundTrip(2.0, 0.30), RoundTrip(3.0, 0.06)])
    assert core.rtt_s == pytest.approx(0.10) and core.state(3.0).estimated.rtt_s == pytest.approx(0.10)
    offload = latency(RAW, core.state(3.0).estimated, ServerState())
    assert offload == pytest.approx(0.16 + 0.10 + 0.01 + 0.002 + 0.001)  # priced with the measured round trip
    core.learn([RoundTrip(4.0 + k, 0.05) for k in range(ROUND_TRIPS)])  # only the recent ones count
    assert core.rtt_s == pytest.approx(0.05)


def test_a_simulated_device_measures_the_simulated_round_trip():
    """In the simulator the rule finds the trace's round trip itself: every answered request teaches 40 ms,
    so what the device prices with never drifts from the truth."""
    cfg = config(sequential=True)
    records = run("offload", RateTrace.constant(8 * MBPS), fps=2.0, duration_s=3.0, config=cfg)
    assert all(r.executed == "offload" for r in records)
    assert {round(r.predicted_s, 9) for r in records[1:]} == {round(records[1].latency_s, 9)}


def test_the_deadline_counts_from_when_the_device_takes_the_request_up():
    slow = Option("local", "local", None, "-", 0.7, 0.0, 0, 0.0, {}, 0, True)
    cfg = config(rtt_s=0.04, downlink_bps=32 * MBPS, deadline_s=0.5, sequential=True)
    # request 1 arrives at 0.5 s but starts at 0.7 s: it still has the whole 0.5 s for its 0.093 s
    records = run(Script("local", "offload:raw"), RateTrace.constant(8 * MBPS), fps=2.0, duration_s=1.0,
                  options=[slow, RAW], config=cfg)
    assert records[1].latency_s == pytest.approx(0.2 + 0.093)


# --- hedging: the device runs the rest itself while it waits; the first answer wins ---------------


def test_a_hedged_request_is_never_later_than_the_devices_own_run():
    trace = RateTrace("outage", (0.0, 1.0), (8 * MBPS, 0.0), 10.0)
    cfg = config(rtt_s=0.04, downlink_bps=32 * MBPS, hedge=True, sequential=True)
    records = run(Script("split:c:fp32", "split:c:fp32", "offload:raw", "local"), trace, fps=1.0,
                  duration_s=4.0, config=cfg, estimator="last")
    assert records[0].latency_s == pytest.approx(0.03 + 0.01 + 0.04 + 0.008 + 0.001)  # the server was faster
    # in the outage: the tail here (70 ms after the 30 ms head) wins; the upload is dropped and teaches a bound
    assert records[1].latency_s == pytest.approx(0.1)
    assert records[2].latency_s == pytest.approx(0.1) and records[2].estimated_bps == pytest.approx(10_000 * 8 / 0.07)
    assert records[3].latency_s == pytest.approx(0.1)  # the uplink was freed


def test_a_hedge_the_server_beat_still_keeps_the_processor_busy():
    fast_server = config(rtt_s=0.0, downlink_bps=32 * MBPS, hedge=True)
    records = run(Script("offload:raw", "local"), RateTrace.constant(800 * MBPS), fps=50.0, duration_s=0.04,
                  config=fast_server)
    assert records[0].latency_s == pytest.approx(0.0004 + 0.002 + 0.01 + 0.001)  # the server's answer
    # the device's own run of request 0 (100 ms from 0 s) cannot be stopped: request 1 (at 20 ms) waits for it
    assert records[1].latency_s == pytest.approx(0.1 - 0.02 + 0.1)


@pytest.mark.parametrize("text", [None, "", "{}", "[" * 5000, '{"queue_wait_s": -1, "queue_length": 0, "max_batch_size": 1}',
                                  '{"queue_wait_s": "inf", "queue_length": 0, "max_batch_size": 1}',
                                  '{"queue_wait_s": 0.1, "queue_length": 0, "max_batch_size": 0}',
                                  '{"queue_wait_s": 0.1, "queue_length": 0, "max_batch_size": 1, "pad": "' + "x" * 1024 + '"}',
                                  '{"queue_wait_s": 0.1, "queue_length": 0, "max_batch_size": 1, "offered_load": -0.5}',
                                  '{"queue_wait_s": 0.1, "queue_length": 0, "max_batch_size": 1, "offered_load": "nan"}',
                                  '{"queue_wait_s": 0.1, "queue_length": 0, "max_batch_size": 1, "offered_load": 1e9}',
                                  '{"queue_wait_s": 0.1, "queue_length": 0, "max_batch_size": 1, "offered_load": [1]}',
                                  '[1, 2]'])
def test_a_malformed_load_report_is_none(text):
    assert LoadReport.parse(text) is None


def test_a_load_report_round_trips():
    report = LoadReport(0.125, 3, 8)
    assert report.to_header() == '{"queue_wait_s": 0.125, "queue_length": 3, "max_batch_size": 8}'
    assert LoadReport.parse(report.to_header()) == report and report.server_state() == ServerState(0.125, 1)
    # a report that says how fast work arrives: the device ages it, and the wait grows or drains from it
    report = LoadReport(0.125, 3, 8, 1.5)
    assert report.to_header() == ('{"queue_wait_s": 0.125, "queue_length": 3, "max_batch_size": 8, '
                                  '"offered_load": 1.5}')
    assert LoadReport.parse(report.to_header()) == report
    assert report.server_state(0.25) == ServerState(0.125, 1, growth=0.5, age_s=0.25)
    assert report.server_state(0.25).queue_at(0.25) == pytest.approx(0.125 + 0.5 * 0.5)
    assert LoadReport(0.125, 3, 8, 0.5).server_state(0.1).queue_at(0.15) == pytest.approx(0.125 - 0.5 * 0.25)
    assert LoadReport(0.125, 3, 8, 0.0).server_state(0.1).queue_at(0.5) == 0.0  # drained, not negative
