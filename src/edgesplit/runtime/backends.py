"""Where the edge server's tails run: the front end (:func:`edgesplit.runtime.server.create_app`) receives,
validates and decodes frames, and hands each tensor to a :class:`Backend`:

    backend     where the tails run                                          edgesplit serve
    in-process  this process: one engine, one :class:`Batcher` (the default)  --backend in-process
    ray         Ray Serve replicas, each with its own engine and Batcher      --backend ray (runtime/ray_backend.py)

A backend answers the tensors of a cut with a :class:`~edgesplit.runtime.batcher.Result` (the output, queue and compute
time, batch size), raises :class:`~edgesplit.runtime.batcher.QueueFull` or :class:`BackendUnavailable` when
it cannot take the request now (both answered 503 with ``Retry-After``, so the device runs the request
itself), and reports its load as one :class:`~edgesplit.load.LoadReport`: several replicas' reports are
combined by :func:`combine_reports`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, fields
from typing import Any, Protocol

from edgesplit.load import LoadReport
from edgesplit.outputs import Batch
from edgesplit.runtime.batcher import Arrival, Batcher, Result
from edgesplit.runtime.metrics import Metrics
from edgesplit.runtime.tail_engine import TailEngine


class BackendUnavailable(Exception):
    """No replica can take the request now (one died under it, none is running): the server answers 503."""


class Backend(Protocol):
    """What the front end needs from whatever runs the tails."""

    name: str

    async def submit(self, cut: int, array: Batch) -> Result:
        """The output for a batch that crossed at ``cut`` (one tensor, or a tuple where several cross)."""

    def report(self) -> LoadReport:
        """How long a request arriving now would wait."""

    def arriving(self, expected_bytes: int | None) -> AbstractContextManager[Arrival | None]:
        """Track a body while it is received, as a possible batch partner (None: nobody to tell)."""

    def recent_compute_s(self) -> dict[int, float]:
        """Recent compute time of a batch, by batch size."""

    async def describe(self) -> dict[str, Any]:
        """The backend's name and its replicas, for ``GET /v1/model``."""

    async def close(self) -> None:
        """Stop taking requests and free what the backend holds."""


class InProcessBackend:
    """The tails run in this process: one engine, one :class:`Batcher`."""

    name = "in-process"

    def __init__(self, engine: TailEngine, metrics: Metrics, *, max_batch_size: int, batch_wait_timeout_s: float,
                 max_queue: int) -> None:
        self.engine = engine
        self.batcher = Batcher(engine.run, metrics, max_batch_size=max_batch_size,
                               batch_wait_timeout_s=batch_wait_timeout_s, max_queue=max_queue)

    async def submit(self, cut: int, array: Batch) -> Result:
        return await self.batcher.submit(cut, array)

    def report(self) -> LoadReport:
        return self.batcher.report()

    def arriving(self, expected_bytes: int | None) -> AbstractContextManager[Arrival | None]:
        return self.batcher.arriving(expected_bytes)

    def recent_compute_s(self) -> dict[int, float]:
        return dict(self.batcher.recent_compute_s)

    async def describe(self) -> dict[str, Any]:
        plan = self.engine.batch_plan
        return {"backend": self.name, "replicas": [{
            "replica": "in-process", "load": asdict(self.report()),
            "batch_plan": None if plan is None else plan.to_dict(self.engine.cuts)}]}

    async def close(self) -> None:
        await self.batcher.close()


def _mean_of_known(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


# How each field of a LoadReport combines over replicas, each reporting for itself. The router sends a
# request to the replica with the shorter queue of two (Ray Serve's power of two choices), so a request
# arriving now waits about as long as the least loaded replica's batch; every replica's queue counts; the
# load offered to the service, per replica, is their mean. A field added to LoadReport needs a rule here
# (tests/test_ray_backend.py checks that every field has one).
COMBINE_RULES: dict[str, Callable[[Sequence[Any]], Any]] = {
    "queue_wait_s": min,
    "queue_length": sum,
    "max_batch_size": max,
    "offered_load": _mean_of_known,
}


def combine_reports(reports: Sequence[LoadReport]) -> LoadReport:
    """One report for several replicas, field by field (:data:`COMBINE_RULES`); ``reports`` is not empty."""
    missing = [f.name for f in fields(LoadReport) if f.name not in COMBINE_RULES]
    if missing:
        raise KeyError(f"no rule to combine LoadReport field(s) {missing} over replicas: add them to COMBINE_RULES")
    return LoadReport(**{f.name: COMBINE_RULES[f.name]([getattr(r, f.name) for r in reports])
                         for f in fields(LoadReport)})
