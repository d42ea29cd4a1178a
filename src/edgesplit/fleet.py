"""``edgesplit fleet``: many emulated devices at once against one edge server, policy by policy.

N devices, threads of this process, share one edge server (``--server``, or an ``edgesplit serve MODEL
--warm-up --profile`` started here). Each device has its own application-shaped link replaying the trace
from its own offset (device k of N from k × the trace's length / N, wrapping around its end), its own
estimator and policy (:class:`~edgesplit.runtime.client.DeviceClient`), the photos in its own order, and
periodic arrivals at ``fps`` shifted by its own phase (k / (N × fps)), so that the fleet's requests spread
evenly over each period. The devices are emulated as in the demo (:func:`edgesplit.demo.emulated_profiles`,
:func:`edgesplit.demo.replaying_device`): they sleep rather than compute, and leave the processor to the
server.

The server's load is part of the conditions a policy meets, and a policy's own devices make it: so the
policies take turns, all N devices running one policy for ``duration_s``, then the next, in an order that
rotates from repeat to repeat; every turn replays the same trace windows, and after each the server is
left to drain its queue before the next begins. What the server did during a turn comes from its
``/metrics`` counters read before and after (summed batch compute time and batch sizes, each batch
counted once) and from the answers' ``Server-Timing`` queue waits.

Every request ends in an answer, from the server or, when it cannot answer in time, from the device
itself; a request that ends without one is lost, and the run fails after writing its results.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from edgesplit.demo import (DEFAULT_TRACE, AppLink, emulated_profiles, idle_s_at, loopback_server,
                            replaying_device, run_together)
from edgesplit.device import DeviceConfig, RequestRecord, load_errors, summarize
from edgesplit.energy import PHONE_COMPUTE_W
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.latency import LinkState, Option, build_options
from edgesplit.policies import allowed_options, check_policy, make_policy
from edgesplit.profile import quantile, read_agreement, with_agreement
from edgesplit.runtime.client import ClientConfig, DeviceClient, fetch_server_profile
from edgesplit.runtime.transport import HttpTransport, Response, TransportError
from edgesplit.traces import RateTrace, read_trace

if TYPE_CHECKING:
    import numpy as np

    from edgesplit.runtime.device_engines import EmulatedDevice

DEFAULT_POLICIES = ("dsc", "best-static", "offload", "local")
CODECS = ("fp32", "fp16", "int8")  # as the demo's default: a split's tensor may cross in any of them
DRAIN_TIMEOUT_S = 60.0  # wait at most this long for the server's queue to empty after a turn
_COUNTER = re.compile(r"^(edgesplit_batch_compute_seconds_sum|edgesplit_batch_size_sum|edgesplit_batch_size_count)"
                      r"\{[^}]*\} (\S+)$", re.M)


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """What ``edgesplit fleet`` runs (the defaults are benchmarks/fleet.py's)."""

    model: str = "efficientnet_lite0_pretrained"
    weights: str | None = None
    input_size: int | None = None
    input_shape: str | None = None
    server_url: str | None = None  # None: start an edge server here, stop it at the end
    device_counts: tuple[int, ...] = (1, 4, 16)
    policies: tuple[str, ...] = DEFAULT_POLICIES
    trace: Path = DEFAULT_TRACE
    duration_s: float = 20.0  # of each policy's turn
    fps: float = 2.0  # per device
    repeats: int = 2
    device_local_s: float = 0.35
    rtt_s: float = 0.04
    estimator: str = "harmonic"
    min_agreement: float | None = None  # None: any of CODECS (lossy included); else only those measured to agree
    fidelity: Path | None = None  # the measured agreements (fidelity.json of edgesplit fidelity)
    radio: str = "lte"  # the devices' radio and processor power, for their energy (docs/energy.md)
    compute_w: float = PHONE_COMPUTE_W
    out_dir: Path = Path("out/fleet")

    def __post_init__(self) -> None:
        if not self.device_counts or min(self.device_counts) < 1:
            raise EdgesplitError(f"--devices must be at least 1 device, got {_listed(self.device_counts)}")
        if len(set(self.device_counts)) < len(self.device_counts):
            raise EdgesplitError(f"--devices lists a count twice: {_listed(self.device_counts)}")
        if not self.policies:
            raise EdgesplitError("no policy to run: --policies is empty")
        for flag, value in (("--duration", self.duration_s), ("--fps", self.fps),
                            ("--device-ms", self.device_local_s * 1e3)):
            if not (math.isfinite(value) and value > 0):
                raise EdgesplitError(f"{flag} must be a finite number > 0, got {value:g}")
        if not (math.isfinite(self.rtt_s) and self.rtt_s >= 0):
            raise EdgesplitError(f"--rtt-ms must be a finite number >= 0, got {self.rtt_s * 1e3:g}")
        if self.repeats < 1:
            raise EdgesplitError(f"--repeats must be at least 1, got {self.repeats}")

    @property
    def requests_per_turn(self) -> int:
        """Requests each device makes in one turn."""
        return math.ceil(self.duration_s * self.fps - 1e-9)


def parse_device_counts(text: str) -> tuple[int, ...]:
    """``"4"`` or ``"1,4,16"`` as device counts."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise EdgesplitError(f"--devices takes device counts separated by commas, e.g. 4 or 1,4,16; got {text!r}"
                             ) from None


def device_offsets(devices: int, trace_duration_s: float) -> list[float]:
    """Where each of ``devices`` devices starts in the trace: evenly spread over its length."""
    return [k * trace_duration_s / devices for k in range(devices)]


def turn_order(policies: tuple[str, ...], repeat: int) -> list[str]:
    """The policies' order in ``repeat``: the first in turn rotates from repeat to repeat."""
    first = repeat % len(policies)
    return list(policies[first:] + policies[:first])


@dataclass(frozen=True)
class ServerWork:
    """The server's ``/metrics`` counters: summed batch compute time (each batch once), batches, requests in them."""

    compute_s: float = 0.0
    batches: int = 0
    requests: int = 0

    def __add__(self, other: ServerWork) -> ServerWork:
        return ServerWork(self.compute_s + other.compute_s, self.batches + other.batches,
                          self.requests + other.requests)

    def __sub__(self, other: ServerWork) -> ServerWork:
        return ServerWork(self.compute_s - other.compute_s, self.batches - other.batches,
                          self.requests - other.requests)


@dataclass(frozen=True)
class Turn:
    """All devices running one policy for one turn, and what the server did meanwhile."""

    devices: int
    repeat: int
    policy: str
    started_s: float  # its first arrival, from the start of the run
    wall_s: float  # from its first arrival until the server had drained its queue
    work: ServerWork  # what the server computed meanwhile
    runs: list[list[RequestRecord]] = field(repr=False)  # device k's requests are runs[k]

    @property
    def records(self) -> list[RequestRecord]:
        return [r for run in self.runs for r in run]


def run_fleet(config: FleetConfig, console: Console) -> dict[str, Any]:
    """Run every policy in turn with each number of devices; print, plot and write the results."""
    for spec in config.policies:
        check_policy(spec)  # unknown names fail before anything starts
    make_estimator(config.estimator)
    full = read_trace(config.trace)
    if config.server_url is not None:
        _ask(config.server_url, "/healthz")  # an unreachable server fails before the model loads
    with _edge_server(config, console) as url:
        engine, photos, options, allowed = _device(config, url, console)
        console.print(f"link: application shaper, trace {full.name} ({full.duration_s:g} s, each device from its "
                      f"own offset) · {len(allowed)} options · {config.repeats} × {config.duration_s:g} s per policy")
        fleet = _Fleet(config, url, engine, photos, options, allowed, full, console)
        turns = {n: fleet.step(n) for n in config.device_counts}
    document = _document(config, url, full, turns)
    for n, step in document["devices"].items():
        _print_table(config, int(n), step, console)
    _write(config, document, turns)
    lost = sum(p["count"] - p["answered"] for step in document["devices"].values() for p in step["policies"].values())
    total = sum(p["count"] for step in document["devices"].values() for p in step["policies"].values())
    if lost:
        raise EdgesplitError(f"{lost} of {total} requests were lost (ended without an answer); see "
                             f"{config.out_dir / 'fleet.json'}")
    console.print(f"lost requests: 0 of {total} (each answered, by the server or on its device)")
    return document


@contextlib.contextmanager
def _edge_server(config: FleetConfig, console: Console) -> Iterator[str]:
    """The server's URL: ``--server``, or an ``edgesplit serve`` started here (its output in server.log) and
    stopped on exit."""
    if config.server_url is not None:
        yield config.server_url
        return
    model = [config.model, *(["--weights", config.weights] if config.weights else []),
             *(["--input-size", str(config.input_size)] if config.input_size else []),
             *(["--input-shape", config.input_shape] if config.input_shape else [])]
    log = config.out_dir / "server.log"

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "edgesplit", "serve", *model, "--port", str(port), "--warm-up", "--profile",
                "--profile-idle-ms", str(idle_s_at(config.fps) * 1000)]

    with loopback_server(command, log) as url:
        console.print(f"edge server ready at {url} (log {log})")
        yield url


