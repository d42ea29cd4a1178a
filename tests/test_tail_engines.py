"""Tail engines answer as eager fp32 does: torch bit for bit, onnx and compile within 1e-4, through the
input cut (uint8, normalised by the server) and later cuts, at batch 1 and 3; a bad engine name, a
missing GPU or a missing onnxruntime fail with a message that says what to do."""

import json
import sys

import numpy as np
import pytest
import torch

from edgesplit import analyze, split
from edgesplit.errors import EdgesplitError
from edgesplit.models import load_model
from edgesplit.runtime import engines
from edgesplit.runtime.engines import TAIL_ENGINES, TOLERANCE, create_tail_engine, fastest_engine, profile_engine
from edgesplit.runtime.tail_engine import INPUT_CUT, BatchPlan, TailEngine
from test_cli import run

TOY = (3, 8, 8)
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def toy():
    loaded = load_model("toy_models:toy")
    return loaded, analyze(loaded.module, TOY, "toy")


@pytest.fixture(scope="module")
def resnet():
    """A torchvision model whose random-weight logits are of order 1 (EfficientNet's are ~1e-14: any
    engine would pass a 1e-4 bar on them)."""
    loaded = load_model("resnet18")
    return loaded, analyze(loaded.module, (3, 64, 64), "resnet18")


