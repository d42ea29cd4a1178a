"""What the energy objective saves the device: dsc (latency) against dsc:energy, local and offload.

The setup of benchmarks/policies.py: EfficientNet-B0 profiled per node on this machine (``--profile``, by
default the profile policies.py writes), the server at its measured speed, the device given by its
whole-model time (``--device-ms``, default 350 ms, and 1000 ms) split over the model in proportion to
FLOPs (``--device-shape``), every mahimahi uplink trace replayed at 2 requests per second, 40 ms RTT, one
request at a time, exact options only (no JPEG). The device draws ``--compute-w`` watts while it computes
(default 3 W, a phone SoC) and has an LTE or a Wi-Fi radio (Huang et al., MobiSys 2012; docs/energy.md).
``local`` is a device that never uses its radio (it does not probe); every other policy probes by the
device core's rules. Also run: ``dsc:energy`` on a device that never probes (``no-probe``), the weighted
objective ``dsc:latency+energy`` (1 per second, 1 per joule). Beside them, the most any policy could save
against local on the trace (:func:`saving_bound`).

With ``--min-agreement A --fidelity FILE`` (from benchmarks/fidelity.py) the model is the one the
fidelity was measured on (the pretrained EfficientNet-Lite0; its profile in results/MODEL-server.json
unless ``--profile``), and every policy may also pick the lossy options measured to agree with the exact
answer on at least A of the images.

    python benchmarks/energy.py [--profile FILE] [--traces ../shared/traces] [--device-ms 350,1000]
                                [--radios lte,wifi] [--compute-w 3] [--device-shape flops|measured]
                                [--min-agreement A --fidelity FILE] [--out benchmarks/results/energy.json]

Prints one table per radio and device: mean latency (ms) and mean device energy per request (mJ) per
policy, what dsc:energy saves against local and the most any policy could; writes every number as JSON. The
target checked: the energy objective saves at least 20 % of local's energy on the fast-uplink traces
(mean >= 5 Mbit/s).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgesplit.device import DeviceConfig, summarize
from edgesplit.energy import PHONE_COMPUTE_W, RADIOS
from edgesplit.estimators import make_estimator
from edgesplit.latency import LinkState, Option, build_options
from edgesplit.policies import allowed_options, make_policy
from edgesplit.profile import read_agreement, with_agreement
from edgesplit.sim import SimConfig, Workload, simulate
from edgesplit.traces import read_trace
from policies import device_profile, server_profile  # benchmarks/policies.py

RUNS = {  # column -> (policy spec, how the device differs from the default one)
    "dsc": ("dsc", {}),
    "dsc:energy": ("dsc:energy", {}),
    "no-probe": ("dsc:energy", {"probe_interval_s": math.inf}),
    "weighted": ("dsc:latency+energy", {}),
    "local": ("local", {"probe_on_connect": False, "probe_interval_s": math.inf}),
    "offload": ("offload", {}),
}
FPS = 2.0
FAST_MBPS = 5.0  # a trace with a mean uplink at least this fast is a fast-uplink trace
TARGET_SAVING = 0.20
console = Console(width=260)


def saving_bound(allowed: list[Option], device: DeviceConfig, mean_bps: float, period_s: float) -> float:
    """The most any policy could save against local, per request, on a trace of this mean rate.

    Once it has sent, the radio stays up for its tail (``tail_s``, 11.6 s on LTE): requests ``period_s``
    apart keep it up all the time: each request's burst costs ``α × Mbit + β × seconds`` and the rest of its
    period at least ``tail_mw``. The burst lasts the bytes over the rate; at the trace's mean rate that
    cost is a lower bound of its average over the trace (it is convex in the rate). The promotion, the
    answer's download and probes only add: so a device that sends pays at least the cheapest remote option
    priced this way, one that never sends pays local's."""
    radio = RADIOS.get(device.radio)
    local = next(o for o in allowed if o.kind == "local")
    local_j = device.compute_w * local.head_s

    def remote_j(option: Option) -> float:
        send_s = option.bytes * 8 / mean_bps
        return (device.compute_w * (option.head_s + option.encode_s) + radio.burst_j(option.bytes, send_s)
                + radio.tail_mw / 1e3 * max(0.0, period_s - send_s))

    cheapest = min([remote_j(o) for o in allowed if o.kind != "local"], default=math.inf)
    return max(0.0, 1 - min(local_j, cheapest) / local_j)


def run_trace(path: Path, options: list, allowed: list, device: DeviceConfig, estimator: str) -> dict[str, Any]:
    trace = read_trace(path)
    mean_link = LinkState(trace.mean_bps(), device.rtt_s, device.downlink_bps)
    row: dict[str, Any] = {"trace": path.name, "mean_mbps": trace.mean_bps() / 1e6, "duration_s": trace.duration_s}
    for column, (spec, changes) in RUNS.items():
        records = simulate(make_policy(spec, options, mean_link), make_estimator(estimator), allowed, trace,
                           Workload(fps=FPS), SimConfig(replace(device, **changes), sequential=True))
        summary = summarize(records)
        row[column] = {"policy": spec, **{k: summary[k] for k in ("mean_ms", "p95_ms", "mean_energy_mj",
                                                                   "mean_radio_mj", "fallbacks", "cuts")}}
    row["saving_vs_local"] = 1 - row["dsc:energy"]["mean_energy_mj"] / row["local"]["mean_energy_mj"]
    row["saving_bound"] = saving_bound(allowed, device, trace.mean_bps(), 1 / FPS)
    return row


