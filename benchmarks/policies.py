"""What the paper's method is worth on real uplink traces: dsc against oracle, best-static, local, offload.

EfficientNet-B0 (random weights, seed 0) is profiled here once, per node, at batch sizes 1, 2, 4, 8. The
server runs at the measured speed (and, in a second variant, 10x faster: --slowdown 0.1, a GPU edge
server); the device is given by an absolute whole-model time (``--device-ms``, default 350 ms, a small ARM
board; also 100 and 1000), this machine's profile scaled to it, so the result does not follow how fast
this machine happens to be today. Every mahimahi uplink trace and the first 20 Norway HSDPA traces
(sorted by name) are replayed at 2 requests per second, 40 ms RTT, with and without --private; the device
takes one request at a time (as the live client does) and gives up on the server at its default deadline
(twice its whole-model time). "hedged" is dsc with
--hedge: while it waits for the server, the device runs the rest of the model itself, and the first
answer wins. A trace is "mixed" when no single option is the oracle's choice for 95 % of its requests.

    python benchmarks/policies.py [--estimator harmonic] [--profile FILE] [--traces ../shared/traces]
                                  [--device-ms 350,100,1000] [--out benchmarks/results/policies.json]

Prints one table per variant and writes every number as JSON.

With ``--min-agreement A --fidelity FILE`` (``FILE`` from benchmarks/fidelity.py or edgesplit fidelity) it
instead prices an accuracy budget, on the model the fidelity was measured on (the pretrained
EfficientNet-Lite0): dsc allowed only exact options (fp32 splits, raw offload) against dsc also allowed
every lossy option measured to agree with the exact answer on at least A of the images (any codec of
``--codecs``, JPEG offload), same traces, same device (``--device-ms``, first value), 2 requests per second. A
trace is *link-bound* when the fastest exact option at its mean rate answers later than
``LINK_BOUND`` × what it would be over a link without limit (the fastest exact option at the mean rate,
local included, against the fastest at an unlimited rate): there the link is what holds the device
back, and the budget should pay.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgesplit import analyze, load_model
from edgesplit.device import DeviceConfig, summarize
from edgesplit.latency import LinkState, ServerState, build_options, find_option, latency
from edgesplit.policies import allowed_options, make_policy
from edgesplit.estimators import make_estimator
from edgesplit.measure import measure
from edgesplit.profile import (Profile, load_profile, read_agreement, with_agreement, with_device_time,
                               with_flops_shape, with_slowdown)
from edgesplit.sim import SimConfig, Workload, simulate
from edgesplit.traces import read_trace

POLICIES = ["dsc", "dsc+hedge", "oracle", "best-static", "best-static+hedge", "local", "offload",
            "offload:jpeg:90"]  # +hedge: with DeviceConfig.hedge
console = Console(width=200)


def server_profile(model: str, path: Path | None) -> tuple[Profile, dict[str, tuple[int, int]]]:
    """``model`` profiled per node on this machine, at batch sizes 1, 2, 4, 8 (read from ``path`` when it
    exists, written there otherwise), and each cut's head and tail FLOPs."""
    loaded = load_model(model)
    analysis = analyze(loaded.module, loaded.native_input_shape, model)
    cuts = analysis.natural_bottlenecks()
    if path and path.exists():
        measured = load_profile(path)
    else:
        measured = measure(analysis, cuts, role="server", batch_sizes=(1, 2, 4, 8), repeats=10,
                           normalization=loaded.normalization)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            measured.save(path)
    if measured.model != model:
        raise SystemExit(f"{path} profiles {measured.model}, not {model}")
    return measured, {c.name: (c.head_flops, c.tail_flops) for c in cuts}


def device_profile(measured: Profile, flops: dict[str, tuple[int, int]], device_ms: float, shape: str) -> Profile:
    """The device: the whole model in ``device_ms``, split over the model in proportion to FLOPs (``flops``)
    or as this machine measured it (``measured``)."""
    shaped = with_flops_shape(measured, flops) if shape == "flops" else measured
    return with_device_time(shaped, device_ms / 1000)


def traces(root: Path) -> list[Path]:
    mahimahi = sorted((root / "mahimahi").glob("*.up"))
    norway = sorted((root / "norway-hsdpa").glob("*.tsv"))[:20]
    return mahimahi + norway


