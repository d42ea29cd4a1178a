"""A single-worker edge server that batches requests for the same cut, loaded by other clients, and
reports its load as the live server does (:mod:`edgesplit.load`)."""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from edgesplit.load import LoadReport, WorkRate, added_work, queue_wait
from edgesplit.traces import LoadTrace

TailTime = Callable[[int], float]  # seconds to run one batch of the given size
INPUT_CUT = "input"  # what an offloaded request (ours or another client's) runs from


@dataclass(order=True)
class _Job:
    arrival_s: float
    cut: str = field(compare=False)
    tail: TailTime = field(compare=False)
    ours: bool = field(compare=False, default=False)
    start_s: float = field(compare=False, default=-1.0)
    done_s: float = field(compare=False, default=-1.0)
    batch_size: int = field(compare=False, default=0)

    def served(self) -> Served:
        """How it was served, once its batch has started."""
        return Served(self.start_s - self.arrival_s, self.done_s - self.start_s, self.done_s, self.batch_size)


@dataclass(frozen=True)
class Served:
    queue_s: float
    tail_s: float
    done_s: float
    batch_size: int


class BatchingServer:
    """Runs the oldest waiting request together with every waiting request for the same cut (up to
    ``max_batch_size``), one batch at a time. Other clients arrive as a Poisson process whose rate is
    ``load(t) × background_fps``; each sends its raw input (``INPUT_CUT``, batched with our offloads)."""

    def __init__(self, max_batch_size: int, load: LoadTrace | None, background_fps: float,
                 background_tail: TailTime, seed: int = 0) -> None:
        self.max_batch_size = max_batch_size
        self.free_at = 0.0
        self._queue: list[_Job] = []  # by arrival
        self._arrivals: dict[str, list[float]] = {}  # per cut, the arrival times of the jobs queued for it
        self._load = load
        self._background_fps = background_fps
        self._background_tail = background_tail
        self._rng = random.Random(seed)
        self._peak = max(load.values) * background_fps if load is not None else 0.0
        self._next_background = self._draw_background(0.0)
        self._offered = WorkRate(0.0)

    def serve(self, arrival_s: float, cut: str, tail: TailTime) -> Served:
        """Queue one of our requests for ``cut`` (``INPUT_CUT`` for offload) arriving at ``arrival_s`` and
        run the server until it is done."""
        self._run_until(arrival_s)
        job = self.submit(arrival_s, cut, tail)
        while job.done_s < 0:
            self.start_batch()
        return job.served()

    def submit(self, arrival_s: float, cut: str, tail: TailTime) -> _Job:
        """Queue one of our requests without running the server: for a caller that admits requests in
        time order and starts each batch (:meth:`start_batch`) when it is due (:meth:`next_start_s`)."""
        job = _Job(arrival_s, cut, tail, ours=True)
        self._enqueue(job)
        return job

    def _enqueue(self, job: _Job) -> None:
        """Queue ``job``, counting the work it brings (what it adds to the wait of the requests waiting then)."""
        arrivals = self._arrivals.setdefault(job.cut, [])
        waiting = bisect.bisect_right(arrivals, job.arrival_s)
        self._offered.add(job.arrival_s, added_work(waiting, job.tail, self.max_batch_size))
        bisect.insort(arrivals, job.arrival_s)
        bisect.insort(self._queue, job)

    def next_start_s(self) -> float:
        """When the next batch starts, from what is queued now (inf when nothing is)."""
        return max(self.free_at, self._queue[0].arrival_s) if self._queue else math.inf

    def report(self, now_s: float) -> LoadReport:
        """The load report a request arriving now would get back."""
        self._run_until(now_s)
        waiting = [job for job in self._queue if job.arrival_s <= now_s]
        tails = {job.cut: job.tail for job in waiting}
        wait = queue_wait(self.free_at - now_s, (job.cut for job in waiting), lambda cut, n: tails[cut](n),
                          self.max_batch_size)
        return LoadReport(wait, len(waiting), self.max_batch_size, self._offered.rate(now_s))

    def _run_until(self, t_s: float) -> None:
        """Start every batch that would start before ``t_s``."""
        while True:
            self._admit_background(max(self.free_at, t_s))
            if not self._queue:
                return
            start = max(self.free_at, self._queue[0].arrival_s)
            if start >= t_s:
                return
            self.start_batch()

    def start_batch(self) -> list[_Job]:
        """Start the next batch and return its jobs: the oldest waiting request's cut, with every request
        for that cut that has arrived by the start, up to ``max_batch_size``."""
        if not self._queue:
            self._admit_background(self._next_background)
        start = max(self.free_at, self._queue[0].arrival_s)
        self._admit_background(start)
        cut = self._queue[0].cut
        taken = []  # positions in the queue: the oldest jobs for the cut that have arrived by the start
        for i, job in enumerate(self._queue):
            if job.arrival_s > start or len(taken) == self.max_batch_size:
                break
            if job.cut == cut:
                taken.append(i)
        batch = [self._queue[i] for i in taken]
        duration = batch[0].tail(len(batch))
        for job in batch:
            job.start_s, job.done_s, job.batch_size = start, start + duration, len(batch)
        for i in reversed(taken):
            del self._queue[i]
        del self._arrivals[cut][:len(batch)]
        self.free_at = start + duration
        return batch

    def _admit_background(self, until_s: float) -> None:
        while self._next_background <= until_s:
            self._enqueue(_Job(self._next_background, INPUT_CUT, self._background_tail))
            self._next_background = self._draw_background(self._next_background)

    def _draw_background(self, after_s: float) -> float:
        """Next arrival of the non-homogeneous Poisson process, by thinning."""
        if self._peak <= 0 or self._load is None:
            return float("inf")
        t = after_s
        while True:
            t += self._rng.expovariate(self._peak)
            if self._rng.random() * self._peak <= self._load.at(t) * self._background_fps:
                return t
