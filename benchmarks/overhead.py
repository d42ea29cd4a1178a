"""Per-request overhead of the runtime on loopback, beyond the compute itself.

``edgesplit serve efficientnet_b0`` runs in its own process, as deployed (224×224, random weights from
seed 0); one client sends fp32 frames at a few cuts. For each cut, A = the tail run directly in this
process, B = the same tail through the whole runtime as the device client uses it (encode the frame,
HTTP on loopback through the client's transport, decode and validate, batcher, encode the answer, decode
it), and C = the compute time the server reports for B. A and B are interleaved, 40 times each. The
overhead is median(B − C): everything but the tail's own compute, per request; median(B) − median(A) is
printed beside it (it also holds the difference between computing in this process and in the server's).
Client and server share this machine's 2 cores, so both run OpenMP with passive waiting: spinning threads
of one process, left from its last computation, would otherwise steal the cores from the other (separate
machines would not; with spinning on, the overhead read 1.3 to 2 ms higher).

    python benchmarks/overhead.py [--repeats 40] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; the server inherits it

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgesplit import analyze, load_model, split  # noqa: E402
from edgesplit.codec import decode_frame, encode_frame  # noqa: E402
from edgesplit.runtime.tail_engine import TailEngine  # noqa: E402
from edgesplit.demo import free_port, server_process  # noqa: E402
from edgesplit.runtime.client import server_timings  # noqa: E402
from edgesplit.runtime.transport import HttpTransport  # noqa: E402


@contextlib.contextmanager
def _server(batch_wait_timeout_s: float) -> Iterator[str]:
    """``edgesplit serve efficientnet_b0`` in its own process; its URL once it answers."""
    port = free_port()
    argv = [sys.executable, "-m", "edgesplit", "serve", "efficientnet_b0", "--port", str(port),
            "--batch-wait-timeout-s", str(batch_wait_timeout_s), "--warm-up"]
    url = f"http://127.0.0.1:{port}"
    with server_process(argv, url, Path("out/overhead-server.log")):
        yield url


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
        with _server(wait) as url, HttpTransport(url, timeout_s=30) as http:
            for cut in cuts:
                head, tail = split(analysis, cut)
                with torch.inference_mode():
                    mid = head(x) if cut.index else x
                    tail = tail if cut.index else loaded.module
                payload = encode_frame(mid.numpy(), model_id=engine.model_id, cut=cut.index)
                direct, remote, beyond = [], [], []
                for i in range(args.repeats + 3):
                    started = time.perf_counter()
                    with torch.inference_mode():
                        tail(mid)
                    a = time.perf_counter() - started
                    started = time.perf_counter()
                    response = http.request("POST", "/v1/infer", payload)
                    decode_frame(response.body)
                    b = time.perf_counter() - started
                    compute = server_timings(response)["compute"][0]
                    if i >= 3:
                        direct.append(a)
                        remote.append(b)
                        beyond.append(b - compute)
                row = {"batch_wait_timeout_s": wait, "cut": cut.name, "bytes": len(payload),
                       "direct_ms": statistics.median(direct) * 1e3, "runtime_ms": statistics.median(remote) * 1e3,
                       "overhead_ms": statistics.median(beyond) * 1e3}
                row["runtime_minus_direct_ms"] = row["runtime_ms"] - row["direct_ms"]
                rows.append(row)
    table = Table(title="Runtime overhead on loopback (medians of 40 interleaved runs, EfficientNet-B0 224×224)")
    for column in ("batch wait", "cut", "frame KiB", "tail direct ms", "through runtime ms",
                   "overhead ms (beyond compute)", "runtime − direct ms"):
        table.add_column(column, justify="left" if column == "cut" else "right")
    for r in rows:
        table.add_row(f"{r['batch_wait_timeout_s'] * 1e3:g} ms", r["cut"], f"{r['bytes'] / 1024:.1f}",
                      f"{r['direct_ms']:.2f}", f"{r['runtime_ms']:.2f}", f"{r['overhead_ms']:.2f}",
                      f"{r['runtime_minus_direct_ms']:.2f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads()}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
