"""The simulation loop: requests flow through the device, the uplink and the server, one at a time each.

The device's processor, its uplink and the server are each first-come first-served, so request k+1 may
compute its head while request k is still uploading. The device is the live client's very
:class:`~edgesplit.device.DeviceCore`: it decides from what it knows then, learns what comes back when it
comes back (a rate sample only from an upload large enough to time at the receiver, by the same rule as
the live server's receive stamps; a bound from an upload it gave up; the load report with every answer),
and probes when its newest sample is stale and the request teaches it nothing: beside a local run, or once
a remote request whose upload gave no sample has been answered. A transfer takes
exactly as long as the time-varying trace needs to deliver its bytes.

``sequential`` makes the device take the next request only once the previous one is answered, as the
live client does. The device gives up on the server ``deadline_s`` after taking a request up (by default
twice its own whole-model time) and finishes it itself: an upload still in progress is dropped. Like the
live client, it measures its uplink when it connects (``probe_on_connect``), and with ``hedge`` runs the
rest itself while it waits: the first answer wins, a local win drops the upload as a deadline does, and
the processor stays busy until its own run ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from edgesplit.device import (DEADLINE_PASSED, HEDGE_WON, DeviceConfig, DeviceCore, Feedback, LoadUpdate, Outcome,
                              RateSample, RequestRecord, timed_sample)
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import Estimator
from edgesplit.latency import LinkState, Option
from edgesplit.policies import Policy
from edgesplit.sim.server import INPUT_CUT, BatchingServer
from edgesplit.traces import SEGMENT_BYTES, LoadTrace, RateTrace


@dataclass(frozen=True)
class Workload:
    """When requests arrive: every 1/fps seconds, or as a Poisson process of rate fps."""

    fps: float = 2.0
    arrivals: Literal["periodic", "poisson"] = "periodic"
    duration_s: float | None = None  # default: one pass over the trace
    seed: int = 0

    def times(self, duration_s: float) -> list[float]:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise EdgesplitError(f"--fps must be a finite number > 0, got {self.fps:g}")
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
    device: DeviceConfig = field(default_factory=lambda: DeviceConfig(downlink_bps=20e6))
    sequential: bool = False  # one request at a time, arrival to answer (as the live client)
    max_batch_size: int = 8
    background_fps: float = 2.0  # per other client in the load trace


def simulate(policy: Policy, estimator: Estimator, options: list[Option], trace: RateTrace,
             workload: Workload = Workload(), config: SimConfig = SimConfig(),
             load: LoadTrace | None = None) -> list[RequestRecord]:
    """Serve every arriving request with ``policy`` over ``trace``; ``options`` are those it may pick."""
    device = config.device
    core = DeviceCore(policy, estimator, options, device)
    background = next((o for o in options if o.name == "offload:raw"), None) or \
        max((o for o in options if o.kind == "split"), key=lambda o: o.tail_at(1), default=None)
    server = BatchingServer(config.max_batch_size, load, config.background_fps,
                            (lambda b: background.decode_s + background.tail_at(b)) if background else (lambda b: 0.0),
                            seed=workload.seed)
    rtt = device.rtt_s
    cpu_free = uplink_free = answered = 0.0
    pending: list[Feedback] = []  # learnt once the device's clock reaches them

    def upload(start: float, n_bytes: int) -> tuple[float, float | None]:
        """How long ``n_bytes`` take from ``start``, and the rate sample the receiver's stamps give."""
        took = trace.transfer_time(start, n_bytes)
        first = min(SEGMENT_BYTES, n_bytes)
        return took, timed_sample(n_bytes - first, took - trace.transfer_time(start, first))

    def probe(at: float) -> int:
        """Send a probe at ``at`` if the uplink is idle then; the bytes sent."""
        nonlocal uplink_free
        if uplink_free > at:
            return 0
        took, sample = upload(at, device.probe_bytes)
        uplink_free, known = at + took, at + took + rtt
        core.probe_sent(at)
        core.upload_started(at, device.probe_bytes, learnt_at=known)
        core.transferred(at, took, device.probe_bytes)
        core.transferred(known, 0.0, 0, uplink=False)  # its answer
        pending.extend([RateSample(known, sample)] if sample else [])
        pending.append(LoadUpdate(known, server.report(at + took + rtt / 2)))  # a probe's answer has it too
        return device.probe_bytes

    if device.probe_on_connect and trace.rate_at(0.0) > 0:  # connected just before 0: the link and load as then
        took, sample = upload(0.0, device.probe_bytes)
        core.transferred(-took - rtt, took, device.probe_bytes)
        core.transferred(0.0, 0.0, 0, uplink=False)
        core.learn([RateSample(0.0, sample)] if sample else [])
        core.learn([LoadUpdate(0.0, server.report(0.0))])
    duration = workload.duration_s or trace.duration_s
    probe_after: float | None = None  # a probe due once the last remote request was answered
    for arrival in workload.times(duration):
        now = max(arrival, cpu_free, answered if config.sequential else 0.0)
        probed = 0
        if probe_after is not None and probe_after <= now:  # sent then, before this request is decided
            probed, probe_after = probe(probe_after), None
        core.learn(f for f in pending if f.at_s <= now)
        pending = [f for f in pending if f.at_s > now]
        backlog = trace.delivered_bits(now, uplink_free) / 8 if uplink_free > now else 0.0  # the truth
        actual = LinkState(max(trace.rate_at(now), 1.0), rtt, device.downlink_bps, backlog)  # 1 bit/s: an outage
        decision, state = core.decide(now, actual=actual, current=server.report(now).server_state())
        option = decision.option
        stale = core.stale(now)
        if option.kind == "local":
            finish = cpu_free = now + option.head_s
            probed += probe(now) if stale else 0
            outcome = Outcome("local")
        else:
            ready = now + option.head_s + option.encode_s
            cpu_free = ready
            start = max(ready, uplink_free)
            took, sample = upload(start, option.bytes)
            uplink_free = start + took
            own = cpu_free + core.remaining_s(option)  # when the device's own run would end, started at once
            give_up = now + core.deadline_s
            if device.hedge:
                give_up = min(give_up, own)
            arrives = uplink_free + rtt / 2
            finish = math.inf
            if arrives <= give_up:  # else the body never arrives whole and the server computes nothing
                served = server.serve(arrives, option.cut or INPUT_CUT, lambda b, o=option: o.decode_s + o.tail_at(b))
                finish = (served.done_s + option.answer_s + rtt / 2  # the answer is made per request, after the batch
                          + option.result_bytes * 8 / device.downlink_bps)
            if finish > give_up:  # the device stops waiting, drops what is still uploading, runs the rest
                learnt = give_up
                uplink_free = min(uplink_free, max(give_up, start))
                finish = own if device.hedge else max(give_up, cpu_free) + core.remaining_s(option)
                cpu_free = finish
                if arrives > give_up and (bound := core.cut_short(give_up, option.bytes, give_up - start)):
                    pending.append(bound)
                reason = HEDGE_WON if device.hedge and give_up == own else DEADLINE_PASSED
                outcome = Outcome("local", reason, option.bytes, upload_s=min(took, max(0.0, give_up - start)))
                if outcome.upload_s:  # what left before it was dropped
                    core.transferred(start, outcome.upload_s,
                                     min(option.bytes, trace.delivered_bits(start, start + outcome.upload_s) / 8))
            else:
                learnt = finish
                if device.hedge:
                    cpu_free = own  # a model run cannot be stopped midway: the processor stays busy
                down_s = option.result_bytes * 8 / device.downlink_bps
                core.transferred(start, took, option.bytes)
                core.transferred(finish - down_s, down_s, option.result_bytes, uplink=False)
                pending.extend([RateSample(finish, sample)] if sample else [])
                pending.append(LoadUpdate(finish, server.report(served.done_s)))
                outcome = Outcome(option.kind, None, option.bytes, sample, took, served.queue_s,
                                  served.tail_s - option.decode_s, served.batch_size)  # the tail, as a server reports
                pending.extend(filter(None, [core.round_trip(finish, option, outcome, finish - ready)]))
            if not config.sequential:  # the next request may be taken up while this frame still uploads
                core.upload_started(start, option.bytes, learnt_at=learnt)
            if stale and outcome.measured_bps is None:  # this upload taught nothing
                probe_after = finish
        answered = finish
        core.record(arrival, decision, state, outcome, finish - arrival, probed)
    return core.records
