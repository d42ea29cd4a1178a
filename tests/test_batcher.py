"""The dynamic batcher on its own: who runs together, when it waits, what each request gets back."""

import asyncio
import threading
import time

import numpy as np
import pytest

from edgesplit.runtime.batcher import Batcher, QueueFull
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
    assert [float(r.logits[0, 0]) for r in results] == [3.0, 5.0, 7.0, 9.0, 11.0, 7.0]
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
        batcher.arriving = 1  # a body is still being received
        first = asyncio.ensure_future(batcher.submit(1, np.zeros((1, 2), np.float32)))
        await asyncio.sleep(0.05)
        batcher.arriving = 0
        second = await batcher.submit(1, np.zeros((1, 2), np.float32))
        await first
        await batcher.close()
        return alone, runs, second

    alone, runs, second = asyncio.run(scenario())
    assert alone < 0.1  # not the 0.2 s window
    assert runs == [(1, 1), (1, 2)] and second.batch_size == 2


def test_full_queue_and_failing_model():
    async def scenario():
        batcher, _ = make(max_queue=1, wait=0.5)
        batcher.arriving = 1
        first = asyncio.ensure_future(batcher.submit(1, np.zeros((1, 2), np.float32)))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match=r"1 requests are waiting \(max_queue=1\)"):
            await batcher.submit(1, np.zeros((1, 2), np.float32))
        batcher.arriving = 0
        await first

        def broken(cut, batch):
            raise RuntimeError("boom")

        failing = Batcher(broken, Metrics(), batch_wait_timeout_s=0)
        with pytest.raises(RuntimeError, match="boom"):
            await failing.submit(1, np.zeros((1, 2), np.float32))
        ok = Batcher(lambda cut, b: b, Metrics(), batch_wait_timeout_s=0)
        assert (await ok.submit(1, np.ones((1, 2), np.float32))).logits.tolist() == [[1.0, 1.0]]
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