def _device(config: FleetConfig, url: str, console: Console
            ) -> tuple[EmulatedDevice, list[np.ndarray], list[Option], list[Option]]:
    """The emulated device every device of the fleet runs, its photos, every option and those it may pick."""
    from edgesplit.analysis import analyze
    from edgesplit.models import load_model, parse_input_shape
    from edgesplit.runtime.tail_engine import model_id

    loaded = load_model(config.model, config.weights)
    shape = parse_input_shape(config.input_shape, config.input_size, loaded.native_input_shape)
    analysis = analyze(loaded.module, shape, name=config.model)
    _check_same_model(url, model_id(analysis.graph.model.eval()), tuple(analysis.input_shape))
    console.print(f"device: {config.model} ({loaded.weights}); measuring this machine's profile…")
    measured, device = emulated_profiles(analysis, config.device_local_s, console, loaded.normalization,
                                         loaded.postprocess)
    try:
        with HttpTransport(url) as http:
            server = fetch_server_profile(http, url)
    except TransportError as exc:
        raise EdgesplitError(f"the edge server at {url} did not give its profile ({exc})") from exc
    if server is None:
        console.print("the server serves no profile (start it with --profile): assuming it is as fast as this "
                      "machine")
    config.out_dir.mkdir(parents=True, exist_ok=True)  # the profiles the fleet ran on, for simulate-fleet
    device.save(config.out_dir / "device-profile.json")
    (server or measured).save(config.out_dir / "server-profile.json")
    if config.fidelity:
        device = with_agreement(device, read_agreement(config.fidelity))
    options = build_options(device, server or measured, codecs=CODECS)
    allowed = allowed_options(options, private=False, lossy=True, min_agreement=config.min_agreement,
                              jpeg=config.min_agreement is not None)  # JPEG competes under a budget only
    engine, photos = replaying_device(analysis, loaded.normalization, device, allowed, loaded.postprocess)
    return engine, photos, options, allowed


