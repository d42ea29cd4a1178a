"""The server's load report: one definition for the edge server that sends it, the simulated server that
stands in for it, and the device that reads it.

A report says how long a request arriving now would wait before its batch starts: what is left of the
batch in progress plus every waiting batch, where waiting requests for the same cut run together (at
most ``max_batch_size`` at a time) and a batch of ``n`` at a cut costs ``batch_s(cut, n)``. It travels in
the ``Edgesplit-Load`` header as JSON.

A wait is stale by the time a device's request arrives: the report also says how fast work has been
arriving (``offered_load``: seconds of compute the requests of the last ``WORK_WINDOW_S`` brought, per
second; each request brings what it added to the wait, :func:`added_work`). The server works off one
second per second, so a device predicts the wait its request meets ``τ`` seconds after the report as
``max(0, queue_wait + (offered_load − 1)·τ)`` (:func:`edgesplit.latency.queue_at`): above 1 the queue grows,
below it drains.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from edgesplit.latency import ServerState

LOAD_HEADER = "edgesplit-load"
MAX_HEADER_CHARS = 1024  # a report is about 90 characters; anything much longer is not one
WORK_WINDOW_S = 2.0  # the offered load is measured over this much of the recent past
MAX_OFFERED_LOAD = 100.0  # a report claiming more is not believed (the device would never send)


def queue_wait(busy_s: float, waiting: Iterable[Hashable], batch_s: Callable[[Hashable, int], float],
               max_batch_size: int) -> float:
    """Seconds a request arriving now waits: ``busy_s`` left of the batch in progress, then every waiting
    request (given by its cut, oldest first) in batches per cut."""
    counts: dict[Hashable, int] = {}
    for cut in waiting:
        counts[cut] = counts.get(cut, 0) + 1
    wait = max(0.0, busy_s)
    for cut, count in counts.items():
        full, rest = divmod(count, max_batch_size)
        wait += full * batch_s(cut, max_batch_size) + (batch_s(cut, rest) if rest else 0.0)
    return wait


def added_work(waiting: int, batch_s: Callable[[int], float], max_batch_size: int) -> float:
    """Seconds a request adds to the wait of whoever comes after it, given ``waiting`` requests for the same
    cut already waiting (``batch_s``: that cut's batch time): a batch's cost for a new batch, the step to the
    next batch size for one that joins. Requests for other cuts run in batches of their own: they do not
    change it (see :func:`queue_wait`)."""
    def cost(count: int) -> float:
        full, rest = divmod(count, max_batch_size)
        return full * batch_s(max_batch_size) + (batch_s(rest) if rest else 0.0)

    return cost(waiting + 1) - cost(waiting)


class WorkRate:
    """The load offered to a server: seconds of work that arrived over the last ``window_s``, per second
    (over less while the server is younger than the window)."""

    def __init__(self, started_s: float, window_s: float = WORK_WINDOW_S) -> None:
        self.started_s, self.window_s = started_s, window_s
        self._arrived: deque[tuple[float, float]] = deque()  # (at, seconds of work)

    def add(self, at_s: float, work_s: float) -> None:
        self._arrived.append((at_s, work_s))

    def rate(self, now_s: float) -> float:
        since = now_s - self.window_s
        while self._arrived and self._arrived[0][0] <= since:
            self._arrived.popleft()
        span = min(self.window_s, now_s - self.started_s)
        if span <= 0:
            return 0.0
        return math.fsum(work for at, work in self._arrived if since < at <= now_s) / span


@dataclass(frozen=True)
class LoadReport:
    """What the server says of its load with every answer."""

    queue_wait_s: float  # see :func:`queue_wait`
    queue_length: int  # requests waiting (not counting the batch in progress)
    max_batch_size: int
    offered_load: float | None = None  # see :class:`WorkRate`; None from a server that does not say

    def to_header(self) -> str:
        fields = {"queue_wait_s": round(self.queue_wait_s, 6), "queue_length": self.queue_length,
                  "max_batch_size": self.max_batch_size}
        if self.offered_load is not None:
            fields["offered_load"] = round(self.offered_load, 4)
        return json.dumps(fields)

    @classmethod
    def parse(cls, text: str | None) -> LoadReport | None:
        """The report in a header's text; None when there is none or it is malformed (a device must not
        stop serving over a bad header, it only learns nothing)."""
        if not text or len(text) > MAX_HEADER_CHARS:
            return None
        try:
            data = json.loads(text)
            wait, length, batch = float(data["queue_wait_s"]), int(data["queue_length"]), int(data["max_batch_size"])
            offered = None if data.get("offered_load") is None else float(data["offered_load"])
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
            return None
        if not (math.isfinite(wait) and wait >= 0 and length >= 0 and batch >= 1):
            return None
        if offered is not None and not 0 <= offered <= MAX_OFFERED_LOAD:
            return None
        return cls(wait, length, batch, offered)

    def server_state(self, age_s: float = 0.0) -> ServerState:
        """What a device knows of the server from this report, ``age_s`` after the server made it."""
        growth = 0.0 if self.offered_load is None else self.offered_load - 1.0
        return ServerState(queue_wait_s=self.queue_wait_s, growth=growth, age_s=age_s)
