"""Throughput of the edge server under 8 concurrent clients: dynamic batching vs --max-batch-size 1.

A real uvicorn server holds EfficientNet-B0 (224×224, random weights). Eight client threads each send
fp32 frames at one cut as fast as they are answered, for --seconds; the two server settings alternate
(--rounds times each) and the table reports the median throughput of each and their ratio, beside the
most batching can give here: how much faster per request the tail alone runs at batch 8 than at 1.

    python benchmarks/batching.py [--seconds 8] [--rounds 2] [--cut record-low-1] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from edgesplit import analyze, load_model, split
from edgesplit.codec import decode_frame, encode_frame
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.runtime.server import ServerConfig, create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from live_server import LiveServer  # noqa: E402

console = Console(width=160)
CLIENTS = 8


def throughput(engine: TailEngine, payload: bytes, max_batch_size: int, seconds: float) -> tuple[float, float]:
    """Answers per second, and the mean batch size the server reported."""
    config = ServerConfig(max_batch_size=max_batch_size, batch_wait_timeout_s=0.005, max_queue=256)
    done, batches = [], []
    with LiveServer(create_app(engine, config)) as server:
        stop = time.perf_counter() + seconds

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while time.perf_counter() < stop:
                    response = http.post(f"{server.url}/v1/infer", content=payload)
                    decode_frame(response.content)
                    done.append(time.perf_counter())
                    batches.append(int(response.headers["server-timing"].split('batch;desc="')[1].split('"')[0]))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    return len(done) / elapsed, float(np.mean(batches))


def compute_gain(engine: TailEngine, cut: int, one: np.ndarray, batch_size: int, repeats: int = 5) -> float:
    """How much faster per request the tail alone runs at ``batch_size`` than at 1 (interleaved medians):
    the most batching can give on this machine."""
    many = np.concatenate([one] * batch_size)
    single, batched = [], []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        engine.run(cut, one)
        single.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.run(cut, many)
        batched.append((time.perf_counter() - started) / batch_size)
    return statistics.median(single[1:]) / statistics.median(batched[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "batching.json")
    args = parser.parse_args()
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, loaded.native_input_shape, "efficientnet_b0")
    engine = TailEngine(analysis, loaded.normalization)
    cuts = [analysis.cuts[0], [c for c in analysis.cuts if c.record_low][1]]
    rows = []
    x = torch.randn(1, *analysis.input_shape, generator=torch.Generator().manual_seed(0))
    for cut in cuts:
        with torch.inference_mode():
            mid = split(analysis, cut)[0](x) if cut.index else x
        payload = encode_frame(mid.numpy(), model_id=engine.model_id, cut=cut.index)
        runs: dict[int, list[tuple[float, float]]] = {8: [], 1: []}
        for _ in range(args.rounds):
            for size in (8, 1):
                runs[size].append(throughput(engine, payload, size, args.seconds))
        batched = statistics.median(r[0] for r in runs[8])
        single = statistics.median(r[0] for r in runs[1])
        rows.append({"cut": cut.name, "clients": CLIENTS, "batched_rps": batched, "unbatched_rps": single,
                     "ratio": batched / single, "mean_batch": statistics.mean(r[1] for r in runs[8]),
                     "compute_gain_batch8": compute_gain(engine, cut.index, mid.numpy(), 8)})
    table = Table(title=f"Throughput with {CLIENTS} concurrent clients, EfficientNet-B0 224×224 "
                        f"({args.rounds} alternating rounds of {args.seconds:g} s, medians)")
    for column in ("cut", "max batch 8 (req/s)", "max batch 1 (req/s)", "ratio", "mean batch",
                   "compute alone, batch 8 vs 1 per request"):
        table.add_column(column, justify="left" if column == "cut" else "right")
    for r in rows:
        table.add_row(r["cut"], f"{r['batched_rps']:.1f}", f"{r['unbatched_rps']:.1f}", f"{r['ratio']:.2f}",
                      f"{r['mean_batch']:.1f}", f"{r['compute_gain_batch8']:.2f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads()}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
