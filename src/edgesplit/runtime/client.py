"""The device client: runs the head, picks the cut per request with the simulator's very policy and
estimator objects, sends one frame, and finishes locally whenever the server cannot answer in time.

Uplink goodput is measured at the receiver: the server reports when the body's first and last chunks
arrived (``Server-Timing: recv``) and how many bytes came after the first chunk, so neither the server's
queueing and compute time nor the round trip enters the sample. ``send()`` returning says nothing about
delivery (the kernel buffers megabytes), so the client never times its own send. While it runs
everything locally it learns nothing from answers, so, like the simulator's device, it sends a small probe
(``POST /v1/probe``, on a second connection, beside the local computation) when its newest sample is older
than ``probe_interval_s``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgesplit.codec import OUTPUT_CUT, decode_frame, encode_frame
from edgesplit.errors import EdgesplitError, FrameError
from edgesplit.estimators import PRIOR_BPS, PROBE_BYTES, PROBE_INTERVAL_S, Estimator
from edgesplit.latency import LinkState, Option, ServerState
from edgesplit.policies import Policy, State
from edgesplit.profile import Profile, profile_from_dict
from edgesplit.runtime.device_engines import DeviceEngine
from edgesplit.runtime.transport import HttpTransport, Response, TransportAborted, TransportError, TransportStopped

FRAME_TYPE = "application/vnd.edgesplit.frame"
_TIMING = re.compile(r'(\w+);dur=([\d.]+)(?:;desc="(\d+))?')


@dataclass(frozen=True)
class ClientConfig:
    rtt_s: float = 0.04  # assumed until measured
    deadline_s: float | None = None
    prior_bps: float = PRIOR_BPS
    timeout_s: float = 10.0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    probe_interval_s: float = PROBE_INTERVAL_S
    probe_bytes: int = PROBE_BYTES
    hedge: bool = False  # while waiting for the server, run the rest here too; the first answer wins
    probe_on_connect: bool = True  # measure the uplink (and learn the load) once before the first request


HEDGE_WON = "hedge: the device finished first"
CONNECT_PROBE_TIMEOUT_S = 2.0  # a link in an outage when the device connects teaches nothing: do not wait


@dataclass(frozen=True)
class RequestRecord:
    index: int
    option: str  # the option chosen (Option.name); ``executed`` says where it ended
    cut: str | None
    codec: str
    executed: str  # "local" | "split" | "offload"
    fallback_reason: str | None
    latency_ms: float
    bytes_sent: int
    top1: int
    predicted_ms: float
    estimated_mbps: float
    measured_mbps: float | None
    server_ms: float | None = None  # the server's queue wait + compute, from its Server-Timing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeviceClient:
    """One device talking to one edge server (``url``) about one model."""

    def __init__(self, url: str, engine: DeviceEngine, options: list[Option], policy: Policy,
                 estimator: Estimator, config: ClientConfig = ClientConfig(),
                 connect: Callable[[], HttpTransport] | None = None,
                 truth: Callable[[], LinkState] | None = None) -> None:
        """``connect`` opens a connection to ``url`` (default: plain HTTP; an emulated link passes its
        shaping transport); ``truth`` tells the true link now, where it is known (an emulated link), and
        lets the oracle policy run live."""
        self.url = url.rstrip("/")
        self.engine = engine
        self.options = options
        self.policy = policy
        self.estimator = estimator
        self.config = config
        self._open = connect or (lambda: HttpTransport(self.url, config.timeout_s))
        self.http = self._open()
        self.truth = truth
        self._prober: HttpTransport | None = None
        self._probe: threading.Thread | None = None
        self._hedge: threading.Thread | None = None  # a hedged local run that lost, still finishing
        self._last_sample_at = -math.inf
        self._lock = threading.Lock()  # the estimator and the reported load, shared with the probe thread
        self.model_id = engine.model_id
        self.reported = ServerState()
        self.rtt_s = config.rtt_s
        self.down_until = 0.0
        self._backoff = config.backoff_s
        self.refusal: str | None = None  # why splitting is off for good (model mismatch)
        self.records: list[RequestRecord] = []

    def close(self) -> None:
        if self._hedge is not None:
            self._hedge.join()
        if self._probe is not None:
            self._probe.join(self.config.timeout_s)
        self.http.close()
        if self._prober is not None:
            self._prober.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> str:
        """Check that the server holds the same model and, unless ``probe_on_connect`` is off, measure the
        uplink once (a probe on the second connection); returns a line for the user."""
        try:
            started = time.perf_counter()
            info = self.http.request("GET", "/v1/model").json()
            self.rtt_s = time.perf_counter() - started
        except (TransportError, ValueError) as exc:
            self._mark_down()
            return f"server {self.url} unreachable ({type(exc).__name__}); running locally, retrying with backoff"
        if info.get("model_id") != self.model_id.hex():
            self.refusal = (f"the server's model id {info.get('model_id')} differs from ours {self.model_id.hex()}: "
                            "start both with the same model and weights; running locally")
            return self.refusal
        if self.config.probe_on_connect:
            self._last_sample_at = time.perf_counter()
            self._send_probe(min(self.config.timeout_s, CONNECT_PROBE_TIMEOUT_S))
        return f"server {self.url} holds the same model ({self.model_id.hex()}), RTT {self.rtt_s * 1e3:.1f} ms"

    def infer(self, image: np.ndarray, arrived: float | None = None) -> RequestRecord:
        """Answer one uint8 image (3, H, W); always returns exactly one result. Its latency counts from
        ``arrived`` (a ``time.perf_counter()`` value; default now): a request that waited for the previous
        one to finish has waited."""
        if self._hedge is not None:  # the processor is still busy with the last request's hedge
            self._hedge.join()
            self._hedge = None
        begun = time.perf_counter()
        arrived = begun if arrived is None else arrived
        x = self.engine.normalize(image)
        with self._lock:
            estimate = self.estimator.predict() or self.config.prior_bps
            state = State(LinkState(estimate, self.rtt_s), self.reported, self.truth() if self.truth else None,
                          hedged=self.config.hedge, recent_bps=self.estimator.recent())
        decision = self.policy.choose(state, self.options)
        option = decision.option
        reason, measured, sent, server_ms = None, None, 0, None
        if option.kind == "local":
            self._maybe_probe()
            logits, executed = self.engine.local(x), "local"
        else:
            mid = self.engine.head(option.cut, x) if option.kind == "split" else None
            logits, reason = None, self._unavailable()
            if reason is None:
                payload = self._frame(option, image, mid)
                sent = len(payload)
                if self.config.hedge:
                    logits, reason, measured, server_ms = self._race(option, x, mid, payload, begun)
                else:
                    logits, reason, measured, server_ms = self._remote(payload, begun)
            executed = option.kind if reason is None else "local"
            if logits is None:
                logits = self._finish_locally(option, x, mid)
        record = RequestRecord(len(self.records), option.name, option.cut, option.codec, executed, reason,
                               (time.perf_counter() - arrived) * 1e3, sent, int(np.argmax(logits[0])),
                               decision.predicted_s * 1e3, estimate / 1e6, measured / 1e6 if measured else None,
                               server_ms)
        self.records.append(record)
        return record

    def _maybe_probe(self) -> None:
        """Measure the uplink beside a local run, when the newest sample is old and no probe is out."""
        fresh = time.perf_counter() - self._last_sample_at < self.config.probe_interval_s
        busy = self._probe is not None and self._probe.is_alive()
        if self._unavailable() or fresh or busy:
            return
        self._last_sample_at = time.perf_counter()  # one probe per interval, even if it fails
        self._probe = threading.Thread(target=self._send_probe, name="edgesplit-probe", daemon=True)
        self._probe.start()

    def _send_probe(self, timeout_s: float | None = None) -> None:
        if self._prober is None:
            self._prober = self._open()
        try:
            response = self._prober.request("POST", "/v1/probe", bytes(self.config.probe_bytes),
                                            {"content-type": "application/octet-stream"},
                                            timeout_s or self.config.timeout_s)
        except TransportError:
            return
        if response.status == 204:
            self._learn(response)
            self._goodput(server_timings(response))

    def _unavailable(self) -> str | None:
        """Why the server is not to be tried for this request, if it is not."""
        if self.refusal:
            return "model mismatch"
        left = self.down_until - time.monotonic()
        return f"server down (retrying in {left:.1f} s)" if left > 0 else None

    def _finish_locally(self, option: Option, x: np.ndarray, mid: np.ndarray | None) -> np.ndarray:
        """The server did not answer: the tail (or, for offload, the whole model) runs here."""
        return self.engine.local(x) if mid is None else self.engine.tail(option.cut, mid)

    def _frame(self, option: Option, image: np.ndarray, mid: np.ndarray | None) -> bytes:
        if option.kind == "offload":
            codec = "jpeg" if option.codec.startswith("jpeg") else "raw"
            quality = int(option.codec[4:]) if codec == "jpeg" else 90
            return encode_frame(image[None], model_id=self.model_id, cut=0, codec=codec, jpeg_quality=quality)
        cut_id = self.engine.cut_ids[option.cut]
        if option.codec == "fp16":
            return encode_frame(mid.astype(np.float16), model_id=self.model_id, cut=cut_id)
        codec = "int8" if option.codec == "int8" else "raw"
        return encode_frame(mid, model_id=self.model_id, cut=cut_id, codec=codec)

    def _race(self, option: Option, x: np.ndarray, mid: np.ndarray | None, payload: bytes, begun: float
              ) -> tuple[np.ndarray, str | None, float | None, float | None]:
        """Hedged: the rest of the model runs here while the server is asked; the first answer wins. When
        the device finishes first, the exchange is stopped (an upload still in progress is dropped, and
        teaches the estimator as a deadline would); when the server answers first, the local run cannot be
        stopped midway, so it finishes before the device takes its next request (as in the simulator)."""
        abort = threading.Event()
        answered = threading.Lock()  # held by whichever side claims the win
        local: list[np.ndarray] = []

        def run_here() -> None:
            local.append(self._finish_locally(option, x, mid))
            if answered.acquire(blocking=False):
                self.http.interrupt(abort)

        self._hedge = threading.Thread(target=run_here, name="edgesplit-hedge", daemon=True)
        self._hedge.start()
        logits, reason, measured, server_ms = self._remote(payload, begun, abort)
        if answered.acquire(blocking=False) and logits is not None:  # else the device's answer it is
            return logits, None, measured, server_ms
        self._hedge.join()
        self._hedge = None
        return local[0], reason or HEDGE_WON, None, None

    def _remote(self, payload: bytes, begun: float, abort: threading.Event | None = None
                ) -> tuple[np.ndarray | None, str | None, float | None, float | None]:
        """POST the frame; (logits, None, goodput, server ms) on success, (None, reason, None, None) when to
        fall back.

        The deadline counts from when the device took the request up (``begun``), not from its arrival:
        a device that fell behind still gives each request its chance. A request whose upload had not all
        arrived when it timed out teaches the estimator that the link gave at most the frame's bytes over
        the time waited."""
        timeout = self.config.timeout_s
        if self.config.deadline_s is not None:
            timeout = max(0.001, self.config.deadline_s - (time.perf_counter() - begun))
        sending = time.perf_counter()
        try:
            response = self.http.request("POST", "/v1/infer", payload, {"content-type": FRAME_TYPE}, timeout, abort)
        except TransportStopped as exc:
            waited = time.perf_counter() - sending
            if exc.upload_incomplete and waited > 0.01:  # the link gave less than this; a slow server teaches nothing
                with self._lock:
                    self.estimator.update(len(payload) * 8 / waited)
                    self._last_sample_at = time.perf_counter()
            if isinstance(exc, TransportAborted):
                return None, HEDGE_WON, None, None
            return None, "deadline" if self.config.deadline_s is not None else "timeout", None, None
        except TransportError as exc:
            self._mark_down()
            return None, f"server unreachable ({exc})", None, None
        if response.status != 200:
            if response.status in (429, 503):
                self._mark_down()
            return None, f"server answered {response.status}: {_detail(response)}", None, None
        self._backoff = self.config.backoff_s
        try:
            frame = decode_frame(response.body)
        except FrameError as exc:
            return None, f"bad answer from the server ({exc})", None, None
        if frame.cut != OUTPUT_CUT:
            return None, "bad answer from the server (not an output frame)", None, None
        self._learn(response)
        timings = server_timings(response)
        server_ms = (timings["queue"][0] + timings["compute"][0]) * 1e3 if {"queue", "compute"} <= set(timings) else None
        return frame.array, None, self._goodput(timings), server_ms

    def _learn(self, response: Response) -> None:
        try:
            load = json.loads(response.headers.get("edgesplit-load", "{}"))
        except ValueError:
            return
        compute = load.get("compute_s", {})
        per_batch = float(compute.get("1", 0.0)) if compute else 0.0
        with self._lock:
            self.reported = ServerState(queue_wait_s=load.get("queue_length", 0) * per_batch)

    def _goodput(self, timings: dict[str, tuple[float, str]]) -> float | None:
        """The uplink's goodput from the server's ``recv`` timing (learnt by the estimator), if measurable."""
        recv = timings.get("recv")
        if recv is None or recv[1] is None or recv[0] < 1e-3 or int(recv[1]) <= 0:
            return None  # one chunk: too small to time at the receiver
        rate = int(recv[1]) * 8 / recv[0]
        if math.isfinite(rate) and rate > 0:
            with self._lock:
                self.estimator.update(rate)
                self._last_sample_at = time.perf_counter()
            return rate
        return None

    def _mark_down(self) -> None:
        self.down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.max_backoff_s)

    def summary(self) -> dict[str, Any]:
        if not self.records:
            raise EdgesplitError("no request was made")
        latencies = sorted(r.latency_ms for r in self.records)
        return {"count": len(self.records), "answered": len(self.records),
                "fallbacks": sum(r.fallback_reason is not None for r in self.records),
                "mean_ms": float(np.mean(latencies)), "p95_ms": float(np.percentile(latencies, 95))}


def fetch_server_profile(transport: HttpTransport, url: str) -> Profile | None:
    """The server's own profile (``edgesplit serve --profile``), or None when it has none."""
    response = transport.request("GET", "/v1/profile")
    if response.status == 404:
        return None
    if response.status != 200:
        raise EdgesplitError(f"{url}/v1/profile answered {response.status}: {_detail(response)}")
    try:
        data = response.json()
    except ValueError as exc:
        raise EdgesplitError(f"{url}/v1/profile is not JSON ({exc})") from None
    return profile_from_dict(data, f"{url}/v1/profile")


def server_timings(response: Response) -> dict[str, tuple[float, str]]:
    """Server-Timing entries: name → (seconds, description)."""
    return {m[0]: (float(m[1]) / 1e3, m[2]) for m in _TIMING.findall(response.headers.get("server-timing", ""))}


def _detail(response: Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:200]
    except (ValueError, AttributeError):
        return response.body[:200].decode("utf-8", "replace")
