"""The Ray Serve backend against the in-process one, on loopback: what the hop to a replica adds.

Two servers for the same model (mobilenet_v3_small at 224×224, random weights from seed 0), each in its
own process, started as deployed: ``edgesplit serve --warm-up`` (in-process: one engine, one batcher) and
``edgesplit serve --warm-up --backend ray --replicas 1 --replica-cpus 2`` (a local Ray, one replica with
both cores, as many torch threads as the in-process server). In interleaved rounds (the order flips each
round):

- low load: one client, sequential, ``--requests`` requests per frame per server and round: the input as
  uint8 (full offload, 147 KiB) and the last natural bottleneck in fp32 (a small tail). Added per request
  = the round's p50 through Ray − its p50 in-process; the table gives the median over rounds and the spread
  (lowest–highest round).
- 16 devices: 16 threads, each a client of its own sending the input back to back, ``--burst`` requests
  each per server and round; p95 of the round's latencies through Ray / in-process.

Then a plain timing loop as a cross-check (no rounds: ``--plain`` requests in a row to one server, then
the other, the median). Latency is the client's, from sending to the whole answer; compute is what the
server reports in ``Server-Timing``. Client and servers share the machine's two cores, so OpenMP waits
passively, as in the other runtime benchmarks.

    python benchmarks/ray_backend.py [--rounds 8] [--out benchmarks/results/ray_backend.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; the servers inherit it

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgesplit import analyze, load_model, split  # noqa: E402
from edgesplit.wire import FRAME_TYPE, encode_frame  # noqa: E402
from edgesplit.demo import loopback_server  # noqa: E402
from edgesplit.runtime.tail_engine import model_id  # noqa: E402

MODEL, SIZE = "mobilenet_v3_small", 224
LOGS = Path("out")
BACKENDS = {"in-process": (), "ray": ("--backend", "ray", "--replicas", "1", "--replica-cpus", "2")}
DEVICES = 16


def _server(backend: str) -> contextlib.AbstractContextManager[str]:
    return loopback_server(lambda port: [sys.executable, "-m", "edgesplit", "serve", MODEL, "--input-size", str(SIZE),
                                         "--port", str(port), "--warm-up", *BACKENDS[backend]],
                           LOGS / f"ray_backend-{backend}.log")


def _frames() -> dict[str, bytes]:
    """The input as uint8 and the last natural bottleneck in fp32, each of one image."""
    loaded = load_model(MODEL)
    analysis = analyze(loaded.module, (3, SIZE, SIZE), MODEL)
    identity = model_id(loaded.module)
    image = np.random.default_rng(0).integers(0, 256, (1, 3, SIZE, SIZE), dtype=np.uint8)
    last = analysis.natural_bottlenecks()[-1]
    with torch.inference_mode():
        x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        activation = split(analysis, last)[0](x).numpy()
    return {"input, uint8": encode_frame(image, model_id=identity, cut=0),
            f"{last.name} (fp32)": encode_frame(activation, model_id=identity, cut=last.index)}


def _post(client: httpx.Client, frame: bytes) -> tuple[float, float]:
    """Latency and the server's compute time of one request, in seconds."""
    started = time.perf_counter()
    answer = client.post("/v1/infer", content=frame, headers={"content-type": FRAME_TYPE})
    latency = time.perf_counter() - started
    answer.raise_for_status()
    timing = dict(part.strip().split(";dur=") for part in answer.headers["server-timing"].split(",")
                  if ";dur=" in part)
    return latency, float(timing["compute"].split(";")[0]) / 1e3


def _sequential(url: str, frame: bytes, count: int) -> tuple[list[float], list[float]]:
    with httpx.Client(base_url=url, timeout=30) as client:
        _post(client, frame)  # the connection, and a warm path
        timed = [_post(client, frame) for _ in range(count)]
    return [t for t, _ in timed], [c for _, c in timed]


