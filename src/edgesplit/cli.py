"""The ``edgesplit`` command line. Errors the user can fix end as one stderr line and exit code 2."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from edgesplit.errors import EdgesplitError

console = Console(width=None if sys.stdout.isatty() else 160)
T = TypeVar("T")
CODECS_HELP = ("split codecs, comma-separated: fp32, fp16, bf16, int8, int8c, int4c, each optionally :zstd or :lz4 "
               "(edgesplit codecs says what each keeps)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgesplit")
def cli() -> None:
    """Dynamic split computing: cut a network at natural bottlenecks, run the head on the device and
    the tail on an edge server."""


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """MODEL and the options that say which weights and which input."""
    for option in reversed([
        click.argument("model"),
        click.option("--weights", type=click.Path(dir_okay=False),
                     help="state_dict file (loaded with weights_only=True)"),
        click.option("--input-size", type=int, help="square input resolution, e.g. 224"),
        click.option("--input-shape", help="C,H,W without batch, e.g. 3,224,224 (default: the model's native)"),
    ]):
        command = option(command)
    return command


def accuracy_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--min-agreement and --fidelity: lossy options allowed where measured to agree often enough."""
    for option in reversed([
        click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
                     help="let dynamic policies pick lossy options (codecs, JPEG) measured to give the exact "
                          "answer's top-1 class at least this often, e.g. 0.99"),
        click.option("--fidelity", type=click.Path(dir_okay=False, exists=True),
                     help="fidelity.json of edgesplit fidelity: the measured agreements (else the device "
                          "profile's, from edgesplit profile --fidelity)"),
    ]):
        command = option(command)
    return command


def energy_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--radio and --compute-w: the device's power model (docs/energy.md); dsc:energy minimises it."""
    for option in reversed([
        click.option("--radio", type=click.Choice(["lte", "wifi"]), default="lte", show_default=True,
                     help="the device's radio, for its energy (measured power models, docs/energy.md)"),
        click.option("--compute-w", type=click.FloatRange(min=0), default=3.0, show_default=True,
                     help="what the device's processor draws while it runs the model (W)"),
    ]):
        command = option(command)
    return command


hedge_option = click.option("--hedge", is_flag=True, help="while waiting for the server, run the rest of the model "
                                                          "on the device too; the first answer wins")


max_tensors_option = click.option(
    "--max-tensors", type=click.IntRange(1), default=1, show_default=True,
    help="natural bottlenecks may carry up to this many tensors (skip connections), their elements summed; "
         "1 is the paper's rule")


def _analysis(model: str, weights: str | None, input_size: int | None, input_shape: str | None,  # type: ignore[no-untyped-def]
              max_tensors: int = 1):
    try:
        from edgesplit.analysis import analyze as analyze_model
        from edgesplit.models import load_model, parse_input_shape
    except ImportError as exc:
        raise EdgesplitError(f"this command needs torch: pip install 'edgesplit[torch]' ({exc.name} is missing)") from None

    loaded = load_model(model, weights)
    shape = parse_input_shape(input_shape, input_size, loaded.native_input_shape)
    return loaded, analyze_model(loaded.module, shape, name=model, max_tensors=max_tensors)


@cli.command()
@model_options
@click.option("--match", "match", metavar="REGEX",
              help="keep only cuts at outputs of modules whose qualified or class name fully matches")
@click.option("--check", is_flag=True, help="verify tail(head(x)) == model(x) at every natural bottleneck")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the analysis as JSON")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="write the c-along-depth figure (PNG)")
@click.option("--all", "show_all", is_flag=True, help="list every cut, not only natural bottlenecks and Pareto cuts")
@max_tensors_option
def analyze(model: str, weights: str | None, input_size: int | None, input_shape: str | None,
            match: str | None, check: bool, json_path: str | None, plot_path: str | None,
            show_all: bool, max_tensors: int) -> None:
    """Find every cut of MODEL, its natural bottlenecks, sizes and costs.

    MODEL: a torchvision name (efficientnet_b0), timm:NAME, package.module:factory, or
    efficientnet_lite0_pretrained (real ImageNet weights).
    """
    from edgesplit.splitter import check_exact

    start = time.perf_counter()
    loaded, result = _analysis(model, weights, input_size, input_shape, max_tensors)
    if match is not None:
        result = result.select(match)
    if check:
        result = check_exact(result)
    elapsed = time.perf_counter() - start
    _print_analysis(result, loaded.weights, show_all, elapsed)
    if json_path:
        with _output(json_path) as path:
            path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    if plot_path:
        from edgesplit.plots import plot_ratios

        with _output(plot_path) as path:
            plot_ratios(result, path)


@contextlib.contextmanager
def _output(name: str) -> Iterator[Path]:
    """Create the parent folder, report the file written, and turn OS errors into one clear line."""
    path = Path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
    except OSError as exc:
        raise EdgesplitError(f"cannot write {name}: {exc.strerror or exc}") from exc
    console.print(f"wrote {name}")


@cli.command()
@model_options
@click.option("--role", type=click.Choice(["device", "server"]), required=True,
              help="device: head times at batch 1; server: tail times per batch size")
@click.option("--batch-sizes", help="comma-separated (default: 1 for device, 1,2,4,8 for server)")
@click.option("--cuts", "cut_spec", default="natural", show_default=True,
              help="natural | all | pareto | record-low | NAME,NAME,...")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True, help="timed runs at batch 1")
@click.option("--method", type=click.Choice(["per-node", "flops"]), default="per-node", show_default=True,
              help="per-node: measure every node; flops: measure the whole model, estimate each side from FLOPs")
@click.option("--slowdown", type=float, default=1.0, show_default=True,
              help="multiply every time (emulation: 8 for a small ARM board, 0.1 for a GPU server)")
@click.option("--device-ms", type=click.FloatRange(min=0, min_open=True),
              help="instead of --slowdown: scale every time so the whole model takes this long at batch 1 "
                   "(emulate a device by its absolute speed, e.g. 350 for a small ARM board)")
