"""The Ray Serve backend (``edgesplit serve --backend ray``): the tails run on Ray Serve replicas.

The edgesplit front end stays the HTTP server (the device's connection ends there, so ``Server-Timing: recv``
still times the radio link, not a proxy hop); it validates and decodes each frame and hands the tensor
through a ``DeploymentHandle`` to the deployment ``tail`` of the application ``edgesplit-<model id>-<C>x<H>x<W>``.
Each replica (:class:`TailReplica`) builds its own engine from the front end's arguments (its model id must
be the front end's), runs ``--warm-up`` and the batch plan on its own node, and batches per cut with its own
:class:`~edgesplit.runtime.batcher.Batcher`. Ray Serve places the replicas, routes each request to the
shorter queue of two, holds at most ``max_ongoing_requests`` at a replica and ``max_queued_requests`` in a
front end's handle (beyond: :class:`QueueFull`, answered 503), and scales between ``--autoscale MIN,MAX``.
Ray Serve's own HTTP proxy is never started.

One application per model and input shape: a second front end for the same model attaches to the running
application and leaves its replica settings as they are; a different model gets an application of its own.
A front end that started Ray itself (no ``--ray-address``) shuts it down when it stops; one attached to a
cluster leaves the application running for the other front ends (``serve.delete(name)`` removes it).

The load report: every answer brings its replica's report and compute times; the front end keeps the last
of each replica, works off the time since (a wait drains at one second per second), forgets a replica not
heard from for ``REPORT_TTL_S`` and combines the rest (:func:`edgesplit.runtime.backends.combine_reports`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from edgesplit.analysis import analyze
from edgesplit.errors import EdgesplitError
from edgesplit.load import LoadReport
from edgesplit.models import load_model
from edgesplit.outputs import Batch, arrays, as_tensors, map_arrays
from edgesplit.runtime.backends import BackendUnavailable, combine_reports
from edgesplit.runtime.batcher import Arrival, Batcher, QueueFull, Result
from edgesplit.runtime.engines import create_tail_engine
from edgesplit.runtime.metrics import Metrics
from edgesplit.runtime.tail_engine import TailEngine

DEPLOYMENT = "tail"
CONNECT_TIMEOUT_S = 10.0  # to reach a --ray-address and join its cluster
READY_TIMEOUT_S = 600.0  # for the replicas to build their engines (and warm up) and answer
# tensors up to this size travel inside the request to the replica instead of through Ray's object store
# (Ray's default: 100 KiB); a 147 KiB uint8 image took 6.8 ms through an echo replica by the store, 4.9 inline
INLINE_TENSOR_BYTES = 8 * 1024 * 1024
# a request goes to its replica by value, over the replica's gRPC server, instead of as a Ray actor call with
# its arguments and result in Ray's object store (an echo replica answered in 2.7-3.3 ms instead of 4.2-4.6,
# p50 on this 2-core VM: benchmarks/ray_echo.py), when its tensors and its cut's last answer are at most this
# size: gRPC refuses messages over 4 MiB by default (a segmenter's raw scores at 520×520 are 22.7 MB)
BY_VALUE_MAX_BYTES = 1024 * 1024
REPORT_TTL_S = 10.0  # a replica not heard from for this long drops out of the load report
DEAD_REPLICA_RETRIES = 1  # a request whose replica died under it is sent again this many times, then 503


def application_name(model_id: bytes, input_shape: tuple[int, ...]) -> str:
    """The Ray Serve application for a model: front ends with the same weights and input share it."""
    return f"edgesplit-{model_id.hex()}-{'x'.join(map(str, input_shape))}"


@dataclass(frozen=True, kw_only=True)
class EngineRecipe:
    """How a replica builds its engine: from the front end's own arguments, so that both hold the same
    model. On a multi-node cluster ``weights`` must be readable at the same path on every node."""

    model: str
    weights: str | None
    input_shape: tuple[int, ...]
    engine: str = "torch"  # a name in edgesplit.runtime.engines.TAIL_ENGINES
    device: str = "cpu"

    def __call__(self) -> TailEngine:
        loaded = load_model(self.model, self.weights)
        analysis = analyze(loaded.module, self.input_shape, name=self.model)
        return create_tail_engine(self.engine, analysis, loaded.normalization, self.device)


@dataclass(frozen=True, kw_only=True)
class Scaling:
    """How many replicas: a fixed number, or autoscaled between ``autoscale[0]`` and ``autoscale[1]``, a
    replica added once the load has stayed above target for ``upscale_delay_s`` and removed once it has stayed
    below for ``downscale_delay_s``."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    replica_cpus: float = 1.0  # Ray CPUs per replica; torch runs that many threads there
    replica_gpus: float = 0.0  # Ray GPUs per replica: 1 for an engine on cuda (Ray hides GPUs from an actor without)
    upscale_delay_s: float = 30.0  # Ray Serve's default
    downscale_delay_s: float = 600.0  # Ray Serve's default

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise EdgesplitError(f"replicas={self.replicas}: a deployment needs at least 1 replica")
        if self.autoscale is not None and not 0 <= self.autoscale[0] <= self.autoscale[1] >= 1:
            raise EdgesplitError(f"autoscale={self.autoscale[0]},{self.autoscale[1]}: MIN,MAX needs "
                                 f"0 <= MIN <= MAX and MAX >= 1")
        if self.replica_cpus <= 0:
            raise EdgesplitError(f"replica_cpus={self.replica_cpus:g}: must be above 0")
        if self.replica_gpus < 0:
            raise EdgesplitError(f"replica_gpus={self.replica_gpus:g}: must be 0 or above")
        for name, delay in (("upscale_delay_s", self.upscale_delay_s), ("downscale_delay_s", self.downscale_delay_s)):
            if not (math.isfinite(delay) and delay >= 0):  # NaN and infinity too
                raise EdgesplitError(f"{name}={delay:g}: must be a finite number of seconds, 0 or above")

    def to_dict(self) -> dict[str, Any]:
        delays = None if self.autoscale is None else {"upscale_delay_s": self.upscale_delay_s,
                                                      "downscale_delay_s": self.downscale_delay_s}
        return {"replicas": None if self.autoscale else self.replicas,
                "autoscale": None if self.autoscale is None else list(self.autoscale),
                "autoscale_delays": delays, "replica_cpus": self.replica_cpus, "replica_gpus": self.replica_gpus}


