"""Per-request overhead of the runtime on loopback, beyond the compute itself.

A real uvicorn server holds EfficientNet-B0 (224×224, random weights); one client sends fp32 frames at a
few cuts. For each cut, A = the tail run directly in this process, B = the same tail through the whole
runtime as the device client uses it (encode the frame, HTTP on loopback through the client's transport,
decode and validate, batcher, encode the answer, decode it).
A and B are interleaved, 40 times each; the overhead is median(B) − median(A).

    python benchmarks/overhead.py [--repeats 40] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from edgesplit import analyze, load_model, split
from edgesplit.codec import decode_frame, encode_frame
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.runtime.server import ServerConfig, create_app
from edgesplit.runtime.transport import HttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from live_server import LiveServer  # noqa: E402

console = Console(width=160)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "overhead.json")
    args = parser.parse_args()
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, loaded.native_input_shape, "efficientnet_b0")
    engine = TailEngine(analysis, loaded.normalization)
    record_lows = [c for c in analysis.cuts if c.record_low]
    cuts = [analysis.cuts[0], record_lows[0], record_lows[-2], record_lows[-1]]
    x = torch.randn(1, *analysis.input_shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for wait in (0.0, 0.005):
        with LiveServer(create_app(engine, ServerConfig(batch_wait_timeout_s=wait))) as server:
            http = HttpTransport(server.url, timeout_s=30)
            for cut in cuts:
                head, tail = split(analysis, cut)
                with torch.inference_mode():
                    mid = head(x) if cut.index else x
                    tail = tail if cut.index else loaded.module
                payload = encode_frame(mid.numpy(), model_id=engine.model_id, cut=cut.index)
                direct, remote, compute = [], [], []
                for i in range(args.repeats + 3):
                    started = time.perf_counter()
                    with torch.inference_mode():
                        tail(mid)
                    a = time.perf_counter() - started
                    started = time.perf_counter()
                    response = http.request("POST", "/v1/infer", payload)
                    decode_frame(response.body)
                    b = time.perf_counter() - started
                    if i >= 3:
                        direct.append(a)
                        remote.append(b)
                        compute.append(float(response.headers["server-timing"].split("compute;dur=")[1].split(",")[0]))
                row = {"batch_wait_timeout_s": wait, "cut": cut.name, "bytes": len(payload),
                       "direct_ms": statistics.median(direct) * 1e3, "runtime_ms": statistics.median(remote) * 1e3,
                       "server_compute_ms": statistics.median(compute)}
                row["overhead_ms"] = row["runtime_ms"] - row["direct_ms"]
                rows.append(row)
    table = Table(title="Runtime overhead on loopback (medians of 40 interleaved runs, EfficientNet-B0 224×224)")
    for column in ("batch wait", "cut", "frame KiB", "tail direct ms", "through runtime ms", "overhead ms"):
        table.add_column(column, justify="left" if column == "cut" else "right")
    for r in rows:
        table.add_row(f"{r['batch_wait_timeout_s'] * 1e3:g} ms", r["cut"], f"{r['bytes'] / 1024:.1f}",
                      f"{r['direct_ms']:.2f}", f"{r['runtime_ms']:.2f}", f"{r['overhead_ms']:.2f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads()}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