@click.option("--threads", type=click.IntRange(1), help="torch threads (default: torch's choice)")
@click.option("--idle-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="idle this long before every timed run, as a server between requests (an idle CPU is slower)")
@click.option("--engine", "engine_name", type=click.Choice(["torch", "onnx", "compile", "auto"]), default="torch",
              show_default=True, help="--role server: time whole tails as edgesplit serve --engine runs them "
                                      "(torch on the cpu: per node, as --method says)")
@click.option("--device", "device_name", default="cpu", show_default=True, help="--role server: cpu, cuda or cuda:N")
@click.option("--fidelity", type=click.Path(dir_okay=False, exists=True),
              help="fidelity.json of edgesplit fidelity: the profile carries each option's measured agreement")
@max_tensors_option
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="profile JSON to write")
def profile(model: str, weights: str | None, input_size: int | None, input_shape: str | None, role: str,
            batch_sizes: str | None, cut_spec: str, repeats: int, method: str, slowdown: float,
            device_ms: float | None, threads: int | None, idle_ms: float, engine_name: str, device_name: str,
            fidelity: str | None, max_tensors: int, out_path: str) -> None:
    """Measure head and tail time of every chosen cut of MODEL on this machine."""
    import torch
    from rich.progress import Progress

    from edgesplit.measure import iter_batch_sizes, measure
    from edgesplit.profile import read_agreement, with_agreement

    agreement = read_agreement(fidelity) if fidelity else {}  # a broken file fails before any measuring

    if device_ms is not None and slowdown != 1.0:
        raise EdgesplitError("give either --slowdown or --device-ms, not both")
    if threads:
        torch.set_num_threads(threads)
    sizes = tuple(iter_batch_sizes(batch_sizes or ("1" if role == "device" else "1,2,4,8")))
    by_engine = engine_name != "torch" or device_name != "cpu"
    if by_engine and role != "server":
        raise EdgesplitError("--engine and --device apply to --role server; a device is profiled in torch on this "
                             "CPU (an ONNX device profiles itself: edgesplit run --engine onnx)")
    if by_engine and method != "per-node":
        raise EdgesplitError(f"--method {method} applies to --engine torch --device cpu; other engines time whole tails")
    loaded, analysis = _analysis(model, weights, input_size, input_shape, max_tensors)
    cuts = _choose_cuts(analysis, cut_spec)
    if by_engine:
        from edgesplit.profile import with_slowdown
        from edgesplit.runtime.engines import auto_report, open_tail_engine, profile_engine

        engine, timings = open_tail_engine(engine_name, analysis, loaded.normalization, device=device_name,
                                           batch_size=max(sizes))
        if timings:
            console.print(auto_report(timings, engine, max(sizes)))
        result = profile_engine(engine, cuts, batch_sizes=sizes, repeats=repeats, idle_s=idle_ms / 1000)
        result = with_slowdown(result, slowdown) if slowdown != 1.0 else result
    else:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"profiling {len(cuts)} cuts", total=len(sizes))
            result = measure(analysis, cuts, role=role, batch_sizes=sizes, method=method, repeats=repeats,
                             slowdown=slowdown, progress=lambda text: bar.update(task, advance=1, description=text),
                             idle_s=idle_ms / 1000, normalization=loaded.normalization,
                             postprocess=loaded.postprocess)
    if device_ms is not None:
        from edgesplit.profile import with_device_time

        result = with_device_time(result, device_ms / 1000)
        slowdown = result.slowdown
    table = Table(title=f"{model} · {role} profile · {method} · slowdown {slowdown:g} · "
                        f"{result.machine['torch_threads']} threads")
    for column in ("cut", "c", *(f"head ms b{b}" for b in sizes[:1]), *(f"tail ms b{b}" for b in sizes)):
        table.add_column(column, justify="left" if column == "cut" else "right")
    whole = result.model_s
    table.add_row("(whole model)", "", f"{whole[sizes[0]].median_s * 1e3:.2f}",
                  *(f"{whole[b].median_s * 1e3:.2f}" for b in sizes), style="bold")
    input_elements = analysis.input_elements
    for c in result.cuts.values():
        table.add_row(c.name, f"{c.elements / input_elements:.4f}", f"{c.head_s[sizes[0]].median_s * 1e3:.2f}",
                      *(f"{c.tail_s[b].median_s * 1e3:.2f}" for b in sizes))
    console.print(table)
    codecs = ", ".join(f"{k} {v['bytes'] / 1024:.1f} KiB" for k, v in result.input_codecs.items())
    console.print(f"input for offload: {codecs}")
    if agreement:
        result = with_agreement(result, agreement)
        console.print(f"carries the measured agreement of {len(agreement)} options from {fidelity}")
    with _output(out_path) as path:
        result.save(path)


def _choose_cuts(analysis, spec: str):  # type: ignore[no-untyped-def]
    if spec == "natural":
        return analysis.natural_bottlenecks()
    if spec == "all":
        return list(analysis.cuts)
    if spec == "pareto":
        return [c for c in analysis.cuts if c.pareto and c.single_tensor]
    if spec == "record-low":
        return [c for c in analysis.cuts if c.record_low]
    return [analysis.cut(name.strip()) for name in spec.split(",")]


@cli.command()
@click.option("--device-profile", required=True, type=click.Path(dir_okay=False), help="from edgesplit profile --role device")
@click.option("--server-profile", required=True, type=click.Path(dir_okay=False), help="from edgesplit profile --role server")
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False),
              help="uplink trace: mahimahi, 2-column time_s Mbit/s, or CSV time_s,mbps")
@click.option("--policies", default="dsc,oracle,best-static,local,offload,offload:jpeg:90", show_default=True)
@click.option("--estimator", default="harmonic", show_default=True, help="last | ewma[:A] | harmonic[:N] | robust[:N]")
@click.option("--fps", type=float, default=2.0, show_default=True, help="request rate")
@click.option("--arrivals", type=click.Choice(["periodic", "poisson"]), default="periodic", show_default=True)
@click.option("--rtt-ms", type=float, default=40.0, show_default=True)
@click.option("--deadline-ms", type=float,
              help="give up on the server this long after taking a request up and finish it on the device "
                   "(default: twice the device's whole-model time, at least 500 ms); given, requests slower "
                   "than this count as misses")
@hedge_option
@click.option("--start", "start_s", type=float, default=0.0, help="start this far into the trace (s), before its end")
@click.option("--duration", "duration_s", type=float,
              help="simulate this long, wrapping around the trace's end (default: the rest of the trace); "
                   "at most 10 million requests")