def report(title: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    table = Table(title=title)
    table.add_column("trace", no_wrap=True)
    table.add_column("Mbit/s", justify="right")
    for column in RUNS:
        table.add_column(f"{column} ms", justify="right")
        table.add_column(f"{column} mJ", justify="right")
    table.add_column("saves vs local", justify="right")
    table.add_column("at most", justify="right")
    table.add_column("dsc:energy's main choice", no_wrap=True)
    for row in rows:
        cuts = row["dsc:energy"]["cuts"]
        choice, count = next(iter(cuts.items()))
        table.add_row(row["trace"], f"{row['mean_mbps']:.2f}",
                      *(f"{row[c][k]:.0f}" for c in RUNS for k in ("mean_ms", "mean_energy_mj")),
                      f"{row['saving_vs_local']:+.0%}", f"{row['saving_bound']:+.0%}", f"{choice} {count / sum(cuts.values()):.0%}")
    console.print(table)
    fast = [r for r in rows if r["mean_mbps"] >= FAST_MBPS]
    met = [r["trace"] for r in fast if r["saving_vs_local"] >= TARGET_SAVING]
    possible = [r["trace"] for r in fast if r["saving_bound"] >= TARGET_SAVING]
    over_dsc = sum(r["dsc:energy"]["mean_energy_mj"] for r in rows) / sum(r["dsc"]["mean_energy_mj"] for r in rows)
    console.print(f"fast-uplink traces (>= {FAST_MBPS:g} Mbit/s): dsc:energy saves >= {TARGET_SAVING:.0%} against "
                  f"local on {len(met)}/{len(fast)} (possible at all on {len(possible)}); dsc:energy / dsc energy {over_dsc:.3f} (summed over traces)\n")
    return {"title": title, "traces": rows,
            "target": {"fast_traces": [r["trace"] for r in fast], "met_on": met, "possible_on": possible, "min_saving": TARGET_SAVING,
                       "met": bool(fast) and len(met) == len(fast)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--traces", type=Path, default=here.parents[1] / "shared" / "traces")
    parser.add_argument("--out", type=Path, default=here / "results" / "energy.json")
    parser.add_argument("--profile", type=Path,
                        help="the model's measured profile, measured and written there when missing (default: "
                             "results/b0-server.json, the one benchmarks/policies.py --profile writes; with "
                             "--fidelity, results/MODEL-server.json)")
    parser.add_argument("--device-ms", default="350,1000", help="the device's whole-model times, comma-separated")
    parser.add_argument("--radios", default="lte,wifi", help=f"radios, comma-separated ({', '.join(RADIOS)})")
    parser.add_argument("--compute-w", type=float, default=PHONE_COMPUTE_W,
                        help=f"the device's compute power in watts (default {PHONE_COMPUTE_W:g})")
    parser.add_argument("--estimator", default="harmonic")
    parser.add_argument("--device-shape", choices=("flops", "measured"), default="flops",
                        help="how the device's time splits over the model: in proportion to FLOPs (default) or as "
                             "this machine's per-layer times split it")
    parser.add_argument("--min-agreement", type=float,
                        help="let the policies pick lossy options measured at >= this agreement (with --fidelity)")
    parser.add_argument("--fidelity", type=Path, help="fidelity.json of benchmarks/fidelity.py (its model is run)")
    args = parser.parse_args()
    started = time.perf_counter()
    if (args.min_agreement is None) != (args.fidelity is None):
        parser.error("--min-agreement and --fidelity go together")
    model, agreements, codecs = "efficientnet_b0", {}, ("fp32",)
    if args.fidelity:
        results = json.loads(args.fidelity.read_text())
        model, agreements = results["model"], read_agreement(args.fidelity)
        codecs = tuple(dict.fromkeys(str(row["codec"]) for row in results["results"] if row["cut"] != "input"))
    args.profile = args.profile or here / "results" / ("b0-server.json" if model == "efficientnet_b0"
                                                       else f"{model}-server.json")
    measured, flops = server_profile(model, args.profile)
    paths = sorted((args.traces / "mahimahi").glob("*.up"))
    variants = []
    for device_ms in (float(v) for v in args.device_ms.split(",")):
        device = with_agreement(device_profile(measured, flops, device_ms, args.device_shape), agreements)
        options = build_options(device, measured, codecs=codecs)
        allowed = allowed_options(options, private=False, lossy=False, min_agreement=args.min_agreement)
        if args.min_agreement is not None:
            console.print(f"--min-agreement {args.min_agreement:g}: {len(allowed)} options, lossy ones: "
                          f"{', '.join(o.name for o in allowed if not o.exact)}")
        for radio in args.radios.split(","):
            config = DeviceConfig(rtt_s=0.04, downlink_bps=20e6, radio=radio, compute_w=args.compute_w)
            rows = [run_trace(path, options, allowed, config, args.estimator) for path in paths]
            budget = "exact options" if args.min_agreement is None else f"--min-agreement {args.min_agreement:g}"
            title = (f"{model}, {budget}, device: whole model in {device_ms:g} ms at {args.compute_w:g} W, "
                     f"{radio} radio, server at measured speed")
            variants.append({"device_ms": device_ms, "radio": radio, **report(title, rows)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "profile": str(args.profile), "model": model, "device_shape": args.device_shape, "min_agreement": args.min_agreement,
        "fidelity": str(args.fidelity) if args.fidelity else None, "compute_w": args.compute_w,
        "radios": {name: vars(RADIOS.get(name)) for name in args.radios.split(",")},
        "runs": {column: {"policy": spec, "device": {k: str(v) for k, v in changes.items()}}
                 for column, (spec, changes) in RUNS.items()},
        "variants": variants}, indent=1) + "\n")
    console.print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
