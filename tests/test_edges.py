"""One device, several edge servers: each request goes to the edge expected to answer first, to the next one
when that fails fast, and runs on the device only when no edge can take it (a toy model, real servers)."""

import json

import pytest
import torch

from edgesplit import analyze
from edgesplit.device import DeviceConfig
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.images import PHOTOS, fit, photo
from edgesplit.latency import LinkState, build_options
from edgesplit.measure import measure
from edgesplit.models import load_model
from edgesplit.netem.app import PacedLink, ShapedTransport
from edgesplit.policies import allowed_options, make_policy
from edgesplit.profile import with_device_time
from edgesplit.runtime.client import ClientConfig, DeviceClient
from edgesplit.runtime.device import edge_urls
from edgesplit.runtime.device_engines import EmulatedDevice, TorchEngine
from edgesplit.runtime.edges import MultiEdgeClient
from edgesplit.runtime.server import ServerConfig, create_app
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.traces import RateTrace
from live_server import LiveServer
from test_cli import run

SHAPE = (3, 64, 64)
DEAD = "http://127.0.0.1:9"  # nothing listens there: connections are refused


@pytest.fixture(scope="module")
def toy():
    loaded = load_model("toy_models:toy")
    analysis = analyze(loaded.module, SHAPE, "toy")
    cuts = [analysis.cut("conv1")]
    server = measure(analysis, cuts, role="server", batch_sizes=(1,), repeats=3)
    device = with_device_time(measure(analysis, cuts, role="device", batch_sizes=(1,), repeats=3), 0.3)
    options = build_options(device, server, jpeg=False)
    engine = EmulatedDevice(TorchEngine(analysis, loaded.normalization), device)
    images = [fit(photo(name), SHAPE) for name in PHOTOS[:3]]
    return loaded, analysis, options, engine, images, device, server


@pytest.fixture(scope="module")
def edges(toy):
    loaded, analysis = toy[:2]
    with LiveServer(create_app(TailEngine(analysis, loaded.normalization), ServerConfig(max_batch_size=1))) as a, \
            LiveServer(create_app(TailEngine(analysis, loaded.normalization), ServerConfig(max_batch_size=1))) as b:
        yield a.url, b.url


def _client(toy, url, policy="dsc", mbps=None, **device):
    options, engine = toy[2], toy[3]
    allowed = allowed_options(options, private=False, lossy=False)
    connect = None
    if mbps is not None:
        link = PacedLink(RateTrace.constant(mbps * 1e6, duration_s=1000), rtt_s=0.0)
        connect = lambda: ShapedTransport(url, link)  # noqa: E731
    return DeviceClient(url, engine, allowed, make_policy(policy, options, LinkState(2e6)), make_estimator("harmonic"),
                        ClientConfig(DeviceConfig(**device), backoff_s=5.0), connect=connect)