def _check_same_model(url: str, ours: bytes, input_shape: tuple[int, ...]) -> None:
    served = _ask_json(url, "/v1/model")
    if (served.get("model_id"), served.get("input_shape")) != (ours.hex(), list(input_shape)):
        raise EdgesplitError(f"the edge server at {url} holds another model (id {str(served.get('model_id'))[:40]}, "
                             f"input {served.get('input_shape')}; ours {ours.hex()}, input {list(input_shape)}): "
                             "start it with the same model, weights and input shape")


def _ask(url: str, path: str) -> Response:
    """GET ``path`` from the server; one clear error when it cannot be reached or refuses."""
    try:
        with HttpTransport(url, timeout_s=5) as http:
            response = http.request("GET", path)
    except TransportError as exc:
        raise EdgesplitError(f"cannot reach the edge server at {url} ({exc}); start one with edgesplit serve "
                             "MODEL, or leave out --server to have one started here") from exc
    if response.status != 200:
        raise EdgesplitError(f"the edge server at {url} answered {response.status} to GET {path}")
    return response


def _ask_json(url: str, path: str) -> dict[str, Any]:
    try:
        answer = _ask(url, path).json()
    except ValueError as exc:
        raise EdgesplitError(f"{url}{path} is not JSON ({exc}): is this an edgesplit server?") from exc
    if not isinstance(answer, dict):
        raise EdgesplitError(f"{url}{path} answered {type(answer).__name__}, not an object: is this an edgesplit "
                             "server?")
    return answer


