"""The device core: what a device knows about its uplink and its server, when it probes, what it learns,
and how each request is recorded. The trace-driven simulator and the live client drive the same object;
they differ only in their clock (trace seconds, or ``time.perf_counter()``) and their transport.

What a device can learn (:data:`Feedback`), and the rule each side applies to its transfers:

- :class:`RateSample` — the uplink's goodput over one upload, timed at the receiver: the bytes that arrived
  after the first chunk over the time from the first chunk to the last (:func:`timed_sample`). An upload of
  less than ``MIN_TIMED_BYTES`` after its first segment, or over less than ``MIN_TIMED_S``, is too small to
  time and teaches nothing; neither does the sender's clock (``send()`` returns long before delivery).
- :class:`RateBound` — an upload given up before it all arrived: the link gave at most its bytes over
  the time waited.
- :class:`LoadUpdate` — the server's load report (:mod:`edgesplit.load`), with every answer and probe; the
  policy sees it aged to the moment it decides, so that it can predict the wait at its request's arrival.
- :class:`RoundTrip` — what an answered request took beyond what the device can account for
  (:meth:`DeviceCore.round_trip`): from sending its frame to its answer, less the upload (its bytes at the
  rate it measured, else at the estimate), the server's queue and compute (its Server-Timing) and what the
  profiles price (decode, post-processing, the answer's download). That is the path's round trip plus the
  server's handling of a request; the policy prices every remote option with the median of the recent
  ones (``DeviceConfig.rtt_s`` until the first; live, the connection's first exchange is one).

Each answer's record also teaches two things about the server (:meth:`DeviceCore.record`): the queue wait
its request met, and its compute against the profile's tail time for that cut and batch (the server's
Server-Timing live, the simulated server's tail in simulation). Their moving averages (the compute's
geometric, within ``MAX_COMPUTE_SCALE`` either way) reach the policy as ``ServerState.met_s`` and
``ServerState.compute_scale``, and are forgotten after ``MET_MAX_AGE_S`` without news: a server that
co-located work slows below its profile makes remote options dearer, as it does their latency.

The device probes (``probe_bytes`` to ``POST /v1/probe``, at most one per ``probe_interval_s``, so at most
``probe_bytes / probe_interval_s`` bytes a second) whenever its newest sample is older than the interval
and the request it is serving does not teach it anything: beside a local run, or after a remote request
whose upload gave no sample (a frame too small to time, an upload cut short, a refusal). The estimate's uncertainty grows with its age: the policy sees the recent samples, how old the
newest is, and how fast the link's log-rate has been moving (:meth:`DeviceCore.state`).

Energy (:mod:`edgesplit.energy`): each record holds the device's joules for its request — ``compute_j``
(the head and encoding, the whole model for local, and the rest after a fallback or beside a hedge, at
``DeviceConfig.compute_w``) and ``radio_j`` (its bursts on ``DeviceConfig.radio``, each charged the radio's
tail since the burst before). A driver reports every burst it sends or receives on the core's clock
(:meth:`DeviceCore.transferred`: frames, answers, probes), and the record charges those reported since the
previous record: the simulators their exact bursts; the live client each exchange from its start, the
upload as long as its bytes take at the estimated rate (at most until the answer), and the answer. The policy sees the device's power model, how long its radio has been idle and when it
next probes (``State.energy``, ``radio_idle_s``, ``probe_due_s``).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from edgesplit.energy import PHONE_COMPUTE_W, RADIOS, DeviceEnergy, RadioMeter
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import RECENT_SAMPLES, Estimator
from edgesplit.latency import LinkState, Option, ServerState, queue_met, rest_on_device
from edgesplit.load import LoadReport
from edgesplit.policies import Decision, Policy, State
from edgesplit.profile import quantile
from edgesplit.traces import SEGMENT_BYTES

PRIOR_BPS = 2e6  # what a device assumes of its uplink before the first sample
PROBE_INTERVAL_S = 0.4  # not a multiple of a usual request period, so that clock jitter does not decide
PROBE_BYTES = 16_000
MIN_TIMED_BYTES = 2 * SEGMENT_BYTES  # bytes after the first segment a receiver must see to time an upload
MIN_TIMED_S = 1e-3
MIN_BOUND_S = 0.01  # an upload cut short sooner than this says nothing of the link
DEADLINE_FACTOR = 2.0  # default deadline: this × the device's own whole-model time, but at least
MIN_DEADLINE_S = 0.5
HEDGE_WON = "hedge: the device finished first"  # why a request ended locally
DEADLINE_PASSED = "deadline"
PRIOR_VOLATILITY = 0.5  # standard deviation of the uplink's log-rate change over one second, before measured
VOLATILITY_ALPHA = 0.2  # weight of a new pair of samples in the volatility's moving averages
MET_ALPHA = 0.3  # weight of a new queue wait in the average of those the device's requests met
MET_MAX_AGE_S = 5.0  # that average is forgotten once the device has not heard of a wait for this long
MAX_COMPUTE_SCALE = 4.0  # a server's compute is taken to be at most this far from its profile either way
ROUND_TRIPS = 8  # the device prices the round trip with the median of this many recent ones


def timed_sample(bytes_after_first: int, recv_s: float) -> float | None:
    """The goodput (bits/s) a receiver measured: ``bytes_after_first`` arrived ``recv_s`` after the first
    chunk; None when the upload was too small to time."""
    if bytes_after_first < MIN_TIMED_BYTES or not recv_s >= MIN_TIMED_S:
        return None
    rate = bytes_after_first * 8 / recv_s
    return rate if math.isfinite(rate) and rate > 0 else None


@dataclass(frozen=True)
class RateSample:
    at_s: float  # when the device learnt it
    bps: float


@dataclass(frozen=True)
class RateBound:
    at_s: float
    bps: float  # the link gave at most this


@dataclass(frozen=True)
class LoadUpdate:
    at_s: float
    report: LoadReport


@dataclass(frozen=True)
class RoundTrip:
    at_s: float
    seconds: float  # an exchange's time beyond its upload, the server's queue and compute, and the profiles'


Feedback = RateSample | RateBound | LoadUpdate | RoundTrip


@dataclass(frozen=True)
class DeviceConfig:
    """What a device assumes and how it behaves, in the simulator and live alike."""

    rtt_s: float = 0.04  # assumed until measured
    downlink_bps: float = math.inf
    deadline_s: float | None = None  # give up on the server this long after taking a request up; None:
    # DEADLINE_FACTOR × the device's whole-model time, at least MIN_DEADLINE_S
    hedge: bool = False  # while waiting for the server, run the rest here too; the first answer wins
    probe_on_connect: bool = True  # measure the uplink (and learn the load) once before the first request
    prior_bps: float = PRIOR_BPS
    probe_interval_s: float = PROBE_INTERVAL_S
    probe_bytes: int = PROBE_BYTES
    radio: str = "lte"  # its radio's power model: a name in edgesplit.energy.RADIOS
    compute_w: float = PHONE_COMPUTE_W  # what its processor draws while it runs the model

    @property
    def energy(self) -> DeviceEnergy:
        return DeviceEnergy(self.compute_w, RADIOS.get(self.radio))

    def deadline_for(self, local_s: float) -> float:
        """The deadline of a device that runs the whole model in ``local_s``."""
        return self.deadline_s if self.deadline_s is not None else max(DEADLINE_FACTOR * local_s, MIN_DEADLINE_S)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rtt_s) and self.rtt_s >= 0):
            raise EdgesplitError(f"the RTT must be finite and >= 0, got {self.rtt_s * 1e3:g} ms")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise EdgesplitError(f"the deadline must be > 0, got {self.deadline_s * 1e3:g} ms")
        if not (math.isfinite(self.prior_bps) and self.prior_bps > 0):
            raise EdgesplitError(f"the prior uplink rate must be finite and > 0, got {self.prior_bps!r} bit/s")
        if not self.probe_interval_s >= 0:
            raise EdgesplitError(f"the probe interval must be >= 0, got {self.probe_interval_s!r} s")
        if self.probe_bytes - SEGMENT_BYTES < MIN_TIMED_BYTES:
            raise EdgesplitError(f"a probe of {self.probe_bytes} B is too small to time: at least "
                                 f"{SEGMENT_BYTES + MIN_TIMED_BYTES} B")
        RADIOS.get(self.radio)  # an unknown radio: the error lists the known ones
        DeviceEnergy(self.compute_w)  # a compute power that is not a finite number of watts >= 0


@dataclass(frozen=True)
class Outcome:
    """How a request ended, as the transport saw it."""

    executed: Literal["local", "split", "offload"]
    fallback_reason: str | None = None
    bytes_sent: int = 0
    measured_bps: float | None = None  # the rate sample its upload gave, if any
    upload_s: float | None = None  # known in simulation only
    queue_s: float | None = None  # the server's queue wait (its Server-Timing live)
    compute_s: float | None = None  # the server's compute (its Server-Timing live; decode + tail simulated)
    batch_size: int = 0
    top1: int | None = None  # live only: a classifier's class
    answer: str | None = None  # live only: what the answer says (edgesplit.outputs.answer_digest)


@dataclass(frozen=True)
class RequestRecord:
    """One request, in simulation and live alike (times from the start of the run, in seconds)."""

    index: int
    arrival_s: float
    option: str  # the option chosen (Option.name); ``executed`` says where it ended
    kind: str
    cut: str | None
    codec: str
    predicted_s: float
    estimated_bps: float
    true_bps: float | None  # where the true link is known (simulation, emulated links)
    latency_s: float  # from arrival to answer
    probe_bytes: int  # probed beside or after this request
    executed: str
    fallback_reason: str | None
    bytes_sent: int
    measured_bps: float | None
    upload_s: float | None
    queue_s: float | None
    compute_s: float | None
    batch_size: int
    top1: int | None
    reported_queue_s: float | None = None  # remote options: the wait the newest load report said, as it said it
    predicted_queue_s: float | None = None  # ... and the wait the policy expected at the request's arrival
    edge: str | None = None  # which edge server it was sent to, where the device has several
    compute_j: float = 0.0  # the device's processor, for this request
    radio_j: float = 0.0  # the device's radio: its bursts for this request and its probes beside it
    answer: str | None = None  # live: a digest of what the answer says (a class, a class per pixel)

    @property
    def energy_j(self) -> float:
        return self.compute_j + self.radio_j

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in ms, Mbit/s and mJ."""
        data = asdict(self)
        data["compute_mj"], data["radio_mj"] = data.pop("compute_j") * 1e3, data.pop("radio_j") * 1e3
        data["energy_mj"] = self.energy_j * 1e3
        for key in ("predicted_s", "latency_s", "upload_s", "queue_s", "compute_s", "reported_queue_s",
                    "predicted_queue_s"):
            value = data.pop(key)
            data[key.replace("_s", "_ms")] = None if value is None else value * 1e3
        for key in ("estimated_bps", "true_bps", "measured_bps"):
            value = data.pop(key)
            data[key.replace("_bps", "_mbps")] = None if value is None else value / 1e6
        return data


