"""The fleet simulator: many devices, each on its own uplink, sharing batching edge servers, as discrete
events in time order.

Each device is the single-device simulator's sequential device (:func:`edgesplit.sim.loop.simulate` with
``sequential=True``): the live client's :class:`~edgesplit.device.DeviceCore`, taking a request up once the
previous one is answered, its head on its own processor, its upload over its own link, probing by the
core's rules, giving up at its deadline and finishing locally. It learns only what a real device could
measure — rate samples timed at the receiver, bounds from uploads it gave up, the load report of the
replica that answered each request and probe — each when its clock reaches it; ``oracle`` alone sees the
true link and load (with several replicas, their mean queue wait).

Every request and probe passes a balancer that sends it to one of ``servers`` replicas (:data:`ROUTING`):

    random        a replica drawn uniformly (seeded)
    round-robin   replica k mod servers for the k-th request or probe
    least-queue   two distinct replicas drawn at random, the one with fewer requests waiting or running
                  (the first drawn on a tie): the power of two choices, as Ray Serve routes

Each replica is a :class:`~edgesplit.sim.server.BatchingServer` without background load, batching by cut
across devices: once its worker is free, the oldest waiting request's cut runs with every request for it
that has arrived by then (up to ``max_batch_size``), and a batch of n takes the option's ``decode_s +
tail_at(n)``; what arrives while it runs waits for the next batch. Events run in (time, stage, sequence)
order, the stages at one instant being: requests reach the balancer, devices act and reports are read
(seeing every request that has arrived, no batch that starts now), batches start, devices give up on
requests whose batch has not started.

With one device and one replica the records equal ``simulate(..., SimConfig(device, sequential=True,
background_fps=0))``'s exactly, as long as every request the device gave up has started its batch by the
time its next request reaches the server: ``simulate``'s server forms a request's batch when the request
arrives, so a later request that arrives before that batch starts cannot join it there; here it does.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
import statistics
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgesplit.device import (DEADLINE_PASSED, HEDGE_WON, DeviceConfig, DeviceCore, Feedback, LoadUpdate, Outcome,
                              RateSample, RequestRecord, load_errors, summarize, timed_sample)
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import Estimator, make_estimator
from edgesplit.latency import LinkState, Option, ServerState
from edgesplit.load import LoadReport
from edgesplit.policies import Policy, make_policy
from edgesplit.profile import quantile
from edgesplit.registry import Registry
from edgesplit.sim.loop import Workload
from edgesplit.sim.plots import _pyplot
from edgesplit.sim.server import INPUT_CUT, BatchingServer, TailTime, _Job
from edgesplit.traces import SEGMENT_BYTES, RateTrace

ARRIVE, ACT, START, GIVE_UP = range(4)  # the order of events at one instant

Route = Callable[[int, int, random.Random, Callable[[int], int]], int]
"""(replicas, turn: requests and probes routed before, the balancer's rng, queue length of a replica) -> replica"""
ROUTING: Registry[Route] = Registry("routing rule")


@ROUTING.register("random")
def _random(replicas: int, turn: int, rng: random.Random, queue_length: Callable[[int], int]) -> int:
    return rng.randrange(replicas)


@ROUTING.register("round-robin")
def _round_robin(replicas: int, turn: int, rng: random.Random, queue_length: Callable[[int], int]) -> int:
    return turn % replicas


@ROUTING.register("least-queue")
def _least_queue(replicas: int, turn: int, rng: random.Random, queue_length: Callable[[int], int]) -> int:
    if replicas == 1:
        return 0
    first, second = rng.sample(range(replicas), 2)
    return second if queue_length(second) < queue_length(first) else first


@dataclass(frozen=True)
class ShiftedTrace:
    """``trace`` as met by a device that starts ``offset_s`` into it (wrapping around as the trace does)."""

    trace: RateTrace
    offset_s: float

    def rate_at(self, t_s: float) -> float:
        return self.trace.rate_at(t_s + self.offset_s)

    def transfer_time(self, start_s: float, n_bytes: int) -> float:
        return self.trace.transfer_time(start_s + self.offset_s, n_bytes)

    def delivered_bits(self, start_s: float, end_s: float) -> float:
        return self.trace.delivered_bits(start_s + self.offset_s, end_s + self.offset_s)

    def mean_bps(self) -> float:
        return self.trace.mean_bps()


@dataclass(frozen=True, kw_only=True)
class FleetDevice:
    """One device of a fleet: how it decides, what it may pick, its uplink and when its requests arrive."""

    policy: Policy
    estimator: Estimator
    options: list[Option]  # those the policy may pick, local among them
    trace: RateTrace | ShiftedTrace  # its uplink, on the fleet's clock
    arrivals: tuple[float, ...]  # seconds, ascending
    config: DeviceConfig = field(default_factory=lambda: DeviceConfig(downlink_bps=20e6))

    def __post_init__(self) -> None:
        if any(not (math.isfinite(t) and t >= 0) for t in self.arrivals) or \
                any(b < a for a, b in zip(self.arrivals, self.arrivals[1:])):
            raise EdgesplitError("a device's arrival times must be finite, >= 0 and ascending")


@dataclass(frozen=True, kw_only=True)
class FleetSimConfig:
    """The edge: how many replicas, how requests are routed to them, how large a batch may be."""

    servers: int = 1
    routing: str = "least-queue"
    max_batch_size: int = 8
    seed: int = 0  # the balancer's draws

    def __post_init__(self) -> None:
        if not (isinstance(self.servers, int) and self.servers >= 1):
            raise EdgesplitError(f"--servers must be a whole number >= 1, got {self.servers!r}")
        if not (isinstance(self.max_batch_size, int) and self.max_batch_size >= 1):
            raise EdgesplitError(f"the max batch size must be a whole number >= 1, got {self.max_batch_size!r}")
        ROUTING.get(self.routing)


@dataclass(frozen=True)
class ReplicaStats:
    """What one replica did over the run (``span_s``: from 0 to the last answer or batch end)."""

    requests: int
    batch_sizes: tuple[int, ...]  # in the order the batches ran
    busy_s: float
    span_s: float
    queue_waits_s: tuple[float, ...]  # each request's wait for its batch, in arrival order
    queue_length: tuple[tuple[float, int], ...]  # (time, requests waiting) after every arrival and batch start

    @property
    def utilisation(self) -> float:
        return self.busy_s / self.span_s if self.span_s > 0 else 0.0

    @property
    def mean_batch(self) -> float:
        return statistics.fmean(self.batch_sizes) if self.batch_sizes else 0.0

    @property
    def queue_p95_s(self) -> float:
        return quantile(sorted(self.queue_waits_s), 0.95) if self.queue_waits_s else 0.0


@dataclass(frozen=True)
class FleetResult:
    records: list[list[RequestRecord]]  # per device, as the single-device simulator records them
    replicas: list[ReplicaStats]

    def server_summary(self) -> dict[str, float]:
        """All replicas together: busy time over their time, requests per batch, the queue wait's p95."""
        busy = math.fsum(r.busy_s for r in self.replicas)
        span = sum(r.span_s for r in self.replicas)
        sizes = [b for r in self.replicas for b in r.batch_sizes]
        waits = sorted(w for r in self.replicas for w in r.queue_waits_s)
        return {"utilisation": busy / span if span > 0 else 0.0,
                "mean_batch": statistics.fmean(sizes) if sizes else 0.0,
                "queue_p95_ms": quantile(waits, 0.95) * 1e3 if waits else 0.0}

    def summary(self, deadline_s: float | None = None) -> dict[str, Any]:
        """Every device's requests together (:func:`~edgesplit.device.summarize`), how many of them the edge
        answered, and the devices' mean energy per request (mJ)."""
        pooled = [r for device in self.records for r in device]
        summary = summarize(pooled, deadline_s)
        answered = sum(r.executed != "local" for r in pooled)
        return {"mean_ms": summary["mean_ms"], "p50_ms": summary["p50_ms"], "p95_ms": summary["p95_ms"],
                "answered": answered, "count": summary["count"], "fallbacks": summary["fallbacks"],
                "cuts": summary["cuts"], "load_errors": load_errors(pooled),
                "mean_energy_mj": summary["mean_energy_mj"]}


def simulate_fleet(devices: Sequence[FleetDevice], config: FleetSimConfig = FleetSimConfig()) -> FleetResult:
    """Serve every device's requests, all of them sharing the edge's replicas."""
    if not devices:
        raise EdgesplitError("a fleet needs at least one device, got 0")
    fleet = _Fleet(config)
    cores = [DeviceCore(d.policy, d.estimator, d.options, d.config) for d in devices]
    for device, core in zip(devices, cores):
        fleet.start(_device(fleet, device, core))
    fleet.run()
    records = [core.records for core in cores]
    span = max([r.arrival_s + r.latency_s for device in records for r in device] +
               [replica.server.free_at for replica in fleet.replicas])
    return FleetResult(records, [replica.stats(span) for replica in fleet.replicas])


def build_fleet(count: int, *, policy: str, estimator: str, options: list[Option], allowed: list[Option],
                traces: Sequence[RateTrace], workload: Workload, device: DeviceConfig) -> list[FleetDevice]:
    """``count`` devices alike but for their uplink and arrivals. Device i replays ``traces[i % len(traces)]``
    from an offset spread evenly over it among the devices that share it (wrapping around); its periodic
    arrivals are shifted by i / (count × fps), spreading the fleet over one period; its Poisson arrivals are
    seeded ``workload.seed + i``. Each has its own policy (``best-static`` picks at the mean rate of the
    window of its trace it replays, as a live fleet's device does)
    and estimator; ``allowed`` are the options it may pick. Requests arrive for ``workload.duration_s``,
    by default the shortest trace's duration; device 0 is ``simulate``'s device on ``traces[0]``."""
    if not (isinstance(count, int) and count >= 1):
        raise EdgesplitError(f"a fleet needs at least one device, got {count!r}")
    if not traces:
        raise EdgesplitError("a fleet needs at least one uplink trace")
    if not (math.isfinite(workload.fps) and workload.fps > 0):
        raise EdgesplitError(f"--fps must be a finite number > 0, got {workload.fps:g}")
    duration = workload.duration_s if workload.duration_s is not None else min(t.duration_s for t in traces)
    if not (math.isfinite(duration) and duration > 0):
        raise EdgesplitError(f"--duration must be a finite number > 0, got {duration:g}")
    periodic = workload.times(duration) if workload.arrivals == "periodic" else []
    fleet = []
    for i in range(count):
        base = traces[i % len(traces)]
        sharing = len(range(i % len(traces), count, len(traces)))
        offset = (i // len(traces)) * base.duration_s / sharing
        trace = ShiftedTrace(base, offset) if offset else base
        if workload.arrivals == "periodic":
            phase = i / (count * workload.fps)
            arrivals = tuple(t + phase for t in periodic if t + phase < duration)
        else:
            arrivals = tuple(Workload(workload.fps, "poisson", seed=workload.seed + i).times(duration))
        window_bps = trace.delivered_bits(0.0, duration) / duration  # what it meets, as a live device's window
        mean_link = LinkState(window_bps, device.rtt_s, device.downlink_bps)
        fleet.append(FleetDevice(policy=make_policy(policy, options, mean_link), estimator=make_estimator(estimator),
                                 options=allowed, trace=trace, arrivals=arrivals, config=device))
    return fleet


def plot_fleet_latency(summaries: dict[int, dict[str, dict[str, Any]]], title: str,
                       path: str | os.PathLike[str]) -> None:
    """Mean and p95 latency per policy against the number of devices; ``summaries``: {devices: {policy:
    FleetResult.summary()}}."""
    plt = _pyplot()
    counts = sorted(summaries)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for k, policy in enumerate(summaries[counts[0]]):
        colour = plt.get_cmap("tab10")(k % 10)
        ax.plot(counts, [summaries[n][policy]["mean_ms"] for n in counts], "o-", color=colour, label=f"{policy} mean")
        ax.plot(counts, [summaries[n][policy]["p95_ms"] for n in counts], "s--", color=colour, label=f"{policy} p95")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_yscale("log")
    ax.set_xlabel("devices")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"Latency against the number of devices — {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fleet_options(summaries: dict[int, dict[str, dict[str, Any]]], title: str,
                       path: str | os.PathLike[str]) -> None:
    """Per policy, the share of requests each option took against the number of devices."""
    plt = _pyplot()
    counts = sorted(summaries)
    policies = list(summaries[counts[0]])
    fig, axes = plt.subplots(1, len(policies), figsize=(4 * len(policies), 3.8), layout="constrained", squeeze=False)
    options = sorted({o for n in counts for s in summaries[n].values() for o in s["cuts"]})
    colours = {o: plt.get_cmap("tab20")(i % 20) for i, o in enumerate(options)}
    for ax, policy in zip(axes[0], policies):
        shares = {o: [summaries[n][policy]["cuts"].get(o, 0) / summaries[n][policy]["count"] for n in counts]
                  for o in options}
        shown = [o for o in options if any(shares[o])]
        ax.stackplot([str(n) for n in counts], *(shares[o] for o in shown), labels=shown,
                     colors=[colours[o] for o in shown])
        ax.set_title(policy)
        ax.set_xlabel("devices")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="lower left")
    axes[0][0].set_ylabel("share of requests")
    fig.suptitle(f"Options chosen against the number of devices — {title}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the engine -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wait:
    until_s: float


@dataclass(frozen=True)
class _Send:
    arrives_s: float
    cut: str
    tail: TailTime
    give_up_s: float


@dataclass(frozen=True)
class _Started:
    replica: _Replica
    job: _Job


@dataclass
class _LateReport:
    """A load report the device learns at ``at_s``, read from its replica when the answer or probe left it."""

    at_s: float
    report: LoadReport | None = None


class _Replica:
    def __init__(self, max_batch_size: int) -> None:
        self.server = BatchingServer(max_batch_size, None, 0.0, lambda b: 0.0)
        self.start_scheduled = False
        self.waiting = 0
        self.jobs: list[_Job] = []
        self.batches: list[tuple[float, int]] = []  # (duration, size)
        self.queue_length: list[tuple[float, int]] = []

    def ongoing(self, t_s: float) -> int:
        """Requests waiting or in the batch that runs at ``t_s``."""
        running = self.batches[-1][1] if self.batches and self.server.free_at > t_s else 0
        return self.waiting + running

    def queue_wait(self, t_s: float) -> float:
        """What its report at ``t_s`` says a request would wait (the report's own arithmetic when idle)."""
        return self.server.report(t_s).queue_wait_s if self.waiting else max(0.0, self.server.free_at - t_s)

    def stats(self, span_s: float) -> ReplicaStats:
        return ReplicaStats(len(self.jobs), tuple(size for _, size in self.batches),
                            math.fsum(duration for duration, _ in self.batches), span_s,
                            tuple(job.start_s - job.arrival_s for job in self.jobs), tuple(self.queue_length))


_Process = Generator[_Wait | _Send, _Started | None, None]


class _Fleet:
    """The event loop, the balancer and the replicas."""

    def __init__(self, config: FleetSimConfig) -> None:
        self.replicas = [_Replica(config.max_batch_size) for _ in range(config.servers)]
        self._route = ROUTING.get(config.routing)
        self._rng = random.Random(config.seed)
        self._turn = 0
        self._events: list[tuple[float, int, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._waiting: dict[int, _Process] = {}  # id(job) -> the device waiting for its batch to start

    def start(self, process: _Process) -> None:
        self._at(0.0, ACT, lambda: self._resume(process, None))

    def run(self) -> None:
        while self._events:
            _, _, _, action = heapq.heappop(self._events)
            action()

    def route(self, t_s: float) -> _Replica:
        """The replica the balancer sends a request or probe arriving at ``t_s`` to."""
        index = self._route(len(self.replicas), self._turn, self._rng, lambda k: self.replicas[k].ongoing(t_s))
        self._turn += 1
        return self.replicas[index]

    def current(self, t_s: float) -> ServerState:
        """The true load at ``t_s`` (for the oracle): the mean queue wait over the replicas."""
        waits = [replica.queue_wait(t_s) for replica in self.replicas]
        return ServerState(queue_wait_s=waits[0] if len(waits) == 1 else statistics.fmean(waits))

    def report_at(self, t_s: float, learnt_s: float, replica: _Replica | None = None) -> _LateReport:
        """The report a device learns at ``learnt_s``, read at ``t_s`` from ``replica`` (None: a probe, routed
        then)."""
        late = _LateReport(learnt_s)

        def read() -> None:
            late.report = (replica or self.route(t_s)).server.report(t_s)

        self._at(t_s, ACT, read)
        return late

    def _at(self, t_s: float, stage: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t_s, stage, next(self._sequence), action))

    def _resume(self, process: _Process, value: _Started | None) -> None:
        try:
            command = process.send(value)
        except StopIteration:
            return
        if isinstance(command, _Wait):
            self._at(command.until_s, ACT, lambda: self._resume(process, None))
            return
        job: list[_Job] = []

        def arrive() -> None:
            replica = self.route(command.arrives_s)
            job.append(replica.server.submit(command.arrives_s, command.cut, command.tail))
            replica.jobs.append(job[0])
            replica.waiting += 1
            replica.queue_length.append((command.arrives_s, replica.waiting))
            self._waiting[id(job[0])] = process
            self._schedule_start(replica)

        def give_up() -> None:
            if self._waiting.pop(id(job[0]), None) is not None:
                self._resume(process, None)

        self._at(command.arrives_s, ARRIVE, arrive)
        if math.isfinite(command.give_up_s):
            self._at(command.give_up_s, GIVE_UP, give_up)

    def _schedule_start(self, replica: _Replica) -> None:
        if not replica.start_scheduled and replica.waiting:
            replica.start_scheduled = True
            self._at(replica.server.next_start_s(), START, lambda: self._start_batch(replica))

    def _start_batch(self, replica: _Replica) -> None:
        replica.start_scheduled = False
        batch = replica.server.start_batch()
        start = batch[0].start_s
        replica.batches.append((batch[0].done_s - start, len(batch)))
        replica.waiting -= len(batch)
        replica.queue_length.append((start, replica.waiting))
        self._schedule_start(replica)
        for job in batch:
            process = self._waiting.pop(id(job), None)
            if process is not None:
                self._resume(process, _Started(replica, job))


def _device(fleet: _Fleet, spec: FleetDevice, core: DeviceCore) -> _Process:
    """One sequential device, step by step as :func:`~edgesplit.sim.loop.simulate` runs it."""
    device, trace = spec.config, spec.trace
    rtt = device.rtt_s
    cpu_free = uplink_free = answered = 0.0
    pending: list[Feedback | _LateReport] = []  # learnt once the device's clock reaches them

    def upload(start: float, n_bytes: int) -> tuple[float, float | None]:
        """How long ``n_bytes`` take from ``start``, and the rate sample the receiver's stamps give."""
        took = trace.transfer_time(start, n_bytes)
        first = min(SEGMENT_BYTES, n_bytes)
        return took, timed_sample(n_bytes - first, took - trace.transfer_time(start, first))

    def probe(at: float) -> int:
        """Send a probe at ``at`` (now) if the uplink is idle then; the bytes sent."""
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
        pending.append(fleet.report_at(at + took + rtt / 2, known))  # a probe's answer has it too
        return device.probe_bytes

    if device.probe_on_connect and trace.rate_at(0.0) > 0:  # connected just before 0: the link and load as then
        took, sample = upload(0.0, device.probe_bytes)
        core.transferred(-took - rtt, took, device.probe_bytes)
        core.transferred(0.0, 0.0, 0, uplink=False)
        core.learn([RateSample(0.0, sample)] if sample else [])
        core.learn([LoadUpdate(0.0, fleet.route(0.0).server.report(0.0))])
    probe_after: float | None = None  # a probe due once the last remote request was answered
    for arrival in spec.arrivals:
        now = max(arrival, cpu_free, answered)
        probed = 0
        if probe_after is not None and probe_after <= now:  # sent then, before this request is decided
            yield _Wait(probe_after)
            probed, probe_after = probe(probe_after), None
        yield _Wait(now)
        core.learn([LoadUpdate(f.at_s, f.report) if isinstance(f, _LateReport) else f  # type: ignore[arg-type]
                    for f in pending if f.at_s <= now])
        pending = [f for f in pending if f.at_s > now]
        backlog = trace.delivered_bits(now, uplink_free) / 8 if uplink_free > now else 0.0  # the truth
        actual = LinkState(max(trace.rate_at(now), 1.0), rtt, device.downlink_bps, backlog)  # 1 bit/s: an outage
        decision, state = core.decide(now, actual=actual, current=fleet.current(now))
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
            started = None
            if arrives <= give_up:  # else the body never arrives whole and the server computes nothing
                started = yield _Send(arrives, option.cut or INPUT_CUT,
                                      lambda b, o=option: o.decode_s + o.tail_at(b), give_up)
                if started is not None:  # its batch started by the deadline: the answer's time is known
                    finish = (started.job.done_s + option.answer_s + rtt / 2  # the answer, made after the batch
                              + option.result_bytes * 8 / device.downlink_bps)
            if started is None or finish > give_up:  # the device stops waiting, drops what is still uploading,
                # runs the rest
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
                if device.hedge:
                    cpu_free = own  # a model run cannot be stopped midway: the processor stays busy
                down_s = option.result_bytes * 8 / device.downlink_bps
                core.transferred(start, took, option.bytes)
                core.transferred(finish - down_s, down_s, option.result_bytes, uplink=False)
                pending.extend([RateSample(finish, sample)] if sample else [])
                pending.append(fleet.report_at(started.job.done_s, finish, started.replica))
                served = started.job.served()
                outcome = Outcome(option.kind, None, option.bytes, sample, took, served.queue_s,
                                  served.tail_s - option.decode_s, served.batch_size)  # the tail, as a server reports
                pending.extend(filter(None, [core.round_trip(finish, option, outcome, finish - ready)]))
            if stale and outcome.measured_bps is None:  # this upload taught nothing
                probe_after = finish
        answered = finish
        core.record(arrival, decision, state, outcome, finish - arrival, probed)
