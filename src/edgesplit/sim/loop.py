"""The simulation loop: requests flow through the device, the uplink and the server, one at a time each.

The device's processor, its uplink and the server are each first-come first-served, so request k+1 may
compute its head while request k is still uploading. A policy decides when the device starts a request,
from what the device knows then: the estimator's prediction, built only from transfers whose result has
come back (the server reports when the body's first and last bytes arrived), and the load the server
reported with its last answer. A transfer takes exactly as long as the time-varying trace needs to deliver
its bytes. While the device runs everything locally it learns nothing about the link, so it sends a small
probe when its newest sample is older than ``probe_interval_s`` (as a real client must).

Two settings make it behave exactly like ``edgesplit run`` and the demo: ``sequential`` (the device
takes the next request only once the previous one is answered, as the live client does) and
``deadline_s`` (a request the server has not answered that long after the device took it up is given up
and finished on the device: an upload still in progress is dropped, and teaches the estimator that the
link gave at most its bytes over the time waited). Like the live client, the device measures its uplink
when it connects (``probe_on_connect``), and with ``hedge`` runs the rest itself while it waits: the first
answer wins, a local win drops the upload as a deadline does, and the processor stays busy until its own
run ends.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgesplit.errors import EdgesplitError
from edgesplit.estimators import PRIOR_BPS, PROBE_BYTES, PROBE_INTERVAL_S, Estimator
from edgesplit.latency import LinkState, Option, ServerState, find_option
from edgesplit.policies import Policy, State
from edgesplit.profile import quantile
from edgesplit.sim.server import BatchingServer
from edgesplit.traces import LoadTrace, RateTrace


@dataclass(frozen=True)
class Workload:
    """When requests arrive: every 1/fps seconds, or as a Poisson process of rate fps."""

    fps: float = 2.0
    arrivals: Literal["periodic", "poisson"] = "periodic"
    duration_s: float | None = None  # default: one pass over the trace
    seed: int = 0

    def times(self, duration_s: float) -> list[float]:
        if self.fps <= 0:
            raise EdgesplitError(f"--fps must be positive, got {self.fps}")
        if self.arrivals == "periodic":
            return [k / self.fps for k in range(math.ceil(duration_s * self.fps - 1e-9))]  # every k/fps < duration
        rng, t, out = random.Random(self.seed), 0.0, []
        while True:
            t += rng.expovariate(self.fps)
            if t >= duration_s:
                return out
            out.append(t)


@dataclass(frozen=True)
class SimConfig:
    rtt_s: float = 0.04
    deadline_s: float | None = None  # after starting a request, give up on the server then (as the live client)
    sequential: bool = False  # one request at a time, arrival to answer (as the live client)
    hedge: bool = False  # while waiting for the server, the device runs the rest itself; the first answer wins
    probe_on_connect: bool = True  # the device measures its uplink once before its first request
    downlink_bps: float = 20e6
    prior_bps: float = PRIOR_BPS  # the estimate before the first sample
    probe_interval_s: float = PROBE_INTERVAL_S
    probe_bytes: int = PROBE_BYTES
    max_batch_size: int = 8
    background_fps: float = 2.0  # per other client in the load trace


@dataclass(frozen=True)
class Request:
    """What happened to one request (times in seconds from the start of the trace)."""

    index: int
    arrival_s: float
    option: str
    kind: str
    cut: str | None
    bytes: int
    predicted_s: float
    latency_s: float
    true_bps: float
    estimated_bps: float
    upload_s: float
    queue_s: float
    tail_s: float
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def simulate(policy: Policy, estimator: Estimator, options: list[Option], allowed: list[Option],
             trace: RateTrace, workload: Workload = Workload(), config: SimConfig = SimConfig(),
             load: LoadTrace | None = None) -> list[Request]:
    """Serve every arriving request with ``policy`` over ``trace``; ``allowed`` are the options it may pick."""
    estimator.reset()
    background = find_option(options, "offload:raw") if any(o.name == "offload:raw" for o in options) else \
        max((o for o in options if o.kind == "split"), key=lambda o: o.tail_at(1), default=None)
    server = BatchingServer(config.max_batch_size, load, config.background_fps,
                            (lambda b: background.decode_s + background.tail_at(b)) if background else (lambda b: 0.0),
                            background.name if background else "background", seed=workload.seed)
    cpu_free = uplink_free = answered = 0.0
    local_s = find_option(options, "local").head_s
    pending: list[tuple[float, float | None, ServerState | None]] = []  # (known at, rate sample, report)
    reported = ServerState()
    last_sample_at = -math.inf
    if config.probe_on_connect and trace.rate_at(0.0) > 0:  # connected just before 0: the link and load as then
        estimator.update(config.probe_bytes * 8 / trace.transfer_time(0.0, config.probe_bytes))
        last_sample_at = 0.0
        reported = server.state(0.0)
    records: list[Request] = []
    duration = workload.duration_s or trace.duration_s
    for index, arrival in enumerate(workload.times(duration)):
        now = max(arrival, cpu_free, answered if config.sequential else 0.0)
        for known_at, sample, report in sorted((p for p in pending if p[0] <= now), key=lambda p: p[0]):
            if sample is not None:
                estimator.update(sample)
                last_sample_at = known_at
            if report is not None:
                reported = report
        pending = [p for p in pending if p[0] > now]
        estimate = estimator.predict() or config.prior_bps
        true_bps = trace.rate_at(now)
        backlog = trace.delivered_bits(now, uplink_free) / 8 if uplink_free > now else 0.0  # the device knows
        actual = LinkState(max(true_bps, 1.0), config.rtt_s, config.downlink_bps, backlog)  # 1 bit/s: an outage
        state = State(LinkState(estimate, config.rtt_s, config.downlink_bps, backlog), reported, actual,
                      server.state(now), config.hedge, estimator.recent())
        decision = policy.choose(state, allowed)
        option = decision.option
        upload = queue = tail = 0.0
        batch = 0
        if option.kind == "local":
            finish = now + option.head_s
            cpu_free = finish
            if now - last_sample_at > config.probe_interval_s and uplink_free <= now:
                took = trace.transfer_time(now, config.probe_bytes)
                uplink_free = now + took
                # the server answers a probe too, with its load: else one busy report would stick until
                # the next request it serves, and a device that went local for it would never come back
                pending.append((now + took + config.rtt_s, config.probe_bytes * 8 / took,
                                server.state(now + took + config.rtt_s / 2)))
                last_sample_at = now + took + config.rtt_s
        else:
            ready = now + option.head_s + option.encode_s
            cpu_free = ready
            start = max(ready, uplink_free)
            upload = trace.transfer_time(start, option.bytes)
            uplink_free = start + upload
            give_up = now + config.deadline_s if config.deadline_s is not None else math.inf
            remaining = local_s - (option.head_s if option.kind == "split" else 0.0)
            hedged = cpu_free + remaining  # when the device's own run would finish, had it started at once
            if config.hedge:
                give_up = min(give_up, hedged)
            arrives = uplink_free + config.rtt_s / 2
            finish = math.inf
            if arrives <= give_up:  # else the body never arrives whole and the server computes nothing
                served = server.serve(arrives, option.name, lambda b, o=option: o.decode_s + o.tail_at(b))
                queue, tail, batch = served.queue_s, served.tail_s, served.batch_size
                finish = served.done_s + config.rtt_s / 2 + option.result_bytes * 8 / config.downlink_bps
            if finish > give_up:  # the device stops waiting, drops what is still uploading, runs the rest
                uplink_free = min(uplink_free, max(give_up, start))
                finish = hedged if config.hedge else max(give_up, cpu_free) + remaining
                cpu_free = finish
                if arrives > give_up and give_up - start > 0.01:  # cut short: the link gave less than this
                    pending.append((give_up, option.bytes * 8 / (give_up - start), None))
            else:
                if config.hedge:
                    cpu_free = hedged  # a model run cannot be stopped midway: the processor stays busy
                pending.append((finish, option.bytes * 8 / upload if upload > 0 else None,
                                server.state(served.done_s)))
        answered = finish
        records.append(Request(index, arrival, option.name, option.kind, option.cut, option.bytes,
                               decision.predicted_s, finish - arrival, true_bps, estimate, upload,
                               queue, tail, batch))
    return records


def summarize(records: list[Request], deadline_s: float | None = None) -> dict[str, Any]:
    """Mean and percentiles of latency (ms), deadline misses, bytes sent, and how often each option ran."""
    if not records:
        raise EdgesplitError("no request arrived: the trace is shorter than one period of --fps")
    latencies = sorted(r.latency_s * 1000 for r in records)
    cuts: dict[str, int] = {}
    for r in records:
        cuts[r.option] = cuts.get(r.option, 0) + 1
    return {
        "mean_ms": statistics.fmean(latencies), "p50_ms": quantile(latencies, 0.50),
        "p95_ms": quantile(latencies, 0.95), "p99_ms": quantile(latencies, 0.99),
        "miss_rate": (sum(r.latency_s > deadline_s for r in records) / len(records)) if deadline_s else 0.0,
        "mean_bytes": statistics.fmean(r.bytes for r in records), "count": len(records),
        "cuts": dict(sorted(cuts.items(), key=lambda kv: -kv[1])),
    }
