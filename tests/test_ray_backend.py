"""serve --backend ray: the front end hands tensors to Ray Serve replicas, answers as the in-process server
does, refuses bad options clearly, and loses no request when a replica dies.

One Ray instance for the module (room for three replicas, no dashboard, its files under pytest's temp dir),
one application of 2 replicas of squeezenet1_1 at 64×64, and one of a detector whose front end turns the
replica's raw head outputs into boxes; shut down at the end.
"""

import asyncio
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import ray
import torch
from ray import serve
from ray.serve.config import AutoscalingConfig

from edgesplit import analyze, split
from edgesplit.codecs import input_codec, split_codec
from edgesplit.wire import OUTPUT_CUT, decode_frame, encode_frame, unflatten_tree
from edgesplit.errors import EdgesplitError
from edgesplit.images import fit, photo
from edgesplit.load import LoadReport
from edgesplit.models import load_model
from edgesplit.runtime import ray_backend as ray_module
from edgesplit.runtime.backends import COMBINE_RULES, combine_reports
from edgesplit.runtime.batcher import QueueFull
from edgesplit.runtime.device_engines import TorchEngine
from edgesplit.runtime.ray_backend import EngineRecipe, ReplicaState, Scaling, application_name, start_ray_backend
from edgesplit.runtime.server import ServerConfig, create_app
from edgesplit.runtime.tail_engine import TailEngine
from live_server import LiveServer
from test_cli import run

MODEL, SHAPE = "squeezenet1_1", (3, 64, 64)
CONFIG = ServerConfig(max_batch_size=2, batch_wait_timeout_s=0.0, max_queue=2)
SERVE = ("serve", MODEL, "--input-size", "64")
THREADS = torch.get_num_threads()  # as many in each replica as here: kernels sum in another order with fewer
DETECTOR, DETECTOR_SHAPE = "ssdlite320_mobilenet_v3_large", (3, 320, 320)


@pytest.fixture(scope="module")
def model():
    loaded = load_model(MODEL)
    analysis = analyze(loaded.module, SHAPE, MODEL)
    return loaded, analysis, TailEngine(analysis, loaded.normalization)


@pytest.fixture(scope="module")
def backend(model, tmp_path_factory):
    ray.init(num_cpus=3 * THREADS, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield start_ray_backend(EngineRecipe(model=MODEL, weights=None, input_shape=SHAPE), model[2],
                                scaling=Scaling(replicas=2, replica_cpus=THREADS), max_batch_size=CONFIG.max_batch_size,
                                batch_wait_timeout_s=CONFIG.batch_wait_timeout_s, max_queue=CONFIG.max_queue,
                                warm_up=False, owns_ray=False)
    finally:
        ray.shutdown()  # this instance and every actor in it, Serve's included


@pytest.fixture(scope="module")
def servers(model, backend):
    with LiveServer(create_app(model[2], CONFIG, backend=backend)) as on_ray, \
            LiveServer(create_app(model[2], CONFIG)) as in_process:
        yield on_ray, in_process


def post(url, data):
    return httpx.post(f"{url}/v1/infer", content=data, headers={"content-type": "application/vnd.edgesplit.frame"},
                      timeout=30)


@pytest.fixture(scope="module")
def frames(model):
    """One image as the input and at the first and the last natural bottleneck."""
    loaded, analysis, engine = model
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(3))
    out = []
    for cut in [analysis.cuts[0], analysis.natural_bottlenecks()[0], analysis.natural_bottlenecks()[-1]]:
        with torch.inference_mode():
            mid = split(analysis, cut)[0](x).numpy()
        out.append((cut.name, encode_frame(mid, model_id=engine.model_id, cut=cut.index)))
    return out


def test_every_load_report_field_has_a_combine_rule():
    assert {f for f in LoadReport.__dataclass_fields__} <= set(COMBINE_RULES)


def test_reports_combine_field_by_field():
    reports = [LoadReport(queue_wait_s=0.020, queue_length=3, max_batch_size=8, offered_load=0.5),
               LoadReport(queue_wait_s=0.005, queue_length=1, max_batch_size=8, offered_load=None),
               LoadReport(queue_wait_s=0.040, queue_length=0, max_batch_size=8, offered_load=1.5)]
    # the least wait (the router picks the shorter queue), every queue, the mean offered load of those that say
    assert combine_reports(reports) == LoadReport(queue_wait_s=0.005, queue_length=4, max_batch_size=8,
                                                  offered_load=1.0)