@dataclass(frozen=True, kw_only=True)
class ReplicaSettings:
    """What every replica is told: the model id it must build, its batcher's limits, whether to warm up."""

    model_id: bytes
    max_batch_size: int
    batch_wait_timeout_s: float
    max_ongoing_requests: int
    warm_up: bool
    torch_threads: int


@dataclass(frozen=True)
class ReplicaState:
    """A replica's identity and load, sent with every answer."""

    replica: str  # Ray Serve's replica id
    actor: str  # its actor's name (namespace "serve"), for ray.get_actor / ray.kill
    node: str
    batch_plan: dict[str, Any] | None
    report: LoadReport
    compute_s: dict[int, float]  # recent compute time of a batch, by batch size


@dataclass(frozen=True)
class ReplicaAnswer:
    result: Result
    state: ReplicaState


class TailReplica:
    """One Ray Serve replica: one engine (one model copy) and one per-cut :class:`Batcher`."""

    def __init__(self, recipe: Callable[[], TailEngine], settings: ReplicaSettings) -> None:
        import torch

        torch.set_num_threads(settings.torch_threads)
        engine = recipe()
        if engine.model_id != settings.model_id:
            raise EdgesplitError(f"this replica built model id {engine.model_id.hex()}, the front end serves "
                                 f"{settings.model_id.hex()}: give every node the same weights")
        if settings.warm_up:  # on a worker thread, as the batcher runs its tails (each has its own OpenMP team)
            with ThreadPoolExecutor(1) as worker:
                worker.submit(engine.warm_up).result()
                if settings.max_batch_size > 1:
                    worker.submit(engine.plan_batching, settings.max_batch_size).result()
        self.batcher = Batcher(engine.run, Metrics(), max_batch_size=settings.max_batch_size,
                               batch_wait_timeout_s=settings.batch_wait_timeout_s,
                               max_queue=settings.max_ongoing_requests)
        context = ray.get_runtime_context()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.actor = context.get_actor_name() or ""
        self.node = context.get_node_id()
        plan = engine.batch_plan
        self.batch_plan = None if plan is None else plan.to_dict(engine.cuts)

    async def infer(self, cut: int, array: Batch) -> ReplicaAnswer:
        tensors = tuple(_writable(a) for a in as_tensors(array))
        result = await self.batcher.submit(cut, tensors if isinstance(array, tuple) else tensors[0])
        return ReplicaAnswer(result, self.state())

    async def hello(self) -> ReplicaState:
        return self.state()

    def state(self) -> ReplicaState:
        return ReplicaState(self.replica, self.actor, self.node, self.batch_plan,
                            self.batcher.report(), dict(self.batcher.recent_compute_s))


def _nbytes(tensors: Iterable[np.ndarray]) -> int:
    return sum(t.nbytes for t in tensors)


def _writable(array: np.ndarray) -> np.ndarray:
    """``array``, copied where it is read-only: Ray hands numpy arrays over zero-copy from its object store,
    read-only, both ways, and torch (a tail, a detector's post-processing) wants to own them."""
    return array if array.flags.writeable else array.copy()


@dataclass
class _Heard:
    state: ReplicaState
    at: float  # time.monotonic() when the front end received it