@click.option("--load-trace", type=click.Path(dir_okay=False), help="other clients on the server over time")
@click.option("--private", is_flag=True, help="the raw input never leaves the device: no offload")
@click.option("--lossy", is_flag=True, help="let dsc/oracle/best-static pick lossy options (JPEG, lossy codecs)")
@click.option("--codecs", default="fp32", show_default=True, help=CODECS_HELP)
@accuracy_options
@energy_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the summary as JSON")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="write every request as CSV")
@click.option("--plot", "plot_prefix", help="write PREFIX-timeline.png and PREFIX-cdf.png")
def simulate(device_profile: str, server_profile: str, trace_path: str, policies: str, estimator: str,
             fps: float, arrivals: str, rtt_ms: float, deadline_ms: float | None, hedge: bool, start_s: float,
             duration_s: float | None, load_trace: str | None, private: bool, lossy: bool, codecs: str,
             min_agreement: float | None, fidelity: str | None, radio: str, compute_w: float, seed: int,
             json_path: str | None, csv_path: str | None, plot_prefix: str | None) -> None:
    """Replay an uplink trace through each policy and compare their latency."""
    from edgesplit.sim.run import Scenario, run_policies

    scenario = Scenario.from_files(
        device_profile, server_profile, trace_path, load_trace=load_trace, codecs=tuple(codecs.split(",")),
        private=private, lossy=lossy, estimator=estimator, fps=fps, arrivals=arrivals, rtt_ms=rtt_ms,
        deadline_ms=deadline_ms, hedge=hedge, start_s=start_s, duration_s=duration_s, seed=seed,
        min_agreement=min_agreement, fidelity=fidelity, radio=radio, compute_w=compute_w)
    result = run_policies(scenario, [p.strip() for p in policies.split(",") if p.strip()])
    table = Table(title=f"{scenario.trace.name} · mean {scenario.trace.mean_bps() / 1e6:.2f} Mbit/s · "
                        f"{scenario.trace.duration_s:.0f} s · {fps:g} fps · RTT {rtt_ms:g} ms · estimator "
                        f"{estimator} (MAPE {result.estimator_mape:.1f} %)" if result.estimator_mape is not None
                  else f"{scenario.trace.name}")
    for column in ("policy", "mean ms", "p50 ms", "p95 ms", "p99 ms", "miss", "mean KiB", f"mJ ({radio})",
                   "most chosen"):
        table.add_column(column, justify="left" if column in ("policy", "most chosen") else "right")
    for name, summary in result.summaries.items():
        top = ", ".join(f"{k} ×{v}" for k, v in list(summary["cuts"].items())[:2])
        table.add_row(name, f"{summary['mean_ms']:.1f}", f"{summary['p50_ms']:.1f}", f"{summary['p95_ms']:.1f}",
                      f"{summary['p99_ms']:.1f}", f"{summary['miss_rate']:.1%}", f"{summary['mean_bytes'] / 1024:.1f}",
                      f"{summary['mean_energy_mj']:.0f}", top)
    console.print(table)
    if json_path:
        with _output(json_path) as path:
            path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    if csv_path:
        with _output(csv_path) as path:
            result.write_csv(path)
    if plot_prefix:
        from edgesplit.sim.plots import plot_cdf, plot_timeline

        with _output(f"{plot_prefix}-timeline.png") as path:
            plot_timeline(result.runs, scenario.trace.name, path)
        with _output(f"{plot_prefix}-cdf.png") as path:
            plot_cdf(result.runs, scenario.trace.name, path)


@cli.command("simulate-fleet")
@click.option("--device-profile", required=True, type=click.Path(dir_okay=False),
              help="from edgesplit profile --role device")
@click.option("--server-profile", required=True, type=click.Path(dir_okay=False),
              help="from edgesplit profile --role server")
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False),
              help="uplink trace: mahimahi, 2-column time_s Mbit/s, or CSV time_s,mbps; each device replays it "
                   "from its own offset")
@click.option("--devices", "device_counts", required=True, help="fleet sizes, comma-separated, e.g. 1,4,16,32")
@click.option("--policies", default="dsc,best-static,offload,local", show_default=True,
              help="every device of a fleet runs the same policy")
@click.option("--servers", type=int, default=1, show_default=True, help="edge replicas")
@click.option("--routing", default="least-queue", show_default=True,
              help="random | round-robin | least-queue (the shorter queue of two replicas drawn at random)")
@click.option("--estimator", default="harmonic", show_default=True, help="last | ewma[:A] | harmonic[:N] | robust[:N]")
@click.option("--fps", type=float, default=2.0, show_default=True, help="request rate of each device")
@click.option("--arrivals", type=click.Choice(["periodic", "poisson"]), default="periodic", show_default=True)
@click.option("--rtt-ms", type=float, default=40.0, show_default=True)
@click.option("--deadline-ms", type=float,
              help="give up on the server this long after taking a request up and finish it on the device "
                   "(default: twice the device's whole-model time, at least 500 ms)")
