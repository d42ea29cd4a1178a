"""Simulator vs reality: the demo's trace segment, live over the emulated link and in the simulator.

For each link emulation (the application shaper; kernel shaping in network namespaces when root), the
demo's setup runs every policy live (pretrained EfficientNet-Lite0, scikit-image photos, device = this
machine slowed to run the whole model in 350 ms). The simulator then replays the same segment with the profile that run measured, the
same options (priced with the device profile the demo measured and the server's own profile), policies,
estimator, fps, RTT and deadline, and a device that — like the live client — serves one request at a
time. Printed per policy: measured vs predicted mean and p95 and their ratio.

    python benchmarks/parity.py [--duration 25] [--policies dsc,best-static,local,offload,oracle]
                                [--links app,netns] [--hedge] [--out benchmarks/results/parity.json]
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

from edgesplit.demo import DemoConfig, LiveResult, run_live
from edgesplit.estimators import make_estimator
from edgesplit.latency import LinkState
from edgesplit.policies import make_policy
from edgesplit.profile import quantile
from edgesplit.sim import SimConfig, Workload, simulate

console = Console(width=200)


def predict(result: LiveResult, config: DemoConfig) -> dict[str, list[float]]:
    """Latencies (ms) the simulator predicts for each policy of a live run."""
    sim_config = SimConfig(rtt_s=config.rtt_s, deadline_s=config.deadline_s, sequential=True, hedge=config.hedge,
                           downlink_bps=math.inf, max_batch_size=1)
    predicted = {}
    for spec in result.runs:
        policy = make_policy(spec, LinkState(result.trace.mean_bps(), config.rtt_s))
        records = simulate(policy, make_estimator(config.estimator), result.options,
                           result.allowed if policy.dynamic else result.options, result.trace,
                           Workload(fps=config.fps, duration_s=config.duration_s), sim_config)
        predicted[spec] = [r.latency_s * 1e3 for r in records]
    return predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=25.0)
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
        config = DemoConfig(duration_s=args.duration, policies=tuple(args.policies.split(",")), netns=link == "netns",
                            out_dir=Path("out/parity") / link, hedge=args.hedge)
        console.print(f"live runs over the {link} link…")
        result = run_live(config, quiet)
        predicted = predict(result, config)
        for spec, requests in result.runs.items():
            live = sorted(r.record.latency_ms for r in requests)
            sim = sorted(predicted[spec])
            rows.append({"link": link, "policy": spec, "requests": len(live), "predicted_requests": len(sim),
                         "measured_mean_ms": statistics.fmean(live), "predicted_mean_ms": statistics.fmean(sim),
                         "measured_p95_ms": quantile(live, 0.95), "predicted_p95_ms": quantile(sim, 0.95),
                         "fallbacks": sum(r.record.fallback_reason is not None for r in requests)})
    table = Table(title=f"Simulator vs live, {args.duration:g} s of the demo's trace, EfficientNet-Lite0, "
                        "device: whole model in 350 ms")
    for column in ("link", "policy", "measured mean", "predicted mean", "ratio", "measured p95", "predicted p95",
                   "ratio p95", "fallbacks"):
        table.add_column(column, justify="left" if column in ("link", "policy") else "right")
    for row in rows:
        table.add_row(row["link"], row["policy"], f"{row['measured_mean_ms']:.0f}", f"{row['predicted_mean_ms']:.0f}",
                      f"{row['measured_mean_ms'] / row['predicted_mean_ms']:.3f}", f"{row['measured_p95_ms']:.0f}",
                      f"{row['predicted_p95_ms']:.0f}", f"{row['measured_p95_ms'] / row['predicted_p95_ms']:.3f}",
                      str(row["fallbacks"]))
    console.print(table)
    within = sum(abs(r["measured_mean_ms"] / r["predicted_mean_ms"] - 1) <= 0.10 for r in rows)
    console.print(f"means within 10 %: {within}/{len(rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"duration_s": args.duration, "rows": rows}, indent=1) + "\n")
    console.print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