class RayBackend:
    """The front end's side: a handle to the deployment, and the last word of each replica."""

    name = "ray"

    def __init__(self, handle: DeploymentHandle, application: str, *, max_batch_size: int,
                 owns_ray: bool, scaling: Scaling | None) -> None:
        self.handle = handle
        self._by_value: DeploymentHandle | None = None
        self._answer_bytes: dict[int, int] = {}  # per cut, the size of its last answer
        self.application = application
        self.max_batch_size = max_batch_size
        self.owns_ray = owns_ray
        self.scaling = scaling  # None: attached to a running application, whose settings stand
        self._heard: dict[str, _Heard] = {}

    def hear(self, state: ReplicaState) -> None:
        self._heard[state.replica] = _Heard(state, time.monotonic())

    async def submit(self, cut: int, array: Batch) -> Result:
        """The output from a replica; elapsed time that was not compute counts as queue (the hop included)."""
        sent = time.perf_counter()
        handle = self.handle
        if max(_nbytes(as_tensors(array)), self._answer_bytes.get(cut, math.inf)) <= BY_VALUE_MAX_BYTES:
            self._by_value = self._by_value or self.handle.options(_by_reference=False)
            handle = self._by_value
        for attempt in range(DEAD_REPLICA_RETRIES + 1):
            try:
                answer: ReplicaAnswer = await handle.infer.remote(cut, array)
                break
            except BackPressureError as exc:
                raise QueueFull(f"{exc} (max_queued_requests: edgesplit serve --max-queue)") from exc
            except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError) as exc:
                if attempt == DEAD_REPLICA_RETRIES:
                    raise BackendUnavailable(f"no replica could take the request: {type(exc).__name__} "
                                             f"(the Ray Serve application {self.application})") from exc
        self.hear(answer.state)
        result = answer.result
        self._answer_bytes[cut] = _nbytes(arrays(result.output))
        elapsed = time.perf_counter() - sent
        return dataclasses.replace(result, output=map_arrays(_writable, result.output),
                                   queue_s=max(0.0, elapsed - result.compute_s))

    def _fresh(self) -> list[_Heard]:
        now = time.monotonic()
        for replica in [r for r, heard in self._heard.items() if now - heard.at > REPORT_TTL_S]:
            del self._heard[replica]
        return list(self._heard.values())

    def report(self) -> LoadReport:
        """The replicas' last reports, each with the time since worked off, combined."""
        now = time.monotonic()
        reports = [dataclasses.replace(h.state.report, queue_wait_s=max(0.0, h.state.report.queue_wait_s - (now - h.at)))
                   for h in self._fresh()]
        if not reports:
            return LoadReport(queue_wait_s=0.0, queue_length=0, max_batch_size=self.max_batch_size)
        return combine_reports(reports)

    def arriving(self, expected_bytes: int | None) -> AbstractContextManager[Arrival | None]:
        """Bodies being received here are no partners a replica could wait for: nothing to track."""
        return contextlib.nullcontext()

    def recent_compute_s(self) -> dict[int, float]:
        """By batch size, the mean over the replicas heard from."""
        by_size: dict[int, list[float]] = {}
        for heard in self._fresh():
            for size, seconds in heard.state.compute_s.items():
                by_size.setdefault(size, []).append(seconds)
        return {size: statistics.fmean(values) for size, values in by_size.items()}

    async def describe(self) -> dict[str, Any]:
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(self.application)
        states: dict[str, int] = {}  # RUNNING, STARTING (building its engine), STOPPING, ...
        for deployment in [] if application is None else application.deployments.values():
            for state, count in deployment.replica_states.items():
                states[state] = states.get(state, 0) + count
        running = None if application is None else states.get("RUNNING", 0)
        now = time.monotonic()
        return {"backend": self.name, "application": self.application, "deployment": DEPLOYMENT,
                "scaling": None if self.scaling is None else self.scaling.to_dict(), "replicas_running": running,
                "replica_states": states, "replicas": [{"replica": h.state.replica, "actor": h.state.actor, "node": h.state.node,
                              "heard_s_ago": round(now - h.at, 3), "load": asdict(h.state.report),
                              "compute_s": {str(k): v for k, v in sorted(h.state.compute_s.items())},
                              "batch_plan": h.state.batch_plan} for h in self._fresh()]}

    async def close(self) -> None:
        if self.owns_ray:
            await asyncio.to_thread(_shut_down)


def _shut_down() -> None:
    serve.shutdown()
    ray.shutdown()


def connect(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Join the Ray cluster at ``address``, or start a local Ray instance (bound to this machine's own
    address, without the dashboard) when there is none; True when this process started Ray. An address
    that does not accept a connection within ``timeout_s`` is an error, at once."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False,
                 _system_config={"max_direct_call_object_size": INLINE_TENSOR_BYTES})
        return True
    if address != "auto":
        _check_reachable(address, timeout_s)
    _join(address, timeout_s)
    return False


