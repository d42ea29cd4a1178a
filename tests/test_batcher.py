"""The dynamic batcher on its own: who runs together, when it waits, what each request gets back."""

import asyncio
import threading
import time

import numpy as np
import pytest

from edgesplit.load import WORK_WINDOW_S, WorkRate
from edgesplit.runtime.batcher import Arrival, Batcher, QueueFull
from edgesplit.runtime.metrics import Metrics


def make(max_batch_size=8, wait=0.05, max_queue=64):
    runs = []

    def run(cut, batch):
        runs.append((cut, batch.shape[0]))
        return batch.reshape(batch.shape[0], -1).sum(axis=1, keepdims=True) + cut

    return Batcher(run, Metrics(), max_batch_size=max_batch_size, batch_wait_timeout_s=wait,
                   max_queue=max_queue), runs


def test_requests_waiting_together_for_one_cut_run_as_one_batch():
    async def scenario():
        batcher, runs = make()
        items = [np.full((1, 2), i, np.float32) for i in range(5)]
        results = await asyncio.gather(*(batcher.submit(3, x) for x in items), batcher.submit(7, items[0]))
        await batcher.close()
        return runs, results

    runs, results = asyncio.run(scenario())
    assert runs == [(3, 5), (7, 1)]  # oldest first; the other cut waits for its turn
    assert [float(r.output[0, 0]) for r in results] == [3.0, 5.0, 7.0, 9.0, 11.0, 7.0]
    assert [r.batch_size for r in results] == [5, 5, 5, 5, 5, 1]


def test_max_batch_size_splits_batches():
    async def scenario():
        batcher, runs = make(max_batch_size=2)
        await asyncio.gather(*(batcher.submit(1, np.zeros((1, 2), np.float32)) for _ in range(5)))
        await batcher.close()
        return runs

    assert asyncio.run(scenario()) == [(1, 2), (1, 2), (1, 1)]


def test_a_lone_request_does_not_wait_but_an_arriving_one_is_waited_for():
    async def scenario():
        batcher, runs = make(wait=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.submit(1, np.zeros((1, 2), np.float32))
        alone = loop.time() - started
        with batcher.arriving(None):  # a body is still being received
            first = asyncio.ensure_future(batcher.submit(1, np.zeros((1, 2), np.float32)))
            await asyncio.sleep(0.05)
        second = await batcher.submit(1, np.zeros((1, 2), np.float32))  # that body, now a request
        await first
        await batcher.close()
        return alone, runs, second

    alone, runs, second = asyncio.run(scenario())
    assert alone < 0.1  # not the 0.2 s window
    assert runs == [(1, 1), (1, 2)] and second.batch_size == 2


def test_full_queue_and_failing_model():
    async def scenario():
        batcher, _ = make(max_queue=1, wait=0.5)
        with batcher.arriving(None):
            first = asyncio.ensure_future(batcher.submit(1, np.zeros((1, 2), np.float32)))
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull, match=r"1 requests are waiting \(max_queue=1\)"):
                await batcher.submit(1, np.zeros((1, 2), np.float32))
        await first

        def broken(cut, batch):
            raise RuntimeError("boom")

        failing = Batcher(broken, Metrics(), batch_wait_timeout_s=0)
        with pytest.raises(RuntimeError, match="boom"):
            await failing.submit(1, np.zeros((1, 2), np.float32))
        ok = Batcher(lambda cut, b: b, Metrics(), batch_wait_timeout_s=0)
        assert (await ok.submit(1, np.ones((1, 2), np.float32))).output.tolist() == [[1.0, 1.0]]
        for b in (batcher, failing, ok):
            await b.close()

    asyncio.run(scenario())


def test_a_lone_short_tail_runs_on_the_event_loop_and_compute_is_timed_where_it_runs():
    async def scenario():
        threads = []

        def run(cut, batch):
            threads.append((cut, threading.current_thread() is threading.main_thread()))
            if cut == 2:
                time.sleep(0.02)
            return batch

        batcher = Batcher(run, Metrics(), batch_wait_timeout_s=0, inline_below_s=0.005)
        results = []
        for cut in (1, 1, 2, 2):
            results.append(await batcher.submit(cut, np.zeros((1, 2), np.float32)))
        await batcher.close()
        return threads, results

    threads, results = asyncio.run(scenario())
    # the first run of a cut is unknown, so it goes to the worker thread; a short one then stays on the loop
    assert threads == [(1, False), (1, True), (2, False), (2, False)]
    assert results[2].compute_s >= 0.02 and results[1].compute_s < 0.005