def _devices(url: str, frame: bytes, burst: int) -> list[float]:
    """Latencies of ``DEVICES`` clients sending ``burst`` requests each, back to back, all at once."""
    def device(_: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=60) as client:
            return [_post(client, frame)[0] for _ in range(burst)]

    with ThreadPoolExecutor(DEVICES) as pool:
        return [t for latencies in pool.map(device, range(DEVICES)) for t in latencies]


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return (f"{statistics.median(values) * scale:.{digits}f} "
            f"({min(values) * scale:.{digits}f}–{max(values) * scale:.{digits}f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="per frame, server and round, one client")
    parser.add_argument("--burst", type=int, default=6, help="requests per device, server and round")
    parser.add_argument("--plain", type=int, default=100, help="requests per server in the plain loop")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_backend.json"))
    args = parser.parse_args()
    console = Console(width=200)
    LOGS.mkdir(exist_ok=True)
    frames = _frames()
    names = list(frames)
    low: dict[str, dict[str, list[dict[str, float]]]] = {n: {b: [] for b in BACKENDS} for n in names}
    busy: dict[str, list[float]] = {b: [] for b in BACKENDS}
    with _server("in-process") as in_process, _server("ray") as on_ray:
        urls = {"in-process": in_process, "ray": on_ray}
        for b in BACKENDS:  # every tail built, every path warm, before anything is timed
            _devices(urls[b], frames[names[0]], 2)
            for name in names:
                _sequential(urls[b], frames[name], 5)
        for r in range(args.rounds):
            order = list(BACKENDS) if r % 2 == 0 else list(reversed(BACKENDS))
            for b in order:
                for name in names:
                    latency, compute = _sequential(urls[b], frames[name], args.requests)
                    low[name][b].append({"p50_s": statistics.median(latency), "compute_p50_s": statistics.median(compute)})
                busy[b].append(_p(_devices(urls[b], frames[names[0]], args.burst), 95))
            console.print(f"round {r + 1}/{args.rounds}: 16 devices p95 in-process {busy['in-process'][-1] * 1e3:.1f} ms, "
                          f"ray {busy['ray'][-1] * 1e3:.1f} ms")
        plain = {name: {b: statistics.median(_sequential(urls[b], frames[name], args.plain)[0]) for b in BACKENDS}
                 for name in names}

    table = Table(title=f"Ray backend vs in-process, {MODEL} {SIZE}×{SIZE}, loopback, {args.rounds} interleaved rounds "
                        f"(median, lowest–highest round)")
    for column in ("load", "frame", "in-process ms", "ray ms", "added by ray ms", "compute ms (in-proc / ray)",
                   "plain loop: added ms"):
        table.add_column(column)
    out: dict[str, object] = {"model": MODEL, "input_size": SIZE, "rounds": args.rounds, "requests": args.requests,
                              "devices": DEVICES, "burst": args.burst, "low_load": {}, "devices_p95": {}}
    for name in names:
        mine, ray_ = [x["p50_s"] for x in low[name]["in-process"]], [x["p50_s"] for x in low[name]["ray"]]
        added = [b - a for a, b in zip(mine, ray_)]
        computes = [statistics.median(x["compute_p50_s"] for x in low[name][b]) * 1e3 for b in BACKENDS]
        plain_added = plain[name]["ray"] - plain[name]["in-process"]
        table.add_row("1 client, sequential", name, _spread(mine, 1e3), _spread(ray_, 1e3), _spread(added, 1e3),
                      f"{computes[0]:.2f} / {computes[1]:.2f}", f"{plain_added * 1e3:.2f}")
        out["low_load"][name] = {"p50_ms": {b: [round(x["p50_s"] * 1e3, 3) for x in low[name][b]] for b in BACKENDS},
                                 "added_p50_ms": [round(a * 1e3, 3) for a in added],
                                 "added_p50_ms_median": round(statistics.median(added) * 1e3, 3),
                                 "compute_p50_ms": dict(zip(BACKENDS, (round(c, 3) for c in computes))),
                                 "plain_loop_p50_ms": {b: round(plain[name][b] * 1e3, 3) for b in BACKENDS}}
    ratios = [b / a for a, b in zip(busy["in-process"], busy["ray"])]
    table.add_row(f"{DEVICES} devices", names[0], _spread(busy["in-process"], 1e3, 1), _spread(busy["ray"], 1e3, 1),
                  f"p95 ratio {_spread(ratios)}", "", "")
    out["devices_p95"] = {"p95_ms": {b: [round(v * 1e3, 2) for v in busy[b]] for b in BACKENDS},
                          "ratio": [round(r, 3) for r in ratios], "ratio_median": round(statistics.median(ratios), 3)}
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