def _top1(toy, image):
    loaded = toy[0]
    mean = torch.tensor(loaded.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.normalization.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return int(loaded.module((torch.from_numpy(image)[None].float() - mean) / std).argmax())


def test_each_request_goes_to_the_edge_whose_link_is_faster(toy, edges):
    slow, fast = edges
    # the same model on both; the device reaches the first over 0.2 Mbit/s, the second over 16 Mbit/s
    with MultiEdgeClient([_client(toy, slow, mbps=0.2), _client(toy, fast, mbps=16)]) as device:
        lines = device.connect()
        assert all("holds the same model" in line for line in lines)
        records = [device.infer(image) for image in toy[4] * 2]
    assert [r.index for r in records] == list(range(6))
    # sent every time (the raw input or the first conv's output: 12 or 16 KiB), always to the fast edge
    assert [(r.executed in ("offload", "split"), r.edge, r.fallback_reason) for r in records] == [(True, fast, None)] * 6
    assert [r.top1 for r in records] == [_top1(toy, image) for image in toy[4] * 2]
    assert device.summary()["edges"] == {slow: 0, fast: 6}
    assert device.clients[0].core.estimator.predict() < 0.5e6 < 8e6 < device.clients[1].core.estimator.predict()


def test_an_edge_that_fails_fast_hands_the_request_to_the_next(toy, edges):
    loaded, analysis = toy[:2]
    with LiveServer(create_app(TailEngine(analysis, loaded.normalization), ServerConfig(max_batch_size=1))) as gone:
        # the first edge is on loopback (too fast to time: the 2 Mbit/s prior stands), the second over 1 Mbit/s:
        # the first is preferred while it lives
        device = MultiEdgeClient([_client(toy, gone.url, "offload"), _client(toy, edges[1], "offload", mbps=1)])
        device.connect()
        before = device.infer(toy[4][0])
    image = toy[4][1]
    refused = device.infer(image)  # the first edge is gone: its connection is refused, the second answers
    after = device.infer(image)  # the first edge is left alone for its backoff
    device.close()
    assert (before.executed, before.edge) == ("offload", gone.url)
    assert (refused.executed, refused.edge, refused.fallback_reason) == ("offload", edges[1], None)
    assert (after.executed, after.edge) == ("offload", edges[1])
    assert refused.top1 == after.top1 == _top1(toy, image)
    assert device.clients[0].down_until > 0  # the refusal was noted by the first edge's client


def test_with_no_edge_left_the_device_answers_and_says_why(toy):
    device = MultiEdgeClient([_client(toy, DEAD, "offload"), _client(toy, DEAD.replace(":9", ":7"), "offload")])
    device.connect()  # both unreachable: each backs off
    record = device.infer(toy[4][0])
    device.close()
    assert record.executed == "local" and record.top1 == _top1(toy, toy[4][0])
    assert record.fallback_reason.startswith("server down (retrying in ")
    assert record.edge == DEAD.replace(":9", ":7")  # the last edge tried


def test_a_deadline_is_not_retried_on_another_edge(toy, edges):
    # both links stall (12 KiB at 0.05 Mbit/s takes 2 s; the deadline is 0.4 s): once the first edge tried
    # has used the request's time up, no other can answer in what is left, so the device finishes here
    clients = [_client(toy, url, "offload", mbps=0.05, deadline_s=0.4, probe_on_connect=False) for url in edges]
    tried = []
    for client in clients:
        client.attempt = lambda *args, client=client: tried.append(client.url) or DeviceClient.attempt(client, *args)
    device = MultiEdgeClient(clients)
    device.connect()
    record = device.infer(toy[4][0])
    device.close()
    assert len(tried) == 1 and (record.executed, record.fallback_reason, record.edge) == ("local", "deadline", tried[0])
    assert record.top1 == _top1(toy, toy[4][0]) and 0.4 <= record.latency_s < 1.0
    assert device.summary()["edges"] == {edges[0]: 0, edges[1]: 0}


def test_several_edges_are_refused_when_they_cannot_work(toy):
    with pytest.raises(EdgesplitError, match="at least one edge server"):
        MultiEdgeClient([])
    with pytest.raises(EdgesplitError, match="listed twice"):
        MultiEdgeClient([_client(toy, DEAD), _client(toy, DEAD)])
    with pytest.raises(EdgesplitError, match="--hedge with several edge servers is not supported"):
        MultiEdgeClient([_client(toy, DEAD), _client(toy, DEAD.replace(":9", ":7"), hedge=True)])
    other = DeviceClient(DEAD.replace(":9", ":7"), EmulatedDevice(toy[3].engine, toy[5]), toy[2],
                         make_policy("dsc", toy[2], LinkState(2e6)), make_estimator("harmonic"))
    with pytest.raises(EdgesplitError, match="same device engine"):
        MultiEdgeClient([_client(toy, DEAD), other])


@pytest.mark.parametrize("text, message", [
    ("http://a:1,http://a:1/", "lists an edge twice"),
    ("http://a:1,,http://b:1", "'' is not an http:// or https:// URL"),
    ("ftp://a:1", "'ftp://a:1' is not an http:// or https:// URL"),
])
def test_bad_server_lists_are_errors(text, message):
    with pytest.raises(EdgesplitError, match=message):
        edge_urls(text)
    assert edge_urls("http://a:1/, https://b:2") == ["http://a:1", "https://b:2"]


def test_edgesplit_run_with_two_servers(toy, edges, tmp_path, monkeypatch, capsys):
    device, server = toy[5], toy[6]
    device.save(tmp_path / "device.json")
    server.save(tmp_path / "server.json")
    out = tmp_path / "run.json"
    code, stdout, err = run(monkeypatch, capsys, "run", "toy_models:toy", "--input-shape", "3,64,64", "--server",
                            f"{DEAD},{edges[1]}", "--policy", "offload", "--count", "3",
                            "--device-profile", str(tmp_path / "device.json"),
                            "--server-profile", str(tmp_path / "server.json"), "--out", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert [(r["executed"], r["edge"]) for r in data["requests"]] == [("offload", edges[1])] * 3
    assert data["summary"]["edges"] == {DEAD: 0, edges[1]: 3}
    assert f"answered by {DEAD}: 0, {edges[1]}: 3" in stdout
    assert all(r["latency_ms"] > 0 for r in data["requests"])
    code, _, err = run(monkeypatch, capsys, "run", "toy_models:toy", "--input-shape", "3,64,64", "--server",
                       f"{edges[1]},nonsense")
    assert code == 2 and "--server: 'nonsense' is not an http:// or https:// URL" in err
