"""The application shaper: the device's own transport paces every upload to a trace and adds a base RTT.

It needs no privileges and works on loopback. Each request body is cut into 1448-byte segments and segment
k is handed to the socket when a real link would deliver it: when the trace has carried it across the
bottleneck (``RateTrace.transfer_time`` from the moment the upload starts, after any upload still in
progress), plus half the RTT of propagation. So the server's receive timestamps follow the trace as they
would behind a real bottleneck, and a rate change hits the upload at the same moment it would there. A
request without a body waits half the RTT before it is sent; every answer waits half the RTT after it
arrives (the downlink is not shaped). The uplink is one FIFO shared by every transport made from one
link, so a probe and an inference cannot overtake each other.

The pacing runs in the device's process, beside its other Python threads: a link lowers the interpreter's
GIL switch interval to ``SWITCH_INTERVAL_S`` (from Python's 5 ms) so that a segment is handed on within
about that of its time. At 5 ms, with the device's model running in another thread, a 16 KB probe at
8 Mbit/s read as low as 0.82 of the link's rate (40 probes: median 1.005, min 0.819); at 0.2 ms, 0.99.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterator

from edgesplit.latency import LinkState
from edgesplit.runtime.transport import HttpTransport, Response, TransportAborted, TransportTimeout
from edgesplit.traces import SEGMENT_BYTES, RateTrace

SWITCH_INTERVAL_S = 2e-4


class TraceClock:
    """Where a replayed trace is now: seconds since :meth:`restart` (the trace repeats after its end)."""

    def __init__(self, trace: RateTrace) -> None:
        self.trace = trace
        self.restart()

    def restart(self, at: float | None = None) -> None:
        """Count from ``at`` (a ``time.perf_counter()`` value; default now)."""
        self._started = time.perf_counter() if at is None else at

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started

    def to_wall(self, trace_s: float) -> float:
        """The ``time.perf_counter()`` value at trace time ``trace_s``."""
        return self._started + trace_s

    def rate_bps(self) -> float:
        return self.trace.rate_at(self.elapsed_s())


class PacedLink:
    """An uplink that follows ``trace`` with a base round trip ``rtt_s``, emulated in user space."""

    def __init__(self, trace: RateTrace, rtt_s: float = 0.04) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.clock = TraceClock(trace)
        self.rtt_s = rtt_s
        self._lock = threading.Lock()
        self._free_at = 0.0  # trace time at which the uplink has sent everything queued so far

    def restart(self, trace: RateTrace | None = None, at: float | None = None) -> None:
        """Replay the trace (or ``trace`` instead) from its start, now or at ``at`` (a ``time.perf_counter()``
        value), with an empty uplink."""
        with self._lock:
            if trace is not None:
                self.clock.trace = trace
            self.clock.restart(at)
            self._free_at = 0.0

    def truth(self) -> LinkState:
        """The link as it really is now: what an oracle policy may know."""
        return LinkState(max(self.clock.rate_bps(), 1.0), self.rtt_s)

    def schedule(self, n_bytes: int) -> list[float]:
        """Book the uplink for ``n_bytes``; the perf_counter time at which each packet is delivered."""
        with self._lock:
            start = max(self.clock.elapsed_s(), self._free_at)
            trace = self.clock.trace
            ends = [start + trace.transfer_time(start, min(k * SEGMENT_BYTES, n_bytes))
                    for k in range(1, -(-n_bytes // SEGMENT_BYTES) + 1)]
            self._free_at = ends[-1] if ends else start
        return [self.clock.to_wall(t) for t in ends]

    def release(self, not_sent_after: float) -> None:
        """An upload was abandoned at perf_counter time ``not_sent_after``: the rest of it is dropped."""
        with self._lock:
            self._free_at = min(self._free_at, max(0.0, not_sent_after - self.clock.to_wall(0.0)))

    def paced(self, body: bytes, deadline: float | None, abort: threading.Event | None = None) -> Iterator[bytes]:
        """Yield ``body`` in pieces, each when the link has delivered it; TimeoutError past ``deadline`` or
        once ``abort`` is set (the rest of the upload is dropped)."""
        due = [t + self.rtt_s / 2 for t in self.schedule(len(body))]
        sent = 0
        try:
            while sent < len(body):
                now = time.perf_counter()
                ready = sent // SEGMENT_BYTES
                while ready < len(due) and due[ready] <= now:
                    ready += 1
                if ready * SEGMENT_BYTES > sent or ready == len(due):
                    end = min(ready * SEGMENT_BYTES, len(body))
                    yield body[sent:end]
                    sent = end
                    continue
                wake = due[ready]
                if _stopped(min(wake, deadline or math.inf) - now, abort):
                    raise TimeoutError(f"upload stopped ({sent} of {len(body)} bytes)")
                if deadline is not None and wake > deadline:
                    raise TimeoutError(f"upload not delivered by the deadline ({sent} of {len(body)} bytes)")
        finally:
            if sent < len(body):  # given up (deadline, abort, or the connection broke): the rest is dropped
                self.release(time.perf_counter())


class ShapedTransport(HttpTransport):
    """An :class:`HttpTransport` whose requests cross a :class:`PacedLink`."""

    def __init__(self, url: str, link: PacedLink, timeout_s: float = 10.0) -> None:
        super().__init__(url, timeout_s)
        self.link = link

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout_s: float | None = None, abort: threading.Event | None = None) -> Response:
        deadline = time.perf_counter() + (timeout_s or self.timeout_s)
        half = self.link.rtt_s / 2
        if body is None:
            _wait(min(half, max(0.0, deadline - time.perf_counter())), abort)
        else:
            headers = {**(headers or {}), "content-length": str(len(body))}
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TransportTimeout("no answer within the timeout (spent on the round trip)")
        response = super().request(method, path, body, headers, left, abort)
        if time.perf_counter() + half > deadline:  # the answer would arrive too late
            _wait(max(0.0, deadline - time.perf_counter()), abort)
            raise TransportTimeout(f"no answer within {timeout_s or self.timeout_s:.3g} s (still on its way back)")
        _wait(half, abort)
        return response

    def _body(self, body: bytes | None, deadline: float) -> Iterator[bytes] | None:
        return None if body is None else self.link.paced(body, deadline, self._abort)


def _stopped(seconds: float, abort: threading.Event | None) -> bool:
    """Sleep ``seconds``, or less if ``abort`` is set meanwhile; whether it was."""
    if abort is None:
        time.sleep(max(0.0, seconds))
        return False
    return abort.wait(max(0.0, seconds))


def _wait(seconds: float, abort: threading.Event | None) -> None:
    """Sleep ``seconds``; TransportAborted at once when ``abort`` is set meanwhile."""
    if _stopped(seconds, abort):
        raise TransportAborted("stopped on purpose")