def run_trace(path: Path, options, allowed, private: bool, estimator_spec: str) -> dict:
    trace = read_trace(path)
    device = DeviceConfig(rtt_s=0.04, downlink_bps=20e6)
    mean_link = LinkState(trace.mean_bps(), device.rtt_s, device.downlink_bps)
    row = {"trace": path.name, "mean_mbps": trace.mean_bps() / 1e6, "duration_s": trace.duration_s}
    for spec in POLICIES:
        if private and spec.startswith("offload"):
            continue
        estimator = make_estimator(estimator_spec)
        name, hedge = spec.removesuffix("+hedge"), spec.endswith("+hedge")
        policy = make_policy(name, options, mean_link)
        records = simulate(policy, estimator, allowed, trace, Workload(fps=2.0),
                           SimConfig(replace(device, hedge=hedge), sequential=True))
        summary = summarize(records)
        summary["latencies_ms"] = [r.latency_s * 1000 for r in records]
        if spec == "dsc":
            row["estimator_mape"] = estimator.mape()
        row[spec] = summary
    oracle_cuts = row["oracle"]["cuts"]
    top, count = next(iter(oracle_cuts.items()))
    row["dominant"] = top if count / sum(oracle_cuts.values()) >= 0.95 else None
    row["probe_bytes_per_s"] = row["dsc"]["probe_bytes_per_s"]
    return row


