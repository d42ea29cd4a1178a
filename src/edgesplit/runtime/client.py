"""The device client: runs the head, lets the device core (:mod:`edgesplit.device`, the simulator's very
object) pick the cut per request, sends one frame, and finishes locally whenever the server cannot answer
in time.

Uplink goodput is measured at the receiver: the server reports when the body's first and last chunks
arrived (``Server-Timing: recv``) and how many bytes came after the first chunk, and the core's rule
(:func:`edgesplit.device.timed_sample`) decides whether that timed anything; ``send()`` returning says
nothing about delivery (the kernel buffers megabytes), so the client never times its own send. When the
core asks for a probe (its newest sample is stale and this request teaches nothing), the client sends one
(``POST /v1/probe``) on a second connection: beside a local run, or after the answer.

Nothing the server sends stops the device: an answer that is not a finite output frame of this model, of
its output's shape (checked before anything is allocated; for a detector, whose number of boxes varies,
its tensors' names, dtypes and trailing dimensions), any other status, an answer over
``max_answer_bytes``, a broken connection or a silent server all end in the local answer, with the reason
in ``fallback_reason``. A server that cannot be reached, or answers 429 or 503, is left alone for a
backoff that doubles; one that answered anything else unusable is tried again with the next request, on a
new connection. Server-made text in the reasons is made safe to print (:func:`_printable`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgesplit.codecs import input_codec, split_codec
from edgesplit.outputs import Batch, Output, answer_digest, check_finite, top1
from edgesplit.wire import (FLOATS, FRAME_TYPE, INTEGER_DTYPE, OUTPUT_CUT, Expectation, decode_frame, flatten_tree,
                            unflatten_tree)
from edgesplit.device import (DEADLINE_PASSED, HEDGE_WON, DeviceConfig, DeviceCore, LoadUpdate, Outcome,
                              RateSample, RequestRecord, RoundTrip, summarize, timed_sample)
from edgesplit.errors import FrameError, ProfileError
from edgesplit.estimators import Estimator
from edgesplit.latency import LinkState, Option
from edgesplit.load import LOAD_HEADER, LoadReport
from edgesplit.policies import Decision, Policy, State
from edgesplit.profile import Profile, profile_from_dict
from edgesplit.runtime.device_engines import DeviceEngine
from edgesplit.runtime.transport import (BadAnswer, HttpTransport, Response, TransportAborted, TransportError,
                                         TransportStopped)

_MARKUP = re.compile(r"\[(?=[a-z#/@])")  # where rich's markup tags begin (rich.markup.RE_TAGS)
_TIMING = re.compile(r'\s*(\w{1,32})(?:;dur=(\d{1,12}(?:\.\d{1,9})?))?(?:;desc="(\d{1,15})[^"]{0,200}")?\s*')
MAX_TIMING_ENTRIES = 16


@dataclass(frozen=True)
class ClientConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    timeout_s: float = 10.0  # any one exchange, at most
    backoff_s: float = 0.5  # after the server could not be reached, run locally this long (doubling)
    max_backoff_s: float = 8.0


CHEAP_FAILURE_S = 0.05  # a request that failed this fast (a refused connection) cost the device nothing
CONNECT_PROBE_TIMEOUT_S = 2.0  # a link in an outage when the device connects teaches nothing: do not wait


class DeviceClient:
    """One device talking to one edge server (``url``) about one model."""

    def __init__(self, url: str, engine: DeviceEngine, options: list[Option], policy: Policy,
                 estimator: Estimator, config: ClientConfig = ClientConfig(),
                 connect: Callable[[], HttpTransport] | None = None,
                 truth: Callable[[], LinkState] | None = None) -> None:
        """``options`` are those the device may pick; ``connect`` opens a connection to ``url`` (default: plain
        HTTP; an emulated link passes its shaping transport); ``truth`` tells the true link now, where it is
        known (an emulated link), and lets the oracle policy run live. ``engine`` runs the model once here,
        on a blank image: every answer must have the shape of its output."""
        self.url = url.rstrip("/")
        self.engine = engine
        self.core = DeviceCore(policy, estimator, options, config.device)
        self.estimator = estimator
        self.config = config
        self._open = connect or (lambda: HttpTransport(self.url, config.timeout_s))
        self.http = self._open()
        self.truth = truth
        self.epoch = time.perf_counter()  # records' arrival times count from here
        self._prober: HttpTransport | None = None
        self._probe: threading.Thread | None = None
        self._hedge: threading.Thread | None = None  # a hedged local run that lost, still finishing
        self._lock = threading.Lock()  # the core, shared with the probe thread
        self.model_id = engine.model_id
        output = flatten_tree(engine.local(engine.normalize(np.zeros(engine.input_shape, np.uint8))))
        self._answer_names = [name for name, _ in output]  # an answer must hold these tensors, of these shapes
        if engine.answer_varies:  # a detector's: boxes (K, 4), scores (K,), labels (K,) int32, K any
            self._answer_kinds: list[tuple[str, tuple[int, ...]]] | None = [(a.dtype.name, a.shape[1:])
                                                                            for _, a in output]
            self._answer = Expectation(self.model_id, {OUTPUT_CUT: None},
                                       dtypes={OUTPUT_CUT: FLOATS | {INTEGER_DTYPE}})
        else:
            shapes = tuple(tuple(a.shape[1:]) for _, a in output)
            self._answer_kinds = None
            self._answer = Expectation(self.model_id, {OUTPUT_CUT: shapes[0] if len(shapes) == 1 else shapes},
                                       max_batch_size=1,  # a segmentation model's classes: uint8
                                       dtypes={OUTPUT_CUT: FLOATS | {a.dtype.name for _, a in output}})
        self.down_until = 0.0
        self._backoff = config.backoff_s
        self.refusal: str | None = None  # why splitting is off for good (model mismatch)
        self.last_output: Output | None = None

    @property
    def records(self) -> list[RequestRecord]:
        return self.core.records

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
        uplink once (a probe on the second connection); returns a line for the user. A server that cannot
        be reached, or answers no model id, is retried with backoff meanwhile."""
        try:
            started = time.perf_counter()
            served = _model_id(self.http.request("GET", "/v1/model"))
            rtt_s = time.perf_counter() - started
        except BadAnswer as exc:
            self.http.close()
            self._mark_down()
            return _printable(f"server {self.url} gave a bad answer to GET /v1/model ({exc}); running locally, "
                              "retrying with backoff")
        except TransportError as exc:
            self._mark_down()
            return _printable(f"server {self.url} unreachable ({exc}); running locally, retrying with backoff")
        with self._lock:
            self.core.learn([RoundTrip(time.perf_counter(), rtt_s)])
        if served != self.model_id.hex():
            self.refusal = _printable(f"the server's model id {served[:40]} differs from ours {self.model_id.hex()}: "
                                      "start both with the same model and weights; running locally")
            return self.refusal
        if self.config.device.probe_on_connect:
            with self._lock:
                self.core.probe_sent(time.perf_counter())
            self._send_probe(min(self.config.timeout_s, CONNECT_PROBE_TIMEOUT_S))
        return f"server {self.url} holds the same model ({self.model_id.hex()}), RTT {self.core.rtt_s * 1e3:.1f} ms"

    def infer(self, image: np.ndarray, arrived: float | None = None) -> RequestRecord:
        """Answer one uint8 image (3, H, W); always returns exactly one result. Its latency counts from
        ``arrived`` (a ``time.perf_counter()`` value; default now): a request that waited for the previous
        one to finish has waited."""
        begun, x = self.take_up(image)
        arrived = begun if arrived is None else arrived
        decision, state, stale = self.plan(begun)
        option = decision.option
        probed = 0
        if option.kind == "local":
            probed = self.maybe_probe() if stale else 0
            output, outcome = self.engine.local(x), Outcome("local")
        else:
            output, outcome, mid = self.attempt(option, image, x, begun)
            if output is None:
                output = self.finish_locally(option, x, mid)
            if stale and outcome.measured_bps is None:  # this upload taught nothing
                probed = self.maybe_probe()
        return self.keep(arrived, decision, state, outcome, output, probed)

    def take_up(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """Take a request up once the processor is free (a hedge that lost may still be running): when
        (``time.perf_counter()``), and the image normalised for the model."""
        if self._hedge is not None:
            self._hedge.join()
            self._hedge = None
        return time.perf_counter(), self.engine.normalize(image)

    def plan(self, begun: float) -> tuple[Decision, State, bool]:
        """The core's decision for a request taken up at ``begun``, the state it decided on, and whether the
        newest rate sample is stale (a request that teaches nothing should then be followed by a probe)."""
        with self._lock:
            decision, state = self.core.decide(begun, actual=self.truth() if self.truth else None)
            return decision, state, self.core.stale(begun)

    def attempt(self, option: Option, image: np.ndarray, x: np.ndarray, begun: float, mid: Batch | None = None
                ) -> tuple[Output | None, Outcome, Batch | None]:
        """Ask this server to serve ``option`` (running the head first, unless ``mid`` is its output already):
        the model's output, or None when the device must finish itself; how it went; and the head's output."""
        if option.kind == "split" and mid is None:
            mid = self.engine.head(option.cut, x)
        reason = self._unavailable()
        if reason is not None:
            return None, Outcome("local", reason), mid
        payload = self._frame(option, image, mid)
        if self.config.device.hedge:
            output, outcome = self._race(option, x, mid, payload, begun)
        else:
            output, outcome = self._remote(option, payload, begun)
        return output, outcome, mid

    def keep(self, arrived: float, decision: Decision, state: State, outcome: Outcome, output: Output,
             probed: int, edge: str | None = None) -> RequestRecord:
        """Record the request with the core (and return the record); ``output`` becomes ``last_output``."""
        self.last_output = output  # the answer itself, for the caller (the record says how it came)
        outcome = dataclasses.replace(outcome, top1=top1(output), answer=answer_digest(output))
        with self._lock:
            now = time.perf_counter()  # the core's clock (it decides and learns on perf_counter time)
            return self.core.record(arrived - self.epoch, decision, state, outcome, now - arrived, probed, edge,
                                    answered_at=now)

    def maybe_probe(self) -> int:
        """Measure the uplink on the second connection unless a probe is out or the server is down; the bytes
        sent."""
        if self._unavailable() or (self._probe is not None and self._probe.is_alive()):
            return 0
        with self._lock:
            now = time.perf_counter()
            self.core.probe_sent(now)  # one probe per interval, even if it fails
            token = self.core.upload_started(now, self.config.device.probe_bytes)  # it shares the uplink
        self._probe = threading.Thread(target=self._send_probe, args=(None, token), name="edgesplit-probe",
                                       daemon=True)
        self._probe.start()
        return self.config.device.probe_bytes

    def _send_probe(self, timeout_s: float | None = None, token: int | None = None) -> None:
        if self._prober is None:
            self._prober = self._open()
        sending = time.perf_counter()
        try:
            response = self._prober.request("POST", "/v1/probe", bytes(self.config.device.probe_bytes),
                                            {"content-type": "application/octet-stream"},
                                            timeout_s or self.config.timeout_s)
        except TransportError:
            self._bursts(sending, self.config.device.probe_bytes, 0)
            return
        finally:
            if token is not None:
                with self._lock:
                    self.core.upload_learnt(token)
        self._bursts(sending, self.config.device.probe_bytes, len(response.body))
        if response.status == 204:
            self._learn(response)

    def _bursts(self, started: float, sent: int, received: int) -> None:
        """Tell the core what the radio did for an exchange begun at ``started`` that ends now: the upload,
        as long as ``sent`` bytes take at the estimated rate (at most until now), and the answer's bytes."""
        now = time.perf_counter()
        with self._lock:
            rate = self.estimator.predict() or self.config.device.prior_bps
            self.core.transferred(started, min(now - started, sent * 8 / rate), sent)
            if received:
                down_s = received * 8 / self.config.device.downlink_bps
                self.core.transferred(now - down_s, down_s, received, uplink=False)

    def _unavailable(self) -> str | None:
        """Why the server is not to be tried for this request, if it is not."""
        if self.refusal:
            return "model mismatch"
        left = self.down_until - time.monotonic()
        return f"server down (retrying in {left:.1f} s)" if left > 0 else None

    def finish_locally(self, option: Option, x: np.ndarray, mid: Batch | None) -> Output:
        """The server did not answer: the tail (or, for offload, the whole model) runs here."""
        return self.engine.local(x) if mid is None else self.engine.tail(option.cut, mid)

    def _frame(self, option: Option, image: np.ndarray, mid: Batch | None) -> bytes:
        """The frame to send, encoded by the device engine (an emulated device takes its profile's time)."""
        if option.kind == "offload":
            image_codec = input_codec(option.codec)
            return self.engine.encode(option, image, lambda: image_codec.frame(image, model_id=self.model_id))
        codec, cut = split_codec(option.codec), self.engine.cut_ids[option.cut]
        return self.engine.encode(option, mid, lambda: codec.frame(mid, model_id=self.model_id, cut=cut))

    def _race(self, option: Option, x: np.ndarray, mid: Batch | None, payload: bytes, begun: float
              ) -> tuple[Output, Outcome]:
        """Hedged: the rest of the model runs here while the server is asked; the first answer wins. When
        the device finishes first, the exchange is stopped (an upload still in progress is dropped, and
        teaches the estimator as a deadline would); when the server answers first, the local run cannot be
        stopped midway, so it finishes before the device takes its next request (as in the simulator)."""
        abort = threading.Event()
        answered = threading.Lock()  # held by whichever side claims the win
        local: list[Output] = []

        def run_here() -> None:
            local.append(self.finish_locally(option, x, mid))
            if answered.acquire(blocking=False):
                self.http.interrupt(abort)

        self._hedge = threading.Thread(target=run_here, name="edgesplit-hedge", daemon=True)
        self._hedge.start()
        output, outcome = self._remote(option, payload, begun, abort)
        if answered.acquire(blocking=False) and output is not None:  # else the device's answer it is
            return output, outcome
        self._hedge.join()
        self._hedge = None
        return local[0], Outcome("local", outcome.fallback_reason or HEDGE_WON, len(payload))

    def _remote(self, option: Option, payload: bytes, begun: float, abort: threading.Event | None = None
                ) -> tuple[Output | None, Outcome]:
        """POST the frame; the model's output (None when to fall back) and how it went.

        The deadline counts from when the device took the request up (``begun``), not from its arrival:
        a device that fell behind still gives each request its chance. A request whose upload had not all
        arrived when it was given up teaches the core a bound on the link."""
        timeout = min(self.config.timeout_s, max(0.001, self.core.deadline_s - (time.perf_counter() - begun)))
        sent = len(payload)
        sending = time.perf_counter()
        try:
            response = self.http.request("POST", "/v1/infer", payload, {"content-type": FRAME_TYPE}, timeout, abort)
            exchange_s = time.perf_counter() - sending
        except TransportStopped as exc:
            now = time.perf_counter()
            self._bursts(sending, sent, 0)
            if exc.upload_incomplete and (bound := self.core.cut_short(now, sent, now - sending)):
                with self._lock:
                    self.core.learn([bound])  # the link gave less than this; a slow server teaches nothing
            reason = HEDGE_WON if isinstance(exc, TransportAborted) else DEADLINE_PASSED
            return None, Outcome("local", reason, sent)
        except BadAnswer as exc:
            self._bursts(sending, sent, 0)
            return None, _fallback(f"bad answer from the server ({exc})", sent)
        except TransportError as exc:
            self._bursts(sending, sent, 0)
            self._mark_down(time.perf_counter() - sending)
            return None, _fallback(f"server unreachable ({exc})", sent)
        self._bursts(sending, sent, len(response.body))
        if response.status != 200:
            self.http.close()  # a connection that carried an answer we cannot use is not trusted with the next
            if response.status in (429, 503):
                self._mark_down()
            return None, _fallback(f"server answered {_status(response)}", sent)
        try:
            output = self._output(response.body)
        except Exception as exc:  # noqa: BLE001 — whatever a hostile frame makes the codec raise (see _output)
            self.http.close()
            return None, _fallback(f"bad answer from the server ({_describe(exc)})", sent)
        self._backoff = self.config.backoff_s
        timings, sample = self._learn(response)
        queue, compute = (timings[k][0] if k in timings else None for k in ("queue", "compute"))
        batch = timings.get("batch", (0.0, None))[1]
        outcome = Outcome(option.kind, None, sent, sample, None, queue, compute, int(batch or 1))
        with self._lock:
            round_trip = self.core.round_trip(time.perf_counter(), option, outcome, exchange_s)
            self.core.learn([round_trip] if round_trip else [])
        return output, outcome

    def _output(self, body: bytes) -> Output:
        """The model's output an answer carries: an output frame of this model, with the tensors of its
        output (names and shapes, checked before anything is allocated) in a float dtype (a detector's:
        the names, dtypes, int32 labels included, and trailing dimensions of its own), every value
        finite. Raises FrameError, or whatever else a frame the codec does not foresee makes it raise (a
        shape whose product overflowed int64 raised ValueError once): the device must answer all the same."""
        frame = decode_frame(body, expect=self._answer)
        names = [t.name for t in frame.tensors]
        if names != self._answer_names:
            raise FrameError(f"an answer with tensors {names[:8]}, not the model's output {self._answer_names[:8]}")
        if self._answer_kinds is not None:
            kinds = [(t.array.dtype.name, t.array.shape[1:]) for t in frame.tensors]
            if kinds != self._answer_kinds or len({t.array.shape[0] for t in frame.tensors}) != 1:
                raise FrameError(f"an answer with tensors of dtypes and shapes "
                                 f"{[(t.array.dtype.name, t.array.shape) for t in frame.tensors][:8]}, not the model's "
                                 f"{self._answer_kinds[:8]} (one length for all)")
        output = unflatten_tree(frame.named)
        check_finite(output)
        return output

    def _learn(self, response: Response) -> tuple[dict[str, tuple[float, str | None]], float | None]:
        """Feed the core what an answer (or a probe's) teaches: the rate its upload's receive stamps give, by
        the core's rule, and the server's load; its Server-Timing entries and that rate."""
        timings = server_timings(response)
        recv = timings.get("recv")
        sample = timed_sample(int(recv[1] or 0), recv[0]) if recv is not None else None
        report = LoadReport.parse(response.headers.get(LOAD_HEADER))
        with self._lock:  # stamped under the lock: feedback reaches the core in the order of its times
            now = time.perf_counter()
            self.core.learn([RateSample(now, sample)] if sample else [])
            self.core.learn([LoadUpdate(now, report)] if report is not None else [])
        return timings, sample

    def _mark_down(self, failed_in_s: float = math.inf) -> None:
        """Leave the server alone for the backoff, which doubles; except after a failure that cost nothing
        (a refused connection, within ``CHEAP_FAILURE_S``): trying again then costs nothing either, so the
        device keeps trying every ``backoff_s`` and is back on a restarted server within that."""
        if failed_in_s < CHEAP_FAILURE_S:
            self._backoff = self.config.backoff_s
        self.down_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.max_backoff_s)

    def summary(self) -> dict:
        return summarize(self.records, self.core.deadline_s)