class DeviceCore:
    """One device's knowledge and decisions; the caller supplies the clock (``now``) and the transfers."""

    def __init__(self, policy: Policy, estimator: Estimator, options: list[Option],
                 config: DeviceConfig = DeviceConfig()) -> None:
        """``options`` are the ones the policy may pick (they include ``local``); the driver reports its radio's
        bursts through :meth:`transferred`."""
        local = [o for o in options if o.kind == "local"]
        if not local:
            raise EdgesplitError("the options must include local: a device can always run the whole model")
        self.policy, self.estimator, self.options, self.config = policy, estimator, options, config
        self.local_s = local[0].head_s
        self._round_trips: deque[float] = deque(maxlen=ROUND_TRIPS)
        self._report: LoadUpdate | None = None  # the newest load report, and when it was learnt
        self._met = _Recent()  # the waits this device's requests met at the server
        self._slower = _Recent()  # log of the server's compute over its profile's, for them
        self.records: list[RequestRecord] = []
        estimator.reset()
        self._samples: deque[tuple[float, float]] = deque(maxlen=RECENT_SAMPLES)  # (learnt at, bits/s)
        self._ceilings: deque[bool] = deque(maxlen=RECENT_SAMPLES)  # the estimator's recent ones that are bounds
        self._square_step = self._step_s = math.nan  # moving averages of (Δ log rate)² and Δt
        self._probed_at = -math.inf
        self._uploads: dict[int, tuple[float, int, float]] = {}  # in flight: started at, bytes, learnt at
        self._next_upload = 0
        self.energy = config.energy
        self.radio = RadioMeter(self.energy.radio)
        self._radio_j = 0.0  # the bursts reported since the last record

    @property
    def rtt_s(self) -> float:
        """The round trip the device prices remote options with: the median of the recent ones it measured
        (:class:`RoundTrip`), or the configured one until it has."""
        return statistics.median(self._round_trips) if self._round_trips else self.config.rtt_s

    def round_trip(self, at_s: float, option: Option, outcome: Outcome, exchange_s: float) -> RoundTrip | None:
        """What an answered request (``option``, answered after ``exchange_s`` from sending its frame, at
        ``at_s``) teaches of the round trip; None for one the server did not answer with its timings."""
        if outcome.executed == "local" or outcome.queue_s is None or outcome.compute_s is None:
            return None
        rate = outcome.measured_bps or self.estimator.predict() or self.config.prior_bps
        rest = (exchange_s - outcome.bytes_sent * 8 / rate - outcome.queue_s - outcome.compute_s - option.decode_s
                - option.answer_s - option.result_bytes * 8 / self.config.downlink_bps)
        return RoundTrip(at_s, max(0.0, rest))

    @property
    def deadline_s(self) -> float:
        """How long after taking a request up the device waits for the server before finishing it itself."""
        return self.config.deadline_for(self.local_s)

    def remaining_s(self, option: Option) -> float:
        """What the device still computes when it finishes ``option`` itself (after its head)."""
        return rest_on_device(option, self.local_s)

    def volatility(self) -> float:
        """Standard deviation of the uplink's log-rate change over one second, from consecutive samples."""
        if math.isnan(self._square_step):
            return PRIOR_VOLATILITY
        return math.sqrt(self._square_step / max(self._step_s, 1e-3))

    def upload_started(self, at_s: float, n_bytes: int, learnt_at: float = math.inf) -> int:
        """An upload that shares the uplink with what comes next (a probe; a frame still uploading when
        the device takes up its next request); it counts until :meth:`upload_learnt` (live) or until
        ``learnt_at`` (simulation: when its answer or give-up will be known). Returns its token."""
        self._next_upload += 1
        self._uploads[self._next_upload] = (at_s, n_bytes, learnt_at)
        return self._next_upload

    def upload_learnt(self, token: int) -> None:
        self._uploads.pop(token, None)

    def backlog_bytes(self, now: float) -> float:
        """What the device believes is still queued on its uplink: each upload in flight less what the
        estimated rate would have carried since it started."""
        rate = (self.estimator.predict() or self.config.prior_bps) / 8
        return sum(max(0.0, n - rate * max(0.0, now - at)) for at, n, learnt in self._uploads.values() if learnt > now)

    def state(self, now: float, *, actual: LinkState | None = None, current: ServerState | None = None) -> State:
        """What the policy may know at ``now`` (``actual`` and ``current``: the truth, for the oracle)."""
        self._uploads = {k: u for k, u in self._uploads.items() if u[2] > now}
        estimate = self.estimator.predict() or self.config.prior_bps
        newest = self._samples[-1][0] if self._samples else -math.inf
        return State(LinkState(estimate, self.rtt_s, self.config.downlink_bps, self.backlog_bytes(now)), self.reported(now),
                     actual, current, self.config.hedge, self.estimator.recent(), tuple(self._ceilings),
                     sample_age_s=max(0.0, now - newest) if self._samples else math.inf,
                     volatility=self.volatility(), deadline_s=self.deadline_s, radio_idle_s=self.radio.idle_s(now),
                     probe_due_s=self.probe_due_s(now), probe_bytes=self.config.probe_bytes, energy=self.energy)

    def reported(self, now: float) -> ServerState:
        """The server's load as its newest report says, aged to ``now`` (it was made half an RTT before it
        was learnt, when the answer left the server), and the waits this device's own requests met lately.
        A report is read when the device's own batch has just left the queue, so it tends to catch the
        queue low; the waits its requests met are what they meet (see :meth:`ServerState.queue_at`)."""
        met = self._met.at(now, 0.0)
        scale = math.exp(self._slower.at(now, 0.0))
        if self._report is None:
            return ServerState(met_s=met, compute_scale=scale)
        return replace(self._report.report.server_state(max(0.0, now - self._report.at_s) + self.rtt_s / 2), met_s=met,
                       compute_scale=scale)

    def decide(self, now: float, **truth: Any) -> tuple[Decision, State]:
        state = self.state(now, **truth)
        return self.policy.choose(state, self.options), state

    def stale(self, now: float) -> bool:
        """Whether the newest sample (or probe) is older than the probe interval at ``now``, the time the
        request was taken up: the device then probes beside a local run, or after a remote request whose
        upload gave no sample (too small to time, cut short, refused); at most one probe per interval."""
        return self.probe_due_s(now) == 0

    def probe_due_s(self, now: float) -> float:
        """How long after ``now`` the newest sample (or probe) turns stale (0: it is; inf: never)."""
        newest = max(self._samples[-1][0] if self._samples else -math.inf, self._probed_at)
        return 0.0 if now - newest > self.config.probe_interval_s else newest + self.config.probe_interval_s - now

    def probe_sent(self, now: float) -> None:
        self._probed_at = now

    def learn(self, feedback: Iterable[Feedback]) -> None:
        """Fold what came back, oldest first."""
        for item in sorted(feedback, key=lambda f: f.at_s):
            if isinstance(item, LoadUpdate):
                self._report = item
                continue
            if isinstance(item, RoundTrip):
                self._round_trips.append(item.seconds)
                continue
            self.estimator.update(item.bps)
            self._ceilings.append(isinstance(item, RateBound))
            if isinstance(item, RateBound):  # at most this: the estimate hears it, the age and volatility not
                continue
            if self._samples:
                at, bps = self._samples[-1]
                square, step = math.log(item.bps / bps) ** 2, max(0.0, item.at_s - at)
                if math.isnan(self._square_step):
                    self._square_step, self._step_s = square, step
                else:
                    self._square_step += VOLATILITY_ALPHA * (square - self._square_step)
                    self._step_s += VOLATILITY_ALPHA * (step - self._step_s)
            self._samples.append((item.at_s, item.bps))

    def transferred(self, start_s: float, seconds: float, n_bytes: float, uplink: bool = True) -> None:
        """A burst on the radio (a frame, the part of one sent before it was given up, an answer, a probe or
        its answer), from ``start_s`` on the core's clock; charged to the next record."""
        self._radio_j += self.radio.burst(start_s, seconds, n_bytes, uplink)

    def cut_short(self, at_s: float, n_bytes: int, waited_s: float) -> RateBound | None:
        """What an upload given up before it all arrived teaches: at most its bytes over the time waited."""
        return RateBound(at_s, n_bytes * 8 / waited_s) if waited_s > MIN_BOUND_S else None

    def record(self, arrival_s: float, decision: Decision, state: State, outcome: Outcome, latency_s: float,
               probe_bytes: int = 0, edge: str | None = None, answered_at: float | None = None) -> RequestRecord:
        """Keep (and return) the record of one request, and learn what its answer says of the server (the
        queue wait it met, the compute scale) as of ``answered_at`` on the core's clock, the one it decides
        on; by default ``arrival_s + latency_s``, for a driver whose records count on that clock too (the
        simulator: a live client's records count from its own epoch)."""
        o = decision.option
        device_s = o.head_s + o.encode_s
        if o.kind != "local" and (outcome.executed == "local" or self.config.hedge):
            device_s += self.remaining_s(o)  # after a fallback; beside a hedge, which cannot be stopped midway
        radio_j, self._radio_j = self._radio_j, 0.0
        record = RequestRecord(
            len(self.records), arrival_s, o.name, o.kind, o.cut, o.codec, decision.predicted_s,
            state.estimated.uplink_bps, state.actual.uplink_bps if state.actual else None, latency_s, probe_bytes,
            outcome.executed, outcome.fallback_reason, outcome.bytes_sent, outcome.measured_bps, outcome.upload_s,
            outcome.queue_s, outcome.compute_s, outcome.batch_size, outcome.top1,
            None if o.kind == "local" else state.reported.queue_wait_s,
            None if o.kind == "local" else queue_met(o, state.estimated, state.reported), edge,
            self.energy.compute_j(device_s), radio_j, outcome.answer)
        self.records.append(record)
        answered_at = arrival_s + latency_s if answered_at is None else answered_at
        if outcome.queue_s is not None:
            self._met.add(answered_at, outcome.queue_s)
        profiled = o.tail_at(max(1, outcome.batch_size))
        if outcome.compute_s is not None and outcome.executed != "local" and profiled > 0:
            ratio = math.log(min(MAX_COMPUTE_SCALE, max(1 / MAX_COMPUTE_SCALE, outcome.compute_s / profiled)))
            self._slower.add(answered_at, ratio)
        return record