def report(title: str, rows: list[dict], private: bool) -> dict:
    baselines = ["local"] if private else ["local", "offload"]
    table = Table(title=title)
    for column in ("trace", "Mbit/s", "dsc ms", "hedged", "oracle", "best-static", "bst hedged", *baselines,
                   *([] if private else ["jpeg:90"]), "dsc/oracle", "dsc/best-st", "dsc/min(base)",
                   "p95 dsc/bst", "hedged/bst", "p95 hedged/bst", "oracle/bst", "MAPE %", "oracle's choice"):
        table.add_column(column, justify="left" if column in ("trace", "oracle's choice") else "right")
    for row in rows:
        base = min(row[b]["mean_ms"] for b in baselines)
        dominant = f"dominated by {row['dominant']}" if row["dominant"] else \
            ", ".join(f"{k} {v}" for k, v in list(row["oracle"]["cuts"].items())[:2])
        table.add_row(row["trace"], f"{row['mean_mbps']:.2f}", f"{row['dsc']['mean_ms']:.0f}",
                      f"{row['dsc+hedge']['mean_ms']:.0f}",
                      f"{row['oracle']['mean_ms']:.0f}", f"{row['best-static']['mean_ms']:.0f}",
                      f"{row['best-static+hedge']['mean_ms']:.0f}",
                      *(f"{row[b]['mean_ms']:.0f}" for b in baselines),
                      *([] if private else [f"{row['offload:jpeg:90']['mean_ms']:.0f}"]),
                      f"{row['dsc']['mean_ms'] / row['oracle']['mean_ms']:.3f}",
                      f"{row['dsc']['mean_ms'] / row['best-static']['mean_ms']:.3f}",
                      f"{row['dsc']['mean_ms'] / base:.3f}",
                      f"{row['dsc']['p95_ms'] / row['best-static']['p95_ms']:.3f}",
                      f"{row['dsc+hedge']['mean_ms'] / row['best-static']['mean_ms']:.3f}",
                      f"{row['dsc+hedge']['p95_ms'] / row['best-static']['p95_ms']:.3f}",
                      f"{row['oracle']['mean_ms'] / row['best-static']['mean_ms']:.3f}",
                      f"{row['estimator_mape']:.0f}" if row["estimator_mape"] is not None else "-", dominant)
    pooled = {p: statistics.fmean(v for row in rows for v in row[p]["latencies_ms"])
              for p in ["dsc", "dsc+hedge", "oracle", "best-static", "best-static+hedge", *baselines]}
    overall = {
        "mean_ms": pooled,
        "dsc_over_oracle": pooled["dsc"] / pooled["oracle"],
        "dsc_over_best_static": pooled["dsc"] / pooled["best-static"],
        "dsc_over_min_baseline": pooled["dsc"] / min(pooled[b] for b in baselines),
        "traces_where_dsc_beats_best_static_mean": sum(r["dsc"]["mean_ms"] <= r["best-static"]["mean_ms"] for r in rows),
        "traces_where_dsc_beats_best_static_p95": sum(r["dsc"]["p95_ms"] <= r["best-static"]["p95_ms"] for r in rows),
        "hedged_dsc_over_oracle": pooled["dsc+hedge"] / pooled["oracle"],
        "hedged_dsc_over_best_static": pooled["dsc+hedge"] / pooled["best-static"],
        "traces_where_hedged_dsc_beats_best_static_mean": sum(r["dsc+hedge"]["mean_ms"] <= r["best-static"]["mean_ms"]
                                                              for r in rows),
        "traces_where_hedged_dsc_beats_best_static_p95": sum(r["dsc+hedge"]["p95_ms"] <= r["best-static"]["p95_ms"]
                                                             for r in rows),
        "traces_where_hedged_dsc_beats_hedged_best_static_mean": sum(
            r["dsc+hedge"]["mean_ms"] <= r["best-static+hedge"]["mean_ms"] for r in rows),
        "traces_where_hedged_dsc_beats_hedged_best_static_p95": sum(
            r["dsc+hedge"]["p95_ms"] <= r["best-static+hedge"]["p95_ms"] for r in rows),
        "traces_where_oracle_loses_to_best_static_mean": [r["trace"] for r in rows
                                                          if r["oracle"]["mean_ms"] > r["best-static"]["mean_ms"]],
        "worst_trace": max(rows, key=lambda r: r["dsc"]["mean_ms"] / r["best-static"]["mean_ms"])["trace"],
        "worst_dsc_over_best_static": max(r["dsc"]["mean_ms"] / r["best-static"]["mean_ms"] for r in rows),
        "worst_p95_dsc_over_best_static": max(r["dsc"]["p95_ms"] / r["best-static"]["p95_ms"] for r in rows),
        "mixed_traces": sum(r["dominant"] is None for r in rows),
        "dsc_probe_bytes_per_s": statistics.fmean(r["probe_bytes_per_s"] for r in rows),
        "traces": len(rows),
    }
    table.add_row("overall (all requests)", "", f"{pooled['dsc']:.0f}", f"{pooled['dsc+hedge']:.0f}",
                  f"{pooled['oracle']:.0f}", f"{pooled['best-static']:.0f}", f"{pooled['best-static+hedge']:.0f}",
                  *(f"{pooled[b]:.0f}" for b in baselines),
                  *([] if private else [""]), f"{overall['dsc_over_oracle']:.3f}",
                  f"{overall['dsc_over_best_static']:.3f}", f"{overall['dsc_over_min_baseline']:.3f}", "",
                  f"{overall['hedged_dsc_over_best_static']:.3f}", "", "", "", "", style="bold")
    console.print(table)
    console.print(f"dsc ≤ best-static: mean on {overall['traces_where_dsc_beats_best_static_mean']}/{len(rows)} "
                  f"traces, p95 on {overall['traces_where_dsc_beats_best_static_p95']}/{len(rows)}; even the oracle loses to "
                  f"best-static (which knows the trace's mean in hindsight) on "
                  f"{', '.join(overall['traces_where_oracle_loses_to_best_static_mean']) or 'no trace'}; hedged dsc "
                  f"≤ best-static: mean on {overall['traces_where_hedged_dsc_beats_best_static_mean']}/{len(rows)}, "
                  f"p95 on {overall['traces_where_hedged_dsc_beats_best_static_p95']}/{len(rows)}; hedged dsc/oracle "
                  f"{overall['hedged_dsc_over_oracle']:.3f}; hedged dsc ≤ hedged best-static: mean on "
                  f"{overall['traces_where_hedged_dsc_beats_hedged_best_static_mean']}/{len(rows)}, p95 on "
                  f"{overall['traces_where_hedged_dsc_beats_hedged_best_static_p95']}/{len(rows)}; worst trace for dsc: "
                  f"{overall['worst_trace']} ({overall['worst_dsc_over_best_static']:.3f} × best-static's mean); "
                  f"no single option dominates on {overall['mixed_traces']}/{len(rows)} traces; dsc probes "
                  f"{overall['dsc_probe_bytes_per_s'] / 1024:.1f} KiB/s on average\n")
    for row in rows:
        for p in POLICIES:
            row.get(p, {}).pop("latencies_ms", None)
    return {"title": title, "overall": overall, "traces": rows}