@hedge_option
@click.option("--duration", "duration_s", type=float, help="simulate this long (default: the trace's length)")
@click.option("--seed", type=int, default=0, show_default=True, help="for Poisson arrivals and the balancer's draws")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the summaries as JSON")
@click.option("--plot", "plot_prefix", help="write PREFIX-latency.png and PREFIX-options.png")
@click.option("--codecs", default="fp32", show_default=True, help=CODECS_HELP)
@click.option("--lossy", is_flag=True, help="let dsc/oracle/best-static pick lossy options (JPEG, lossy codecs)")
@click.option("--jpeg/--no-jpeg", default=True, show_default=True, help="offer JPEG offload (edgesplit fleet offers it only under --min-agreement)")
@accuracy_options
@energy_options
def simulate_fleet(device_profile: str, server_profile: str, trace_path: str, device_counts: str, policies: str,
                   servers: int, routing: str, estimator: str, fps: float, arrivals: str, rtt_ms: float,
                   deadline_ms: float | None, hedge: bool, duration_s: float | None, seed: int,
                   json_path: str | None, plot_prefix: str | None, codecs: str, lossy: bool, jpeg: bool,
                   min_agreement: float | None, fidelity: str | None, radio: str, compute_w: float) -> None:
    """Simulate fleets of devices sharing the edge's batching replicas, per policy and fleet size."""
    from edgesplit.latency import LinkState, find_option
    from edgesplit.policies import make_policy
    from edgesplit.sim.fleet import FleetSimConfig, build_fleet, plot_fleet_latency, plot_fleet_options
    from edgesplit.sim.fleet import simulate_fleet as run_fleet
    from edgesplit.sim.run import Scenario

    try:
        counts = [int(part) for part in device_counts.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise EdgesplitError("--devices takes whole numbers >= 1 separated by commas, e.g. 1,4,16; "
                             f"got {device_counts!r}")
    config = FleetSimConfig(servers=servers, routing=routing, seed=seed)
    scenario = Scenario.from_files(device_profile, server_profile, trace_path, estimator=estimator, fps=fps,
                                   arrivals=arrivals, rtt_ms=rtt_ms, deadline_ms=deadline_ms, hedge=hedge,
                                   seed=seed, codecs=tuple(codecs.split(",")), lossy=lossy, jpeg=jpeg,
                                   min_agreement=min_agreement, fidelity=fidelity, radio=radio, compute_w=compute_w)
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise EdgesplitError(f"--duration must be a finite number > 0, got {duration_s:g}")
    # the devices' offsets spread over the whole trace, as a live fleet's do; --duration bounds the arrivals
    workload = dataclasses.replace(scenario.workload, duration_s=duration_s)
    span = duration_s or scenario.trace.duration_s
    requests, limit = max(counts) * span * fps, 10_000_000
    if requests > limit:
        raise EdgesplitError(f"{max(counts)} devices for {span:g} s at --fps {fps:g} would "
                             f"simulate {requests:,.0f} requests, more than the limit of {limit:,}; shorten "
                             "--duration or lower --devices or --fps")
    device = scenario.config.device
    specs = [p.strip() for p in policies.split(",") if p.strip()]
    for spec in specs:  # fail before any run
        make_policy(spec, scenario.options, LinkState(scenario.trace.mean_bps(), device.rtt_s, device.downlink_bps))
    deadline = device.deadline_for(find_option(scenario.allowed, "local").head_s)
    out: dict[str, Any] = {"trace": scenario.trace.name, "servers": servers, "routing": routing, "devices": {}}
    summaries: dict[int, dict[str, dict[str, Any]]] = {}
    for count in counts:
        table = Table(title=f"{count} device{'s' if count > 1 else ''} · {scenario.trace.name} · {fps:g} fps each · "
                            f"{servers} replica{'s' if servers > 1 else ''}, {routing}")
        for column in ("policy", "mean ms", "p50 ms", "p95 ms", "edge answered", "fallbacks", "utilisation",
                       "mean batch", "queue p95 ms", "most chosen"):
            table.add_column(column, justify="left" if column in ("policy", "most chosen") else "right")
        summaries[count], server = {}, {}
        for spec in specs:
            fleet = build_fleet(count, policy=spec, estimator=scenario.estimator, options=scenario.options,
                                allowed=scenario.allowed, traces=[scenario.trace], workload=workload, device=device)
            result = run_fleet(fleet, config)
            summary, server[spec] = result.summary(deadline), result.server_summary()
            summaries[count][spec] = summary
            top = ", ".join(f"{k} ×{v}" for k, v in list(summary["cuts"].items())[:2])
            table.add_row(spec, f"{summary['mean_ms']:.1f}", f"{summary['p50_ms']:.1f}", f"{summary['p95_ms']:.1f}",
                          f"{summary['answered']}/{summary['count']}", str(summary["fallbacks"]),
                          f"{server[spec]['utilisation']:.1%}", f"{server[spec]['mean_batch']:.2f}",
                          f"{server[spec]['queue_p95_ms']:.1f}", top)
        console.print(table)
        out["devices"][str(count)] = {"policies": summaries[count], "server": server}
    if json_path:
        with _output(json_path) as path:
            path.write_text(json.dumps(out, indent=1) + "\n")
    if plot_prefix:
        with _output(f"{plot_prefix}-latency.png") as path:
            plot_fleet_latency(summaries, scenario.trace.name, path)
        with _output(f"{plot_prefix}-options.png") as path:
            plot_fleet_options(summaries, scenario.trace.name, path)


@cli.command()
@click.option("--device-profile", required=True, type=click.Path(dir_okay=False))
@click.option("--server-profile", required=True, type=click.Path(dir_okay=False))
@click.option("--options", "option_set", type=click.Choice(["seed", "all"]), default="seed", show_default=True,
              help="seed: local + fp32 splits at the record-low cuts, no RTT (the authors' setting); all: also raw "
                   "offload and every profiled cut, without and with an RTT and JPEG offload")
@click.option("--rtt-ms", type=click.FloatRange(min=0), help="RTT of --options all's second variant [default: 40]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write every variant's summary as JSON")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="write the maps and gain heatmaps (PNG)")
def grid(device_profile: str, server_profile: str, option_set: str, rtt_ms: float | None, json_path: str | None,
         plot_path: str | None) -> None:
    """The paper's experiment: the best option in every cell of 1–127 MB/s × batch 1–62, and what choosing
    per cell gains over every static option."""
    from rich.text import Text  # option names as text: rich would draw "split:a:fp32" with an emoji

    from edgesplit.profile import load_profile
    from edgesplit.sim.grid import grid_variants, plot_grids

    device, server = load_profile(device_profile), load_profile(server_profile)
    results = grid_variants(device, server, option_set, rtt_ms=rtt_ms)
    table = Table(title=f"{device.model}: best option in {results[0].best.size} cells (1–127 MB/s × batch 1–62)")
    for column in ("variant", "split wins", "local wins", "offload wins", "best static", "gain over it mean / max",
                   "most often best"):
        left = column in ("variant", "best static", "most often best")
        table.add_column(column, justify="left" if left else "right")
    for result in results:
        static = result.best_static()
        gain = result.gain_over(static)
        top = ", ".join(f"{n} {c / result.best.size:.0%}" for n, c in list(result.best_counts().items())[:3])
        table.add_row(result.title, f"{result.share('split'):.1%}", f"{result.share('local'):.1%}",
                      f"{result.share('offload'):.1%}", Text(static), f"{gain.mean():.1%} / {gain.max():.1%}",
                      Text(top))
    console.print(table)
    for result in results:
        gains = Table(title=f"{result.title}: the dynamic choice's gain over each static option")
        for column in ("static option", "best in", "gain mean", "gain max"):
            gains.add_column(column, justify="left" if column == "static option" else "right")
        counts = result.best_counts()
        for name in result.names:
            gain = result.gain_over(name)
            gains.add_row(Text(name), f"{counts.get(name, 0) / result.best.size:.1%}", f"{gain.mean():.1%}",
                          f"{gain.max():.1%}")
        console.print(gains)
    if json_path:
        with _output(json_path) as path:
            data = {"rates_MBps": [1, 127], "batch_sizes": [1, 62], "options": option_set,
                    "variants": [r.to_dict() for r in results]}
            path.write_text(json.dumps(data, indent=1) + "\n")
    if plot_path:
        with _output(plot_path) as path:
            plot_grids(results, str(path))


@cli.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8700, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--batch-wait-timeout-s", type=click.FloatRange(0), default=0.005, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(1024), default=64 * 1024 * 1024, show_default=True,
              help="413 beyond this; never above the longest frame the model can take")
@click.option("--max-queue", type=click.IntRange(1), default=64, show_default=True, help="answer 503 beyond this")
@click.option("--warm-up", is_flag=True,
              help="build and run every natural-bottleneck tail once before serving, and (with --max-batch-size > 1) "
                   "measure from which cut batching pays: earlier layers then run one request at a time")
@click.option("--profile", "own_profile", is_flag=True,
              help="measure this server's profile before serving (natural bottlenecks, batch sizes up to "
                   "--max-batch-size, on a worker thread, after idle gaps) and serve it at GET /v1/profile")
@click.option("--profile-idle-ms", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="idle before each timed run of --profile, as between requests")
@click.option("--header-timeout-s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="close a connection that has not completed its request headers this long after it connected "
                   "or after the previous response")
@click.option("--body-timeout-s", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="answer 408 and close a connection whose body sends nothing for this long")
@click.option("--keep-alive-timeout-s", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="close a connection idle this long after a response")
@click.option("--max-header-bytes", type=click.IntRange(1024), default=16 * 1024, show_default=True,
              help="answer 431 and close when the request line and headers exceed this")
@click.option("--max-connections", type=click.IntRange(1), default=128, show_default=True,
              help="answer 503 to requests on connections beyond this")
@click.option("--backend", "backend_name", type=click.Choice(["in-process", "ray"]), default="in-process",
              show_default=True, help="where the tails run: in this process, or on Ray Serve replicas (docs/ray.md)")