def fetch_server_profile(transport: HttpTransport, url: str) -> Profile | None:
    """The server's own profile (``edgesplit serve --profile``), or None when it has none; :class:`BadAnswer`
    (a :class:`TransportError`, as when it cannot be reached) when its answer is no profile."""
    response = transport.request("GET", "/v1/profile")
    if response.status == 404:
        return None
    if response.status != 200:
        raise BadAnswer(_printable(f"{url}/v1/profile answered {_status(response)}"))
    try:
        return profile_from_dict(response.json(), f"{url}/v1/profile")
    except (ValueError, RecursionError) as exc:
        raise BadAnswer(_printable(f"{url}/v1/profile is not JSON ({exc})")) from None
    except ProfileError as exc:
        raise BadAnswer(_printable(str(exc))) from exc


def server_timings(response: Response) -> dict[str, tuple[float, str | None]]:
    """Server-Timing entries: name → (seconds, the number leading its description, if any). An entry that
    is not well formed (a duration like ``1.2.3``, 400 digits) teaches nothing and is left out."""
    entries = response.headers.get("server-timing", "").split(",", MAX_TIMING_ENTRIES)[:MAX_TIMING_ENTRIES]
    return {m[1]: (float(m[2] or 0) / 1e3, m[3] or None) for m in map(_TIMING.fullmatch, entries) if m}