LOSSY_CODECS = ("fp32", "fp16", "bf16", "int8", "int8c", "int6c", "int5c", "int4c", "int8:zstd", "int8c:zstd", "int5c:zstd",
                "int4c:zstd", "ecq6", "ecq5", "ecq4")


LINK_BOUND = 1.1


def link_bound(options, mean_bps: float, rtt_s: float) -> bool:
    """The fastest exact option at ``mean_bps`` answers later than ``LINK_BOUND`` × the fastest over a link
    without limit (same RTT, an idle server)."""
    exact = [o for o in options if o.exact]

    def fastest(rate_bps: float) -> float:
        return min(latency(o, LinkState(rate_bps, rtt_s, 20e6), ServerState()) for o in exact)

    return fastest(mean_bps) > LINK_BOUND * fastest(1e15)


def accuracy_budget(args: argparse.Namespace) -> None:
    """dsc exact-only against dsc under the accuracy budget, trace by trace (see the module docstring)."""
    fidelity = json.loads(args.fidelity.read_text())
    agreements = read_agreement(args.fidelity)
    started = time.perf_counter()
    measured, flops = server_profile(fidelity["model"], args.profile)
    device_ms = float(args.device_ms.split(",")[0])
    device = with_agreement(device_profile(measured, flops, device_ms, args.device_shape), agreements)
    options = build_options(device, measured, codecs=tuple(args.codecs.split(",")))
    exact = allowed_options(options, private=False, lossy=False)
    budget = allowed_options(options, private=False, lossy=True, min_agreement=args.min_agreement)
    console.print(f"{fidelity['model']}: whole model {measured.model_s[1].median_s * 1e3:.1f} ms here, device "
                  f"{device_ms:g} ms; {len(exact)} exact options, {len(budget)} within agreement "
                  f">= {args.min_agreement:g}: {', '.join(o.name for o in budget if not o.exact)}")
    config = DeviceConfig(rtt_s=0.04, downlink_bps=20e6)
    rows = []
    for path in traces(args.traces):
        trace = read_trace(path)
        row = {"trace": path.name, "mean_mbps": trace.mean_bps() / 1e6,
               "link_bound": link_bound(options, trace.mean_bps(), config.rtt_s)}
        for policy in ("dsc", "oracle"):
            for name, allowed in (("exact", exact), ("budget", budget)):
                records = simulate(make_policy(policy, options, LinkState(trace.mean_bps())),
                                   make_estimator(args.estimator), allowed, trace, Workload(fps=2.0),
                                   SimConfig(config, sequential=True))
                key = name if policy == "dsc" else f"oracle_{name}"
                row[key] = summarize(records)
                row[key]["agreement"] = statistics.fmean(  # a request finished on the device is exact
                    1.0 if r.executed == "local" else find_option(options, r.option).agreement for r in records)
        row["ratio"] = row["budget"]["mean_ms"] / row["exact"]["mean_ms"]
        row["oracle_ratio"] = row["oracle_budget"]["mean_ms"] / row["oracle_exact"]["mean_ms"]
        rows.append(row)
    table = Table(title=f"dsc exact-only vs dsc with --min-agreement {args.min_agreement:g} ({fidelity['model']}, "
                        f"device {device_ms:g} ms, server as measured here)")
    for column in ("trace", "Mbit/s", "link-bound", "exact ms", "budget ms", "budget/exact", "oracle's",
                   "expected agreement", "budget's top choice"):
        table.add_column(column, justify="left" if column in ("trace", "budget's top choice") else "right")
    for row in rows:
        top = next(iter(row["budget"]["cuts"]))
        table.add_row(row["trace"], f"{row['mean_mbps']:.2f}", "yes" if row["link_bound"] else "",
                      f"{row['exact']['mean_ms']:.0f}", f"{row['budget']['mean_ms']:.0f}", f"{row['ratio']:.3f}",
                      f"{row['oracle_ratio']:.3f}", f"{row['budget']['agreement']:.4f}", top)
    console.print(table)
    bound = [r for r in rows if r["link_bound"]]
    overall = {
        "link_bound_traces": len(bound), "traces": len(rows),
        "link_bound_mean_ratio": statistics.fmean(r["ratio"] for r in bound) if bound else None,
        "link_bound_pooled_ratio": (sum(r["budget"]["mean_ms"] for r in bound) / sum(r["exact"]["mean_ms"] for r in bound)
                                    if bound else None),
        "link_bound_traces_at_most_0.9": sum(r["ratio"] <= 0.9 for r in bound),
        "oracle_link_bound_pooled_ratio": (sum(r["oracle_budget"]["mean_ms"] for r in bound)
                                           / sum(r["oracle_exact"]["mean_ms"] for r in bound) if bound else None),
        "other_traces_worst_ratio": max((r["ratio"] for r in rows if not r["link_bound"]), default=None),
    }
    if bound:
        verdict = "PASS" if overall["link_bound_pooled_ratio"] <= 0.9 else "FAIL"
        console.print(f"{verdict}: on the {len(bound)} link-bound traces dsc under the budget takes "
                      f"{overall['link_bound_pooled_ratio']:.3f} x its exact-only mean (pooled; per trace mean "
                      f"{overall['link_bound_mean_ratio']:.3f}, {overall['link_bound_traces_at_most_0.9']} of "
                      f"{len(bound)} at <= 0.9); the oracle, knowing the link, "
                      f"{overall['oracle_link_bound_pooled_ratio']:.3f} x its own")
    else:
        console.print("no trace is link-bound with these profiles: the target cannot be checked")
    worst = overall["other_traces_worst_ratio"]
    console.print(f"elsewhere at worst {'-' if worst is None else f'{worst:.3f}'}; pooled over all traces "
                  f"{sum(r['budget']['mean_ms'] for r in rows) / sum(r['exact']['mean_ms'] for r in rows):.3f} "
                  f"({time.perf_counter() - started:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"min_agreement": args.min_agreement, "model": fidelity["model"],
                                    "device_ms": device_ms, "options": [o.to_dict() for o in options],
                                    "overall": overall, "traces": rows}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "traces")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "policies.json")
    parser.add_argument("--estimator", default="harmonic", help="estimator spec for dsc (default harmonic)")
    parser.add_argument("--profile", type=Path, help="reuse this measured profile (written on first use)")
    parser.add_argument("--device-ms", default="350,100,1000",
                        help="the device's whole-model times to run, comma-separated (default 350,100,1000)")
    parser.add_argument("--device-shape", choices=("flops", "measured"), default="flops",
                        help="how the device's time splits over the model: in proportion to FLOPs (the same on "
                             "every run; default) or as this machine's per-layer times split it")
    parser.add_argument("--min-agreement", type=float, help="price this accuracy budget instead (with --fidelity)")
    parser.add_argument("--fidelity", type=Path, help="fidelity.json of benchmarks/fidelity.py")
    parser.add_argument("--codecs", default=",".join(LOSSY_CODECS), help="split codecs for --min-agreement")
    args = parser.parse_args()
    if (args.min_agreement is None) != (args.fidelity is None):
        parser.error("--min-agreement and --fidelity go together")
    if args.min_agreement is not None:
        if args.out.name == "policies.json":
            args.out = args.out.with_name("accuracy_budget.json")
        accuracy_budget(args)
        return
    started = time.perf_counter()
    measured, flops = server_profile("efficientnet_b0", args.profile)
    console.print(f"profiled in {time.perf_counter() - started:.0f} s: B0 whole model "
                  f"{measured.model_s[1].median_s * 1e3:.1f} ms here")
    results = []
    for device_ms in (float(v) for v in args.device_ms.split(",")):
        device = device_profile(measured, flops, device_ms, args.device_shape)
        for server_name, server in (("server at measured speed", measured),
                                    ("server 10x faster (--slowdown 0.1)", with_slowdown(measured, 0.1))):
            for private in (False, True):
                options = build_options(device, server, private=private)
                allowed = allowed_options(options, private, lossy=False)
                rows = [run_trace(path, options, allowed, private, args.estimator) for path in traces(args.traces)]
                title = (f"EfficientNet-B0, device: whole model in {device_ms:g} ms, {server_name}"
                         + (", --private" if private else ""))
                results.append({"device_ms": device_ms, "private": private, "server": server_name,
                                **report(title, rows, private)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": measured.to_dict(), "variants": results}, indent=1) + "\n")
    console.print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
