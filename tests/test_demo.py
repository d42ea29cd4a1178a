"""edgesplit demo end to end: a real server process, the pretrained Lite0, the shipped trace, every policy."""

import json

import pytest

from edgesplit.demo import DEFAULT_TRACE
from edgesplit.traces import read_trace
from test_cli import run

pytestmark = pytest.mark.slow


def test_the_shipped_trace_and_its_licence_ship_with_the_package():
    trace = read_trace(DEFAULT_TRACE)
    assert trace.duration_s == pytest.approx(300.0, abs=0.1)  # ten 25 s segments and more
    first_10_s = [trace.delivered_bits(t, t + 1) / 1e6 for t in range(10)]
    assert max(first_10_s) > 5 and min(first_10_s) < 1  # the variation the demo is about
    notice = (DEFAULT_TRACE.parent / "README.md").read_text()
    assert "GPL-3.0-or-later" in notice and "Verizon-LTE-driving.up" in notice
    assert "GNU GENERAL PUBLIC LICENSE" in (DEFAULT_TRACE.parent / "COPYING.mahimahi").read_text()


def test_every_policy_runs_live_and_gives_the_local_models_answers(monkeypatch, capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run(monkeypatch, capsys, "demo", "--duration", "3", "--segments", "2", "--lead-in", "0.8",
                            "--exact", "--out", str(out))
    assert code == 0, err
    document = json.loads((out / "demo.json").read_text())
    policies = document["policies"]
    assert list(policies) == ["dsc", "best-static", "local", "offload", "oracle"]
    for name, summary in policies.items():
        assert summary["count"] == 12, name  # 2 segments of 3 s at 2 requests/s
        assert summary["same_answer_as_local"] == 12, name  # exact options: not one answer changed
        assert set(summary["cuts"]) <= {"local", "offload:raw"} | {c for c in summary["cuts"] if c.endswith(":fp32")}
    assert policies["local"]["cuts"] == {"local": 12} and policies["local"]["mean_bytes"] == 0
    assert policies["offload"]["cuts"] == {"offload:raw": 12}
    assert [s["start_s"] for s in document["segments"]] == [0.0, 3.0]
    for segment in document["segments"]:
        assert list(segment["policies"]) == list(policies)
        assert all(s["count"] == 6 for s in segment["policies"].values())
    requests = document["requests"]["dsc"]
    assert [r["segment"] for r in requests] == [0] * 6 + [1] * 6
    assert [r["arrival_s"] for r in requests] == pytest.approx([k / 2 for k in range(12)], abs=0.05)
    # each segment led in by 2 requests (0.8 s rounded up to whole periods), run but not counted
    assert document["lead_in_s"] == 1.0
    assert [r["index"] for r in requests] == [2, 3, 4, 5, 6, 7] * 2
    assert sum("(lead-in)" in line for line in stdout.splitlines()) == 5 * 2 * 2
    assert {"arrival_s", "true_mbps", "index", "cut", "codec", "executed", "latency_ms", "bytes_sent", "top1",
            "fallback_reason", "estimated_mbps", "probe_bytes"} <= set(requests[0])
    assert "one replica of the link and of the server per policy, run side by side" in " ".join(stdout.split())
    assert "dsc's mean ≤ best-static's on" in stdout and "/2 segments" in stdout
    labels = {name: s["labels"] for name, s in policies.items()}
    assert len({tuple(v) for v in labels.values()}) == 1  # identical under every policy
    for png in ("timeline.png", "cdf.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "every answer says what the local model's says (its top-1 class, or the class of every pixel) under every policy" in stdout
    assert "segment 1/2" in stdout and "segment 2/2" in stdout
    device = json.loads((out / "device-profile.json").read_text())
    assert device["method"] == "flops" and "its time split over the model in proportion to FLOPs" in stdout
    assert any(line.startswith("oracle ") and " t=" in line and "true" in line and "est" in line
               for line in stdout.splitlines())


def test_bad_demo_arguments_fail_before_anything_starts(monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "demo", "--policies", "dsc,fastest", "--out", str(tmp_path))
    assert code == 2 and "unknown policy 'fastest'" in err
    bad = tmp_path / "bad.up"
    bad.write_text("10\n20\nabc\n")
    code, _, err = run(monkeypatch, capsys, "demo", "--trace", str(bad), "--out", str(tmp_path))
    assert code == 2 and "line 3" in err
    code, _, err = run(monkeypatch, capsys, "demo", "--private", "--policies", "dsc,offload", "--out", str(tmp_path))
    assert code == 2 and "--private keeps the input on the device, so policy 'offload' cannot run" in err
    code, _, err = run(monkeypatch, capsys, "demo", "--lead-in", "-1", "--out", str(tmp_path))
    assert code == 2 and "Invalid value for '--lead-in'" in err
    code, _, err = run(monkeypatch, capsys, "demo", "--device-shape", "fast", "--out", str(tmp_path))
    assert code == 2 and "Invalid value for '--device-shape'" in err
    assert not (tmp_path / "server.log").exists()


def test_a_flops_shaped_device_splits_its_time_as_the_heads_flops_do():
    from rich.console import Console

    from edgesplit import analyze
    from edgesplit.demo import emulated_profiles
    from edgesplit.errors import EdgesplitError
    from edgesplit.models import load_model

    loaded = load_model("mobilenet_v3_small")
    analysis = analyze(loaded.module, (3, 64, 64), "mobilenet_v3_small")
    measured, device = emulated_profiles(analysis, 0.35, Console(quiet=True), loaded.normalization, shape="flops")
    assert device.model_s[1].median_s == pytest.approx(0.35)
    total = analysis.natural_bottlenecks()[0].head_flops + analysis.natural_bottlenecks()[0].tail_flops
    for cut in analysis.natural_bottlenecks():
        assert device.cut(cut.name).head_s[1].median_s == pytest.approx(0.35 * cut.head_flops / total, rel=1e-9)
    with pytest.raises(EdgesplitError, match="unknown device shape 'fast'; choose one of flops, measured"):
        emulated_profiles(analysis, 0.35, Console(quiet=True), loaded.normalization, shape="fast")


def test_the_demo_over_kernel_shaping_leaves_nothing_behind(monkeypatch, capsys, tmp_path):
    from edgesplit.netem.kernel import available, leftovers

    if reason := available():
        pytest.skip(f"kernel shaping is not available here: {reason}")
    out = tmp_path / "demo"
    code, stdout, err = run(monkeypatch, capsys, "demo", "--netns", "--duration", "2", "--segments", "2",
                            "--lead-in", "0.5", "--device-shape", "measured", "--policies", "dsc,oracle", "--exact",
                            "--out", str(out))
    assert code == 0, err
    assert "kernel shaping (a tc HTB class" in stdout and "http://10.201.0.2:" in stdout
    assert "the policies take turns" in " ".join(stdout.split())  # however the console wrapped it
    policies = json.loads((out / "demo.json").read_text())["policies"]
    assert all(s["count"] == 8 and s["same_answer_as_local"] == 8 for s in policies.values())
    assert leftovers() == []