def _server_work(url: str) -> ServerWork:
    totals = {"edgesplit_batch_compute_seconds_sum": 0.0, "edgesplit_batch_size_sum": 0.0,
              "edgesplit_batch_size_count": 0.0}
    for name, value in _COUNTER.findall(_ask(url, "/metrics").body.decode("utf-8", "replace")):
        totals[name] += float(value)
    return ServerWork(totals["edgesplit_batch_compute_seconds_sum"], round(totals["edgesplit_batch_size_count"]),
                      round(totals["edgesplit_batch_size_sum"]))


def _drained(url: str) -> bool:
    """Wait until nothing waits at the server and no batch runs past its expected end; whether it happened
    within ``DRAIN_TIMEOUT_S``."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        load = _ask_json(url, "/healthz")["load"]
        if load["queue_length"] == 0 and load["queue_wait_s"] == 0:
            return True
        time.sleep(0.05)
    return False


class _Fleet:
    """Runs the policies in turn with a given number of devices."""

    def __init__(self, config: FleetConfig, url: str, engine: EmulatedDevice, photos: list[np.ndarray],
                 options: list[Option], allowed: list[Option], trace: RateTrace, console: Console) -> None:
        self.config, self.url, self.engine, self.photos = config, url, engine, photos
        self.options, self.allowed, self.trace, self.console = options, allowed, trace, console
        self.started = time.perf_counter()

    def step(self, devices: int) -> list[Turn]:
        """Every policy's turns with ``devices`` devices, each device over its own window of the trace."""
        config = self.config
        windows = [self.trace.segment(offset, config.duration_s)
                   for offset in device_offsets(devices, self.trace.duration_s)]
        links = [AppLink(window, config.rtt_s) for window in windows]
        self.console.rule(f"{devices} device{'s' if devices > 1 else ''} × {config.fps:g} requests/s")
        turns = []
        for repeat in range(config.repeats):
            for spec in turn_order(config.policies, repeat):
                turns.append(self.turn(devices, repeat, spec, windows, links))
        return turns

    def turn(self, devices: int, repeat: int, spec: str, windows: list[RateTrace], links: list[AppLink]) -> Turn:
        """All ``devices`` run ``spec`` together, from one instant set once every one has connected."""
        before = _server_work(self.url)
        began: list[float] = []
        start = threading.Barrier(devices, action=lambda: began.append(time.perf_counter() + 0.05), timeout=120)
        jobs = [lambda k=k: self.device(k, devices, spec, windows[k], links[k], start, began) for k in range(devices)]
        runs = run_together(jobs, start, [f"fleet-{spec}-{k}" for k in range(devices)])
        drained = _drained(self.url)
        turn = Turn(devices, repeat, spec, began[0] - self.started, time.perf_counter() - began[0],
                    _server_work(self.url) - before, runs)
        self._report(turn, drained)
        return turn

    def device(self, k: int, devices: int, spec: str, window: RateTrace, link: AppLink, start: threading.Barrier,
               began: list[float]) -> list[RequestRecord]:
        """Device ``k``'s requests in one turn: a fresh client (estimator, connection) over its own link."""
        config = self.config
        policy = make_policy(spec, self.options, LinkState(window.mean_bps(), config.rtt_s))
        with DeviceClient(self.url, self.engine, self.allowed, policy, make_estimator(config.estimator),
                          ClientConfig(DeviceConfig(rtt_s=config.rtt_s, radio=config.radio, compute_w=config.compute_w)),
                          connect=lambda: link.connect(self.url),
                          truth=link.truth) as client:
            link.restart(window)  # the probe on connecting sees the link as it is at the start
            client.connect()
            start.wait()
            t0 = began[0]
            link.restart(window, at=t0)
            client.epoch = t0
            phase = k / (devices * config.fps)
            for index in range(config.requests_per_turn):
                arrival = t0 + phase + index / config.fps
                time.sleep(max(0.0, arrival - time.perf_counter()))
                client.infer(self.photos[(k + index) % len(self.photos)], arrived=arrival)
        return client.records

    def _report(self, turn: Turn, drained: bool) -> None:
        s = summarize(turn.records)
        server = _server_summary([turn])
        batch = f", mean batch {server['mean_batch']:.2f}" if server["mean_batch"] is not None else ""
        note = "" if drained else f"; [bold red]its queue had not drained after {DRAIN_TIMEOUT_S:g} s[/]"
        self.console.print(f"repeat {turn.repeat + 1}/{self.config.repeats} · {turn.policy:<11} {s['count']} "
                           f"requests, mean {s['mean_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms, {s['fallbacks']} "
                           f"fallbacks · server busy {server['utilisation']:.0%}{batch}{note}")


