"""How many devices the edge serves as replicas are added: capacity against replicas, routing and policy.

EfficientNet-B0 as in benchmarks/policies.py: the server profile measured here (cached in
benchmarks/results/b0-server.json; measured and written there when missing), the server at that speed,
the device this profile scaled to a 350 ms whole model, fp32 splits, raw and JPEG offload; dsc picks among
the exact options. Every mahimahi uplink trace: device i replays trace i mod 8 (sorted by name) from its own
offset, 2 requests a second (periodic, the fleet spread over one period), 40 ms RTT, 20 Mbit/s down, one
request at a time, giving up at the default deadline (700 ms: twice the device's time), harmonic estimator.
Each replica batches up to 8 by cut across devices (``edgesplit.sim.fleet``).

For each number of replicas (1 … 64), routing rule and policy, fleets of 16, 32, …, 2048 devices are
simulated over ``--duration`` s of trace (default 20 s, about 6 minutes on this two-core machine; 30 s
would take about 9), smallest first, until one misses p95 <= 700 ms over all its requests. The
capacity is the largest fleet before that (0 when even 16 devices miss; ">= 2048" when none does); the
table gives it, and how far it is from linear: capacity / (replicas × the capacity of one replica).

    python benchmarks/scaleout.py [--duration 20] [--profile FILE] [--traces ../shared/traces]
                                  [--out benchmarks/results/scaleout.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgesplit import analyze, load_model
from edgesplit.device import DeviceConfig
from edgesplit.latency import build_options
from edgesplit.measure import measure
from edgesplit.policies import allowed_options
from edgesplit.profile import Profile, load_profile, with_device_time
from edgesplit.sim import FleetDevice, FleetSimConfig, Workload, build_fleet, simulate_fleet
from edgesplit.traces import read_trace

REPLICAS = (1, 2, 4, 8, 16, 32, 64)
FLEETS = tuple(2 ** k for k in range(4, 12))  # 16 … 2048 devices
ROUTINGS = ("random", "round-robin", "least-queue")
POLICIES = ("dsc", "offload")
DEVICE_S = 0.35
HERE = Path(__file__).resolve().parent
console = Console(width=200)


def server_profile(path: Path) -> Profile:
    """The cached B0 server profile, or one measured now (and cached)."""
    if path.exists():
        return load_profile(path)
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, loaded.native_input_shape, "efficientnet_b0")
    measured = measure(analysis, analysis.natural_bottlenecks(), role="server", batch_sizes=(1, 2, 4, 8), repeats=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    measured.save(path)
    return measured


def capacity(points: dict[int, dict], deadline_ms: float) -> int:
    """The largest fleet before the first that misses p95 <= the deadline (0: the smallest misses)."""
    passed = 0
    for count in sorted(points):
        if points[count]["p95_ms"] > deadline_ms:
            return passed
        passed = count
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=HERE.parents[1] / "shared" / "traces")
    parser.add_argument("--profile", type=Path, default=HERE / "results" / "b0-server.json")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of trace per fleet (default 20)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scaleout.json")
    args = parser.parse_args()
    started = time.perf_counter()
    server = server_profile(args.profile)
    options = build_options(with_device_time(server, DEVICE_S), server)
    allowed = allowed_options(options, private=False, lossy=False)
    traces = [read_trace(path) for path in sorted((args.traces / "mahimahi").glob("*.up"))]
    device = DeviceConfig(rtt_s=0.04, downlink_bps=20e6)
    deadline_ms = device.deadline_for(DEVICE_S) * 1e3
    per_request = {b: server.model_s[b].median_s / b * 1e3 for b in sorted(server.model_s)}
    console.print(f"B0 server: whole model per request at batch 1, 2, 4, 8: "
                  f"{', '.join(f'{v:.0f}' for v in per_request.values())} ms; {len(traces)} traces; "
                  f"{args.duration:g} s per fleet; deadline {deadline_ms:.0f} ms")
    fleets: dict[tuple[str, int], list[FleetDevice]] = {}  # reused: each run resets the estimators
    points: dict[str, dict[str, dict[int, dict[int, dict]]]] = {p: {r: {} for r in ROUTINGS} for p in POLICIES}
    for policy in POLICIES:
        for routing in ROUTINGS:
            for replicas in REPLICAS:
                scan = points[policy][routing].setdefault(replicas, {})
                for count in FLEETS:
                    if (policy, count) not in fleets:
                        fleets[policy, count] = build_fleet(
                            count, policy=policy, estimator="harmonic", options=options, allowed=allowed,
                            traces=traces, workload=Workload(2.0, duration_s=args.duration), device=device)
                    result = simulate_fleet(fleets[policy, count], FleetSimConfig(servers=replicas, routing=routing))
                    summary = result.summary(deadline_ms / 1e3)
                    scan[count] = {**summary, "server": result.server_summary()}
                    console.print(f"{policy} {routing} {replicas} replicas, {count} devices: p95 "
                                  f"{summary['p95_ms']:.0f} ms, edge answered {summary['answered']}/"
                                  f"{summary['count']}, utilisation {scan[count]['server']['utilisation']:.0%} "
                                  f"({time.perf_counter() - started:.0f} s)", highlight=False)
                    if summary["p95_ms"] > deadline_ms:
                        break
    table = Table(title=f"Capacity: devices served with p95 <= {deadline_ms:.0f} ms (× linear: capacity / "
                        f"(replicas × one replica's)); {args.duration:g} s of trace per fleet")
    table.add_column("replicas", justify="right")
    capacities = {p: {r: {k: capacity(points[p][r][k], deadline_ms) for k in REPLICAS} for r in ROUTINGS}
                  for p in POLICIES}
    for policy in POLICIES:
        for routing in ROUTINGS:
            table.add_column(f"{policy}\n{routing}", justify="right")
    for replicas in REPLICAS:
        cells = []
        for policy in POLICIES:
            for routing in ROUTINGS:
                found, one = capacities[policy][routing][replicas], capacities[policy][routing][1]
                text = f">= {found}" if found == FLEETS[-1] else str(found)
                cells.append(text + (f" (×{found / (replicas * one):.2f})" if one and replicas > 1 else ""))
        table.add_row(str(replicas), *cells)
    console.print(table)
    for policy in POLICIES:
        if not any(found for by_k in capacities[policy].values() for found in by_k.values()):
            idle = points[policy][ROUTINGS[0]][REPLICAS[-1]][FLEETS[0]]
            console.print(f"{policy}: even {FLEETS[0]} devices on {REPLICAS[-1]} replicas (utilisation "
                          f"{idle['server']['utilisation']:.0%}) have p95 {idle['p95_ms']:.0f} ms: their uplinks, "
                          f"not the edge, miss the deadline")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "deadline_ms": deadline_ms, "duration_s": args.duration, "traces": [t.name for t in traces],
        "server_ms_per_request": per_request, "capacity": capacities,
        "points": {p: {r: {str(k): {str(n): v for n, v in scan.items()} for k, scan in by_k.items()}
                       for r, by_k in by_routing.items()} for p, by_routing in points.items()},
    }, indent=1) + "\n")
    console.print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
