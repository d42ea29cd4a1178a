"""``edgesplit demo``: a real edge server, a real device client and a link that follows a real uplink trace.

The server (``edgesplit serve``, its own process) and the device (this process) hold the pretrained
EfficientNet-Lite0; the device serves scikit-image photos at ``fps`` and, per policy in turn, replays the
same trace segment from its start. The device is emulated: this machine's profile, measured at the start,
slowed so that the whole model takes ``device_local_s`` (350 ms: a small ARM board; a fixed time rather
than a fixed factor, so the demo does not depend on how fast this machine happens to be); each head, tail
or local run really computes and is stretched to that profile's time (:class:`~edgesplit.runtime.device_engines.EmulatedDevice`). The
server runs at this machine's real speed. The link is the application shaper by default
(:mod:`edgesplit.netem.app`) or, with ``netns``, kernel shaping in network namespaces
(:mod:`edgesplit.netem.kernel`, root only). Every answer's top-1 is compared with the local model's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.images import load_images
from edgesplit.latency import LinkState, Option, build_options
from edgesplit.policies import allowed_options, make_policy
from edgesplit.profile import Profile, with_slowdown
from edgesplit.runtime.client import ClientConfig, DeviceClient, RequestRecord, fetch_server_profile
from edgesplit.runtime.transport import HttpTransport, TransportError
from edgesplit.sim.loop import Request, summarize
from edgesplit.traces import RateTrace, read_trace

DEFAULT_TRACE = Path(__file__).resolve().parent / "data" / "verizon-lte-driving-704s.up"
DEFAULT_POLICIES = ("dsc", "best-static", "local", "offload", "oracle")


@dataclass(frozen=True)
class DemoConfig:
    model: str = "efficientnet_lite0_pretrained"
    trace: Path = DEFAULT_TRACE
    duration_s: float = 25.0
    policies: tuple[str, ...] = DEFAULT_POLICIES
    estimator: str = "harmonic"
    fps: float = 2.0
    rtt_s: float = 0.04
    deadline_s: float | None = 1.5
    device_local_s: float = 0.35
    codecs: tuple[str, ...] = ("fp32", "fp16", "int8")
    lossy: bool = True
    private: bool = False
    netns: bool = False
    out_dir: Path = Path("out/demo")
    hedge: bool = False  # the device runs the rest itself while it waits; the first answer wins


@dataclass(frozen=True)
class LiveRequest:
    """One request of the demo: the client's record and what the link really was."""

    arrival_s: float  # trace time
    true_bps: float
    record: RequestRecord

    def as_simulated(self) -> Request:
        """The simulator's record of the same request, so that one set of plots and summaries serves both."""
        r = self.record
        return Request(r.index, self.arrival_s, r.option, r.option.partition(":")[0], r.cut, r.bytes_sent,
                       r.predicted_ms / 1e3,
                       r.latency_ms / 1e3, self.true_bps, r.estimated_mbps * 1e6, 0.0, 0.0, 0.0, 0)


class EmulatedLink(Protocol):
    """What the demo needs of a link emulation (:class:`AppLink`, :class:`KernelLinkAdapter`)."""

    describe: str

    def restart(self) -> None: ...
    def truth(self) -> LinkState: ...
    def connect(self, url: str) -> HttpTransport: ...
    def device_side(self) -> contextlib.AbstractContextManager[None]: ...
    def server_command(self, argv: list[str]) -> list[str]: ...
    def server_url(self, port: int) -> str: ...


