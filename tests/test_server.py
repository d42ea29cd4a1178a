"""The edge server on loopback: exact logits through every cut, every bad frame refused, still serving."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from edgesplit import analyze, split
from edgesplit.wire import OUTPUT_CUT, decode_frame, encode_frame, frame_checksum
from edgesplit.models import load_model
from edgesplit.runtime.tail_engine import BatchPlan, TailEngine, best_batch_from, model_id
from edgesplit.runtime.server import ServerConfig, create_app
from live_server import LiveServer

SHAPE = (3, 64, 64)


@pytest.fixture(scope="module")
def b0():
    loaded = load_model("efficientnet_b0")
    analysis = analyze(loaded.module, SHAPE, "efficientnet_b0")
    return loaded, analysis, TailEngine(analysis, loaded.normalization)


@pytest.fixture(scope="module")
def live(b0):
    with LiveServer(create_app(b0[2], ServerConfig(max_batch_size=8, batch_wait_timeout_s=0.02))) as server:
        yield server


def post(url, data):
    return httpx.post(f"{url}/v1/infer", content=data, headers={"content-type": "application/vnd.edgesplit.frame"},
                      timeout=30)


def test_model_description(live, b0):
    info = httpx.get(f"{live.url}/v1/model").json()
    engine = b0[2]
    assert info["model_id"] == engine.model_id.hex() == model_id(b0[0].module).hex()
    assert info["input_shape"] == [3, 64, 64] and info["max_batch_size"] == 8
    ids = [c["id"] for c in info["cuts"]]
    assert ids[0] == 0 and info["cuts"][0]["shape"] == [3, 64, 64]
    natural = {c.index for c in b0[1].natural_bottlenecks()}
    assert natural <= set(ids)  # every natural bottleneck can be sent
    schema = httpx.get(f"{live.url}/openapi.json").json()
    assert "/v1/infer" in schema["paths"] and "application/vnd.edgesplit.frame" in json.dumps(schema)


def test_logits_through_every_natural_bottleneck_equal_the_local_model(live, b0):
    loaded, analysis, engine = b0
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = loaded.module(x).numpy()
    for cut in [analysis.cuts[0], *analysis.natural_bottlenecks()]:
        head, _ = split(analysis, cut)
        with torch.inference_mode():
            mid = head(x).numpy()
        response = post(live.url, encode_frame(mid, model_id=engine.model_id, cut=cut.index))
        assert response.status_code == 200, response.text
        frame = decode_frame(response.content)
        assert frame.cut == OUTPUT_CUT and np.array_equal(frame.array, expected), cut.name
        timing = response.headers["server-timing"]
        assert "queue;dur=" in timing and "compute;dur=" in timing and "recv;dur=" in timing
        assert json.loads(response.headers["edgesplit-load"])["max_batch_size"] == 8


def test_uint8_and_jpeg_input_are_normalised_by_the_server(live, b0):
    loaded, _, engine = b0
    image = np.random.default_rng(0).integers(0, 256, (1, *SHAPE), dtype=np.uint8)
    mean = torch.tensor(loaded.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.normalization.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = loaded.module((torch.from_numpy(image).float() - mean) / std).numpy()
    raw = post(live.url, encode_frame(image, model_id=engine.model_id, cut=0))
    assert np.array_equal(decode_frame(raw.content).array, expected)
    jpeg = post(live.url, encode_frame(image, model_id=engine.model_id, cut=0, codec="jpeg"))
    assert jpeg.status_code == 200 and decode_frame(jpeg.content).array.shape == (1, 1000)


def test_concurrent_requests_for_one_cut_run_as_batches(live, b0):
    _, analysis, engine = b0
    cut = analysis.natural_bottlenecks()[-3]
    mid = np.random.default_rng(0).standard_normal((1, *cut.shapes[0][1:])).astype(np.float32)
    data = encode_frame(mid, model_id=engine.model_id, cut=cut.index)
    counter = f'edgesplit_requests_total{{cut="{cut.index}"}} '

    def served() -> int:
        line = [ln for ln in httpx.get(f"{live.url}/metrics").text.splitlines() if ln.startswith(counter)]
        return int(line[0].split()[-1]) if line else 0

    before = served()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(live.url, data), range(16)))
    assert all(r.status_code == 200 for r in responses)
    batches = [int(r.headers["server-timing"].split('batch;desc="')[1].split('"')[0]) for r in responses]
    assert all(1 <= b <= 8 for b in batches)  # how many overlap depends on scheduling; test_batcher pins batching
    # the same answer in any batch, to float rounding: kernels sum in a different order per batch size
    # (not bit for bit: CPU kernels sum in another order for another batch size or row; --max-batch-size 1
    # keeps every answer bit-exact)
    answers = [decode_frame(r.content).array for r in responses]
    assert all(np.allclose(a, answers[0], rtol=1e-5, atol=1e-5) for a in answers)
    assert served() == before + 16
    text = httpx.get(f"{live.url}/metrics").text
    assert "edgesplit_batch_size_bucket" in text and "edgesplit_queue_length 0" in text


def test_best_batch_from_minimises_time_per_request():
    # (start cut, one request, a batch of 8): batching the first segment costs more than running it 8 times
    plan = best_batch_from([(0, 0.010, 0.120), (5, 0.020, 0.080), (9, 0.005, 0.016)], 8)
    assert plan.batch_from == 5 and plan.batch_size == 8
    assert plan.per_request_s == pytest.approx({0: 0.027, 5: 0.022, 9: 0.032})


def test_a_batch_plan_runs_early_layers_one_request_at_a_time(b0):
    loaded, analysis, _ = b0
    engine = TailEngine(analysis, loaded.normalization)
    x = np.random.default_rng(0).integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    whole = engine.run(0, x)
    plan = engine.plan_batching(4, repeats=1)
    record_lows = [c.index for c in analysis.cuts if c.record_low]
    assert list(plan.per_request_s) == [0, *record_lows] and plan.batch_size == 4
    assert plan.batch_from == min(plan.per_request_s, key=plan.per_request_s.__getitem__)
    assert engine.describe()["batch_plan"]["per_request_ms"].keys() == {
        analysis.cuts[i].name for i in [0, *record_lows]}

    engine.batch_plan = BatchPlan(record_lows[1], 4, plan.per_request_s)  # split the batch, whatever was measured
    fetched = []
    segment = engine.segment
    engine.segment = lambda start, end: fetched.append((start, end)) or segment(start, end)
    planned = engine.run(0, x)
    assert fetched == [(0, record_lows[1])]
    np.testing.assert_allclose(planned, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(planned, np.concatenate([engine.run(0, x[i:i + 1]) for i in range(4)]),
                               rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        normalized = torch.from_numpy(engine._normalize(x)).float()
        early, late = (split(analysis, analysis.cuts[i])[0](normalized).numpy() for i in record_lows[::2][:2])
    fetched.clear()
    np.testing.assert_allclose(engine.run(record_lows[0], early), whole, rtol=1e-5, atol=1e-5)
    assert fetched == [(record_lows[0], record_lows[1])]  # crossed between two cuts: one row at a time to the plan's
    fetched.clear()
    np.testing.assert_allclose(engine.run(record_lows[2], late), whole, rtol=1e-5, atol=1e-5)  # after: one batch
    engine.run(0, x[:1])  # a batch of one: nothing to split
    assert fetched == []
    assert engine.describe()["batch_plan"]["batch_from"] == analysis.cuts[record_lows[1]].name


def _bad_frames(engine, analysis):
    good = encode_frame(np.zeros((1, *SHAPE), np.float32), model_id=engine.model_id, cut=0)
    natural = analysis.natural_bottlenecks()[0]
    bomb_payload = __import__("zstandard").ZstdCompressor().compress(bytes(32 * 1024 * 1024))
    bomb = bytearray(good[:54])  # the headers of a frame of one 4-d tensor
    bomb[26] = 1  # zstd
    bomb[30:38] = np.array([len(bomb_payload), len(good) - 54], dtype="<u4").tobytes()
    bomb = bytes(bomb) + bomb_payload
    bomb = bomb[:16] + np.array([len(bomb)], dtype="<u4").tobytes() + bomb[20:]
    bomb = bomb[:20] + np.array([frame_checksum(bomb)], dtype="<u4").tobytes() + bomb[24:]
    return [
        ("truncated", good[:100], 400, "frame length mismatch"),
        ("wrong magic", b"XXXX" + good[4:], 400, "not an edgesplit frame"),
        ("wrong version", good[:4] + b"\x07" + good[5:], 400, "unsupported frame version 7"),
        ("wrong model id", encode_frame(np.zeros((1, *SHAPE), np.float32), model_id=bytes(8), cut=0), 409,
         "is not this server's model"),
        ("unknown cut", encode_frame(np.zeros((1, 4), np.float32), model_id=engine.model_id, cut=4000), 422,
         "unknown cut id 4000"),
        ("shape mismatch", encode_frame(np.zeros((1, 3, 32, 32), np.float32), model_id=engine.model_id, cut=0), 422,
         "does not fit cut 0"),
        ("dtype mismatch", encode_frame(np.zeros((1, *natural.shapes[0][1:]), np.uint8), model_id=engine.model_id,
                                        cut=natural.index), 422,
         f"dtype uint8 is not accepted at cut {natural.index} (accepted: float16, float32)"),
        ("too large batch", encode_frame(np.zeros((9, *SHAPE), np.float32), model_id=engine.model_id, cut=0), 413,
         "exceeds max_batch_size=8"),
        ("decompression bomb", bomb, 400, "zstd payload does not decompress"),
        ("garbage", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), 400, "not an edgesplit"),
        ("empty", b"", 400, "truncated frame: 0 bytes"),
    ]


def test_every_bad_frame_gets_a_4xx_and_the_server_keeps_serving(live, b0):
    _, analysis, engine = b0
    good = encode_frame(np.zeros((1, *SHAPE), np.float32), model_id=engine.model_id, cut=0)
    for name, data, status, message in _bad_frames(engine, analysis):
        response = post(live.url, data)
        assert response.status_code == status, (name, response.text)
        assert message in response.json()["detail"], (name, response.json())
        assert post(live.url, good).status_code == 200, f"server stopped serving after {name}"
    assert httpx.get(f"{live.url}/healthz").json()["status"] == "ok"
    assert 'edgesplit_errors_total{kind="bad_frame"} 11' in httpx.get(f"{live.url}/metrics").text


def test_oversize_body_is_refused_by_its_content_length_or_while_streaming(b0):
    engine = b0[2]
    with LiveServer(create_app(engine, ServerConfig(max_body_bytes=10_000))) as server:
        data = encode_frame(np.zeros((1, *SHAPE), np.float32), model_id=engine.model_id, cut=0)
        declared = post(server.url, data)
        chunked = post(server.url, (data[i:i + 4096] for i in range(0, len(data), 4096)))  # no Content-Length
        for response in (declared, chunked):
            assert response.status_code == 413
            assert response.json() == {"error": "too_large", "detail": "body exceeds max_body_bytes=10000"}
        assert httpx.get(f"{server.url}/healthz").status_code == 200
