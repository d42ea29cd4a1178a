"""The demo's verdict in the simulator: its segments replayed with the profiles a demo run measured.

``edgesplit demo`` writes the profiles it ran on (``device-profile.json``: the emulated device;
``server-profile.json``: the server's own) beside ``demo.json``. This replays the demo's trace, segment by
segment with the same lead-in, through the simulator's device (the same ``DeviceCore``, one request at a
time, as the live client) for each run directory, each estimator and each dsc margin (its
``STANDARD_ERRORS``), and prints on how many segments dsc's mean was at most best-static's and local's,
and the overall means. What-ifs that would take a live run each take seconds here; benchmarks/parity.py
says how far the simulator is from the live runs.

    python benchmarks/demo_sim.py out/demo [out/demo-2 ...] [--estimators harmonic,ewma] [--margins 2,1,0]
                                  [--segments 10] [--lead-in 2] [--out benchmarks/results/demo_sim.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgesplit import policies
from edgesplit.demo import DemoConfig, simulate_segment
from edgesplit.latency import build_options
from edgesplit.policies import allowed_options
from edgesplit.profile import load_profile
from edgesplit.traces import read_trace

POLICIES = ("dsc", "best-static", "local", "oracle")


def segment_means(run: Path, config: DemoConfig) -> list[dict[str, float]]:
    """Per segment, each policy's mean latency (ms) in the simulator, over the counted requests."""
    device, server = load_profile(run / "device-profile.json"), load_profile(run / "server-profile.json")
    options = build_options(device, server, codecs=config.codecs, private=False)
    allowed = allowed_options(options, False, config.lossy, None, jpeg=False)
    full = read_trace(config.trace)
    means = []
    for k in range(config.segments):
        start_s = config.start_s + k * config.duration_s
        counted, played = full.segment(start_s, config.duration_s), config.played(full, start_s)
        means.append({spec: statistics.fmean(r.latency_s * 1e3 for r in simulate_segment(
            spec, options, allowed, counted, played, config)) for spec in POLICIES})
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="demo output directories (with their profiles)")
    parser.add_argument("--estimators", default="harmonic")
    parser.add_argument("--margins", default=str(policies.STANDARD_ERRORS),
                        help="dsc's standard errors, comma-separated (what-ifs on policies.STANDARD_ERRORS)")
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--lead-in", type=float, default=DemoConfig.lead_in_s)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "demo_sim.json")
    args = parser.parse_args()
    rows = []
    default_margin = policies.STANDARD_ERRORS
    try:
        for estimator in args.estimators.split(","):
            for margin in (float(m) for m in args.margins.split(",")):
                policies.STANDARD_ERRORS = margin
                config = DemoConfig(segments=args.segments, estimator=estimator, lead_in_s=args.lead_in)
                for run in args.runs:
                    means = segment_means(run, config)
                    overall = {spec: statistics.fmean(m[spec] for m in means) for spec in POLICIES}
                    rows.append({"run": str(run), "estimator": estimator, "margin": margin,
                                 "segments": means, "overall_ms": overall,
                                 "dsc_le_best_static": sum(m["dsc"] <= m["best-static"] for m in means),
                                 "dsc_le_local": sum(m["dsc"] <= m["local"] for m in means)})
    finally:
        policies.STANDARD_ERRORS = default_margin
    table = Table(title=f"the demo's {args.segments} segments in the simulator (lead-in {args.lead_in:g} s)")
    for column in ("run", "estimator", "margin", "dsc ≤ best-static", "dsc ≤ local", *(f"{p} ms" for p in POLICIES),
                   "dsc − best-static per segment (ms)"):
        table.add_column(column, justify="left" if column in ("run", "estimator") else "right")
    for row in rows:
        table.add_row(row["run"], row["estimator"], f"{row['margin']:g}", f"{row['dsc_le_best_static']}/{args.segments}",
                      f"{row['dsc_le_local']}/{args.segments}", *(f"{row['overall_ms'][p]:.0f}" for p in POLICIES),
                      " ".join(f"{m['dsc'] - m['best-static']:+.0f}" for m in row["segments"]))
    Console(width=220).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"lead_in_s": args.lead_in, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
