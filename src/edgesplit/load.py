"""The server's load report: one definition for the edge server that sends it, the simulated server that
stands in for it, and the device that reads it.

A report says how long a request arriving now would wait before its batch starts: what is left of the
batch in progress plus every waiting batch, where waiting requests for the same cut run together (at
most ``max_batch_size`` at a time) and a batch of ``n`` at a cut costs ``batch_s(cut, n)``. It travels in
the ``Edgesplit-Load`` header as JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from edgesplit.latency import ServerState

LOAD_HEADER = "edgesplit-load"
MAX_HEADER_CHARS = 1024  # a report is about 70 characters; anything much longer is not one


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


@dataclass(frozen=True)
class LoadReport:
    """What the server says of its load with every answer."""

    queue_wait_s: float  # see :func:`queue_wait`
    queue_length: int  # requests waiting (not counting the batch in progress)
    max_batch_size: int

    def to_header(self) -> str:
        return json.dumps({"queue_wait_s": round(self.queue_wait_s, 6), "queue_length": self.queue_length,
                           "max_batch_size": self.max_batch_size})

    @classmethod
    def parse(cls, text: str | None) -> LoadReport | None:
        """The report in a header's text; None when there is none or it is malformed (a device must not
        stop serving over a bad header, it only learns nothing)."""
        if not text or len(text) > MAX_HEADER_CHARS:
            return None
        try:
            data = json.loads(text)
            wait, length, batch = float(data["queue_wait_s"]), int(data["queue_length"]), int(data["max_batch_size"])
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
            return None
        if not (math.isfinite(wait) and wait >= 0 and length >= 0 and batch >= 1):
            return None
        return cls(wait, length, batch)

    def server_state(self) -> ServerState:
        return ServerState(queue_wait_s=self.queue_wait_s)