class _Recent:
    """A moving average (weight ``MET_ALPHA`` for each new value) that is forgotten once nothing new has
    come for ``MET_MAX_AGE_S``. A value counts from when it is learnt: a simulator that records a request
    before its answer's time does not tell the device early."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None  # when the newest value came, and the average then
        self._coming: list[tuple[float, float]] = []  # (learnt at, value), not yet reached by the clock

    def add(self, at_s: float, value: float) -> None:
        bisect.insort(self._coming, (at_s, value))

    def at(self, now: float, default: float) -> float:
        """The average at ``now``, or ``default`` when there is none or it is forgotten."""
        while self._coming and self._coming[0][0] <= now:
            at_s, value = self._coming.pop(0)
            average = value if self._last is None else (1 - MET_ALPHA) * self._last[1] + MET_ALPHA * value
            self._last = (at_s, average)
        return self._last[1] if self._last is not None and now - self._last[0] <= MET_MAX_AGE_S else default


def summarize(records: list[RequestRecord], deadline_s: float | None = None) -> dict[str, Any]:
    """Mean and percentiles of latency (ms), deadline misses, fallbacks, bytes sent and probed, the device's
    mean energy per request and the radio's part of it (mJ), the longest stale estimate, and how often each
    option was chosen."""
    if not records:
        raise EdgesplitError("no request arrived: the run is shorter than one period of --fps")
    latencies = sorted(r.latency_s * 1000 for r in records)
    cuts: dict[str, int] = {}
    for r in records:
        cuts[r.option] = cuts.get(r.option, 0) + 1
    span = max(r.arrival_s for r in records) - min(r.arrival_s for r in records)
    return {
        "mean_ms": statistics.fmean(latencies), "p50_ms": quantile(latencies, 0.50),
        "p95_ms": quantile(latencies, 0.95), "p99_ms": quantile(latencies, 0.99),
        "miss_rate": (sum(r.latency_s > deadline_s for r in records) / len(records)) if deadline_s else 0.0,
        "mean_bytes": statistics.fmean(r.bytes_sent for r in records), "count": len(records),
        "mean_energy_mj": statistics.fmean(r.energy_j for r in records) * 1e3,
        "mean_radio_mj": statistics.fmean(r.radio_j for r in records) * 1e3,
        "fallbacks": sum(r.fallback_reason is not None for r in records),
        "probe_bytes_per_s": sum(r.probe_bytes for r in records) / span if span > 0 else 0.0,
        "stale_estimate_s": stale_estimate_s(records),
        "cuts": dict(sorted(cuts.items(), key=lambda kv: -kv[1])),
    }


def load_errors(records: list[RequestRecord]) -> dict[str, Any]:
    """How well the devices knew the wait their requests met at the server, over the requests it answered:
    the mean absolute error (ms) of the newest report taken as it is, and of the policy's prediction (the
    report aged to the request's arrival)."""
    known = [r for r in records if r.queue_s is not None and r.predicted_queue_s is not None]
    if not known:
        return {"requests": 0, "queue_ms": None, "reported_error_ms": None, "predicted_error_ms": None}
    return {"requests": len(known), "queue_ms": statistics.fmean(r.queue_s for r in known) * 1e3,
            "reported_error_ms": statistics.fmean(abs(r.reported_queue_s - r.queue_s) for r in known) * 1e3,
            "predicted_error_ms": statistics.fmean(abs(r.predicted_queue_s - r.queue_s) for r in known) * 1e3}


def stale_estimate_s(records: list[RequestRecord]) -> float | None:
    """The longest stretch (s, from the first request in it to the last) over which the estimate stayed
    within 1 % of one value while the true rate was more than twice it: a device blind to a better link.
    None where the true rate is not known."""
    if any(r.true_bps is None for r in records):
        return None
    longest, since = 0.0, None
    for r in sorted(records, key=lambda r: r.arrival_s):
        blind = r.true_bps > 2 * r.estimated_bps
        if blind and since is not None and abs(r.estimated_bps - since.estimated_bps) <= 0.01 * since.estimated_bps:
            longest = max(longest, r.arrival_s - since.arrival_s)
        else:
            since = r if blind else None
    return longest
