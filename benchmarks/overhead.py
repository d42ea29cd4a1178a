"""Per-request overhead of the runtime on loopback, beyond the compute itself.

``edgesplit serve efficientnet_b0`` runs in its own process, as deployed (224×224, random weights from
seed 0); one client sends the frames a device sends: the input as uint8 (full offload, raw) and fp32
activations at three record-low cuts. Per request, interleaved, ``--repeats`` times each:

- A: the same tail run directly in this process (``TailEngine.run``, what the server runs);
- B: the request through the whole runtime as the device client makes it (HTTP on loopback through the
  client's transport, receive and validate, batcher, encode the answer, decode it), with C = the compute
  time the server reports for it, timed where the tail ran;
- F: the floor — the same body to a server on the same stack (uvicorn + Starlette) that does nothing but
  read it, hold the request as long as B's compute took (its server idles meanwhile, where the real one
  computes), and answer 4 KiB.

The overhead is median(B − C); the floor median(F − hold); the difference is edgesplit's own share.
The floor is not a constant: on this 2-core VM an idle core takes long to wake (HLT exits), so a
do-nothing exchange takes ~0.45 ms when answered at once and 1.1–1.4 ms when the server holds it 5 ms or
more. Client and servers share the machine's cores, so OpenMP waits passively (spinning threads of one
process would steal the cores from the other; separate machines would not).

    python benchmarks/overhead.py [--repeats 40] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; the servers inherit it

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgesplit import analyze, load_model, split  # noqa: E402
from edgesplit.wire import FRAME_TYPE, decode_frame, encode_frame  # noqa: E402
from edgesplit.demo import loopback_server  # noqa: E402
from edgesplit.images import normalizer  # noqa: E402
from edgesplit.runtime.client import server_timings  # noqa: E402
from edgesplit.runtime.tail_engine import TailEngine  # noqa: E402
from edgesplit.runtime.transport import HttpTransport  # noqa: E402

LOGS = Path("out")


def _edgesplit_server(batch_wait_timeout_s: float) -> contextlib.AbstractContextManager[str]:
    """``edgesplit serve efficientnet_b0`` in its own process; its URL once it answers."""
    return loopback_server(lambda port: [sys.executable, "-m", "edgesplit", "serve", "efficientnet_b0", "--port",
                                         str(port), "--batch-wait-timeout-s", str(batch_wait_timeout_s), "--warm-up"],
                           LOGS / "overhead-server.log")


def _floor_server() -> contextlib.AbstractContextManager[str]:
    """This script's do-nothing server (``--floor-server PORT``) in its own process."""
    return loopback_server(lambda port: [sys.executable, __file__, "--floor-server", str(port)],
                           LOGS / "overhead-floor.log")


def _serve_floor(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        await request.body()
        started = time.perf_counter()
        await asyncio.sleep(float(request.query_params["hold_ms"]) / 1e3)
        held = time.perf_counter() - started
        return Response(bytes(4096), headers={"Server-Timing": f"hold;dur={held * 1e3:.3f}"})

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/infer", infer, methods=["POST"]), Route("/healthz", healthz)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


console = Console(width=170)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "overhead.json")
    parser.add_argument("--floor-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        return _serve_floor(args.floor_server)
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, loaded.native_input_shape, "efficientnet_b0")
    engine = TailEngine(analysis, loaded.normalization)
    record_lows = [c for c in analysis.cuts if c.record_low]
    image = np.random.default_rng(0).integers(0, 256, (1, *analysis.input_shape), dtype=np.uint8)
    x = torch.from_numpy(normalizer(loaded.normalization.mean, loaded.normalization.std)(image))
    frames = [("input (uint8)", 0, image)]
    for cut in (record_lows[0], record_lows[-2], record_lows[-1]):
        with torch.inference_mode():
            frames.append((cut.name, cut.index, split(analysis, cut)[0](x).numpy()))
    rows = []
    for wait in (0.0, 0.005):
        with (_edgesplit_server(wait) as url, _floor_server() as floor_url,
              HttpTransport(url, timeout_s=30) as http, HttpTransport(floor_url, timeout_s=30) as floor):
            for name, cut_id, array in frames:
                payload = encode_frame(array, model_id=engine.model_id, cut=cut_id)
                direct, remote, beyond, floors = [], [], [], []
                for i in range(args.repeats + 3):
                    started = time.perf_counter()
                    engine.run(cut_id, array)
                    a = time.perf_counter() - started
                    started = time.perf_counter()
                    response = http.request("POST", "/v1/infer", payload, {"content-type": FRAME_TYPE})
                    decode_frame(response.body)
                    b = time.perf_counter() - started
                    compute = server_timings(response)["compute"][0]
                    started = time.perf_counter()
                    held = floor.request("POST", f"/v1/infer?hold_ms={compute * 1e3:.3f}", payload)
                    f = time.perf_counter() - started - server_timings(held)["hold"][0]
                    if i >= 3:
                        direct.append(a)
                        remote.append(b)
                        beyond.append(b - compute)
                        floors.append(f)
                row = {"batch_wait_timeout_s": wait, "frame": name, "cut": cut_id, "bytes": len(payload),
                       "direct_ms": statistics.median(direct) * 1e3, "runtime_ms": statistics.median(remote) * 1e3,
                       "overhead_ms": statistics.median(beyond) * 1e3, "floor_ms": statistics.median(floors) * 1e3}
                row["edgesplit_ms"] = row["overhead_ms"] - row["floor_ms"]
                rows.append(row)
    table = Table(title=f"Runtime overhead on loopback (medians of {args.repeats} interleaved runs, "
                        "EfficientNet-B0 224×224)")
    for column in ("batch wait", "frame", "KiB", "tail direct ms", "through runtime ms",
                   "overhead ms (beyond compute)", "floor ms (no-op server)", "edgesplit's share ms"):
        table.add_column(column, justify="left" if column == "frame" else "right")
    for r in rows:
        table.add_row(f"{r['batch_wait_timeout_s'] * 1e3:g} ms", r["frame"], f"{r['bytes'] / 1024:.1f}",
                      f"{r['direct_ms']:.2f}", f"{r['runtime_ms']:.2f}", f"{r['overhead_ms']:.2f}",
                      f"{r['floor_ms']:.2f}", f"{r['edgesplit_ms']:.2f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads()}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
