"""edgesplit fleet: several emulated devices at once against one edge server, the policies taking turns."""

import json
import os
import socket
from pathlib import Path

import pytest

from edgesplit import analyze
from edgesplit.fleet import device_offsets, turn_order
from edgesplit.measure import measure
from edgesplit.models import load_model
from edgesplit.runtime.server import create_app
from edgesplit.runtime.tail_engine import TailEngine
from live_server import LiveServer
from test_cli import run

TOY = ["toy_models:toy", "--input-shape", "3,8,8"]
FPS = 4


@pytest.fixture(scope="module")
def live():
    loaded = load_model("toy_models:toy")
    analysis = analyze(loaded.module, (3, 8, 8), "toy_models:toy")
    profile = measure(analysis, analysis.natural_bottlenecks(), role="server", batch_sizes=(1, 2, 4, 8), repeats=2)
    with LiveServer(create_app(TailEngine(analysis, loaded.normalization), profile=profile)) as server:
        yield server


@pytest.fixture
def steps(tmp_path):
    """A 4 s trace of 1 s steps: 1, 2, 4 and 8 Mbit/s."""
    path = tmp_path / "steps.txt"
    path.write_text("0 1\n1 2\n2 4\n3 8\n")
    return path


def test_offsets_spread_the_devices_over_the_trace_and_the_order_rotates():
    assert device_offsets(4, 300.0) == [0.0, 75.0, 150.0, 225.0]
    assert device_offsets(1, 300.0) == [0.0]
    policies = ("dsc", "best-static", "offload")
    assert [turn_order(policies, r) for r in range(4)] == [
        ["dsc", "best-static", "offload"], ["best-static", "offload", "dsc"], ["offload", "dsc", "best-static"],
        ["dsc", "best-static", "offload"]]


