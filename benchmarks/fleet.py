"""How the policies fare as more devices share one edge server: 1, 4 and 16 devices, live.

``edgesplit fleet`` with the pretrained EfficientNet-Lite0 (scikit-image photos): one ``edgesplit serve
--warm-up --profile`` process (batches of up to 8) on this machine; the devices are threads of this process,
each emulating a device that runs the whole model in 350 ms, 2 requests per second each, over its own
application-shaped link replaying the demo's Verizon LTE trace from its own offset (40 ms RTT). dsc,
best-static, offload and local take turns of 20 s (all the devices on one policy at a time, so that each
policy meets the load its own devices make), in an order rotating over 2 repeats. About 12 minutes.

    python benchmarks/fleet.py [--devices 1,4,16] [--duration 20] [--repeats 2]
                               [--policies dsc,best-static,offload,local] [--out benchmarks/results/fleet.json]

Prints one table per number of devices; writes every number but the requests to ``--out``, and the run's
own folder (``fleet.json`` with every request, ``latency.png``, ``options.png``, ``queue.png``, the
server's log) beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from edgesplit.fleet import DEFAULT_POLICIES, FleetConfig, parse_device_counts, run_fleet

console = Console(width=200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,4,16")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each policy's turn")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "fleet.json")
    args = parser.parse_args()
    config = FleetConfig(model="efficientnet_lite0_pretrained", device_counts=parse_device_counts(args.devices),
                         policies=tuple(args.policies.split(",")), duration_s=args.duration, repeats=args.repeats,
                         out_dir=args.out.with_suffix(""))
    started = time.perf_counter()
    document = run_fleet(config, console)
    summary = {key: value for key, value in document.items() if key != "requests"}
    args.out.write_text(json.dumps({**summary, "wall_s": time.perf_counter() - started}, indent=1) + "\n")
    console.print(f"wrote {args.out} (every request, the plots and the server's log: {config.out_dir}/)")


if __name__ == "__main__":
    main()