class AppLink:
    """The application shaper: the device's transport paces uploads; the server listens on loopback."""

    def __init__(self, trace: RateTrace, rtt_s: float) -> None:
        from edgesplit.netem.app import PacedLink

        self.link = PacedLink(trace, rtt_s)
        self.describe = f"application shaper (paced uploads, RTT {rtt_s * 1e3:.0f} ms added in user space)"

    def restart(self) -> None:
        self.link.restart()

    def truth(self) -> LinkState:
        return self.link.truth()

    def connect(self, url: str) -> HttpTransport:
        from edgesplit.netem.app import ShapedTransport

        return ShapedTransport(url, self.link)

    def device_side(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def server_command(self, argv: list[str]) -> list[str]:
        return argv

    def server_url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"


class KernelLinkAdapter:
    """Kernel shaping: the server in one network namespace, the device's sockets in another."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self.describe = (f"kernel shaping (a tc HTB class on a veth pair between network namespaces, following the "
                         f"trace every {link.update_s * 1e3:.0f} ms; RTT {link.rtt_s * 1e3:.0f} ms from a delaying relay)")

    def restart(self) -> None:
        self.link.restart()

    def truth(self) -> LinkState:
        return LinkState(max(self.link.current_rate_bps(), 1.0), self.link.rtt_s)

    def connect(self, url: str) -> HttpTransport:
        return HttpTransport(url)

    def device_side(self) -> contextlib.AbstractContextManager[None]:
        return self.link.entered_device()

    def server_command(self, argv: list[str]) -> list[str]:
        return self.link.server_command(argv)

    def server_url(self, port: int) -> str:
        return self.link.expose(port)


@dataclass(frozen=True)
class LiveResult:
    """Every policy's requests, and what they were decided with."""

    runs: dict[str, list[LiveRequest]]
    trace: RateTrace  # the segment replayed
    measured: Profile  # this machine, measured by the device (the emulated device is this, slowed)
    device: Profile  # the emulated device
    server: Profile  # the server's own profile, from GET /v1/profile
    options: list[Option]
    allowed: list[Option]
    reference: list[int]  # the local model's top-1 per photo
    setup_s: float


def run_demo(config: DemoConfig, console: Console) -> dict[str, Any]:
    """Run every policy over the same trace segment; print, plot and write the results."""
    started = time.perf_counter()
    result = run_live(config, console)
    summary = {spec: _summary(requests, result.reference, config.deadline_s) for spec, requests in result.runs.items()}
    _print_summary(summary, config, console)
    _write(config, result, summary, console)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s (setup {result.setup_s:.0f} s)")
    return summary


def run_live(config: DemoConfig, console: Console) -> LiveResult:
    """Start the link and the server, measure this machine, and run each policy over the trace segment."""
    if not config.policies:
        raise EdgesplitError("no policy to run: --policies is empty")
    for spec in config.policies:
        make_policy(spec, LinkState(1e6))  # unknown names fail before anything starts
        if config.private and spec.startswith("offload"):
            raise EdgesplitError(f"--private keeps the input on the device, so policy {spec!r} cannot run; "
                                 "drop it from --policies")
    trace = read_trace(config.trace).segment(0.0, config.duration_s)
    from edgesplit.analysis import analyze
    from edgesplit.measure import measure
    from edgesplit.models import load_model
    from edgesplit.runtime.device_engines import EmulatedDevice, TorchEngine

    started = time.perf_counter()
    with _link(config, trace) as link, _server(config, link, console) as url:
        loaded = load_model(config.model)
        analysis = analyze(loaded.module, loaded.native_input_shape, name=config.model)
        console.print(f"device: {config.model} ({loaded.weights}); measuring this machine's profile…")
        # requests come about 1/fps apart: profile after as long an idle (a CPU that idled is slower for its
        # next inference); the device is emulated from these numbers, slowed
        measured = measure(analysis, analysis.natural_bottlenecks(), role="device", batch_sizes=(1,), repeats=5,
                           idle_s=_idle_s(config))
        slowdown = config.device_local_s / measured.model_s[1].median_s
        if slowdown < 1:
            raise EdgesplitError(f"this machine takes {measured.model_s[1].median_s * 1e3:.0f} ms for the whole model: "
                                 f"an emulated device cannot be faster (--device-ms {config.device_local_s * 1e3:g})")
        device = with_slowdown(measured, slowdown)
        console.print(f"emulated device: this machine slowed {slowdown:.1f}× (whole model "
                      f"{measured.model_s[1].median_s * 1e3:.0f} → {config.device_local_s * 1e3:.0f} ms)")
        with link.device_side(), HttpTransport(url) as http:
            server = fetch_server_profile(http, url)
        if server is None:
            raise EdgesplitError(f"the edge server at {url} serves no profile")
        options = build_options(device, server, codecs=config.codecs, jpeg=False, private=config.private)
        allowed = allowed_options(options, config.private, config.lossy)
        engine = EmulatedDevice(TorchEngine(analysis, loaded.normalization), device)
        photos = load_images(None, engine.input_shape)
        reference = [int(engine.engine.local(engine.normalize(p)).argmax()) for p in photos]
        for option in allowed:
            if option.cut is not None:  # build every head now, not during the first request at it
                engine.engine.head(option.cut, engine.normalize(photos[0]))
        setup_s = time.perf_counter() - started
        console.print(f"link: {link.describe}; trace {trace.name}, mean {trace.mean_bps() / 1e6:.2f} Mbit/s · "
                      f"{len(allowed)} options · setup {setup_s:.0f} s")
        runs = {spec: _run_policy(spec, config, trace, link, url, engine, photos, options, allowed, console)
                for spec in config.policies}
    return LiveResult(runs, trace, measured, device, server, options, allowed, reference, setup_s)


@contextlib.contextmanager
def _link(config: DemoConfig, trace: RateTrace) -> Iterator[EmulatedLink]:
    if not config.netns:
        yield AppLink(trace, config.rtt_s)
        return
    from edgesplit.netem.kernel import KernelLink, available

    reason = available()
    if reason:
        raise EdgesplitError(f"--netns needs kernel shaping, which is not available here: {reason}")
    with KernelLink(trace, rtt_s=config.rtt_s) as kernel:
        yield KernelLinkAdapter(kernel)


@contextlib.contextmanager
def _server(config: DemoConfig, link: EmulatedLink, console: Console) -> Iterator[str]:
    """``edgesplit serve`` in its own process (batch size 1: answers stay bit-exact); its URL once ready."""
    port = free_port()
    argv = link.server_command([sys.executable, "-m", "edgesplit", "serve", config.model, "--port", str(port),
                                "--max-batch-size", "1", "--warm-up", "--profile",
                                "--profile-idle-ms", str(_idle_s(config) * 1000)])
    url = link.server_url(port)
    with server_process(argv, url, config.out_dir / "server.log", link.device_side) as process:
        console.print(f"edge server ready at {url} (pid {process.pid}, log {config.out_dir / 'server.log'})")
        yield url


def free_port() -> int:
    """A TCP port free on loopback now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server_process(argv: list[str], url: str, log_path: Path,
                   reach: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (an ``edgesplit serve`` command) with its output in ``log_path`` until ``url`` answers
    ``/healthz`` (from inside ``reach()``, e.g. a network namespace); stop it on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        _wait_until_ready(url, process, log_path, reach)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def loopback_server(command: Callable[[int], list[str]], log_path: Path) -> Iterator[str]:
    """``command(port)`` (a server listening on ``port``) run by :func:`server_process` on a free loopback
    port; its URL once it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(command(port), url, log_path):
        yield url


def _idle_s(config: DemoConfig) -> float:
    """How long a machine idles between two requests of the demo, about: for profiling as it will run."""
    return min(0.5, 0.8 / config.fps)


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log_path: Path,
                      reach: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
    deadline = time.monotonic() + 120
    with reach():
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EdgesplitError(f"the edge server exited with code {process.returncode}; see {log_path}")
            try:
                with HttpTransport(url, timeout_s=2) as http:
                    if http.request("GET", "/healthz").status == 200:
                        return
            except TransportError:
                pass
            time.sleep(0.3)
    raise EdgesplitError(f"the edge server did not answer within 120 s; see {log_path}")


def _run_policy(spec: str, config: DemoConfig, trace: RateTrace, link: EmulatedLink, url: str, engine: Any,
                photos: list[Any], options: list[Option], allowed: list[Option], console: Console
                ) -> list[LiveRequest]:
    policy = make_policy(spec, LinkState(trace.mean_bps(), config.rtt_s))
    client_config = ClientConfig(rtt_s=config.rtt_s, deadline_s=config.deadline_s, hedge=config.hedge)
    requests: list[LiveRequest] = []
    with link.device_side(), DeviceClient(url, engine, allowed if policy.dynamic else options, policy,
                                          make_estimator(config.estimator), client_config,
                                          connect=lambda: link.connect(url), truth=link.truth) as client:
        console.rule(f"policy {spec}")
        link.restart()  # the probe on connecting sees the link as it is at the start (as in the simulator)
        console.print(client.connect())
        link.restart()
        began = time.perf_counter()
        for index in range(math.ceil(config.duration_s * config.fps - 1e-9)):
            arrival = began + index / config.fps
            time.sleep(max(0.0, arrival - time.perf_counter()))
            true_bps = link.truth().uplink_bps
            record = client.infer(photos[index % len(photos)], arrived=arrival)
            requests.append(LiveRequest(arrival - began, true_bps, record))
            where = record.cut or ("whole model" if record.executed == "local" else "input")
            note = f"  fallback: {record.fallback_reason}" if record.fallback_reason else ""
            console.print(f"{spec:<11} t={arrival - began:5.1f} s  true {true_bps / 1e6:6.2f}  est "
                          f"{record.estimated_mbps:6.2f} Mbit/s  {record.executed:<7} {where:<22} "
                          f"{record.codec:<5} {record.latency_ms:7.0f} ms  top1 {record.top1}{note}")
    return requests


def _summary(requests: list[LiveRequest], reference: list[int], deadline_s: float | None) -> dict[str, Any]:
    """The simulator's summary of the live requests, with what only a live run knows."""
    return {**summarize([r.as_simulated() for r in requests], deadline_s),
            "fallbacks": sum(r.record.fallback_reason is not None for r in requests),
            "same_top1_as_local": sum(r.record.top1 == reference[r.record.index % len(reference)] for r in requests),
            "labels": [r.record.top1 for r in requests]}


def _print_summary(summary: dict[str, Any], config: DemoConfig, console: Console) -> None:
    table = Table(title=f"{config.model} over {Path(config.trace).name} ({config.duration_s:g} s, {config.fps:g} "
                        f"requests/s, device: whole model in {config.device_local_s * 1e3:.0f} ms)")
    for column in ("policy", "mean ms", "p50 ms", "p95 ms", "KiB sent", "fallbacks", "top-1 = local",
                   "options chosen"):
        table.add_column(column, justify="left" if column in ("policy", "options chosen") else "right")
    for spec, s in summary.items():
        chosen = ", ".join(f"{k} {v}" for k, v in list(s["cuts"].items())[:3])
        table.add_row(spec, f"{s['mean_ms']:.0f}", f"{s['p50_ms']:.0f}", f"{s['p95_ms']:.0f}",
                      f"{s['mean_bytes'] / 1024:.1f}", str(s["fallbacks"]),
                      f"{s['same_top1_as_local']}/{s['count']}", chosen)
    console.print(table)
    same = all(s["same_top1_as_local"] == s["count"] for s in summary.values())
    console.print("every answer's top-1 equals the local model's under every policy" if same else
                  "[bold red]some answers differ from the local model's top-1[/] (lossy codecs: rerun with "
                  "--exact for bit-exact options only)")


def _write(config: DemoConfig, result: LiveResult, summary: dict[str, Any], console: Console) -> None:
    from edgesplit.sim.plots import plot_cdf, plot_timeline

    out, trace, runs = config.out_dir, result.trace, result.runs
    simulated = {spec: [r.as_simulated() for r in requests] for spec, requests in runs.items()}
    plot_timeline(simulated, f"{trace.name} (live)", out / "timeline.png")
    plot_cdf(simulated, f"{trace.name} (live)", out / "cdf.png")
    (out / "device-profile.json").write_text(json.dumps(result.device.to_dict(), indent=1) + "\n")
    (out / "server-profile.json").write_text(json.dumps(result.server.to_dict(), indent=1) + "\n")
    document = {"trace": trace.name, "duration_s": config.duration_s, "fps": config.fps, "rtt_s": config.rtt_s,
                "device_local_s": config.device_local_s, "link": "netns" if config.netns else "app",
                "policies": summary,
                "requests": {spec: [{"arrival_s": r.arrival_s, "true_mbps": r.true_bps / 1e6, **r.record.to_dict()}
                                    for r in requests] for spec, requests in runs.items()}}
    (out / "demo.json").write_text(json.dumps(document, indent=1) + "\n")
    console.print(f"wrote {out / 'demo.json'}, {out / 'timeline.png'}, {out / 'cdf.png'}, the profiles "
                  f"(device-profile.json: the emulated device; "
                  f"server-profile.json) and server.log")
