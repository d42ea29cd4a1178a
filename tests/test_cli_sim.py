"""profile → simulate → grid from the command line, and every mistake as one line with exit code 2."""

import csv
import json

import pytest

from edgesplit.profile import load_profile
from test_cli import run


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profiles")
    mp = pytest.MonkeyPatch()
    import sys

    from edgesplit.cli import main

    for role, extra in (("device", ["--slowdown", "20", "--batch-sizes", "1,2,4,8,16,32,64"]),
                        ("server", ["--batch-sizes", "1,2,4,8,16,32,64"])):
        mp.setattr(sys, "argv", ["edgesplit", "profile", "toy_models:toy", "--input-shape", "3,8,8", "--role", role,
                                 "--repeats", "3", "--cuts", "all", "--out", str(folder / f"{role}.json"), *extra])
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None)
    mp.undo()
    return folder


def _trace(folder, text):
    path = folder / "trace.tsv"
    path.write_text(text)
    return str(path)


STEPS = "0 0.2\n5 20\n10 0.2\n15 20\n"  # Mbit/s: alternately slow and fast, 20 s


def test_simulate_writes_the_documented_json_csv_and_plots(profiles, monkeypatch, capsys, tmp_path):
    out = tmp_path / "sim.json"
    code, stdout, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(profiles / "device.json"),
                            "--server-profile", str(profiles / "server.json"), "--trace", _trace(tmp_path, STEPS),
                            "--policies", "dsc,oracle,best-static,local,offload", "--fps", "5", "--json", str(out),
                            "--csv", str(tmp_path / "req.csv"), "--plot", str(tmp_path / "sim"))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert list(data) == ["trace", "policies", "estimator_mape"]
    assert list(data["policies"]) == ["dsc", "oracle", "best-static", "local", "offload"]
    for summary in data["policies"].values():
        assert list(summary) == ["mean_ms", "p50_ms", "p95_ms", "p99_ms", "miss_rate", "mean_bytes", "fallbacks",
                                 "probe_bytes_per_s", "mean_energy_mj", "mean_radio_mj", "cuts"]
        assert sum(summary["cuts"].values()) == 100  # 20 s at 5 fps
    assert data["policies"]["local"]["cuts"] == {"local": 100}
    local = data["policies"]["local"]  # the processor at 3 W for the whole model; the radio only probes
    whole_s = json.loads((profiles / "device.json").read_text())["model_s"]["1"]["median_s"]
    assert local["mean_energy_mj"] - local["mean_radio_mj"] == pytest.approx(3.0 * whole_s * 1e3)
    assert data["policies"]["offload"]["mean_radio_mj"] > 0 and local["mean_radio_mj"] > 0
    assert data["policies"]["offload"]["mean_bytes"] == 192
    assert data["policies"]["oracle"]["mean_ms"] <= data["policies"]["local"]["mean_ms"]
    assert isinstance(data["estimator_mape"], float)
    assert len((tmp_path / "req.csv").read_text().splitlines()) == 1 + 5 * 100
    for suffix in ("timeline", "cdf"):
        assert (tmp_path / f"sim-{suffix}.png").read_bytes()[:4] == b"\x89PNG"
    assert "dsc" in stdout and "mean ms" in stdout


def test_grid_runs_the_no_rtt_sweep_and_the_realistic_one(profiles, monkeypatch, capsys, tmp_path):
    out = tmp_path / "grid.json"
    code, stdout, err = run(monkeypatch, capsys, "grid", "--device-profile", str(profiles / "device.json"),
                            "--server-profile", str(profiles / "server.json"), "--options", "all",
                            "--json", str(out), "--plot", str(tmp_path / "grid.png"))
    assert code == 0, err
    variants = json.loads(out.read_text())["variants"]
    assert [v["scenarios"] for v in variants] == [127 * 62, 127 * 62]
    for v in variants:
        assert sum(v["share"].values()) == pytest.approx(1.0)
        assert sum(v["best_counts"].values()) == 127 * 62
    assert "offload:jpeg:90" not in variants[0]["options"] and "offload:jpeg:90" in variants[1]["options"]
    assert (tmp_path / "grid.png").stat().st_size > 50_000