@click.option("--replicas", type=click.IntRange(1), help="--backend ray: this many replicas, each a model copy "
                                                         "(default: 1)")
@click.option("--autoscale", metavar="MIN,MAX", callback=lambda _, __, value: _replica_range(value),
              help="--backend ray: let Ray Serve scale between MIN and MAX replicas")
@click.option("--autoscale-delays", metavar="UP,DOWN", callback=lambda _, __, value: _autoscale_delays(value),
              help="--autoscale: seconds the load must stay above target before a replica is added, and below "
                   "before one is removed (default: Ray Serve's 30,600)")
@click.option("--replica-cpus", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="--backend ray: Ray CPUs per replica (torch runs that many threads there)")
@click.option("--ray-address", help="--backend ray: the Ray cluster's head, HOST:PORT or auto (default: start Ray here)")
@click.option("--engine", "engine_name", type=click.Choice(["torch", "onnx", "compile", "auto"]), default="torch",
              show_default=True, help="what runs the tails: eager torch (bit-exact), ONNX Runtime or torch.compile "
                                      "(within 1e-4), or auto: the faster of torch and onnx, measured at start-up")
@click.option("--device", "device_name", default="cpu", show_default=True, help="run the tails on cpu, cuda or cuda:N")
def serve(model: str, weights: str | None, input_size: int | None, input_shape: str | None, host: str, port: int,
          max_batch_size: int, batch_wait_timeout_s: float, max_body_bytes: int, max_queue: int,
          warm_up: bool, own_profile: bool, profile_idle_ms: float, header_timeout_s: float, body_timeout_s: float,
          keep_alive_timeout_s: float, max_header_bytes: int, max_connections: int, backend_name: str,
          replicas: int | None, autoscale: tuple[int, int] | None, autoscale_delays: tuple[float, float] | None,
          replica_cpus: float, ray_address: str | None, engine_name: str, device_name: str) -> None:
    """Run the edge server for MODEL: one copy of the model, any tail, dynamic batching per cut (or, with
    --backend ray, a front end for Ray Serve replicas that each hold a copy)."""
    if backend_name != "ray" and (replicas or autoscale or ray_address):
        raise EdgesplitError("--replicas, --autoscale and --ray-address apply to --backend ray")
    if replicas and autoscale:
        raise EdgesplitError("--replicas and --autoscale exclude each other: a fixed number, or MIN,MAX")
    if autoscale_delays and not autoscale:
        raise EdgesplitError("--autoscale-delays applies to --autoscale")
    if backend_name == "ray" and (own_profile or engine_name == "auto"):
        raise EdgesplitError("--profile and --engine auto measure this process; with --backend ray the replicas "
                             "run the tails: name the engine, and profile a replica's node with edgesplit profile")
    try:
        import uvicorn

        from edgesplit.runtime.http_edge import uvicorn_options
        from edgesplit.runtime.engines import auto_report, open_tail_engine, profile_engine
        from edgesplit.runtime.tail_engine import INPUT_CUT
        from edgesplit.runtime.server import ServerConfig, create_app
    except ImportError as exc:
        raise EdgesplitError(f"the server needs its extra: pip install 'edgesplit[server]' ({exc.name} is missing)")
    owns_ray = _join_ray(ray_address) if backend_name == "ray" else False  # before the model: fail fast
    loaded, analysis = _analysis(model, weights, input_size, input_shape)
    tails = None
    if backend_name == "ray":
        engine, tails = _ray_tails(model, weights, analysis, loaded.normalization, engine_name, device_name,
                                   replicas, autoscale, autoscale_delays, replica_cpus, owns_ray, max_batch_size,
                                   batch_wait_timeout_s, max_queue, warm_up, loaded.postprocess)
    else:
        engine, timings = _as_served(lambda: open_tail_engine(engine_name, analysis, loaded.normalization,
                                                              device=device_name, batch_size=max_batch_size,
                                                              postprocess=loaded.postprocess))
        if timings:
            console.print(auto_report(timings, engine, max_batch_size))
    if warm_up and tails is None:  # each Ray replica warms up and plans its batches on its own node
        started = time.perf_counter()
        console.print(f"warmed {engine.warm_up()} tails in {time.perf_counter() - started:.1f} s")
        if max_batch_size > 1:
            plan = _as_served(lambda: engine.plan_batching(max_batch_size))
            start = "the input" if plan.batch_from == INPUT_CUT else engine.cuts[plan.batch_from].name
            console.print(f"batches of {max_batch_size} run as one batch from {start} on: "
                          f"{plan.per_request_s[plan.batch_from] * 1e3:.1f} ms per request, "
                          f"{plan.per_request_s[INPUT_CUT] * 1e3:.1f} ms as one batch throughout")
    measured = None
    if own_profile:
        from edgesplit.measure import measure
        from edgesplit.profile import with_batch_plan

        started = time.perf_counter()
        sizes = tuple(b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch_size)
        if engine.name == "torch" and engine.device.type == "cpu":
            measured = _as_served(lambda: measure(analysis, analysis.natural_bottlenecks(), role="server",
                                                  batch_sizes=sizes, repeats=5, idle_s=profile_idle_ms / 1000,
                                                  normalization=loaded.normalization,
                                                  postprocess=loaded.postprocess))
            if engine.batch_plan is not None and engine.batch_plan.batch_from != INPUT_CUT:
                measured = with_batch_plan(measured, engine.cuts[engine.batch_plan.batch_from].name)
        else:  # timed through the engine as it serves, batch plan included
            measured = _as_served(lambda: profile_engine(engine, analysis.natural_bottlenecks(), batch_sizes=sizes,
                                                         repeats=5, idle_s=profile_idle_ms / 1000))
        console.print(f"measured this server's profile (batch sizes {', '.join(map(str, sizes))}) in "
                      f"{time.perf_counter() - started:.0f} s: whole model {measured.model_s[1].median_s * 1e3:.1f} ms "
                      f"at batch 1; GET /v1/profile")
    where = f"{engine.name} engine on {engine.device}" if tails is None else f"tails on Ray Serve ({tails.application})"
    console.print(f"{model} ({loaded.weights}) · model id {engine.model_id.hex()} · {len(engine.cuts)} cuts "
                  f"accepted · {where} · http://{host}:{port}/docs")
    config = ServerConfig(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                          max_body_bytes=max_body_bytes, max_queue=max_queue, header_timeout_s=header_timeout_s,
                          body_timeout_s=body_timeout_s, keep_alive_timeout_s=keep_alive_timeout_s,
                          max_header_bytes=max_header_bytes, max_connections=max_connections)
    uvicorn.run(create_app(engine, config, measured, tails), host=host, port=port, log_level="warning",
                **uvicorn_options(config))