def _printable(text: str, limit: int = 300) -> str:
    """Text the server had a hand in, safe to print: at most ``limit`` characters, each printable, and no
    ``[`` that would open rich markup (a stray ``[/x]`` makes ``console.print`` raise); "?" stands for
    what was left out."""
    return _MARKUP.sub("?", "".join(c if c.isprintable() else "?" for c in text[:limit]))


def _fallback(reason: str, sent: int) -> Outcome:
    return Outcome("local", _printable(reason), sent)


def _model_id(response: Response) -> str:
    """The model id in a GET /v1/model answer; BadAnswer when it has none."""
    if response.status != 200:
        raise BadAnswer(f"status {_status(response)}")
    try:
        served = response.json()["model_id"]
    except (ValueError, RecursionError, TypeError, KeyError) as exc:
        raise BadAnswer(f"no model id in it: {type(exc).__name__}: {exc}") from None
    if not isinstance(served, str):
        raise BadAnswer(f"a model id of type {type(served).__name__}, not a string")
    return served


def _status(response: Response) -> str:
    """The status, and what the server said of it, if anything."""
    detail = _detail(response)
    return f"{response.status}: {detail}" if detail else str(response.status)


def _detail(response: Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:200]
    except (ValueError, AttributeError, RecursionError):
        return response.body[:200].decode("utf-8", "replace")


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, FrameError) else f"{type(exc).__name__}: {exc}"