def eager_logits(loaded, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return loaded.module(x).numpy()


def normalised(loaded, image: np.ndarray) -> torch.Tensor:
    """uint8 input normalised by hand with the model's mean and std, as the server must."""
    mean = torch.tensor(loaded.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.normalization.std).view(1, 3, 1, 1)
    return (torch.from_numpy(image).float() - mean) / std


def inputs_at_cuts(loaded, analysis, cut_ids: list[int], batch_size: int):
    """(cut id, what a device sends there, eager fp32 logits): uint8 at the input, fp32 activations later."""
    image = np.random.default_rng(batch_size).integers(0, 256, (batch_size, *analysis.input_shape), dtype=np.uint8)
    x = normalised(loaded, image)
    expected = eager_logits(loaded, x)
    for cut_id in cut_ids:
        if cut_id == INPUT_CUT:
            yield cut_id, image, expected
        else:
            with torch.inference_mode():
                yield cut_id, split(analysis, analysis.cuts[cut_id])[0](x).numpy(), expected


@pytest.mark.parametrize("name, cut_ids", [("torch", [0, 1, 4, 6]), ("onnx", [0, 1, 4, 6]), ("compile", [0, 4])])
def test_every_engine_answers_within_its_documented_tolerance(toy, name, cut_ids):
    loaded, analysis = toy
    engine = create_tail_engine(name, analysis, loaded.normalization)
    assert engine.max_abs_diff == (0.0 if name == "torch" else TOLERANCE) == (0.0 if name == "torch" else 1e-4)
    for batch_size in (1, 3):
        for cut_id, sent, expected in inputs_at_cuts(loaded, analysis, cut_ids, batch_size):
            got = engine.run(cut_id, sent)
            assert got.dtype == np.float32 and got.shape == expected.shape == (batch_size, 5)
            if name == "torch":
                assert np.array_equal(got, expected), cut_id
            else:
                assert np.abs(got - expected).max() <= TOLERANCE, (cut_id, batch_size)
    description = engine.describe()["engine"]
    assert description["name"] == name and description["device"] == "cpu"
    assert description["tails_built"] == len(cut_ids)


def test_onnx_tails_and_batch_plan_segments_on_a_real_network(resnet):
    loaded, analysis = resnet
    engine = create_tail_engine("onnx", analysis, loaded.normalization)
    record_lows = [c.index for c in analysis.cuts if c.record_low]
    assert engine.warm_cut_ids() == [INPUT_CUT, *record_lows]  # sessions cost memory: not every natural bottleneck
    for batch_size in (1, 3):
        for cut_id, sent, expected in inputs_at_cuts(loaded, analysis, [0, record_lows[1], record_lows[-1]], batch_size):
            assert np.abs(expected).max() > 0.5  # logits large enough for the bar to mean something
            assert np.abs(engine.run(cut_id, sent) - expected).max() <= TOLERANCE, (cut_id, batch_size)
    # a batch that crossed before the plan's cut runs row by row through an exported segment, then as one batch
    engine.batch_plan = BatchPlan(record_lows[1], 3, {})
    [(_, image, expected)] = inputs_at_cuts(loaded, analysis, [0], 3)
    assert np.abs(engine.run(INPUT_CUT, image) - expected).max() <= TOLERANCE
    assert engine.describe()["engine"]["segments_built"] == 1
    assert engine.describe()["engine"]["providers"] == ["CPUExecutionProvider"]


def test_profile_engine_times_whole_tails_and_leaves_no_tail_behind(toy):
    loaded, analysis = toy
    engine = create_tail_engine("onnx", analysis, loaded.normalization)
    engine.tail(INPUT_CUT)
    cuts = analysis.natural_bottlenecks()
    profile = profile_engine(engine, cuts, batch_sizes=(1, 2), repeats=3)
    assert profile.method == "onnx engine, whole tails as served" and profile.machine["engine"] == "onnx"
    assert set(profile.cuts) == {c.name for c in cuts} and profile.batch_sizes == (1, 2)
    for c in profile.cuts.values():
        assert {b: t.source for b, t in c.tail_s.items()} == {1: "measured", 2: "measured"}
        assert c.head_s[1].source == "estimated"
        assert c.head_s[1].median_s == pytest.approx(max(0.0, profile.model_s[1].median_s - c.tail_s[1].median_s))
    assert engine.describe()["engine"]["tails_built"] == 1  # only the one built before


def test_unknown_engine_names_the_known_ones(toy):
    loaded, analysis = toy
    with pytest.raises(EdgesplitError, match=r"unknown tail engine 'onnxx'; did you mean 'onnx'\? "
                                             r"\(known: compile, onnx, torch\)"):
        create_tail_engine("onnxx", analysis, loaded.normalization)
    assert TAIL_ENGINES.names() == ["compile", "onnx", "torch"]


def test_onnx_engine_without_onnxruntime_says_how_to_install_it(toy, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(EdgesplitError, match=r"--engine onnx needs onnxruntime: pip install 'edgesplit\[device\]'"):
        create_tail_engine("onnx", toy[1], toy[0].normalization)
    # auto then runs what it can, and says why onnx was left out
    notes = []
    engine, timings = fastest_engine(toy[1], toy[0].normalization, batch_size=2, rounds=1, note=notes.append)
    assert engine.name == "torch" and [t.name for t in timings] == ["torch", "onnx"]
    assert timings[1].refused is not None and "needs onnxruntime" in timings[1].refused and len(notes) == 1
    assert timings[1].per_request_s == float("inf") and timings[0].per_request_s > 0


def test_a_tail_the_exporter_or_compiler_cannot_take_is_a_clear_error(toy, monkeypatch):
    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator fancy_op\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(EdgesplitError, match=r"^ONNX export of the tail from add failed: RuntimeError: Unsupported: "
                                             r"ONNX export of operator fancy_op; serve with --engine torch$"):
        create_tail_engine("onnx", toy[1], toy[0].normalization).tail(4)
    engine, timings = fastest_engine(toy[1], toy[0].normalization, batch_size=2, rounds=1)
    assert engine.name == "torch" and "ONNX export of the whole model failed" in timings[1].refused
    monkeypatch.setattr(torch, "compile", lambda module, dynamic: unsupported)
    with pytest.raises(EdgesplitError, match=r"^torch.compile failed on the whole model: RuntimeError: Unsupported"):
        create_tail_engine("compile", toy[1], toy[0].normalization).tail(INPUT_CUT)


def test_auto_picks_the_least_time_per_request(toy):
    engine, timings = fastest_engine(toy[1], toy[0].normalization, batch_size=4, rounds=2)
    assert [t.name for t in timings] == ["torch", "onnx"] and all(t.rounds == 2 for t in timings)
    assert engine.name == min(timings, key=lambda t: t.per_request_s).name
    for t in timings:
        assert t.per_request_s == pytest.approx((t.batch_1_s + t.full_batch_s) / 2)


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["torch", "compile"])
def test_cuda_without_a_gpu_is_a_clear_error(toy, name):
    with pytest.raises(EdgesplitError, match=r"--device cuda: CUDA is not available here .*; use --device cpu"):
        create_tail_engine(name, toy[1], toy[0].normalization, "cuda")


def test_bad_devices_are_clear_errors(toy):
    loaded, analysis = toy
    with pytest.raises(EdgesplitError, match=r"unknown device 'gpu0'; use cpu, cuda or cuda:N"):
        TailEngine(analysis, loaded.normalization, "gpu0")
    with pytest.raises(EdgesplitError, match=r"device 'meta' is not supported; use cpu, cuda or cuda:N"):
        TailEngine(analysis, loaded.normalization, "meta")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(EdgesplitError, match=r"this onnxruntime \(.*\) has no CUDAExecutionProvider \(it has "
                                                 r".*CPUExecutionProvider\); pip install onnxruntime-gpu"):
            create_tail_engine("onnx", analysis, loaded.normalization, "cuda")


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("name", ["torch", "onnx", "compile"])
def test_engines_on_a_gpu_answer_within_1e4_of_the_cpu(name):
    import onnxruntime

    if name == "onnx" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider")
    loaded = load_model("toy_models:toy")  # its own copy: the torch engine moves the model to the GPU
    analysis = analyze(loaded.module, TOY, "toy")
    cpu = [(cut_id, sent, expected) for b in (1, 3) for cut_id, sent, expected in inputs_at_cuts(loaded, analysis, [0, 4], b)]
    engine = create_tail_engine(name, analysis, loaded.normalization, "cuda")
    for cut_id, sent, expected in cpu:
        assert np.abs(engine.run(cut_id, sent) - expected).max() <= TOLERANCE, cut_id
    assert engine.describe()["engine"]["device"] == "cuda"
    assert engine.plan_batching(3, repeats=1).batch_size == 3


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
def test_auto_on_a_gpu_exports_from_the_model_torch_moved_there():
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider")
    loaded = load_model("toy_models:toy")
    analysis = analyze(loaded.module, TOY, "toy")
    [(_, image, expected)] = inputs_at_cuts(loaded, analysis, [0], 3)
    engine, timings = fastest_engine(analysis, loaded.normalization, device="cuda", batch_size=3, rounds=1)
    assert all(t.refused is None for t in timings)
    assert np.abs(engine.run(INPUT_CUT, image) - expected).max() <= TOLERANCE


def test_serve_names_its_engine_and_profiles_with_it(monkeypatch, capsys):
    import uvicorn
    from starlette.testclient import TestClient

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    code, stdout, err = run(monkeypatch, capsys, "serve", "toy_models:toy", "--input-shape", "3,8,8", "--engine", "onnx",
                            "--max-batch-size", "2", "--warm-up", "--profile", "--profile-idle-ms", "0")
    assert code == 0, err
    assert "onnx engine on cpu" in stdout
    with TestClient(served["app"]) as client:
        model = client.get("/v1/model").json()
        profile = client.get("/v1/profile").json()
    assert model["engine"]["name"] == "onnx" and model["engine"]["max_abs_diff"] == 1e-4
    assert model["engine"]["tails_built"] == 3  # the input and the two record-low cuts; profiling kept none
    assert profile["method"] == "onnx engine, whole tails as served" and profile["machine"]["engine"] == "onnx"


def test_serve_auto_prints_what_it_measured(monkeypatch, capsys):
    import uvicorn
    from starlette.testclient import TestClient

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    code, stdout, err = run(monkeypatch, capsys, "serve", "toy_models:toy", "--input-shape", "3,8,8", "--engine", "auto",
                            "--max-batch-size", "4")
    assert code == 0, err
    lines = stdout.splitlines()
    chosen = lines[0].split("--engine auto chose ")[1].split()[0]
    assert chosen in ("torch", "onnx") and lines[0].endswith("(whole model, uint8 input, medians of 5 interleaved rounds):")
    assert lines[1].startswith("  torch: ") and lines[2].startswith("  onnx: ")
    assert all(" ms at batch 1, " in line and line.endswith(" ms per request at batch 4") for line in lines[1:3])
    with TestClient(served["app"]) as client:
        assert client.get("/v1/model").json()["engine"]["name"] == chosen


@pytest.mark.parametrize("args, message", [
    (["serve", "--engine", "tensorrt"], "Invalid value for '--engine': 'tensorrt' is not one of"),
    (["profile", "--role", "device", "--engine", "onnx", "--out", "p.json"], "--engine and --device apply to --role server"),
    (["profile", "--role", "server", "--engine", "onnx", "--method", "flops", "--out", "p.json"],
     "--method flops applies to --engine torch --device cpu"),
] + ([] if CUDA else [(["serve", "--device", "cuda"], "--device cuda: CUDA is not available here"),
                      (["profile", "--role", "server", "--device", "cuda", "--out", "p.json"],
                       "--device cuda: CUDA is not available here")]))
def test_cli_refuses_bad_engine_options_in_one_line(monkeypatch, capsys, tmp_path, args, message):
    import uvicorn

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: pytest.fail("must not serve"))
    command, *options = args
    code, _, err = run(monkeypatch, capsys, command, "toy_models:toy", "--input-shape", "3,8,8", *options)
    assert code == 2 and message in err
    assert not (tmp_path / "p.json").exists()


def test_profile_role_server_engine_onnx_writes_an_engine_profile(monkeypatch, capsys, tmp_path):
    out = tmp_path / "server.json"
    code, stdout, err = run(monkeypatch, capsys, "profile", "toy_models:toy", "--input-shape", "3,8,8", "--role",
                            "server", "--engine", "onnx", "--batch-sizes", "1,2", "--repeats", "3", "--out", str(out))
    assert code == 0, err
    saved = json.loads(out.read_text())
    assert saved["method"] == "onnx engine, whole tails as served" and saved["machine"]["engine"] == "onnx"
    assert saved["role"] == "server" and set(saved["model_s"]) == {"1", "2"}


def test_the_cli_offers_every_registered_engine_and_auto():
    from edgesplit.cli import profile, serve

    for command in (serve, profile):
        engine_option = next(p for p in command.params if p.name == "engine_name")
        assert set(engine_option.type.choices) == {*TAIL_ENGINES.names(), "auto"}
    assert engines.AUTO_CANDIDATES == ("torch", "onnx")