def _server_summary(turns: list[Turn]) -> dict[str, Any]:
    """Utilisation (summed batch compute time / wall time), mean batch size, and the answers' p95 queue wait."""
    work = sum((t.work for t in turns), ServerWork())
    queue = sorted(r.queue_s * 1e3 for t in turns for r in t.records if r.queue_s is not None)
    return {"utilisation": work.compute_s / sum(t.wall_s for t in turns),
            "mean_batch": work.requests / work.batches if work.batches else None,
            "queue_p95_ms": quantile(queue, 0.95) if queue else None}


def _policy_summary(turns: list[Turn], requests_per_turn: int) -> dict[str, Any]:
    records = [r for t in turns for r in t.records]
    s = summarize(records)
    return {"mean_ms": s["mean_ms"], "p50_ms": s["p50_ms"], "p95_ms": s["p95_ms"],
            "answered": sum(r.top1 is not None for r in records),
            "count": sum(t.devices * requests_per_turn for t in turns), "fallbacks": s["fallbacks"], "cuts": s["cuts"],
            "load_errors": load_errors(records),
            "repeats_mean_ms": [statistics.fmean(r.latency_s * 1e3 for r in t.records)
                                for t in sorted(turns, key=lambda t: t.repeat)],
            "server": _server_summary(turns)}


def _document(config: FleetConfig, url: str, trace: RateTrace, turns: dict[int, list[Turn]]) -> dict[str, Any]:
    devices = {str(n): {
        "offsets_s": device_offsets(n, trace.duration_s),
        "order": [[t.policy for t in step if t.repeat == repeat] for repeat in range(config.repeats)],
        "policies": {spec: _policy_summary([t for t in step if t.policy == spec], config.requests_per_turn)
                     for spec in config.policies},
        "server": _server_summary(step)} for n, step in turns.items()}
    requests = [{"devices": t.devices, "repeat": t.repeat, "policy": t.policy, "device": k,
                 "run_s": t.started_s + r.arrival_s, **r.to_dict()}
                for step in turns.values() for t in step for k, run in enumerate(t.runs) for r in run]
    return {"model": config.model, "server_url": url, "trace": trace.name, "trace_duration_s": trace.duration_s,
            "duration_s": config.duration_s, "fps": config.fps, "repeats": config.repeats,
            "device_local_s": config.device_local_s, "rtt_s": config.rtt_s, "policies": list(config.policies),
            "devices": devices, "requests": requests}


def _print_table(config: FleetConfig, devices: int, step: dict[str, Any], console: Console) -> None:
    server = step["server"]
    table = Table(title=f"{devices} device{'s' if devices > 1 else ''} × {config.fps:g} requests/s against one "
                        f"server: {config.repeats} × {config.duration_s:g} s per policy, taking turns · device: "
                        f"whole model in {config.device_local_s * 1e3:.0f} ms · server busy "
                        f"{server['utilisation']:.0%} over all turns")
    for column in ("policy", "mean ms", "± sd over repeats", "repeat means", "p50 ms", "p95 ms", "answered", "lost",
                   "fallbacks", "server busy", "mean batch", "queue p95 ms", "options chosen"):
        table.add_column(column, justify="left" if column in ("policy", "options chosen") else "right")
    for spec, p in step["policies"].items():
        means = p["repeats_mean_ms"]
        s = p["server"]
        table.add_row(spec, f"{p['mean_ms']:.0f}", f"{statistics.stdev(means):.0f}" if len(means) > 1 else "-",
                      " ".join(f"{m:.0f}" for m in means), f"{p['p50_ms']:.0f}", f"{p['p95_ms']:.0f}",
                      f"{p['answered']}/{p['count']}", str(p["count"] - p["answered"]), str(p["fallbacks"]),
                      f"{s['utilisation']:.0%}", "-" if s["mean_batch"] is None else f"{s['mean_batch']:.2f}",
                      "-" if s["queue_p95_ms"] is None else f"{s['queue_p95_ms']:.1f}",
                      ", ".join(f"{k} {v}" for k, v in list(p["cuts"].items())[:3]))
    console.print(table)