def _replica_range(value: str | None) -> tuple[int, int] | None:
    """``--autoscale MIN,MAX`` as two integers, 0 <= MIN <= MAX, MAX >= 1."""
    if value is None:
        return None
    low, _, high = value.partition(",")
    if not (low.strip().isdigit() and high.strip().isdigit()) or not int(low) <= int(high) >= 1:
        raise click.BadParameter(f"{value!r}: expected MIN,MAX with 0 <= MIN <= MAX and MAX >= 1, e.g. 1,4")
    return int(low), int(high)


def _autoscale_delays(value: str | None) -> tuple[float, float] | None:
    """``--autoscale-delays UP,DOWN`` as two finite numbers of seconds, 0 or above."""
    if value is None:
        return None
    try:
        delays = tuple(float(part) for part in value.split(","))
    except ValueError:
        delays = ()
    if len(delays) != 2 or not all(math.isfinite(d) and d >= 0 for d in delays):
        raise click.BadParameter(f"{value!r}: expected UP,DOWN in seconds, each 0 or above, e.g. 5,30")
    return delays[0], delays[1]


def _join_ray(ray_address: str | None) -> bool:
    """serve --backend ray: join the cluster at ``ray_address`` or start Ray here; True when started here."""
    try:
        from edgesplit.runtime.ray_backend import connect
    except ImportError as exc:
        raise EdgesplitError(f"--backend ray needs its extra: pip install 'edgesplit[ray]' "
                             f"({exc.name} is missing)") from None
    return connect(ray_address)


def _ray_tails(model: str, weights: str | None, analysis: Any, normalization: Any, engine_name: str,
               device_name: str, replicas: int | None, autoscale: tuple[int, int] | None,
               autoscale_delays: tuple[float, float] | None, replica_cpus: float,
               owns_ray: bool, max_batch_size: int, batch_wait_timeout_s: float, max_queue: int,
               warm_up: bool, postprocess: Any) -> tuple[Any, Any]:
    """serve --backend ray: the front end's engine (it validates frames and post-processes a detector's
    answers, never runs a tail) and the Ray Serve backend whose replicas run the tails."""
    from edgesplit.runtime.ray_backend import EngineRecipe, Scaling, start_ray_backend
    from edgesplit.runtime.tail_engine import TailEngine

    engine = TailEngine(analysis, normalization, postprocess=postprocess)
    recipe = EngineRecipe(model=model, weights=weights, input_shape=tuple(analysis.input_shape), engine=engine_name,
                          device=device_name)
    started = time.perf_counter()
    up_s, down_s = autoscale_delays or (Scaling.upscale_delay_s, Scaling.downscale_delay_s)
    scaling = Scaling(replicas=replicas or 1, autoscale=autoscale, replica_cpus=replica_cpus,
                      replica_gpus=0.0 if device_name == "cpu" else 1.0, upscale_delay_s=up_s, downscale_delay_s=down_s)
    tails = start_ray_backend(recipe, engine, scaling=scaling,
                              max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
                              max_queue=max_queue, warm_up=warm_up, owns_ray=owns_ray)
    settings = "the running application's replicas" if tails.scaling is None else (
        f"autoscaled {autoscale[0]}–{autoscale[1]} replicas (up after {up_s:g} s above target, down after "
        f"{down_s:g} s below)" if autoscale else f"{replicas or 1} replica(s)")
    console.print(f"Ray Serve application {tails.application} ready in {time.perf_counter() - started:.1f} s: "
                  f"{settings}")
    return engine, tails


def _as_served(measurement: Callable[[], T]) -> T:
    """Run ``measurement`` on a worker thread, as the server runs its tails (each thread has its own
    OpenMP team)."""
    with ThreadPoolExecutor(1) as worker:
        return worker.submit(measurement).result()


@cli.command()
@model_options
@click.option("--server", "server_url", required=True,
              help="edge server URL, e.g. http://127.0.0.1:8700; several, comma-separated: each request goes to "
                   "the edge expected to answer first, the next if it fails fast, else runs here")
@click.option("--engine", "engine_name", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx: MODEL is a folder from edgesplit export, run by ONNX Runtime (no torch needed)")
@click.option("--policy", "policy_spec", default="dsc", show_default=True, help="any simulator policy but oracle")
@click.option("--estimator", default="harmonic", show_default=True)
@click.option("--images", type=click.Path(file_okay=False, exists=True), help="folder of JPEG/PNG images")
@click.option("--fps", type=float, help="request rate (default: as fast as answered)")
@click.option("--count", type=click.IntRange(1), help="requests (default: the images once, or 20 photos)")
@click.option("--deadline-ms", type=click.FloatRange(min=0, min_open=True),
              help="finish a request locally when the server has not answered this long after it was taken up "
                   "(default: twice the device's whole-model time, at least 500 ms)")
@hedge_option
@click.option("--device-profile", type=click.Path(dir_okay=False), help="default: measured now, on this machine")
@click.option("--server-profile", type=click.Path(dir_okay=False),
              help="default: the server's own (GET /v1/profile), else this machine's")
@click.option("--private", is_flag=True, help="the raw input never leaves the device")
@click.option("--lossy", is_flag=True, help="let dynamic policies pick JPEG and lossy codecs")
@click.option("--codecs", default="fp32", show_default=True, help=CODECS_HELP)
@accuracy_options
@energy_options
@max_tensors_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="per-request decisions and a summary (JSON)")
def run(model: str, weights: str | None, input_size: int | None, input_shape: str | None, server_url: str,
        engine_name: str, policy_spec: str, estimator: str, images: str | None, fps: float | None, count: int | None,
        deadline_ms: float | None, hedge: bool, device_profile: str | None, server_profile: str | None,
        private: bool, lossy: bool, codecs: str, min_agreement: float | None, fidelity: str | None, radio: str,
        compute_w: float, max_tensors: int, out_path: str | None) -> None:
    """Serve requests on this device with MODEL's head, splitting at the cut the policy picks."""
    from edgesplit.runtime.device import run_device

    run_device(model, weights, input_size, input_shape, engine_name=engine_name, server_url=server_url,
               policy_spec=policy_spec,
               estimator_spec=estimator, images=images, fps=fps, count=count, deadline_ms=deadline_ms, hedge=hedge,
               device_profile=device_profile, server_profile=server_profile, private=private, lossy=lossy,
               codecs=tuple(codecs.split(",")), out_path=out_path, console=console, min_agreement=min_agreement,
               fidelity=fidelity, radio=radio, compute_w=compute_w, max_tensors=max_tensors)


@cli.command()
@model_options
@click.option("--cuts", "cut_spec", default="record-low", show_default=True,
              help="natural | pareto | record-low | NAME,NAME,...")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="folder to write")
