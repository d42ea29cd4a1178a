"""``edgesplit demo``: real edge servers, real device clients and links that follow a real uplink trace.

The servers (``edgesplit serve``, each in its own process) and the devices (threads of this process) hold
the pretrained EfficientNet-Lite0; each device serves scikit-image photos at ``fps`` over ``segments``
consecutive segments of the trace. The device is emulated: this machine's profile, measured at the start,
slowed so that the whole model takes ``device_local_s`` (350 ms: a small ARM board; a fixed time rather
than a fixed factor, so the demo does not depend on how fast this machine happens to be), its time split
over the model by FLOPs unless ``device_shape`` is ``measured``; each head, tail or local call is
stretched to that profile's time (:class:`~edgesplit.runtime.device_engines.EmulatedDevice`).
The servers run at this machine's real speed. The link is the application shaper by default
(:mod:`edgesplit.netem.app`) or, with ``netns``, kernel shaping in network namespaces
(:mod:`edgesplit.netem.kernel`, root only). Every answer's top-1 is compared with the local model's.

Within a segment every policy meets the same conditions: on the application shaper the policies run at
the same time, each device with its own identical replica of the link (the same trace, restarted at the
same instant) and of the edge server (one ``edgesplit serve`` process each: no policy queues behind
another's requests), so they share this machine's noise moment by moment instead of meeting it one after
another. The emulated devices replay each result they computed once (:class:`EmulatedDevice` with
``replay``), so they do not take the processor from the servers, and the servers run one thread each with
OpenMP waiting passively, so that two computing at once do not slow each other down (each measures its
profile that way too). Kernel shaping has one link, so there
the policies take turns within each segment, in an order that rotates from segment to segment.

Each segment is led in by the ``lead_in_s`` of the trace before it (whole request periods), which every
device runs as usual but which is not counted: the devices enter the segment as they would mid-run,
knowing their link, instead of connecting at its first request. How a device that has just connected
fares is the simulator's and the tests' business; ten cold starts in 500 requests were most of what dsc
lost to best-static segment by segment (docs/netem.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rich.console import Console
from rich.table import Table

from edgesplit.device import DeviceConfig, RequestRecord, summarize
from edgesplit.energy import PHONE_COMPUTE_W
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.images import load_images
from edgesplit.latency import LinkState, Option, build_options, find_option
from edgesplit.outputs import Postprocess, answer_digest
from edgesplit.policies import allowed_options, check_policy, make_policy
from edgesplit.profile import Profile, read_agreement, with_agreement, with_slowdown
from edgesplit.runtime.client import ClientConfig, DeviceClient, fetch_server_profile
from edgesplit.runtime.transport import HttpTransport, TransportError
from edgesplit.traces import RateTrace, read_trace

if TYPE_CHECKING:
    import numpy as np

    from edgesplit.runtime.device_engines import EmulatedDevice

DEFAULT_TRACE = Path(__file__).resolve().parent / "data" / "verizon-lte-driving-704s.up"
DEFAULT_POLICIES = ("dsc", "best-static", "local", "offload", "oracle")
DEVICE_REPEATS = 9  # timed runs of the model, back to back, for the emulated device's profile
DEVICE_SHAPES = ("flops", "measured")  # how the emulated device's time splits over the model
T = TypeVar("T")


@dataclass(frozen=True)
class DemoConfig:
    model: str = "efficientnet_lite0_pretrained"
    trace: Path = DEFAULT_TRACE
    duration_s: float = 25.0  # of each segment
    segments: int = 5
    start_s: float = 0.0  # where the first segment starts in the trace
    side_by_side: bool = True  # the policies at the same time on replicas; else they take turns
    policies: tuple[str, ...] = DEFAULT_POLICIES
    estimator: str = "harmonic"
    fps: float = 2.0
    rtt_s: float = 0.04
    deadline_s: float | None = None  # None: the device's default (twice its whole-model time)
    device_local_s: float = 0.35
    codecs: tuple[str, ...] = ("fp32", "fp16", "int8")
    lossy: bool = True
    private: bool = False
    netns: bool = False
    out_dir: Path = Path("out/demo")
    hedge: bool = False  # the device runs the rest itself while it waits; the first answer wins
    min_agreement: float | None = None  # lossy options only where measured to agree this often (not --lossy)
    fidelity: Path | None = None  # the measured agreements (fidelity.json of edgesplit fidelity)
    radio: str = "lte"  # the devices' radio and processor power, for their energy (docs/energy.md)
    compute_w: float = PHONE_COMPUTE_W
    lead_in_s: float = 2.0  # of the trace before each segment, run but not counted
    device_shape: str = "flops"  # how the device's time splits over the model (emulated_profiles)

    @property
    def lead_requests(self) -> int:
        """The requests of the lead-in: it rounded up to whole request periods, so that each segment's counted
        requests arrive from its start on, as without one."""
        return math.ceil(self.lead_in_s * self.fps - 1e-9)

    @property
    def lead_s(self) -> float:
        return self.lead_requests / self.fps

    def played(self, full: RateTrace, start_s: float) -> RateTrace:
        """What the link replays for the segment that starts at ``start_s``: its lead-in, then the segment."""
        return full.segment((start_s - self.lead_s) % full.duration_s, self.lead_s + self.duration_s)

    @property
    def device(self) -> DeviceConfig:
        """What every emulated device of the demo assumes and does (and the simulator's device, to compare)."""
        return DeviceConfig(rtt_s=self.rtt_s, deadline_s=self.deadline_s, hedge=self.hedge, radio=self.radio,
                            compute_w=self.compute_w)


class EmulatedLink(Protocol):
    """What the demo needs of a link emulation (:class:`AppLink`, :class:`KernelLinkAdapter`)."""

    describe: str
    replicable: bool  # identical copies can run side by side (:meth:`replica`)

    def replica(self) -> EmulatedLink: ...
    def restart(self, trace: RateTrace | None = None, at: float | None = None) -> None: ...
    def truth(self) -> LinkState: ...
    def connect(self, url: str) -> HttpTransport: ...
    def device_side(self) -> contextlib.AbstractContextManager[None]: ...
    def server_command(self, argv: list[str]) -> list[str]: ...
    def server_url(self, port: int) -> str: ...


class AppLink:
    """The application shaper: the device's transport paces uploads; the server listens on loopback."""

    replicable = True

    def __init__(self, trace: RateTrace, rtt_s: float) -> None:
        from edgesplit.netem.app import PacedLink

        self.link = PacedLink(trace, rtt_s)
        self.describe = (f"application shaper (paced uploads, RTT {rtt_s * 1e3:.0f} ms added in user space; one "
                         "replica of the link and of the server per policy, run side by side)")

    def replica(self) -> AppLink:
        return AppLink(self.link.clock.trace, self.link.rtt_s)

    def restart(self, trace: RateTrace | None = None, at: float | None = None) -> None:
        self.link.restart(trace, at)

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

    replicable = False

    def __init__(self, link: Any) -> None:
        self.link = link
        self.describe = (f"kernel shaping (a tc HTB class on a veth pair between network namespaces, following the "
                         f"trace every {link.update_s * 1e3:.0f} ms; RTT {link.rtt_s * 1e3:.0f} ms from a delaying relay; "
                         "the policies take turns)")

    def replica(self) -> EmulatedLink:
        raise EdgesplitError("a kernel link cannot be replicated")

    def restart(self, trace: RateTrace | None = None, at: float | None = None) -> None:
        time.sleep(max(0.0, (at or 0.0) - time.perf_counter()))  # the kernel link starts when told
        self.link.restart(trace)

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
class Segment:
    """One segment of the trace and every policy's requests over it (arrival times from the trace's start);
    ``played`` is what the link replayed: the lead-in, then the segment."""

    start_s: float
    trace: RateTrace
    played: RateTrace
    runs: dict[str, list[RequestRecord]]


@dataclass(frozen=True)
class LiveResult:
    """Every policy's requests, segment by segment, and what they were decided with."""

    segments: list[Segment]
    measured: Profile  # this machine, measured by the device (the emulated device is this, slowed)
    device: Profile  # the emulated device
    server: Profile  # the server's own profile, from GET /v1/profile
    options: list[Option]
    allowed: list[Option]
    reference: list[str]  # what the local model answers per photo (edgesplit.outputs.answer_digest)
    setup_s: float

    def runs(self) -> dict[str, list[RequestRecord]]:
        """Every policy's requests over all segments."""
        return {spec: [r for segment in self.segments for r in segment.runs[spec]] for spec in self.segments[0].runs}


def run_demo(config: DemoConfig, console: Console) -> dict[str, Any]:
    """Run every policy over each trace segment; print, plot and write the results."""
    started = time.perf_counter()
    result = run_live(config, console)
    deadline = config.device.deadline_for(find_option(result.options, "local").head_s)
    overall = {spec: _summary(records, result.reference, deadline) for spec, records in result.runs().items()}
    per_segment = [{spec: _summary(records, result.reference, deadline) for spec, records in seg.runs.items()}
                   for seg in result.segments]
    _print_summary(overall, per_segment, config, console)
    _write(config, result, overall, per_segment, console)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s (setup {result.setup_s:.0f} s)")
    return overall


def run_live(config: DemoConfig, console: Console) -> LiveResult:
    """Start the link and the server, measure this machine, and run the policies over every segment."""
    if not config.policies:
        raise EdgesplitError("no policy to run: --policies is empty")
    for spec in config.policies:
        check_policy(spec)  # unknown names fail before anything starts
        if config.private and spec.startswith("offload"):
            raise EdgesplitError(f"--private keeps the input on the device, so policy {spec!r} cannot run; "
                                 "drop it from --policies")
    if config.segments < 1:
        raise EdgesplitError(f"--segments must be at least 1, got {config.segments}")
    check_device_shape(config.device_shape)
    if not (math.isfinite(config.lead_in_s) and config.lead_in_s >= 0):
        raise EdgesplitError(f"--lead-in must be a number of seconds >= 0, got {config.lead_in_s!r}")
    full = read_trace(config.trace)  # segments past its end wrap around to its start
    starts = [config.start_s + k * config.duration_s for k in range(config.segments)]
    segments = [full.segment(start, config.duration_s) for start in starts]
    from edgesplit.analysis import analyze
    from edgesplit.models import load_model

    started = time.perf_counter()
    with _link(config, segments[0]) as link, _servers(config, link, console) as urls:
        url = urls[0]
        loaded = load_model(config.model)
        analysis = analyze(loaded.module, loaded.native_input_shape, name=config.model)
        console.print(f"device: {config.model} ({loaded.weights}); measuring this machine's profile…")
        measured, device = emulated_profiles(analysis, config.device_local_s, console, loaded.normalization,
                                             loaded.postprocess, config.device_shape)
        with link.device_side(), HttpTransport(url) as http:
            server = fetch_server_profile(http, url)
        if server is None:
            raise EdgesplitError(f"the edge server at {url} serves no profile")
        if config.fidelity:
            device = with_agreement(device, read_agreement(config.fidelity))
        options = build_options(device, server, codecs=config.codecs, private=config.private)
        allowed = allowed_options(options, config.private, config.lossy, config.min_agreement,
                                  jpeg=config.min_agreement is not None)  # JPEG competes under a budget only
        engine, photos = replaying_device(analysis, loaded.normalization, device, allowed, loaded.postprocess)
        reference = [answer_digest(engine.engine.local(engine.normalize(p))) for p in photos]
        setup_s = time.perf_counter() - started
        console.print(f"link: {link.describe}; trace {full.name}, {config.segments} segment(s) of "
                      f"{config.duration_s:g} s · {len(allowed)} options · setup {setup_s:.0f} s")
        runner = _Runner(config, urls, engine, photos, options, allowed, console)
        done = []
        for k, (start_s, trace) in enumerate(zip(starts, segments)):
            console.rule(f"segment {k + 1}/{config.segments}: {start_s:g}–{start_s + config.duration_s:g} s of "
                         f"{full.name}, mean {trace.mean_bps() / 1e6:.2f} Mbit/s")
            played = config.played(full, start_s)
            done.append(Segment(start_s, trace, played, runner.segment(k, start_s, trace, played, link)))
    return LiveResult(done, measured, device, server, options, allowed, reference, setup_s)


def check_device_shape(shape: str) -> None:
    if shape not in DEVICE_SHAPES:
        raise EdgesplitError(f"unknown device shape {shape!r}; choose one of {', '.join(DEVICE_SHAPES)}")


def simulate_segment(spec: str, options: list[Option], allowed: list[Option], counted: RateTrace,
                     played: RateTrace, config: DemoConfig) -> list[RequestRecord]:
    """What the simulator predicts for policy ``spec`` over one demo segment (``counted``, best-static's
    mean): the link replaying ``played`` (the lead-in, then the segment), a device serving one request at a
    time as the live client does, and the segment's requests only."""
    from edgesplit.sim import SimConfig, Workload, simulate

    policy = make_policy(spec, options, LinkState(counted.mean_bps(), config.rtt_s))
    records = simulate(policy, make_estimator(config.estimator), allowed, played,
                       Workload(fps=config.fps, duration_s=config.lead_s + config.duration_s),
                       SimConfig(config.device, sequential=True, max_batch_size=1))
    return records[config.lead_requests:]


def emulated_profiles(analysis: Any, device_local_s: float, console: Console, normalization: Any,
                      postprocess: Postprocess | None = None, shape: str = "measured") -> tuple[Profile, Profile]:
    """This machine's profile at batch 1, and the emulated device's: that profile slowed so that the whole
    model takes ``device_local_s``; ``postprocess``: the model's, priced in both.

    ``shape`` says how the device's time splits over the model: ``measured``, as this machine's per-layer
    times split it (back to back, the median of ``DEVICE_REPEATS`` runs: the emulated device replays its
    computations and sleeps to the profile's times, so this CPU's slowness after idling, which lands at the
    start of every run and so in every head, must not shape it); ``flops``, in proportion to each head's
    multiply-adds, the same on every run. This machine's split moves with its load: three demo runs of one
    day measured the head up to ``conv2d_17`` at 48 %, 73 % and 70 % of the whole model (FLOPs: 33 %), and
    with it which option wins (docs/netem.md)."""
    from edgesplit.measure import measure

    check_device_shape(shape)
    cuts = analysis.natural_bottlenecks()
    if shape == "flops" and not any(c.head_flops + c.tail_flops for c in cuts):
        raise EdgesplitError(f"{analysis.model}'s FLOPs could not be counted, so they cannot shape the device: "
                             "use --device-shape measured")
    measured = measure(analysis, cuts, role="device", batch_sizes=(1,),
                       method="per-node" if shape == "measured" else "flops", repeats=DEVICE_REPEATS,
                       normalization=normalization, postprocess=postprocess)
    slowdown = device_local_s / measured.model_s[1].median_s
    if slowdown < 1:
        raise EdgesplitError(f"this machine takes {measured.model_s[1].median_s * 1e3:.0f} ms for the whole model: "
                             f"an emulated device cannot be faster (--device-ms {device_local_s * 1e3:g})")
    console.print(f"emulated device: this machine slowed {slowdown:.1f}× (whole model "
                  f"{measured.model_s[1].median_s * 1e3:.0f} → {device_local_s * 1e3:.0f} ms), its time split over "
                  f"the model {'in proportion to FLOPs' if shape == 'flops' else 'as measured here'}")
    return measured, with_slowdown(measured, slowdown)


def replaying_device(analysis: Any, normalization: Any, device: Profile, allowed: list[Option],
                     postprocess: Postprocess | None = None) -> tuple[EmulatedDevice, list[np.ndarray]]:
    """The emulated device (:class:`EmulatedDevice` with ``replay``), every head it may run already built,
    and the photos it serves; ``postprocess``: the model's (a segmenter's classes, a detector's boxes)."""
    from edgesplit.runtime.device_engines import EmulatedDevice, TorchEngine

    engine = EmulatedDevice(TorchEngine(analysis, normalization, postprocess), device, replay=True)
    photos = load_images(None, engine.input_shape)
    for option in allowed:
        if option.cut is not None:  # build every head now, not during the first request at it
            engine.engine.head(option.cut, engine.normalize(photos[0]))
    return engine, photos


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
def _servers(config: DemoConfig, link: EmulatedLink, console: Console) -> Iterator[list[str]]:
    """``edgesplit serve`` in processes of their own (batch size 1: answers stay bit-exact), one per policy
    where the policies run side by side (identical edges: no policy queues behind another's requests), else
    one; their URLs once ready. The first measures its profile once the others are up, so that their
    start does not disturb it; the replicas are started the same way but need none."""
    ports = free_ports(len(config.policies) if link.replicable and config.side_by_side else 1)

    def command(port: int, *profile: str) -> list[str]:
        return link.server_command([sys.executable, "-m", "edgesplit", "serve", config.model, "--port", str(port),
                                    "--max-batch-size", "1", "--warm-up", *profile])

    urls = [link.server_url(port) for port in ports]
    logs = [config.out_dir / ("server.log" if k == 0 else f"server-{k + 1}.log") for k in range(len(ports))]
    replicas = [(command(port), url, log) for port, url, log in zip(ports[1:], urls[1:], logs[1:])]
    profiled = command(ports[0], "--profile", "--profile-idle-ms", str(idle_s_at(config.fps) * 1000))
    # the replicas share this machine's cores: one thread each, so that two computing at once do not slow
    # each other down, and no OpenMP thread spinning after a batch (profiled the same way: as they serve)
    env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"} if replicas else None
    with server_processes(replicas, link.device_side, env), \
            server_processes([(profiled, urls[0], logs[0])], link.device_side, env) as (first,):
        console.print(f"edge server ready at {urls[0]} (pid {first.pid}, log {logs[0]})"
                      + (f"; {len(replicas)} identical replicas, one per policy" if replicas else ""))
        yield urls


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback now (the kernel's picks)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


@contextlib.contextmanager
def server_processes(commands: list[tuple[list[str], str, Path]],
                     reach: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
                     env: dict[str, str] | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start every ``(argv, url, log_path)`` (an ``edgesplit serve`` command, its output in ``log_path``) at
    once, with ``env`` added to this process's environment, wait until each ``url`` answers ``/healthz``
    (from inside ``reach()``, e.g. a network namespace), and stop them all on exit."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for argv, _, log_path in commands:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "w") as log:
                processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                  env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}))
        for process, (_, url, log_path) in zip(processes, commands):
            _wait_until_ready(url, process, log_path, reach)
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def server_process(argv: list[str], url: str, log_path: Path,
                   reach: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`server_processes` for one command."""
    with server_processes([(argv, url, log_path)], reach) as (process,):
        yield process


@contextlib.contextmanager
def loopback_server(command: Callable[[int], list[str]], log_path: Path) -> Iterator[str]:
    """``command(port)`` (a server listening on ``port``) run by :func:`server_process` on a free loopback
    port; its URL once it answers."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with server_process(command(port), url, log_path):
        yield url


def idle_s_at(fps: float) -> float:
    """How long a machine idles between two requests at ``fps``, about: for profiling as it will run."""
    return min(0.5, 0.8 / fps)


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


class _Runner:
    """Runs every policy over one segment, each as a device of its own (:class:`DeviceClient`)."""

    def __init__(self, config: DemoConfig, urls: list[str], engine: Any, photos: list[Any], options: list[Option],
                 allowed: list[Option], console: Console) -> None:
        self.config, self.urls, self.engine, self.photos = config, urls, engine, photos
        self.options, self.allowed, self.console = options, allowed, console
        self._print = threading.Lock()

    def segment(self, k: int, start_s: float, trace: RateTrace, played: RateTrace,
                link: EmulatedLink) -> dict[str, list[RequestRecord]]:
        """Every policy's counted requests over the segment ``trace`` (best-static's mean), the link replaying
        ``played`` (its lead-in, then ``trace``)."""
        specs = list(self.config.policies)
        if not (link.replicable and self.config.side_by_side):  # taking turns, first in turn rotating
            order = specs[k % len(specs):] + specs[:k % len(specs)]
            runs = {spec: self.policy(spec, self.urls[0], start_s, trace, played, link) for spec in order}
            return {spec: runs[spec] for spec in specs}
        links = [link] + [link.replica() for _ in specs[1:]]
        began: list[float] = []  # one instant for every replica, set once all have connected
        start = threading.Barrier(len(specs), action=lambda: began.append(time.perf_counter() + 0.05), timeout=120)
        jobs = [lambda spec=spec, url=url, replica=replica: self.policy(spec, url, start_s, trace, played, replica,
                                                                         start, began)
                for spec, url, replica in zip(specs, self.urls, links)]
        return dict(zip(specs, run_together(jobs, start, [f"demo-{spec}" for spec in specs])))

    def policy(self, spec: str, url: str, start_s: float, trace: RateTrace, played: RateTrace, link: EmulatedLink,
               start: threading.Barrier | None = None, began: list[float] | None = None) -> list[RequestRecord]:
        """One policy's device (talking to the server at ``url``) over the lead-in and the segment, and its
        requests in the segment; with ``start``, it begins together with the others, at the instant the
        barrier's action puts in ``began``."""
        config = self.config
        lead = config.lead_requests
        policy = make_policy(spec, self.options, LinkState(trace.mean_bps(), config.rtt_s))
        with link.device_side(), DeviceClient(url, self.engine, self.allowed, policy,
                                              make_estimator(config.estimator), ClientConfig(config.device),
                                              connect=lambda: link.connect(url), truth=link.truth) as client:
            link.restart(played)  # the probe on connecting sees the link as it is at the start (as in the simulator)
            connected = client.connect()
            if start is not None:
                start.wait()
            t0 = began[0] if began else time.perf_counter()
            link.restart(played, at=t0)
            client.epoch = t0 - (start_s - config.lead_s)
            self._say(f"{spec:<11} {connected}")
            for index in range(lead + math.ceil(config.duration_s * config.fps - 1e-9)):
                arrival = t0 + index / config.fps
                time.sleep(max(0.0, arrival - time.perf_counter()))
                r = client.infer(self.photos[index % len(self.photos)], arrived=arrival)
                where = r.cut or ("whole model" if r.executed == "local" else "input")
                note = f"  fallback: {r.fallback_reason}" if r.fallback_reason else ""
                self._say(f"{spec:<11} t={r.arrival_s:6.1f} s  true {r.true_bps / 1e6:6.2f}  est "
                          f"{r.estimated_bps / 1e6:6.2f} Mbit/s  {r.executed:<7} {where:<22} {r.codec:<5} "
                          f"{r.latency_s * 1e3:7.0f} ms  {_said(r)}{note}"
                          f"{'  (lead-in)' if index < lead else ''}")
        return client.records[lead:]

    def _say(self, line: str) -> None:
        with self._print:
            self.console.print(line, highlight=False)


def run_together(jobs: list[Callable[[], T]], start: threading.Barrier, names: list[str]) -> list[T]:
    """Run each job in its own thread (named ``names``), all at once, and return their results in order;
    the first failure is re-raised here, once ``start`` is broken so that no job waits at it for one that
    failed."""
    results: list[Any] = [None] * len(jobs)
    failures: list[BaseException] = []

    def run(k: int) -> None:
        try:
            results[k] = jobs[k]()
        except BaseException as exc:  # noqa: BLE001 — re-raised below, in the caller's thread
            failures.append(exc)
            start.abort()

    threads = [threading.Thread(target=run, args=(k,), name=name) for k, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return results


def _said(record: RequestRecord) -> str:
    """What the answer said, in a few characters: a classifier's class, else the answer's digest."""
    return f"top1 {record.top1}" if record.top1 is not None else f"answer {record.answer}"


def _summary(records: list[RequestRecord], reference: list[str], deadline_s: float | None) -> dict[str, Any]:
    """The one summary of requests, with what only a live run knows: how many answers said what the local
    model says (the class, or the class of every pixel), and what each said."""
    return {**summarize(records, deadline_s),
            "same_answer_as_local": sum(r.answer == reference[r.index % len(reference)] for r in records),
            "labels": [r.top1 for r in records] if all(r.top1 is not None for r in records)
            else [r.answer for r in records]}


def _print_summary(overall: dict[str, Any], per_segment: list[dict[str, Any]], config: DemoConfig,
                   console: Console) -> None:
    table = Table(title=f"{config.model} over {Path(config.trace).name}: {config.segments} × {config.duration_s:g} s, "
                        f"{config.fps:g} requests/s, device: whole model in {config.device_local_s * 1e3:.0f} ms")
    for column in ("policy", "mean ms", "± sd over segments", "segment means", "p95 ms", "KiB sent", "probed KiB/s",
                   f"mJ ({config.radio})", "fallbacks", "answer = local", "options chosen"):
        table.add_column(column, justify="left" if column in ("policy", "options chosen") else "right")
    for spec, s in overall.items():
        means = [segment[spec]["mean_ms"] for segment in per_segment]
        chosen = ", ".join(f"{k} {v}" for k, v in list(s["cuts"].items())[:3])
        table.add_row(spec, f"{s['mean_ms']:.0f}", f"{statistics.stdev(means):.0f}" if len(means) > 1 else "-",
                      f"{min(means):.0f}–{max(means):.0f}", f"{s['p95_ms']:.0f}", f"{s['mean_bytes'] / 1024:.1f}",
                      f"{s['probe_bytes_per_s'] / 1024:.1f}", f"{s['mean_energy_mj']:.0f}", str(s["fallbacks"]),
                      f"{s['same_answer_as_local']}/{s['count']}", chosen)
    console.print(table)
    if "dsc" in overall:
        for other in (p for p in ("best-static", "local") if p in overall):
            wins = sum(segment["dsc"]["mean_ms"] <= segment[other]["mean_ms"] for segment in per_segment)
            console.print(f"dsc's mean ≤ {other}'s on {wins}/{len(per_segment)} segments "
                          f"({overall['dsc']['mean_ms']:.0f} vs {overall[other]['mean_ms']:.0f} ms overall)")
    same = all(s["same_answer_as_local"] == s["count"] for s in overall.values())
    console.print("every answer says what the local model's says (its top-1 class, or the class of every pixel) "
                  "under every policy" if same else
                  "[bold red]some answers differ from the local model's[/] (lossy codecs: rerun with "
                  "--exact for bit-exact options only)")


def _write(config: DemoConfig, result: LiveResult, overall: dict[str, Any], per_segment: list[dict[str, Any]],
           console: Console) -> None:
    from edgesplit.sim.plots import plot_cdf, plot_timeline

    out, runs = config.out_dir, result.runs()
    name = f"{Path(config.trace).name} (live)"
    plot_timeline(runs, name, out / "timeline.png")
    plot_cdf(runs, name, out / "cdf.png")
    (out / "device-profile.json").write_text(json.dumps(result.device.to_dict(), indent=1) + "\n")
    (out / "server-profile.json").write_text(json.dumps(result.server.to_dict(), indent=1) + "\n")
    document = {"trace": Path(config.trace).name, "duration_s": config.duration_s, "lead_in_s": config.lead_s,
                "fps": config.fps,
                "rtt_s": config.rtt_s, "device_local_s": config.device_local_s,
                "link": "netns" if config.netns else "app", "policies": overall,
                "segments": [{"start_s": segment.start_s, "policies": summaries}
                             for segment, summaries in zip(result.segments, per_segment)],
                "requests": {spec: [{"segment": k, **r.to_dict()} for k, segment in enumerate(result.segments)
                                    for r in segment.runs[spec]] for spec in runs}}
    (out / "demo.json").write_text(json.dumps(document, indent=1) + "\n")
    console.print(f"wrote {out / 'demo.json'}, {out / 'timeline.png'}, {out / 'cdf.png'}, the profiles "
                  f"(device-profile.json: the emulated device; server-profile.json) and the servers' logs (server*.log)")