def test_a_sweep_answers_every_request_and_writes_the_documented_json(live, steps, monkeypatch, capsys, tmp_path):
    out = tmp_path / "fleet"
    code, stdout, err = run(monkeypatch, capsys, "fleet", *TOY, "--server", live.url, "--devices", "2,3",
                            "--policies", "offload,local", "--trace", str(steps), "--duration", "1", "--fps", str(FPS),
                            "--repeats", "2", "--device-ms", "100", "--out", str(out))
    assert code == 0, err
    document = json.loads((out / "fleet.json").read_text())
    assert list(document) == ["model", "server_url", "trace", "trace_duration_s", "duration_s", "fps", "repeats",
                              "device_local_s", "rtt_s", "policies", "devices", "requests"]
    assert document["trace_duration_s"] == 4.0 and document["policies"] == ["offload", "local"]
    assert list(document["devices"]) == ["2", "3"]
    server_keys = ["utilisation", "mean_batch", "queue_p95_ms"]
    for n, step in document["devices"].items():
        devices = int(n)
        assert list(step) == ["offsets_s", "order", "policies", "server"]
        assert step["offsets_s"] == pytest.approx([k * 4.0 / devices for k in range(devices)])
        assert step["order"] == [["offload", "local"], ["local", "offload"]]
        assert list(step["server"]) == server_keys
        for name, summary in step["policies"].items():
            assert list(summary) == ["mean_ms", "p50_ms", "p95_ms", "answered", "count", "fallbacks", "cuts",
                                     "load_errors", "repeats_mean_ms", "server"], name
            assert list(summary["load_errors"]) == ["requests", "queue_ms", "reported_error_ms", "predicted_error_ms"]
            assert summary["count"] == summary["answered"] == devices * FPS * 2  # 1 s turns, 2 repeats
            assert len(summary["repeats_mean_ms"]) == 2 and list(summary["server"]) == server_keys
        local, offload = step["policies"]["local"], step["policies"]["offload"]
        assert local["cuts"] == {"local": devices * FPS * 2} and local["fallbacks"] == 0
        assert local["server"] == {"utilisation": 0.0, "mean_batch": None, "queue_p95_ms": None}  # nothing sent
        assert offload["cuts"] == {"offload:raw": devices * FPS * 2}
        assert offload["server"]["utilisation"] > 0 and offload["server"]["mean_batch"] >= 1
        assert offload["server"]["queue_p95_ms"] >= 0
        assert 0 < step["server"]["utilisation"] < offload["server"]["utilisation"]  # local's turns idle it
    requests = document["requests"]
    assert len(requests) == (2 + 3) * FPS * 2 * 2
    assert all(isinstance(r["top1"], int) for r in requests)  # every request answered
    assert "lost requests: 0 of 80" in stdout
    for devices, step in ((2, document["devices"]["2"]), (3, document["devices"]["3"])):
        for repeat, order in enumerate(step["order"]):
            turns = [[r for r in requests if (r["devices"], r["repeat"], r["policy"]) == (devices, repeat, name)]
                     for name in order]
            assert max(r["run_s"] for r in turns[0]) < min(r["run_s"] for r in turns[1])  # taken in this order
            for turn in turns:
                for k in range(devices):
                    mine = [r for r in turn if r["device"] == k]
                    phase = k / (devices * FPS)
                    assert [r["arrival_s"] for r in mine] == pytest.approx([phase + i / FPS for i in range(FPS)])
                    # each device replays the steps from its own offset: 1, 2, 4 Mbit/s at 0, 1/3, 2/3 of 4 s
                    assert mine[0]["true_mbps"] == {2: [1.0, 4.0], 3: [1.0, 2.0, 4.0]}[devices][k]
    for png in ("latency.png", "options.png", "queue.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 devices × 4 requests/s against one server" in stdout and "3 devices × 4 requests/s" in stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("args,message", [
    (["--devices", "0"], "--devices must be at least 1 device, got 0"),
    (["--devices", "1,x"], "--devices takes device counts separated by commas, e.g. 4 or 1,4,16; got '1,x'"),
    (["--devices", "2,2"], "--devices lists a count twice: 2,2"),
    (["--devices", "2", "--duration", "-1"], "--duration must be a finite number > 0, got -1"),
    (["--devices", "2", "--fps", "0"], "--fps must be a finite number > 0, got 0"),
    (["--devices", "2", "--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["--devices", "2", "--policies", "dsc,fastest"], "unknown policy 'fastest'"),
    (["--devices", "2", "--input-shape", "3,16,16"], "holds another model"),
])
def test_bad_fleet_arguments_give_one_line_and_exit_2(live, args, message, monkeypatch, capsys, tmp_path):
    out = tmp_path / "fleet"
    code, _, err = run(monkeypatch, capsys, "fleet", *TOY, "--server", live.url, *args, "--out", str(out))
    assert code == 2 and err.startswith("edgesplit: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()


def test_an_unreachable_server_fails_before_the_model_loads(monkeypatch, capsys, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    code, _, err = run(monkeypatch, capsys, "fleet", "no_such_module:model", "--server", url, "--devices", "2",
                       "--out", str(tmp_path / "fleet"))
    assert code == 2 and err.count("\n") == 1
    assert f"edgesplit: error: cannot reach the edge server at {url}" in err


@pytest.mark.slow  # a server process of its own: torch's import and its profile
def test_without_server_the_fleet_starts_one_and_stops_it(steps, monkeypatch, capsys, tmp_path):
    tests = str(Path(__file__).resolve().parent)  # the server process imports toy_models from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    out = tmp_path / "fleet"
    code, stdout, err = run(monkeypatch, capsys, "fleet", *TOY, "--devices", "2", "--policies", "offload",
                            "--trace", str(steps), "--duration", "0.5", "--fps", str(FPS), "--repeats", "1",
                            "--device-ms", "100", "--out", str(out))
    assert code == 0, err
    document = json.loads((out / "fleet.json").read_text())
    assert document["devices"]["2"]["policies"]["offload"]["answered"] == 4
    assert "edge server ready at" in stdout and "measured this server's profile" in (out / "server.log").read_text()
    port = int(document["server_url"].rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # stopped
