"""edgesplit run against edgesplit's server on loopback, from the command line."""

import json

import pytest

from edgesplit import analyze
from edgesplit.models import load_model
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.runtime.server import create_app
from live_server import LiveServer
from test_cli import run


@pytest.fixture(scope="module")
def live():
    loaded = load_model("efficientnet_b0")
    with LiveServer(create_app(TailEngine(analyze(loaded.module, (3, 64, 64), "efficientnet_b0"),
                                      loaded.normalization))) as server:
        yield server


def test_run_writes_the_documented_json(live, monkeypatch, capsys, tmp_path):
    out = tmp_path / "run.json"
    code, stdout, err = run(monkeypatch, capsys, "run", "efficientnet_b0", "--input-size", "64", "--server", live.url,
                            "--policy", "offload", "--count", "4", "--out", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert list(data) == ["requests", "summary"]
    assert [list(r) for r in data["requests"]] == [["index", "cut", "codec", "executed", "fallback_reason",
                                                    "latency_ms", "bytes_sent", "top1", "edge"]] * 4
    assert {r["edge"] for r in data["requests"]} == {None}  # one edge: records do not name it
    assert [r["executed"] for r in data["requests"]] == ["offload"] * 4
    assert list(data["summary"]) == ["count", "fallbacks", "mean_ms", "p50_ms", "p95_ms", "probe_bytes_per_s",
                                     "mean_energy_mj"]
    assert data["summary"]["count"] == 4 and data["summary"]["fallbacks"] == 0
    # each offload's upload and answer (and the probe on connecting) reached the radio's meter: more than the
    # 3 W processor alone, which offload leaves idle
    assert data["summary"]["mean_energy_mj"] > 0
    assert "holds the same model" in stdout
    # hedged: the device's own run races the server; each request has one answer, from either side
    code, _, err = run(monkeypatch, capsys, "run", "efficientnet_b0", "--input-size", "64", "--server", live.url,
                       "--policy", "offload", "--count", "3", "--hedge", "--out", str(out))
    assert code == 0, err
    hedged = json.loads(out.read_text())["requests"]
    assert len(hedged) == 3 and all((r["executed"], r["fallback_reason"]) in {
        ("offload", None), ("local", "hedge: the device finished first")} for r in hedged)
    assert [r["top1"] for r in hedged] == [r["top1"] for r in data["requests"][:3]]  # the same photos, answers


def test_run_with_an_empty_image_folder_or_the_oracle(live, monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "run", "efficientnet_b0", "--input-size", "64", "--server", live.url,
                       "--images", str(tmp_path))
    assert code == 2 and "no images (.bmp, .jpeg, .jpg, .png) in" in err
    code, _, err = run(monkeypatch, capsys, "run", "efficientnet_b0", "--input-size", "64", "--server", live.url,
                       "--policy", "oracle")
    assert code == 2 and "the oracle needs the true link rate" in err


def test_serve_warm_up_plans_batches_and_its_profile_follows_the_plan(monkeypatch, capsys):
    import uvicorn
    from starlette.testclient import TestClient

    from edgesplit.runtime import tail_engine

    analysis = analyze(load_model("efficientnet_b0").module, (3, 64, 64), "efficientnet_b0")
    second_record_low = [c for c in analysis.cuts if c.record_low][1]
    measured, best_batch_from = [], tail_engine.best_batch_from

    def plan_at_the_second_record_low(segments, batch_size):  # what is fastest at 64×64 varies: fix it
        measured.append(best_batch_from(segments, batch_size))
        return tail_engine.BatchPlan(second_record_low.index, batch_size, measured[0].per_request_s)

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    monkeypatch.setattr(tail_engine, "best_batch_from", plan_at_the_second_record_low)
    code, stdout, err = run(monkeypatch, capsys, "serve", "efficientnet_b0", "--input-size", "64", "--port", "8711",
                            "--max-batch-size", "4", "--warm-up", "--profile", "--profile-idle-ms", "0")
    assert code == 0, err
    assert served["port"] == 8711
    assert f"batches of 4 run as one batch from {second_record_low.name} on: " in stdout
    with TestClient(served["app"]) as client:
        plan = client.get("/v1/model").json()["batch_plan"]
        profile = client.get("/v1/profile").json()
    assert plan["batch_size"] == 4 and plan["batch_from"] == second_record_low.name
    assert set(plan["per_request_ms"]) == {"x", *(c.name for c in analysis.cuts if c.record_low)}
    assert profile["method"] == f"per-node; batches run one request at a time before {second_record_low.name}"
    by_name = {c["name"]: c for c in profile["cuts"]}
    for cut in analysis.natural_bottlenecks():  # batches priced as planned before the plan's cut, measured after
        assert by_name[cut.name]["tail_s"]["4"]["source"] == (
            "estimated" if cut.index < second_record_low.index else "measured"), cut.name
    assert profile["model_s"]["4"]["source"] == "estimated" and profile["model_s"]["1"]["source"] == "measured"