def test_a_replica_report_drains_with_its_age_and_is_forgotten_after_the_ttl(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(ray_module.time, "monotonic", lambda: now[0])
    front = ray_module.RayBackend(None, "app", max_batch_size=8, owns_ray=False, scaling=None)
    report = LoadReport(queue_wait_s=0.5, queue_length=4, max_batch_size=8)
    front.hear(ReplicaState("r1", "actor", "node", None, report, {1: 0.01}))
    now[0] += 0.2
    assert front.report().queue_wait_s == pytest.approx(0.3) and front.report().queue_length == 4
    now[0] += ray_module.REPORT_TTL_S
    assert front.report() == LoadReport(queue_wait_s=0.0, queue_length=0, max_batch_size=8)


def test_small_requests_go_to_their_replica_by_value_and_large_ones_by_reference():
    """A request goes over the replica's gRPC server (the handle with _by_reference=False, made once) when its
    tensors and its cut's last answer are at most BY_VALUE_MAX_BYTES; otherwise (the first request for a
    cut, whose answer's size is not known yet, included) as an actor call through Ray's object store."""
    sent = []

    class Handle:  # stands for a DeploymentHandle: records which way each request went
        def __init__(self, by_reference=True):
            self.by_reference, self.infer = by_reference, self

        def options(self, _by_reference=True):
            sent.append("options")
            return Handle(_by_reference)

        def remote(self, cut, array):
            sent.append((self.by_reference, cut, array.nbytes))

            async def answer():  # cut 9's answer is as large as its request, cut 7's one row of 10 values
                output = array if cut == 9 else np.zeros((1, 10), np.float32)
                state = ReplicaState("r1", "actor", "node", None, LoadReport(0.0, 0, 8), {})
                return ray_module.ReplicaAnswer(ray_module.Result(output, 0.0, 0.001, 1), state)
            return answer()

    front = ray_module.RayBackend(Handle(), "app", max_batch_size=8, owns_ray=False, scaling=None)
    limit = ray_module.BY_VALUE_MAX_BYTES
    for cut, n_bytes in ((7, 4_000), (7, limit), (7, limit + 4), (7, 4_000), (9, limit + 4), (9, 4_000)):
        asyncio.run(front.submit(cut, np.zeros(n_bytes // 4, np.float32)))
    assert sent == [(True, 7, 4_000), "options", (False, 7, limit), (True, 7, limit + 4), (False, 7, 4_000),
                    (True, 9, limit + 4), (True, 9, 4_000)]  # cut 9's last answer was too large


def test_ray_answers_are_the_in_process_answers(model, servers, frames):
    on_ray, in_process = servers
    for name, frame in frames:
        ray_answer, local_answer = post(on_ray.url, frame), post(in_process.url, frame)
        assert ray_answer.status_code == local_answer.status_code == 200, ray_answer.text
        got = decode_frame(ray_answer.content)
        assert got.cut == OUTPUT_CUT and np.array_equal(got.array, decode_frame(local_answer.content).array), name
        timing = ray_answer.headers["server-timing"]
        assert "recv;dur=" in timing and "queue;dur=" in timing and "compute;dur=" in timing
        load = LoadReport.parse(ray_answer.headers["edgesplit-load"])
        assert load is not None and load.max_batch_size == CONFIG.max_batch_size
    info = httpx.get(f"{on_ray.url}/v1/model").json()
    assert info["backend"] == "ray" and info["replicas_running"] == 2
    assert info["application"] == application_name(model[2].model_id, SHAPE)
    assert info["replicas"] and all(r["actor"].startswith("SERVE_REPLICA::") for r in info["replicas"])
    assert httpx.get(f"{in_process.url}/v1/model").json()["backend"] == "in-process"
    assert httpx.get(f"{on_ray.url}/healthz").json()["load"]["max_batch_size"] == CONFIG.max_batch_size


def test_ray_serves_a_detectors_boxes_equal_to_the_local_ones(backend):
    loaded = load_model(DETECTOR)
    detector = loaded.module.detector  # random weights score every box low: keep a few per image anyway
    detector.score_thresh, detector.topk_candidates, detector.detections_per_img = 0.0, 5, 20
    analysis = analyze(loaded.module, DETECTOR_SHAPE, DETECTOR)
    front = TailEngine(analysis, loaded.normalization, postprocess=loaded.postprocess)  # the replica runs tails only
    tails = start_ray_backend(EngineRecipe(model=DETECTOR, weights=None, input_shape=DETECTOR_SHAPE), front,
                              scaling=Scaling(replicas=1, replica_cpus=THREADS), max_batch_size=CONFIG.max_batch_size,
                              batch_wait_timeout_s=0.0, max_queue=CONFIG.max_queue, warm_up=False, owns_ray=False)
    device = TorchEngine(analysis, loaded.normalization, loaded.postprocess)
    cut = [c for c in analysis.natural_bottlenecks() if c.record_low][-1]  # the smallest tensor
    image = fit(photo("coffee"), DETECTOR_SHAPE)
    x = device.normalize(image)
    expected = device.local(x)
    frames = {"offload": input_codec("raw").frame(image, model_id=front.model_id),
              cut.name: split_codec("fp32").frame(device.head(cut.name, x), model_id=front.model_id, cut=cut.index)}
    with LiveServer(create_app(front, CONFIG, backend=tails)) as on_ray:
        for name, frame in frames.items():
            answer = post(on_ray.url, frame)
            assert answer.status_code == 200, answer.text
            got = unflatten_tree(decode_frame(answer.content).named)
            assert set(got) == {"boxes", "scores", "labels"} and len(expected["boxes"]) > 0, name
            assert all(got[k].dtype == expected[k].dtype and np.array_equal(got[k], expected[k]) for k in got), name


def test_a_second_front_end_attaches_to_the_running_application(model, backend):
    second = start_ray_backend(EngineRecipe(model=MODEL, weights=None, input_shape=SHAPE), model[2],
                               scaling=Scaling(replicas=3), max_batch_size=CONFIG.max_batch_size,
                               batch_wait_timeout_s=0.0, max_queue=CONFIG.max_queue, warm_up=False, owns_ray=False)
    assert second.application == backend.application and second.scaling is None  # the first one's settings stand
    assert serve.status().applications[backend.application].deployments["tail"].replica_states["RUNNING"] == 2


def test_beyond_max_queued_requests_the_backend_refuses(model, backend):
    async def forty_at_once():
        x = np.zeros((1, *SHAPE), np.float32)
        return await asyncio.gather(*(backend.submit(0, x) for _ in range(40)), return_exceptions=True)

    outcomes = asyncio.run(forty_at_once())
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(refused) + len(answered) == 40, [o for o in outcomes if isinstance(o, BaseException)][:1]
    assert refused and answered and "max_queued_requests=2" in str(refused[0])


def test_a_killed_replica_loses_no_request(backend, servers, frames):
    on_ray = servers[0]
    frame = frames[0][1]
    victim = httpx.get(f"{on_ray.url}/v1/model").json()["replicas"][0]["actor"]
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(post, on_ray.url, frame) for _ in range(40)]
        time.sleep(0.05)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        statuses = [a.result().status_code for a in answers]
    assert set(statuses) <= {200, 503}, statuses  # 503: the device runs the request itself; never a 500
    after = [post(on_ray.url, frame) for _ in range(5)]  # the other replica keeps serving
    assert [a.status_code for a in after] == [200] * 5
    assert httpx.get(f"{on_ray.url}/healthz").status_code == 200


@pytest.mark.parametrize(("scaling", "message"), [
    ({"replicas": 0}, "replicas=0: a deployment needs at least 1 replica"),
    ({"autoscale": (2, 1)}, "autoscale=2,1: MIN,MAX needs 0 <= MIN <= MAX and MAX >= 1"),
    ({"autoscale": (-1, 2)}, "autoscale=-1,2"),
    ({"replica_cpus": 0}, "replica_cpus=0: must be above 0"),
    ({"autoscale": (1, 2), "upscale_delay_s": -1.0}, "upscale_delay_s=-1: must be a finite number of seconds"),
    ({"autoscale": (1, 2), "upscale_delay_s": float("nan")}, "upscale_delay_s=nan: must be a finite number"),
    ({"autoscale": (1, 2), "downscale_delay_s": -0.5}, "downscale_delay_s=-0.5: must be a finite number"),
    ({"autoscale": (1, 2), "downscale_delay_s": float("inf")}, "downscale_delay_s=inf: must be a finite number"),
])
def test_scaling_refuses_what_cannot_be_deployed(scaling, message):
    with pytest.raises(EdgesplitError, match=re.escape(message)):
        Scaling(**scaling)


def test_autoscale_delays_reach_ray_serves_autoscaling_config(monkeypatch):
    options = {}

    class Recorder:  # stands for serve.deployment(TailReplica): records its options, deploys nothing
        def options(self, **given):
            options.update(given)
            return self

        def bind(self, *args):
            return args

    monkeypatch.setattr(ray_module.serve, "deployment", lambda _: Recorder())
    monkeypatch.setattr(ray_module.serve, "run", lambda app, name, route_prefix: "handle")
    scaling = Scaling(autoscale=(1, 3), upscale_delay_s=5.0, downscale_delay_s=20.0)
    ray_module._deploy("app", lambda: None, b"id", scaling, 4, 0.005, 16, False)
    config = AutoscalingConfig(**options["autoscaling_config"])  # as Ray Serve validates it
    assert (config.min_replicas, config.initial_replicas, config.max_replicas) == (1, 1, 3)
    assert (config.upscale_delay_s, config.downscale_delay_s, config.target_ongoing_requests) == (5.0, 20.0, 4)
    assert scaling.to_dict()["autoscale_delays"] == {"upscale_delay_s": 5.0, "downscale_delay_s": 20.0}
    assert Scaling(replicas=2).to_dict()["autoscale_delays"] is None


@pytest.mark.parametrize(("args", "message"), [
    (("--backend", "ray", "--replicas", "0"), "0 is not in the range x>=1"),
    (("--backend", "ray", "--replicas", "-2"), "-2 is not in the range x>=1"),
    (("--backend", "ray", "--autoscale", "-1,3"), "expected MIN,MAX with 0 <= MIN <= MAX and MAX >= 1"),
    (("--backend", "ray", "--autoscale", "3,1"), "expected MIN,MAX"),
    (("--backend", "ray", "--autoscale", "0,0"), "expected MIN,MAX"),
    (("--backend", "ray", "--autoscale", "4"), "expected MIN,MAX"),
    (("--backend", "ray", "--autoscale", "one,two"), "expected MIN,MAX"),
    (("--backend", "ray", "--autoscale", "1,2", "--autoscale-delays", "-1,5"),
     "expected UP,DOWN in seconds, each 0 or above"),
    (("--backend", "ray", "--autoscale", "1,2", "--autoscale-delays", "5"), "expected UP,DOWN"),
    (("--backend", "ray", "--autoscale", "1,2", "--autoscale-delays", "5,10,15"), "expected UP,DOWN"),
    (("--backend", "ray", "--autoscale", "1,2", "--autoscale-delays", "nan,5"), "expected UP,DOWN"),
    (("--backend", "ray", "--autoscale", "1,2", "--autoscale-delays", "5,inf"), "expected UP,DOWN"),
    (("--backend", "ray", "--autoscale", "1,2", "--autoscale-delays", "soon,later"), "expected UP,DOWN"),
    (("--backend", "ray", "--replicas", "2", "--autoscale-delays", "5,30"), "--autoscale-delays applies to --autoscale"),
    (("--replicas", "2",), "--replicas, --autoscale and --ray-address apply to --backend ray"),
    (("--backend", "ray", "--replicas", "2", "--autoscale", "1,2"), "--replicas and --autoscale exclude each other"),
    (("--backend", "ray", "--profile"), "with --backend ray the replicas run the tails"),
])
def test_bad_replica_options_are_refused_before_anything_starts(monkeypatch, capsys, args, message):
    code, _, err = run(monkeypatch, capsys, *SERVE, *args)
    assert code == 2 and message in err, err


def test_without_the_ray_extra_serve_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as when it is not installed
    monkeypatch.delitem(sys.modules, "edgesplit.runtime.ray_backend")
    code, _, err = run(monkeypatch, capsys, *SERVE, "--backend", "ray")
    assert code == 2 and "pip install 'edgesplit[ray]' (ray is missing)" in err, err


def test_an_unreachable_ray_address_fails_at_once():
    import socket

    with socket.socket() as closed:  # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from edgesplit.cli import main; main()", *SERVE, "--backend", "ray",
                           "--ray-address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"cannot reach the Ray cluster at --ray-address 127.0.0.1:{port} within 10 s (ConnectionRefusedError" \
           in done.stderr
    assert time.monotonic() - started < 60