def test_an_arrival_may_finish_by_a_deadline_only_if_it_progresses_fast_enough():
    # 990 of 1000 bytes in 10 ms: 99 kB/s, so the last 10 bytes arrive 0.101 ms after the last chunk (10.010101)
    nearly = Arrival(1000, started=10.0, last=10.01, received=990)
    assert nearly.may_finish_by(10.0102, now=10.011, stall_s=0.005)
    assert not nearly.may_finish_by(10.0100, now=10.011, stall_s=0.005)
    assert not nearly.may_finish_by(11.0, now=10.016, stall_s=0.005)  # silent for 6 ms: stalled, however close
    assert Arrival(None, started=10.0, last=10.01, received=990).may_finish_by(10.0, now=10.011, stall_s=0.005)
    just_begun = Arrival(10**9, started=10.0, last=10.0)  # no chunk yet, so no rate: it may
    assert just_begun.may_finish_by(10.001, now=10.004, stall_s=0.005)
    assert not just_begun.may_finish_by(10.001, now=10.006, stall_s=0.005)


def test_stalled_and_slow_bodies_are_neither_waited_for_nor_keep_a_short_tail_off_the_event_loop():
    async def scenario():
        threads = []

        def run(cut, batch):
            threads.append(threading.current_thread() is threading.main_thread())
            return batch

        batcher = Batcher(run, Metrics(), batch_wait_timeout_s=1.0, inline_below_s=0.5)
        results = [await batcher.submit(1, np.zeros((1, 2), np.float32))]  # learns the tail is short
        with batcher.arriving(1000) as stalled, batcher.arriving(10**9) as slow:
            stalled.started -= 3
            stalled.add(10)
            stalled.last -= 2  # nothing for 2 s: longer than the 1 s window
            slow.started -= 1
            slow.add(1000)  # 1 kB/s: the rest would take 11 days
            results.append(await batcher.submit(1, np.zeros((1, 2), np.float32)))
        await batcher.close()
        return threads, results

    threads, results = asyncio.run(scenario())
    assert threads == [False, True]  # the second ran inline, as if nobody were arriving
    assert results[1].batch_size == 1 and results[1].queue_s < 0.5  # not held for the 1 s window


def test_the_report_says_how_much_work_arrived_per_second():
    async def scenario():
        batcher, runs = make()
        batcher._compute_s.update({(3, 1): 0.010, (3, 2): 0.015, (3, 3): 0.018})  # as if measured before
        batcher._offered = WorkRate(time.perf_counter() - 10.0)  # a server older than the window
        # three requests for one cut, queued before the worker runs: a new batch (10 ms), then each one
        # joins it (5 ms, then 3 ms more)
        await asyncio.gather(*(batcher.submit(3, np.zeros((1, 2), np.float32)) for _ in range(3)))
        report = batcher.report()
        await batcher.close()
        return runs, report

    runs, report = asyncio.run(scenario())
    assert runs == [(3, 3)]
    assert report.offered_load == pytest.approx(0.018 / WORK_WINDOW_S)
    assert (report.queue_wait_s, report.queue_length) == (0.0, 0)


def test_offered_load_counts_the_last_window_only():
    rate = WorkRate(started_s=0.0, window_s=2.0)
    assert rate.rate(0.0) == 0.0
    rate.add(0.5, 0.3)
    assert rate.rate(1.0) == pytest.approx(0.3)  # younger than its window: over the 1 s it has lived
    rate.add(1.5, 0.1)
    rate.add(3.0, 0.2)  # known ahead of time (a simulator): not counted before it arrives
    assert rate.rate(2.0) == pytest.approx(0.4 / 2)
    assert rate.rate(3.0) == pytest.approx(0.3 / 2)  # the work at 0.5 s has left the window
    assert rate.rate(10.0) == 0.0
