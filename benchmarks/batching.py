"""Throughput of the edge server under 8 concurrent clients: dynamic batching vs --max-batch-size 1.

``edgesplit serve efficientnet_b0 --warm-up`` runs in its own process, as deployed (224×224, random weights
from seed 0); with --max-batch-size 8 its warm-up also measures its batch plan (from which cut batching
pays: layers before it run one request at a time, the rest as one batch; ``TailEngine.plan_batching``).
Eight client threads in this process each send what a device sends — the input as uint8 (full offload)
or fp32 at a record-low cut — as fast as they are answered, for --seconds. The two server settings
alternate (--rounds times each); the table reports the median throughput of each and their ratio, beside
the most batching can give here: how much faster per request the tail alone runs at batch 8 than at 1, as
one batch throughout and as the server's plan runs it ("same" for a frame that crossed at or after the
plan's cut: it runs as one batch either way). Clients and server share this machine's cores, so OpenMP
waits passively (a spinning server would steal the cores its clients need; separate machines would not).

    python benchmarks/batching.py [--seconds 8] [--rounds 2] [--out ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; the servers inherit it

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgesplit import analyze, load_model, split  # noqa: E402
from edgesplit.codec import FRAME_TYPE, decode_frame, encode_frame  # noqa: E402
from edgesplit.demo import loopback_server  # noqa: E402
from edgesplit.images import normalizer  # noqa: E402
from edgesplit.runtime.tail_engine import INPUT_CUT, BatchPlan, TailEngine  # noqa: E402

console = Console(width=170)
CLIENTS = 8
LOGS = Path("out")


def _server(max_batch_size: int) -> contextlib.AbstractContextManager[str]:
    """``edgesplit serve efficientnet_b0 --warm-up`` in its own process; its URL once it answers."""
    return loopback_server(lambda port: [sys.executable, "-m", "edgesplit", "serve", "efficientnet_b0", "--port",
                                         str(port), "--max-batch-size", str(max_batch_size), "--warm-up"],
                           LOGS / f"batching-server-{max_batch_size}.log")


def throughput(url: str, payload: bytes, seconds: float) -> tuple[float, float]:
    """Answers per second, and the mean batch size the server reported."""
    done, batches = [], []
    stop = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while time.perf_counter() < stop:
                response = http.post(f"{url}/v1/infer", content=payload, headers={"content-type": FRAME_TYPE})
                decode_frame(response.content)
                done.append(time.perf_counter())
                batches.append(int(response.headers["server-timing"].split('batch;desc="')[1].split('"')[0]))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done) / (time.perf_counter() - started), float(np.mean(batches))


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
    image = np.random.default_rng(0).integers(0, 256, (1, *analysis.input_shape), dtype=np.uint8)
    cut = [c for c in analysis.cuts if c.record_low][1]
    with torch.inference_mode():
        mid = split(analysis, cut)[0](torch.from_numpy(normalizer(loaded.normalization.mean,
                                                                  loaded.normalization.std)(image))).numpy()
    frames = [("input (uint8)", 0, image), (cut.name, cut.index, mid)]
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    plans = []
    for _ in range(args.rounds):
        for size in (8, 1):
            with _server(size) as url:
                if size > 1:
                    plans.append(httpx.get(f"{url}/v1/model").json()["batch_plan"])
                for name, cut_id, array in frames:
                    payload = encode_frame(array, model_id=engine.model_id, cut=cut_id)
                    runs.setdefault((name, size), []).append(throughput(url, payload, args.seconds))
    ids = {c.name: i for i, c in engine.cuts.items()}
    served = plans[0]  # the plan the first batching server measured, for the compute-alone column
    plan = BatchPlan(ids[served["batch_from"]], CLIENTS,
                     {ids[n]: ms / 1e3 for n, ms in served["per_request_ms"].items()})
    rows = []
    for name, cut_id, array in frames:
        engine.batch_plan = None
        whole_gain = compute_gain(engine, cut_id, array, CLIENTS)
        engine.batch_plan = plan  # a frame that crossed at or after the plan's cut runs as one batch anyway
        planned_gain = compute_gain(engine, cut_id, array, CLIENTS) if cut_id < plan.batch_from else None
        batched = statistics.median(r[0] for r in runs[name, 8])
        single = statistics.median(r[0] for r in runs[name, 1])
        rows.append({"cut": name, "clients": CLIENTS, "batched_rps": batched, "unbatched_rps": single,
                     "ratio": batched / single, "mean_batch": statistics.mean(r[1] for r in runs[name, 8]),
                     "compute_gain_batch8": planned_gain, "compute_gain_batch8_one_batch": whole_gain})
    console.print("the server's batch plans: " + "; ".join(
        f"from {p['batch_from']}, {p['per_request_ms'][p['batch_from']]:.1f} ms per request "
        f"(one batch throughout {p['per_request_ms'][engine.cuts[INPUT_CUT].name]:.1f})" for p in plans))
    table = Table(title=f"Throughput with {CLIENTS} concurrent clients, EfficientNet-B0 224×224 "
                        f"({args.rounds} alternating rounds of {args.seconds:g} s, medians)")
    for column in ("frame", "max batch 8 (req/s)", "max batch 1 (req/s)", "ratio", "mean batch",
                   "compute alone, batch 8 vs 1 per request: as planned", "as one batch"):
        table.add_column(column, justify="left" if column == "frame" else "right")
    for r in rows:
        table.add_row(r["cut"], f"{r['batched_rps']:.1f}", f"{r['unbatched_rps']:.1f}", f"{r['ratio']:.2f}",
                      f"{r['mean_batch']:.1f}",
                      "same" if r["compute_gain_batch8"] is None else f"{r['compute_gain_batch8']:.2f}",
                      f"{r['compute_gain_batch8_one_batch']:.2f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "server_batch_plans": plans, "torch_threads": torch.get_num_threads()},
                                   indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
