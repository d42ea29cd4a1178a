"""Dynamic batching per cut: requests for the same cut that arrive within the wait window run together.

One worker runs one batch at a time (one model, one processor), in a thread so the event loop keeps
accepting requests. The oldest waiting request decides which cut runs next (first come, first served).
The worker waits up to ``batch_wait_timeout_s`` for partners only while other bodies are arriving that
may be complete within that window (:meth:`Arrival.may_finish_by`); a lone request runs at once. A
stalled upload is no partner: it used to hold every request for the whole window (a small request's
median went from 1.8 to 7.0 ms while one 60 MB upload stalled; now 1.91 against 1.94 ms without it,
benchmarks/edge.py). Under load, requests that arrive while a batch runs form the next batch anyway. :meth:`Batcher.report` is the load report every answer
carries (:mod:`edgesplit.load`): what is left of the batch in progress plus the waiting batches, each priced
by the compute time last seen for its cut and size, and the load offered over the last seconds.

A lone request whose tail took under ``inline_below_s`` the last time runs on the event loop itself:
handing it to the thread and back costs two wake-ups (0.3 ms on the 2-core test machine), more than such
a tail computes, and nobody else is waiting or about to arrive. Compute time is measured where the tail
runs; the time before it (the queue, the hand-over to the thread) is the request's queue wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from edgesplit.load import LoadReport, WorkRate, added_work, queue_wait
from edgesplit.outputs import Batch, Output, batch_rows, join, rows
from edgesplit.runtime.metrics import Metrics

RunBatch = Callable[[int, Batch], Output]


class QueueFull(Exception):
    """More requests are waiting than ``max_queue`` allows: the server answers 503."""


@dataclass
class _Item:
    cut: int
    array: Batch
    arrived: float
    future: asyncio.Future = field(repr=False)


@dataclass
class Arrival:
    """A request body being received: its Content-Length (None when chunked), the bytes so far, when
    reading began and when the last chunk came."""

    expected_bytes: int | None
    started: float
    last: float
    received: int = 0

    def add(self, size: int) -> None:
        self.received += size
        self.last = time.perf_counter()

    def may_finish_by(self, deadline: float, now: float, stall_s: float) -> bool:
        """Whether this body may be complete by ``deadline``: it made progress within the last ``stall_s``
        and, at its rate so far, its remaining bytes arrive in time (no rate yet: it may)."""
        if now - self.last > stall_s:
            return False
        if self.expected_bytes is None or self.last <= self.started:
            return True
        rate = self.received / (self.last - self.started)
        return self.last + (self.expected_bytes - self.received) / rate <= deadline


@dataclass(frozen=True)
class Result:
    output: Output  # this request's rows of the model's output
    queue_s: float
    compute_s: float
    batch_size: int


class Batcher:
    def __init__(self, run: RunBatch, metrics: Metrics, *, max_batch_size: int = 8,
                 batch_wait_timeout_s: float = 0.005, max_queue: int = 64, inline_below_s: float = 0.002) -> None:
        self._run = run
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_queue = max_queue
        self.inline_below_s = inline_below_s
        self._pending: list[_Item] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesplit-tail")
        self._worker: asyncio.Task | None = None
        self.recent_compute_s: dict[int, float] = {}  # EWMA of batch compute time per batch size
        self._compute_s: dict[tuple[int, int], float] = {}  # EWMA per (cut, batch size)
        self._lone_compute_s: dict[int, float] = {}  # per cut: the last compute time of a batch of one
        self._running: tuple[int, int, float] | None = None  # the batch in progress: cut, size, start
        self._arrivals: list[Arrival] = []  # bodies being received: the only partners worth waiting for
        self._offered = WorkRate(time.perf_counter())

    def report(self) -> LoadReport:
        """How long a request arriving now would wait (see :func:`edgesplit.load.queue_wait`)."""
        busy = 0.0
        if self._running is not None:
            cut, size, started = self._running
            busy = started + self.batch_s(cut, size) - time.perf_counter()
        wait = queue_wait(busy, (i.cut for i in self._pending), self.batch_s, self.max_batch_size)
        return LoadReport(wait, len(self._pending), self.max_batch_size, self._offered.rate(time.perf_counter()))

    def batch_s(self, cut: int, size: int) -> float:
        """The compute time of a batch: as last seen for this cut and size, else for this cut alone times the
        size, else for any cut at this size (0 before anything ran)."""
        if (cut, size) in self._compute_s:
            return self._compute_s[cut, size]
        if (cut, 1) in self._compute_s:
            return self._compute_s[cut, 1] * size
        return self.recent_compute_s.get(size, self.recent_compute_s.get(1, 0.0) * size)

    @contextlib.contextmanager
    def arriving(self, expected_bytes: int | None) -> Iterator[Arrival]:
        """Track a body while it is received (``Arrival.add`` each chunk), as a possible batch partner."""
        now = time.perf_counter()
        arrival = Arrival(expected_bytes, started=now, last=now)
        self._arrivals.append(arrival)
        try:
            yield arrival
        finally:
            self._arrivals.remove(arrival)
            self._wake.set()  # one partner fewer: the worker may stop waiting

    async def submit(self, cut: int, array: Batch) -> Result:
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are waiting (max_queue={self.max_queue})")
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        item = _Item(cut, array, time.perf_counter(), asyncio.get_running_loop().create_future())
        self._offered.add(item.arrived, added_work(sum(i.cut == cut for i in self._pending), lambda n: self.batch_s(cut, n),
                                                   self.max_batch_size))
        self._pending.append(item)
        self.metrics.queue_length = len(self._pending)
        self._wake.set()
        return await item.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            first = self._pending[0]
            deadline = first.arrived + self.batch_wait_timeout_s
            while (self._count(first.cut) < self.max_batch_size and (left := deadline - time.perf_counter()) > 0
                   and self._partners_arriving(deadline)):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [i for i in self._pending if i.cut == first.cut][: self.max_batch_size]
            for item in batch:
                self._pending.remove(item)
            self.metrics.queue_length = len(self._pending)
            sizes = [batch_rows(i.array) for i in batch]
            try:
                inputs = join([i.array for i in batch])
                self._running = (first.cut, len(batch), time.perf_counter())
                if self._inline(batch):
                    output, started, compute = self._timed(first.cut, inputs)
                else:
                    output, started, compute = await loop.run_in_executor(self._executor, self._timed, first.cut,
                                                                          inputs)
            except Exception as exc:  # a failure of the model is this batch's answer, not the server's end
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._running = None
            self._remember(first.cut, len(batch), compute)
            if len(batch) == 1:
                self._lone_compute_s[first.cut] = compute
            offset = 0
            for item, size in zip(batch, sizes):
                if not item.future.done():
                    item.future.set_result(Result(rows(output, offset, offset + size), started - item.arrived,
                                                  compute, len(batch)))
                offset += size

    def _inline(self, batch: list[_Item]) -> bool:
        """Whether to run ``batch`` on the event loop: one request, nobody else waiting or arriving, and a
        tail that was short the last time."""
        return (len(batch) == 1 and not self._pending
                and not self._partners_arriving(time.perf_counter() + self.batch_wait_timeout_s)
                and self._lone_compute_s.get(batch[0].cut, float("inf")) < self.inline_below_s)

    def _timed(self, cut: int, inputs: Batch) -> tuple[Output, float, float]:
        """The batch's output, when its computation started and how long it took."""
        started = time.perf_counter()
        output = self._run(cut, inputs)
        return output, started, time.perf_counter() - started

    def _partners_arriving(self, deadline: float) -> bool:
        """Whether a body being received may be complete by ``deadline`` (one silent for a whole batch
        window is taken for stalled)."""
        now = time.perf_counter()
        return any(a.may_finish_by(deadline, now, self.batch_wait_timeout_s) for a in self._arrivals)

    def _count(self, cut: int) -> int:
        return sum(1 for i in self._pending if i.cut == cut)

    def _remember(self, cut: int, batch_size: int, seconds: float) -> None:
        self.metrics.observe_batch(batch_size, seconds)
        for memory, key in ((self.recent_compute_s, batch_size), (self._compute_s, (cut, batch_size))):
            old = memory.get(key)
            memory[key] = seconds if old is None else 0.7 * old + 0.3 * seconds