@click.option("--opset", type=int, default=17, show_default=True)
@max_tensors_option
def export(model: str, weights: str | None, input_size: int | None, input_shape: str | None, cut_spec: str,
           out_dir: str, opset: int, max_tensors: int) -> None:
    """Write ONNX heads and tails of MODEL per cut, the whole model, and a manifest; check them with ONNX Runtime."""
    from edgesplit.export import export_cuts

    loaded, analysis = _analysis(model, weights, input_size, input_shape, max_tensors)
    cuts = [c for c in _choose_cuts(analysis, cut_spec) if c.index > 0]
    manifest = export_cuts(analysis, cuts, out_dir, loaded.normalization, opset, loaded.postprocess)
    table = Table(title=f"{model} → {out_dir} (model id {manifest['model_id']}, opset {opset})")
    for column in ("cut", "c", "head max |diff|", "tail max |diff|"):
        table.add_column(column, justify="left" if column == "cut" else "right")
    table.add_row("(whole model)", "", f"{manifest['model_max_abs_diff']:.2g}", "")
    for entry in manifest["cuts"]:
        table.add_row(entry["name"], f"{entry['ratio']:.4f}", f"{entry['head_max_abs_diff']:.2g}",
                      f"{entry['tail_max_abs_diff']:.2g}")
    console.print(table)


@cli.command()
@click.option("--model", default="efficientnet_lite0_pretrained", show_default=True)
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, exists=True),
              help="uplink trace (mahimahi, time_s Mbit/s, or CSV); default: the shipped Verizon LTE segment")
@click.option("--duration", "duration_s", type=click.FloatRange(min=1), default=25.0, show_default=True,
              help="seconds of the trace in each segment")
@click.option("--segments", type=click.IntRange(1), default=5, show_default=True,
              help="consecutive segments of the trace; within each, every policy meets the same conditions")
@click.option("--start", "start_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="where the first segment starts in the trace (s)")
@click.option("--lead-in", "lead_in_s", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="seconds of the trace before each segment that every device runs but that are not counted, so "
                   "that devices enter it knowing their link (0: each connects at the segment's first request)")
@click.option("--take-turns", is_flag=True,
              help="run the policies one after another within each segment, against one server, instead of side "
                   "by side on replicas (each then has this machine to itself)")
@click.option("--policies", help="default: dsc,best-static,local,offload,oracle (without offload when --private)")
@click.option("--estimator", default="harmonic", show_default=True)
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True)
@click.option("--rtt-ms", type=click.FloatRange(min=0), default=40.0, show_default=True)
@click.option("--deadline-ms", type=click.FloatRange(min=0, min_open=True),
              help="finish a request locally when the server has not answered this long after it was taken up "
                   "(default: twice the device's whole-model time, at least 500 ms)")
@click.option("--device-ms", type=click.FloatRange(min=0, min_open=True), default=350.0, show_default=True,
              help="emulate a device that runs the whole model in this time (this machine, slowed to match)")
@click.option("--device-shape", type=click.Choice(["flops", "measured"]), default="flops", show_default=True,
              help="how the device's time splits over the model: in proportion to FLOPs (the same every run), or "
                   "as this machine's per-layer times split it (which move with its load)")
@click.option("--codecs", default="fp32,fp16,int8", show_default=True, help=CODECS_HELP)
@click.option("--exact", is_flag=True, help="only bit-exact options (fp32 splits, raw offload)")
@accuracy_options
@energy_options
@click.option("--private", is_flag=True, help="the raw input never leaves the device")
@click.option("--netns", is_flag=True, help="kernel shaping in network namespaces (root) instead of the app shaper")
@hedge_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/demo", show_default=True)
def demo(model: str, trace_path: str | None, duration_s: float, segments: int, start_s: float, lead_in_s: float,
         take_turns: bool, policies: str | None, estimator: str, fps: float, rtt_ms: float, deadline_ms: float | None,
         device_ms: float, device_shape: str, codecs: str, exact: bool, min_agreement: float | None,
         fidelity: str | None, radio: str, compute_w: float, private: bool, netns: bool, hedge: bool,
         out_dir: str) -> None:
    """Serve real photos with a real model through an edge server over a link that replays a real uplink
    trace, segment by segment, every policy under the same conditions, and compare them."""
    try:
        import fastapi  # noqa: F401  (the server's extra)

        from edgesplit.demo import DEFAULT_POLICIES, DEFAULT_TRACE, DemoConfig, run_demo
    except ImportError as exc:
        raise EdgesplitError(f"the demo needs its extra: pip install 'edgesplit[demo]' ({exc.name} is missing)")
    if exact and min_agreement is not None:
        raise EdgesplitError("give either --exact or --min-agreement, not both")
    chosen = tuple(p for p in policies.split(",") if p) if policies is not None else \
        tuple(p for p in DEFAULT_POLICIES if not (private and p == "offload"))
    config = DemoConfig(model, Path(trace_path) if trace_path else DEFAULT_TRACE, duration_s, segments, start_s,
                        not take_turns, chosen, estimator, fps, rtt_ms / 1000,
                        deadline_ms / 1000 if deadline_ms else None, device_ms / 1000, tuple(codecs.split(",")), not exact, private, netns,
                        Path(out_dir), hedge, min_agreement, Path(fidelity) if fidelity else None, radio, compute_w,
                        lead_in_s, device_shape)
    run_demo(config, console)


@cli.command()
@model_options
@click.option("--devices", "device_counts", required=True,
              help="devices at once; several counts separated by commas sweep them, e.g. 1,4,16")
@click.option("--server", "server_url",
              help="edge server URL (default: start edgesplit serve MODEL --warm-up --profile here, stop it at the end)")
@click.option("--policies", help="default: dsc,best-static,offload,local")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False),
              help="uplink trace (mahimahi, time_s Mbit/s, or CSV); default: the demo's Verizon LTE segment")
@click.option("--duration", "duration_s", type=float, default=20.0, show_default=True,
              help="seconds of each policy's turn")
@click.option("--fps", type=float, default=2.0, show_default=True, help="requests per second of each device")
@click.option("--repeats", type=int, default=2, show_default=True,
              help="turns of each policy, in an order rotating from repeat to repeat")
@click.option("--device-ms", type=float, default=350.0, show_default=True,
              help="emulate devices that run the whole model in this time (this machine, slowed to match)")