@pytest.mark.parametrize("trace,message", [
    ("0 1\n1 x\n", "line 2"),
    ("0 1\n1 -2\n", "line 2"),
    ("0 1\n2 1\n1 1\n", "line 3"),
    ("", "no samples"),
])
def test_bad_traces(profiles, monkeypatch, capsys, tmp_path, trace, message):
    code, out, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(profiles / "device.json"),
                         "--server-profile", str(profiles / "server.json"), "--trace", _trace(tmp_path, trace))
    assert code == 2 and err.startswith("edgesplit: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (["--policies", "dcs"], "unknown policy 'dcs'; did you mean 'dsc'"),
    (["--policies", "static:nope"], "unknown option 'split:nope:fp32'"),
    (["--estimator", "harmonik"], "unknown estimator 'harmonik'; did you mean 'harmonic'"),
    (["--estimator", "ewma:2"], "ewma"),
    (["--codecs", "fp8"], "unknown codec 'fp8'"),
])
def test_bad_policy_estimator_and_codec_names(profiles, monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(profiles / "device.json"),
                       "--server-profile", str(profiles / "server.json"), "--trace", _trace(tmp_path, STEPS), *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_profiles_that_do_not_fit(profiles, monkeypatch, capsys, tmp_path):
    data = json.loads((profiles / "server.json").read_text())
    data["batch_sizes"] = [1, 2]
    data["model_s"] = {k: v for k, v in data["model_s"].items() if k in ("1", "2")}
    small = tmp_path / "small.json"
    small.write_text(json.dumps(data))
    code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(profiles / "device.json"),
                       "--server-profile", str(small), "--trace", _trace(tmp_path, STEPS))
    assert code == 2 and "goes up to batch size 2 but 8 is needed" in err
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "edgesplit-profile/1", "model": "x"}')
    code, _, err = run(monkeypatch, capsys, "grid", "--device-profile", str(broken),
                       "--server-profile", str(profiles / "server.json"))
    assert code == 2 and "broken.json is a malformed profile" in err
    code, _, err = run(monkeypatch, capsys, "grid", "--device-profile", str(tmp_path / "none.json"),
                       "--server-profile", str(profiles / "server.json"))
    assert code == 2 and "cannot read profile" in err


def test_load_trace_puts_other_clients_on_the_server(profiles, monkeypatch, capsys, tmp_path):
    fast = "0 20\n20 20\n"
    load = tmp_path / "load.csv"
    load.write_text("time_s,value\n0,0\n10,2000\n")  # from 10 s on, 2000 other clients send their input
    rows = {}
    for name, extra in (("idle", []), ("loaded", ["--load-trace", str(load)])):
        out = tmp_path / f"{name}.csv"
        code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(profiles / "device.json"),
                           "--server-profile", str(profiles / "server.json"), "--trace", _trace(tmp_path, fast),
                           "--policies", "offload", "--fps", "5", "--csv", str(out), *extra)
        assert code == 0, err
        rows[name] = list(csv.DictReader(out.read_text().splitlines()))
    assert all(float(r["queue_s"]) == 0 and r["batch_size"] == "1" for r in rows["idle"])
    first_half = [r for r in rows["loaded"] if float(r["arrival_s"]) < 10]
    second_half = [r for r in rows["loaded"] if float(r["arrival_s"]) >= 10]
    assert all(float(r["queue_s"]) == 0 and r["batch_size"] == "1" for r in first_half)
    assert any(float(r["queue_s"]) > 0 or r["batch_size"] != "1" for r in second_half)


def test_hedge_caps_every_request_at_the_devices_own_time(profiles, monkeypatch, capsys, tmp_path):
    outage = "0 20\n5 0\n10 20\n20 20\n"  # 20 Mbit/s, then nothing for 5 s
    rows = {}
    for name, extra in (("plain", []), ("hedged", ["--hedge"])):
        out = tmp_path / f"{name}.csv"
        code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(profiles / "device.json"),
                           "--server-profile", str(profiles / "server.json"), "--trace", _trace(tmp_path, outage),
                           "--policies", "offload", "--fps", "2", "--deadline-ms", "60000", "--csv", str(out), *extra)
        assert code == 0, err
        rows[name] = [float(r["latency_s"]) for r in csv.DictReader(out.read_text().splitlines())]
    local = load_profile(profiles / "device.json").model_s[1].median_s
    assert max(rows["plain"]) > 1.0  # stuck behind the outage
    assert max(rows["hedged"]) <= local + 1e-9 and all(h <= p + 1e-9 for h, p in zip(rows["hedged"], rows["plain"]))


