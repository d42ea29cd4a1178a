"""What Ray Serve's handle costs on its own: the floor under the Ray backend's added latency.

A local Ray (as ``edgesplit serve --backend ray`` starts it) runs one deployment whose replica echoes
what it is sent, and nothing else. An asyncio front end in this process (the edgesplit front end is one)
awaits ``handle.echo.remote(cut, array)`` with the array of the Ray benchmark's small frame
(``benchmarks/ray_backend.py``: mobilenet_v3_small's last natural bottleneck, 1 × 1024 fp32, 4 KiB) and
with the 147 KiB uint8 input, sent by value over the replica's gRPC server (as the backend sends requests up
to 1 MiB) and by reference (a Ray actor call through the object store), in interleaved rounds. The replica
stamps when the call reached its code (``time.perf_counter``, CLOCK_MONOTONIC on Linux, one clock for
every process of the machine), so each call splits into the way there and the way back. As baseline, the
same loop awaits an ``async def`` that returns its argument at once, in this process.

Whatever the Ray backend adds per request above this floor is edgesplit's own (the replica's batcher,
its load report); no front end that hands tensors through a ``DeploymentHandle`` on this machine adds less.

    python benchmarks/ray_echo.py [--rounds 6] [--calls 200] [--out benchmarks/results/ray_echo.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np
import ray
from ray import serve
from rich.console import Console
from rich.table import Table

from edgesplit.runtime.ray_backend import INLINE_TENSOR_BYTES

FRAMES = {"small frame (1 × 1024 fp32)": np.random.default_rng(0).standard_normal((1, 1024), np.float32),
          "input (uint8, 147 KiB)": np.random.default_rng(0).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)}
WAYS = ("by value", "by reference")
WARM_CALLS = 20


@serve.deployment(ray_actor_options={"num_cpus": 1}, logging_config={"enable_access_log": False,
                                                                     "log_level": "WARNING"})
class Echo:
    async def echo(self, cut: int, array: np.ndarray) -> tuple[np.ndarray, float]:
        return array, time.perf_counter()


async def _local_echo(cut: int, array: np.ndarray) -> tuple[np.ndarray, float]:
    return array, time.perf_counter()


async def _calls(call, array: np.ndarray, count: int) -> list[tuple[float, float, float]]:
    """(round trip, there, back) of ``count`` calls in a row, after ``WARM_CALLS`` untimed ones."""
    timed = []
    for k in range(WARM_CALLS + count):
        sent = time.perf_counter()
        _, arrived = await call(0, array)
        done = time.perf_counter()
        if k >= WARM_CALLS:
            timed.append((done - sent, arrived - sent, done - arrived))
    return timed


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:.3f} ({min(values) * 1e3:.3f}–{max(values) * 1e3:.3f})"


async def _measure(rounds: int, count: int) -> dict[str, dict[str, list[list[float]]]]:
    handle = serve.get_app_handle("echo")
    calls = {"in-process await": _local_echo,
             "by value": handle.options(_by_reference=False).echo.remote,
             "by reference": handle.echo.remote}
    medians: dict[str, dict[str, list[list[float]]]] = {f: {way: [] for way in calls} for f in FRAMES}
    for r in range(rounds):
        ways = list(calls) if r % 2 == 0 else list(reversed(calls))
        for frame, array in FRAMES.items():
            for way in ways:
                timed = await _calls(calls[way], array, count)
                medians[frame][way].append([statistics.median(column) for column in zip(*timed)])
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=200, help="per frame, way and round")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_echo.json"))
    args = parser.parse_args()
    console = Console(width=200)
    ray.init(include_dashboard=False, log_to_driver=False,
             _system_config={"max_direct_call_object_size": INLINE_TENSOR_BYTES})
    try:
        serve.start(proxy_location="Disabled")
        serve.run(Echo.bind(), name="echo", route_prefix=None)
        medians = asyncio.run(_measure(args.rounds, args.calls))
    finally:
        serve.shutdown()
        ray.shutdown()
    table = Table(title=f"An echo through Ray Serve's handle from an asyncio front end, {args.rounds} interleaved rounds "
                        f"of {args.calls} calls (p50 ms: median over rounds, lowest–highest round)")
    for column in ("frame", "way", "round trip", "to the replica's code", "back"):
        table.add_column(column)
    out: dict[str, object] = {"rounds": args.rounds, "calls": args.calls, "results": {}}
    for frame, ways in medians.items():
        for way, rows in ways.items():
            total, there, back = ([row[i] for row in rows] for i in range(3))
            table.add_row(frame, way, _spread(total), _spread(there), _spread(back))
            out["results"].setdefault(frame, {})[way] = {
                "p50_ms": [round(v * 1e3, 3) for v in total], "there_p50_ms": [round(v * 1e3, 3) for v in there],
                "back_p50_ms": [round(v * 1e3, 3) for v in back],
                "p50_ms_median": round(statistics.median(total) * 1e3, 3)}
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