def _write(config: FleetConfig, document: dict[str, Any], turns: dict[int, list[Turn]]) -> None:
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(document, indent=1) + "\n")
    plt = _pyplot()
    _plot_latency(plt, document, out / "latency.png")
    _plot_options(plt, document, out / "options.png")
    _plot_queue(plt, config, turns, out / "queue.png")


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_latency(plt: Any, document: dict[str, Any], path: Path) -> None:
    """Per policy: mean latency (± sd over repeats) and p95 against the number of devices."""
    counts = [int(n) for n in document["devices"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for k, spec in enumerate(document["policies"]):
        steps = [document["devices"][str(n)]["policies"][spec] for n in counts]
        colour = plt.get_cmap("tab10")(k % 10)
        ax.errorbar(counts, [p["mean_ms"] for p in steps], capsize=3, marker="o", color=colour, label=f"{spec} mean",
                    yerr=[statistics.stdev(p["repeats_mean_ms"]) if len(p["repeats_mean_ms"]) > 1 else 0
                          for p in steps])
        ax.plot(counts, [p["p95_ms"] for p in steps], ls="--", color=colour, label=f"{spec} p95")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_xlabel("devices sharing the server")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{document['model']} · {document['fps']:g} requests/s per device · {document['trace']}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_options(plt: Any, document: dict[str, Any], path: Path) -> None:
    """Per policy: the share of each option chosen, stacked, against the number of devices."""
    counts = list(document["devices"])
    policies = document["policies"]
    options = sorted({o for step in document["devices"].values() for p in step["policies"].values() for o in p["cuts"]})
    colours = {o: plt.get_cmap("tab20")(i % 20) for i, o in enumerate(options)}
    fig, axes = plt.subplots(1, len(policies), figsize=(3.2 * len(policies) + 1.5, 4), sharey=True,
                             layout="constrained", squeeze=False)
    for ax, spec in zip(axes[0], policies):
        bottom = [0.0] * len(counts)
        for option in options:
            shares = [document["devices"][n]["policies"][spec]["cuts"].get(option, 0) /
                      document["devices"][n]["policies"][spec]["count"] for n in counts]
            ax.bar(counts, shares, bottom=bottom, color=colours[option], label=option)
            bottom = [b + s for b, s in zip(bottom, shares)]
        ax.set_title(spec)
        ax.set_xlabel("devices")
    axes[0][0].set_ylabel("share of requests")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[o]) for o in options]
    fig.legend(handles, options, fontsize=7, loc="outside right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_queue(plt: Any, config: FleetConfig, turns: dict[int, list[Turn]], path: Path) -> None:
    """Per number of devices: each answer's queue wait at the server (its Server-Timing) over the run, coloured
    by the policy whose turn it was."""
    colours = {spec: plt.get_cmap("tab10")(k % 10) for k, spec in enumerate(config.policies)}
    fig, axes = plt.subplots(len(turns), 1, figsize=(11, 2.2 * len(turns) + 0.5), layout="constrained",
                             squeeze=False)
    for ax, (devices, step) in zip(axes[:, 0], turns.items()):
        origin = min(t.started_s for t in step)
        for spec in config.policies:
            answered = [(t.started_s - origin + r.arrival_s, r.queue_s * 1e3)
                        for t in step if t.policy == spec for r in t.records if r.queue_s is not None]
            ax.scatter([a for a, _ in answered], [q for _, q in answered], s=5, color=colours[spec], label=spec)
        for t in step:
            ax.axvline(t.started_s - origin, color="grey", lw=0.5, alpha=0.5)
        ax.set_ylabel(f"{devices} device{'s' if devices > 1 else ''}\nqueue (ms)")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(handles=[plt.Line2D([], [], marker="o", ls="", color=colours[s], label=s)
                               for s in config.policies], fontsize=7, ncol=len(config.policies), loc="upper right")
    axes[-1, 0].set_xlabel("time since the first turn with this many devices (s); grey lines: a turn begins")
    fig.suptitle("The server's queue wait per answer, turn by turn")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _listed(counts: tuple[int, ...]) -> str:
    return ",".join(map(str, counts)) or "none"