def _join(address: str, timeout_s: float) -> None:
    """``ray.init(address)`` within ``timeout_s``: on a port that accepts but is no Ray head, Ray retries for
    40 s or more, so it runs on a daemon thread that is left behind (joining starts no process here)."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            ray.init(address=address, log_to_driver=False)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)

    thread = threading.Thread(target=attempt, name="edgesplit-ray-join", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise EdgesplitError(f"--ray-address {address} accepts connections but did not let this process join "
                             f"within {timeout_s:g} s: give the head's GCS address (`ray status` on the head "
                             f"prints it) and, for a cluster with token authentication (Ray's default), set "
                             f"RAY_AUTH_MODE=token and the head's token (`ray get-auth-token` there) as "
                             f"RAY_AUTH_TOKEN or in ~/.ray/auth_token")
    if outcome[0] is not None:
        raise EdgesplitError(f"cannot join the Ray cluster at --ray-address {address}: {outcome[0]}") from outcome[0]


def _check_reachable(address: str, timeout_s: float) -> None:
    """A TCP connection to the cluster's head (``HOST:PORT``, or ``ray://HOST:PORT``) within ``timeout_s``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise EdgesplitError(f"--ray-address {address!r}: expected HOST:PORT (the head's GCS address, as "
                             f"`ray start --head` prints it, port 6379 by default) or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise EdgesplitError(f"cannot reach the Ray cluster at --ray-address {address} within {timeout_s:g} s "
                             f"({type(exc).__name__}: {exc}); start one with `ray start --head` or leave "
                             f"--ray-address out to start Ray here") from None


def start_ray_backend(recipe: Callable[[], TailEngine], engine: TailEngine, *, scaling: Scaling,
                      max_batch_size: int, batch_wait_timeout_s: float, max_queue: int, warm_up: bool,
                      owns_ray: bool, ready_timeout_s: float = READY_TIMEOUT_S) -> RayBackend:
    """Deploy (or attach to) ``engine``'s application on the Ray cluster this process joined (:func:`connect`;
    ``owns_ray``: it started that Ray, and shuts it down with the backend), wait until a replica answers,
    and return the backend a front end hands its tensors to."""
    try:
        serve.start(proxy_location="Disabled")  # the edgesplit front end is the HTTP server
        name = application_name(engine.model_id, tuple(engine.analysis.input_shape))
        if name in serve.status().applications:
            handle, own_scaling = serve.get_app_handle(name), None
        else:
            handle, own_scaling = _deploy(name, recipe, engine.model_id, scaling, max_batch_size,
                                          batch_wait_timeout_s, max_queue, warm_up), scaling
        backend = RayBackend(handle, name, max_batch_size=max_batch_size, owns_ray=owns_ray, scaling=own_scaling)
        backend.hear(handle.hello.remote().result(timeout_s=ready_timeout_s))
    except BaseException:
        if owns_ray:
            _shut_down()
        raise
    return backend


def _deploy(name: str, recipe: Callable[[], TailEngine], model_id: bytes, scaling: Scaling, max_batch_size: int,
            batch_wait_timeout_s: float, max_queue: int, warm_up: bool) -> DeploymentHandle:
    # two batches per replica: one running, the next one forming; beyond that requests wait in the front
    # end's handle, where the router can still send them to whichever replica frees up first
    max_ongoing = 2 * max_batch_size
    settings = ReplicaSettings(model_id=model_id, max_batch_size=max_batch_size,
                               batch_wait_timeout_s=batch_wait_timeout_s, max_ongoing_requests=max_ongoing,
                               warm_up=warm_up, torch_threads=max(1, round(scaling.replica_cpus)))
    options: dict[str, Any] = {"name": DEPLOYMENT, "max_ongoing_requests": max_ongoing,
                               "max_queued_requests": max_queue,
                               "ray_actor_options": {"num_cpus": scaling.replica_cpus, "num_gpus": scaling.replica_gpus},
                               "logging_config": {"enable_access_log": False, "log_level": "WARNING"}}
    if scaling.autoscale is None:
        options["num_replicas"] = scaling.replicas
    else:  # a replica is busy enough with a full batch waiting
        low, high = scaling.autoscale
        options["autoscaling_config"] = {"min_replicas": low, "initial_replicas": max(low, 1), "max_replicas": high,
                                         "target_ongoing_requests": max_batch_size,
                                         "upscale_delay_s": scaling.upscale_delay_s,
                                         "downscale_delay_s": scaling.downscale_delay_s}
    deployment = serve.deployment(TailReplica).options(**options)
    try:
        return serve.run(deployment.bind(recipe, settings), name=name, route_prefix=None)
    except RuntimeError as exc:
        raise EdgesplitError(f"the Ray Serve application {name} failed to start: {exc}") from exc
