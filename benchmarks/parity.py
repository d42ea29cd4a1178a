"""Simulator vs reality: segments of the demo's trace, live over the emulated link and in the simulator.

For each link emulation (the application shaper; kernel shaping in network namespaces when root), the
demo's setup runs every policy live over ``--segments`` consecutive segments from ``--start`` (pretrained
EfficientNet-Lite0, scikit-image photos, a device that runs the whole model in 350 ms, its time split over
the model by FLOPs as in the demo).
The policies take turns within each segment, so each has this machine to itself, as the simulator
assumes (``--side-by-side`` runs them at the same time on replicas, as the demo does: then five servers
and five devices share two cores, and the servers' compute ran 1.5–1.8× their profile). The simulator
then replays each segment with the options that run priced (the device profile the demo measured, the
server's own profile), the same policies, estimator, fps, RTT, deadline and probing, and a device that —
like the live client — serves one request at a time: the same device core
(:class:`edgesplit.device.DeviceCore`) with a simulated clock and link. Printed per segment and policy:
measured vs predicted mean and p95, their ratio, and what made the segment hard (its mean rate, an
outage, whether dsc picked frames too small to time).

    python benchmarks/parity.py [--segments 5] [--start 100] [--duration 25] [--side-by-side]
                                [--policies dsc,best-static,local,offload,oracle] [--links app,netns] [--hedge]
                                [--device-shape flops|measured] [--lead-in 2]
                                [--out benchmarks/results/parity.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgesplit.demo import DemoConfig, LiveResult, run_live, simulate_segment
from edgesplit.profile import quantile

console = Console(width=200)


def predict(result: LiveResult, config: DemoConfig) -> list[dict[str, list[float]]]:
    """Per segment, the latencies (ms) the simulator predicts for each policy of a live run."""
    return [{spec: [r.latency_s * 1e3 for r in simulate_segment(spec, result.options, result.allowed,
                                                               segment.trace, segment.played, config)]
             for spec in segment.runs}
            for segment in result.segments]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=5)
    parser.add_argument("--start", type=float, default=100.0,
                        help="where the first segment starts (default 100 s: the five segments include the outage)")
    parser.add_argument("--side-by-side", action="store_true",
                        help="run the policies at the same time on replicas, as the demo does (default: they take "
                             "turns, each with this machine to itself, as the simulator assumes)")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds per segment")
    parser.add_argument("--device-shape", choices=("flops", "measured"), default=DemoConfig.device_shape,
                        help="how the emulated device's time splits over the model (as in the demo)")
    parser.add_argument("--lead-in", type=float, default=DemoConfig.lead_in_s,
                        help="seconds before each segment run (live and simulated) but not counted")
    parser.add_argument("--policies", default="dsc,best-static,local,offload,oracle")
    parser.add_argument("--links", default="app,netns", help="app, netns or both (netns needs root)")
    parser.add_argument("--hedge", action="store_true", help="the device runs the rest itself while it waits")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "parity.json")
    args = parser.parse_args()
    started = time.perf_counter()
    rows, quiet = [], Console(quiet=True)
    for link in args.links.split(","):
        if link == "netns":
            from edgesplit.netem.kernel import available

            if reason := available():
                console.print(f"skipping kernel shaping: {reason}")
                continue
        config = DemoConfig(duration_s=args.duration, segments=args.segments, start_s=args.start,
                            side_by_side=args.side_by_side, policies=tuple(args.policies.split(",")),
                            netns=link == "netns", out_dir=Path("out/parity") / link, hedge=args.hedge,
                            lead_in_s=args.lead_in, device_shape=args.device_shape)
        console.print(f"live runs over the {link} link…")
        result = run_live(config, quiet)
        for segment, predicted in zip(result.segments, predict(result, config)):
            outage_s = sum(segment.trace.delivered_bits(t, t + 1) == 0 for t in range(math.ceil(segment.trace.duration_s)))
            small = sum(r.executed != "local" and r.measured_bps is None for r in segment.runs.get("dsc", []))
            for spec, records in segment.runs.items():
                live = sorted(r.latency_s * 1e3 for r in records)
                sim = sorted(predicted[spec])
                rows.append({"link": link, "start_s": segment.start_s, "policy": spec, "requests": len(live),
                             "mean_mbps": segment.trace.mean_bps() / 1e6, "outage_s": outage_s,
                             "dsc_untimed_frames": small,
                             "measured_mean_ms": statistics.fmean(live), "predicted_mean_ms": statistics.fmean(sim),
                             "measured_p95_ms": quantile(live, 0.95), "predicted_p95_ms": quantile(sim, 0.95),
                             "fallbacks": sum(r.fallback_reason is not None for r in records)})
    table = Table(title=f"Simulator vs live, {args.segments} × {args.duration:g} s of the demo's trace from {args.start:g} s, "
                        "EfficientNet-Lite0, device: whole model in 350 ms")
    for column in ("link", "start s", "Mbit/s", "outage s", "dsc untimed", "policy", "measured mean",
                   "predicted mean", "ratio", "measured p95", "predicted p95", "ratio p95", "fallbacks"):
        table.add_column(column, justify="left" if column in ("link", "policy") else "right")
    for row in rows:
        table.add_row(row["link"], f"{row['start_s']:g}", f"{row['mean_mbps']:.2f}", str(row["outage_s"]),
                      str(row["dsc_untimed_frames"]), row["policy"], f"{row['measured_mean_ms']:.0f}",
                      f"{row['predicted_mean_ms']:.0f}", f"{row['measured_mean_ms'] / row['predicted_mean_ms']:.3f}",
                      f"{row['measured_p95_ms']:.0f}", f"{row['predicted_p95_ms']:.0f}",
                      f"{row['measured_p95_ms'] / row['predicted_p95_ms']:.3f}", str(row["fallbacks"]))
    console.print(table)
    within = sum(abs(r["measured_mean_ms"] / r["predicted_mean_ms"] - 1) <= 0.10 for r in rows)
    ratios = [r["measured_mean_ms"] / r["predicted_mean_ms"] for r in rows]
    console.print(f"means within 10 %: {within}/{len(rows)}; measured/predicted from {min(ratios):.3f} to "
                  f"{max(ratios):.3f}, median {statistics.median(ratios):.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"segments": args.segments, "duration_s": args.duration, "rows": rows},
                                   indent=1) + "\n")
    console.print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
