"""Throughput of the edge server under 8 concurrent clients: today's eager-torch server, with dynamic
batching and with --max-batch-size 1, against the fastest engine (``--engine auto``) with dynamic batching.

``edgesplit serve efficientnet_b0 --warm-up`` runs in its own process, as deployed (224×224, random weights
from seed 0); with --max-batch-size 8 its warm-up also measures its batch plan (from which cut batching
pays: layers before it run one request at a time, the rest as one batch; ``TailEngine.plan_batching``).
With ``--engine auto`` the server first times eager torch and ONNX Runtime on the whole model and keeps
the faster (``edgesplit.runtime.engines.fastest_engine``); its log in out/ shows what it measured.
Eight client threads in this process each send what a device sends — the input as uint8 (full offload)
or fp32 at a record-low cut — as fast as they are answered, for --seconds. The three server settings
alternate (--rounds times each); the table reports each one's median throughput with its range over the
rounds, and the ratio of the fastest engine to the better of the two torch settings (the target: ≥ 2), of
the medians and within each round.
Clients and server share this machine's cores, so OpenMP waits passively and ONNX Runtime does not spin
(a spinning server would steal the cores its clients need; separate machines would not).

A plain timing loop in this process cross-checks the servers: each engine's tail alone, per request, at
batch 1 and at batch 8 (as one batch), interleaved, medians over --repeats.

    python benchmarks/batching.py [--seconds 8] [--rounds 3] [--repeats 7] [--out ...]
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
from edgesplit.wire import FRAME_TYPE, decode_frame, encode_frame  # noqa: E402
from edgesplit.demo import loopback_server  # noqa: E402
from edgesplit.images import normalizer  # noqa: E402
from edgesplit.runtime.engines import create_tail_engine  # noqa: E402
from edgesplit.runtime.tail_engine import TailEngine  # noqa: E402

console = Console(width=170)
CLIENTS = 8
LOGS = Path("out")
SETTINGS = [("torch", 8), ("torch", 1), ("auto", 8)]  # (--engine, --max-batch-size)


def _server(engine: str, max_batch_size: int) -> contextlib.AbstractContextManager[str]:
    """``edgesplit serve efficientnet_b0 --warm-up`` in its own process; its URL once it answers."""
    return loopback_server(lambda port: [sys.executable, "-m", "edgesplit", "serve", "efficientnet_b0", "--port",
                                         str(port), "--max-batch-size", str(max_batch_size), "--engine", engine,
                                         "--warm-up"],
                           LOGS / f"batching-server-{engine}-{max_batch_size}.log")


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


def compute_alone(engines: dict[str, TailEngine], cut: int, one: np.ndarray, batch_size: int,
                  repeats: int) -> dict[str, dict[int, float]]:
    """Each engine's tail alone from ``cut``: median seconds per request at batch 1 and at ``batch_size``
    (as one batch), all engines and sizes interleaved, after one untimed round."""
    batches = {1: one, batch_size: np.concatenate([one] * batch_size)}
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats + 1):
        for size, batch in batches.items():
            for name, engine in engines.items():
                started = time.perf_counter()
                engine.run(cut, batch)
                samples.setdefault((name, size), []).append((time.perf_counter() - started) / size)
    return {name: {size: statistics.median(samples[name, size][1:]) for size in batches} for name in engines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7, help="of the in-process timing loop")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "batching.json")
    args = parser.parse_args()
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, loaded.native_input_shape, "efficientnet_b0")
    reference = TailEngine(analysis, loaded.normalization)
    image = np.random.default_rng(0).integers(0, 256, (1, *analysis.input_shape), dtype=np.uint8)
    cut = [c for c in analysis.cuts if c.record_low][1]
    with torch.inference_mode():
        mid = split(analysis, cut)[0](torch.from_numpy(normalizer(loaded.normalization.mean,
                                                                  loaded.normalization.std)(image))).numpy()
    frames = [("input (uint8)", 0, image), (cut.name, cut.index, mid)]
    runs: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    served: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for engine_name, size in SETTINGS:
            with _server(engine_name, size) as url:
                served.setdefault((engine_name, size), []).append(httpx.get(f"{url}/v1/model").json())
                for name, cut_id, array in frames:
                    payload = encode_frame(array, model_id=reference.model_id, cut=cut_id)
                    runs.setdefault((name, engine_name, size), []).append(throughput(url, payload, args.seconds))
    picked = sorted({d["engine"]["name"] for d in served["auto", 8]})
    console.print(f"--engine auto picked {', '.join(picked)}; batch plans: " + "; ".join(
        f"{engine} b{size}: from {d['batch_plan']['batch_from']}" for (engine, size), ds in served.items()
        for d in ds if d["batch_plan"]))

    def rps(name: str, engine: str, size: int) -> list[float]:
        return [r[0] for r in runs[name, engine, size]]

    rows = []
    for name, cut_id, _ in frames:
        torch_best = max(statistics.median(rps(name, "torch", 8)), statistics.median(rps(name, "torch", 1)))
        fast = statistics.median(rps(name, "auto", 8))
        rows.append({"cut": name, "clients": CLIENTS, "rounds": args.rounds, "seconds": args.seconds,
                     **{f"{engine}_b{size}_rps": rps(name, engine, size) for engine, size in SETTINGS},
                     **{f"{engine}_b{size}_mean_batch": statistics.mean(r[1] for r in runs[name, engine, size])
                        for engine, size in SETTINGS if size > 1},
                     "fastest_engine": picked, "ratio_to_best_torch": fast / torch_best,
                     "ratio_per_round": [f / max(b8, b1) for f, b8, b1 in zip(rps(name, "auto", 8), rps(name, "torch", 8),
                                                                             rps(name, "torch", 1))]})
    table = Table(title=f"Throughput with {CLIENTS} concurrent clients, EfficientNet-B0 224×224, req/s: median "
                        f"\\[min–max] of {args.rounds} alternating rounds of {args.seconds:g} s")
    for column in ("frame", "torch, max batch 8", "torch, max batch 1", f"{'/'.join(picked)} (auto), max batch 8",
                   "ratio to the better torch: of medians (per round)", "mean batch torch / fast"):
        table.add_column(column, justify="left" if column == "frame" else "right")
    for r in rows:
        cells = [f"{statistics.median(r[f'{e}_b{s}_rps']):.1f} [{min(r[f'{e}_b{s}_rps']):.1f}–"
                 f"{max(r[f'{e}_b{s}_rps']):.1f}]" for e, s in SETTINGS]
        table.add_row(r["cut"], *cells, f"{r['ratio_to_best_torch']:.2f} (rounds {min(r['ratio_per_round']):.2f}–"
                                        f"{max(r['ratio_per_round']):.2f})",
                      f"{r['torch_b8_mean_batch']:.1f} / {r['auto_b8_mean_batch']:.1f}")
    console.print(table)

    engines = {"torch": reference, **{name: create_tail_engine(name, analysis, loaded.normalization)
                                      for name in picked if name != "torch"}}
    alone = {name: compute_alone(engines, cut_id, array, CLIENTS, args.repeats) for name, cut_id, array in frames}
    check = Table(title=f"Cross-check: the tails alone in one process, ms per request (medians of {args.repeats} "
                        f"interleaved runs; batch {CLIENTS} as one batch)")
    for column in ("frame", *(f"{e} b{b}" for e in engines for b in (1, CLIENTS)),
                   *(f"torch / {e} at b{b}" for e in engines if e != "torch" for b in (1, CLIENTS))):
        check.add_column(column, justify="left" if column == "frame" else "right")
    for name, times in alone.items():
        check.add_row(name, *(f"{times[e][b] * 1e3:.1f}" for e in engines for b in (1, CLIENTS)),
                      *(f"{times['torch'][b] / times[e][b]:.2f}" for e in engines if e != "torch" for b in (1, CLIENTS)))
    console.print(check)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "compute_alone_s_per_request": alone,
                                    "servers": {f"{e} b{s}": ds for (e, s), ds in served.items()},
                                    "torch_threads": torch.get_num_threads()}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