@click.option("--rtt-ms", type=float, default=40.0, show_default=True)
@click.option("--estimator", default="harmonic", show_default=True)
@accuracy_options
@energy_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="folder to write")
def fleet(model: str, weights: str | None, input_size: int | None, input_shape: str | None, device_counts: str,
          server_url: str | None, policies: str | None, trace_path: str | None, duration_s: float, fps: float,
          repeats: int, device_ms: float, rtt_ms: float, estimator: str, min_agreement: float | None,
          fidelity: str | None, radio: str, compute_w: float, out_dir: str) -> None:
    """Run many emulated devices at once against one edge server, the policies taking turns, and compare
    their latency as the number of devices grows."""
    try:
        import fastapi  # noqa: F401  (the server's extra)

        from edgesplit.fleet import DEFAULT_POLICIES, DEFAULT_TRACE, FleetConfig, parse_device_counts, run_fleet
    except ImportError as exc:
        raise EdgesplitError(f"the fleet needs its extra: pip install 'edgesplit[demo]' ({exc.name} is missing)")
    config = FleetConfig(model=model, weights=weights, input_size=input_size, input_shape=input_shape,
                         server_url=server_url, device_counts=parse_device_counts(device_counts),
                         policies=tuple(p for p in policies.split(",") if p) if policies is not None else DEFAULT_POLICIES,
                         trace=Path(trace_path) if trace_path else DEFAULT_TRACE, duration_s=duration_s, fps=fps,
                         repeats=repeats, device_local_s=device_ms / 1000, rtt_s=rtt_ms / 1000, estimator=estimator,
                         min_agreement=min_agreement, fidelity=Path(fidelity) if fidelity else None, radio=radio,
                         compute_w=compute_w,
                         out_dir=Path(out_dir))
    run_fleet(config, console)


@cli.command()
@click.argument("pattern", required=False)
@click.option("--timm", "timm_models", is_flag=True, help="list timm models instead (needs edgesplit[timm])")
def models(pattern: str | None, timm_models: bool) -> None:
    """List the model names MODEL accepts, optionally those containing PATTERN."""
    from edgesplit.models import model_names

    for name in model_names(timm_models):
        if pattern is None or pattern in name:
            click.echo(name)


@cli.command()
def codecs() -> None:
    """List the split codecs (how a cut's tensor may cross) and what each keeps of it."""
    from edgesplit.codecs import describe

    table = Table(title="split codecs (NAME, or NAME:zstd / NAME:lz4 to compress the payload losslessly); input: "
                        "raw, jpeg:Q")
    for column in ("codec", "exact", "what it keeps"):
        table.add_column(column)
    for row in describe():
        table.add_row(row["name"], "yes" if row["exact"] else "no", row["exactness"])
    console.print(table)


def _print_analysis(result, weights: str, show_all: bool, elapsed: float) -> None:  # type: ignore[no-untyped-def]
    counts = result.counts()
    shape = "×".join(map(str, result.input_shape))
    table = Table(title=f"{result.model} · input {shape} · {weights} · traced with {result.tracer}",
                  caption="NB natural bottleneck · RL record-low · P Pareto · c = crossing/input elements")
    for column in ("#", "cut", "module", "crossing shape", "c", "fp32 KiB", "head MFLOPs",
                   "tail MFLOPs", "head params", "tail params", "flags", "max |diff|"):
        table.add_column(column, justify="left" if column in ("cut", "module", "crossing shape", "flags") else "right")
    for c in result.cuts:
        if not (show_all or c.natural_bottleneck or c.pareto):
            continue
        flags = " ".join(f for f, on in (("NB", c.natural_bottleneck), ("RL", c.record_low), ("P", c.pareto)) if on)
        shapes = " + ".join("×".join(map(str, s[1:])) for s in c.shapes)
        module = c.modules[-1] if c.modules else ""
        diff = "" if c.exact_max_abs_diff is None else f"{c.exact_max_abs_diff:.2g}"
        table.add_row(str(c.index), c.name, module, shapes, f"{c.ratio:.4f}", f"{c.bytes['fp32'] / 1024:.1f}",
                      f"{c.head_flops / 1e6:.1f}", f"{c.tail_flops / 1e6:.1f}", f"{c.head_params:,}",
                      f"{c.tail_params:,}", flags, diff, style="bold red" if c.record_low else None)
    console.print(table)
    summary = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
    checked = [c.exact_max_abs_diff for c in result.cuts if c.exact_max_abs_diff is not None]
    if checked:
        summary += f"; exact split checked at {len(checked)} cuts, max |diff| {max(checked):.3g}"
    console.print(f"{summary} ({elapsed:.1f} s)")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgesplitError as exc:
        click.echo(f"edgesplit: error: {exc}", err=True)
        sys.exit(2)


@cli.command()
@model_options
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="a folder of photos (default: the natural photos that ship with scikit-image and matplotlib)")
@click.option("--augment", type=click.IntRange(0), default=0, show_default=True,
              help="add N random-resized crops of the photos (seeded)")
@click.option("--seed", type=int, default=0, show_default=True, help="for --augment's crops")
@click.option("--cuts", "cut_spec", default="record-low", show_default=True,
              help="record-low | natural | pareto | NAME,NAME,...")
@click.option("--codecs", "codec_spec",
              default="fp32,fp16,bf16,int8,int8c,int6c,int5c,int4c,int8:zstd,int8c:zstd,ecq6,ecq5,ecq4",
              show_default=True, help="split codecs: NAME or NAME:zstd / NAME:lz4, comma-separated (edgesplit codecs)")
@click.option("--jpeg-qualities", "quality_spec", default="50,75,90,95", show_default=True,
              help="JPEG input offload at these qualities ('' for none)")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="images per run of a tail or of the whole model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="folder to write fidelity.json and fidelity.png in")
@max_tensors_option
def fidelity(model: str, weights: str | None, input_size: int | None, input_shape: str | None,
             images_dir: str | None, augment: int, seed: int, cut_spec: str, codec_spec: str, quality_spec: str,
             batch_size: int, out_dir: str, max_tensors: int) -> None:
    """How faithfully every cut × codec answers, and JPEG input offload: payload bytes, encode and decode
    times, and against the fp32 model a classifier's top-1 agreement (95 % Wilson interval), KL divergence
    and max |logit difference|, or a segmentation model's pixel agreement (mean and least over images) and
    mIoU. Where several tensors cross a cut, each is sent with the codec."""
    from edgesplit.fidelity import (FidelityReport, evaluation_images, measure, natural_photos, parse_codecs,
                                    parse_qualities, plot, read_folder, table)
    from edgesplit.runtime.device_engines import TorchEngine

    codecs, qualities = parse_codecs(codec_spec), parse_qualities(quality_spec)
    photos = read_folder(images_dir) if images_dir is not None else natural_photos()
    loaded, analysis = _analysis(model, weights, input_size, input_shape, max_tensors)
    cuts = _choose_cuts(analysis, cut_spec)
    images = evaluation_images(photos, analysis.input_shape, augment=augment, seed=seed)
    with console.status(f"{len(cuts)} cuts × {len(codecs)} codecs and {len(qualities) + 1} offloads on "
                        f"{len(images)} images"):
        rows = measure(TorchEngine(analysis, loaded.normalization), images, cuts=[c.name for c in cuts],
                       head_flops={c.name: c.head_flops for c in cuts}, codecs=codecs, jpeg_qualities=qualities, batch_size=batch_size)
    report = FidelityReport(model, tuple(photos), augment, tuple(rows), seed)
    console.print(table(report))
    with _output(str(Path(out_dir) / "fidelity.json")) as path:
        path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    with _output(str(Path(out_dir) / "fidelity.png")) as path:
        plot(report, path)