@pytest.mark.parametrize("args,message", [
    (["--start", "20"], "--start 20 is at or past the end of the trace (20 s)"),
    (["--start", "1000"], "--start 1000 is at or past the end of the trace (20 s)"),
    (["--start", "-1"], "--start must be a finite number >= 0, got -1"),
    (["--duration", "0"], "--duration must be a finite number > 0, got 0"),
    (["--duration", "-1"], "--duration must be a finite number > 0, got -1"),
    (["--rtt-ms", "-5"], "--rtt-ms must be a finite number >= 0, got -5"),
    (["--deadline-ms", "0"], "--deadline-ms must be a finite number > 0, got 0"),
    (["--fps", "0"], "--fps must be a finite number > 0, got 0"),
    (["--fps", "-2"], "--fps must be a finite number > 0, got -2"),
    *([[option, value], f"{option} must be a finite number"] for option in
      ("--start", "--duration", "--rtt-ms", "--deadline-ms", "--fps") for value in ("nan", "inf", "-inf")),
    (["--duration", "1e12"], "would simulate 2,000,000,000,000 requests, more than the limit of 10,000,000"),
    (["--fps", "1e6"], "20 s at --fps 1e+06 would simulate 20,000,000 requests"),
    (["--start", "15", "--fps", "3e6"], "5 s at --fps 3e+06 would simulate 15,000,000"),  # the rest of the trace
])
def test_bad_numbers_are_one_line_naming_the_option(profiles, monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(profiles / "device.json"),
                       "--server-profile", str(profiles / "server.json"), "--trace", _trace(tmp_path, STEPS), *args)
    assert code == 2 and err.startswith("edgesplit: error: ") and err.count("\n") == 1, err
    assert message in err and args[-2] in err


def test_private_with_offload_says_so(profiles, monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(profiles / "device.json"),
                       "--server-profile", str(profiles / "server.json"), "--trace", _trace(tmp_path, STEPS),
                       "--private", "--policies", "dsc,offload")
    assert code == 2 and err.splitlines() == [
        "edgesplit: error: policy 'offload' sends the input to the server, but these options keep it on the device "
        "(--private): drop it from the policies"]


def test_an_accuracy_budget_lets_policies_pick_only_lossy_options_measured_to_meet_it(monkeypatch, capsys, tmp_path):
    from test_latency import device_profile, server_profile

    from dataclasses import replace

    device_profile().save(tmp_path / "device.json")  # made up: local 0.3 s; c1's head 0.1 s, 10000 elements
    server = server_profile()  # batches of 8 as long as of 4 (the simulator needs its largest batch priced)
    replace(server, batch_sizes=(1, 4, 8), model_s={**server.model_s, 8: server.model_s[4]},
            cuts={n: replace(c, head_s={**c.head_s, 8: c.head_s[4]}, tail_s={**c.tail_s, 8: c.tail_s[4]})
                  for n, c in server.cuts.items()}).save(tmp_path / "server.json")
    fidelity = tmp_path / "fidelity.json"

    def oracle_chooses(agreement: float | None, *extra: str) -> set[str]:
        fidelity.write_text(json.dumps({"model": "tiny", "results": [
            {"cut": "c1", "codec": "int8", "agreement": agreement}, {"cut": "c2", "codec": "int8", "agreement": 0.9}]}))
        code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(tmp_path / "device.json"),
                           "--server-profile", str(tmp_path / "server.json"), "--trace", _trace(tmp_path, "0 1\n20 1\n"),
                           "--policies", "oracle", "--codecs", "fp32,int8", "--private", "--fps", "1",
                           "--csv", str(tmp_path / "req.csv"), *extra)
        assert code == 0, err
        return {row["option"] for row in csv.DictReader((tmp_path / "req.csv").read_text().splitlines())}

    # at 1 Mbit/s c1's tensor in int8 (10 kB) answers in about 0.25 s, before local (0.3 s); in fp32 it cannot
    assert oracle_chooses(0.995, "--min-agreement", "0.99", "--fidelity", str(fidelity)) == {"split:c1:int8"}
    assert oracle_chooses(0.98, "--min-agreement", "0.99", "--fidelity", str(fidelity)) == {"local"}
    assert oracle_chooses(0.98, "--min-agreement", "0.95", "--fidelity", str(fidelity)) == {"split:c1:int8"}
    assert oracle_chooses(0.98) == {"local"}  # exact only, as without a budget
    code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(tmp_path / "device.json"),
                       "--server-profile", str(tmp_path / "server.json"), "--trace", _trace(tmp_path, "0 1\n20 1\n"),
                       "--codecs", "fp32,int8", "--min-agreement", "0.99")
    assert code == 2 and "--min-agreement needs measured agreements, and none of the 3 lossy options has one" in err  # jpeg:90, c1 and c2 in int8
    code, _, err = run(monkeypatch, capsys, "simulate", "--device-profile", str(tmp_path / "device.json"),
                       "--server-profile", str(tmp_path / "server.json"), "--trace", _trace(tmp_path, "0 1\n20 1\n"),
                       "--min-agreement", "1.5")
    assert code == 2 and "1.5 is not in the range 0<=x<=1" in err
