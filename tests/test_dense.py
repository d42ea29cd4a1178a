"""Beyond classifiers, live: a segmentation model served from cuts where one or two tensors cross, its masks
answered as named tensors, equal to the local model's."""

import numpy as np
import pytest
import torch

from edgesplit import analyze
from edgesplit.codecs import split_codec
from edgesplit.device import DeviceConfig
from edgesplit.estimators import make_estimator
from edgesplit.images import PHOTOS, fit, photo
from edgesplit.latency import LinkState, build_options
from edgesplit.measure import measure
from edgesplit.models import load_model
from edgesplit.outputs import answer_digest, mean_iou, pixel_agreement, pixel_classes
from edgesplit.policies import make_policy
from edgesplit.runtime.client import ClientConfig, DeviceClient
from edgesplit.runtime.device_engines import TorchEngine
from edgesplit.runtime.server import create_app
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.wire import OUTPUT_CUT, decode_frame, encode_tensors
from live_server import LiveServer

SHAPE = (3, 64, 64)


@pytest.fixture(scope="module")
def lraspp():
    loaded = load_model("lraspp_mobilenet_v3_large")
    analysis = analyze(loaded.module, SHAPE, "lraspp_mobilenet_v3_large", max_tensors=2)
    one = analysis.natural_bottlenecks()[-1]
    two = next(c for c in analysis.natural_bottlenecks() if len(c.crossing) == 2)
    profile = measure(analysis, [one, two], role="device", batch_sizes=(1,), repeats=1, jpeg_qualities=())
    images = [fit(photo(name), SHAPE) for name in PHOTOS[:3]]
    with LiveServer(create_app(TailEngine(analysis, loaded.normalization))) as server:
        yield loaded, analysis, build_options(profile, profile, jpeg=False), images, server, (one, two)


def _client(lraspp, policy):
    loaded, analysis, options, _, server, _ = lraspp
    return DeviceClient(server.url, TorchEngine(analysis, loaded.normalization), options,
                        make_policy(policy, options, LinkState(1e6)), make_estimator("harmonic"),
                        ClientConfig(DeviceConfig(deadline_s=30.0)))  # the first request at a cut builds its tail


def test_the_server_describes_cuts_where_two_tensors_cross(lraspp):
    _, analysis, _, _, server, (one, two) = lraspp
    with _client(lraspp, "local") as client:
        cuts = {c["name"]: c for c in client.http.request("GET", "/v1/model").json()["cuts"]}
    assert cuts[two.name]["shapes"] == [list(s[1:]) for s in two.shapes] and "shape" not in cuts[two.name]
    assert cuts[one.name]["shape"] == list(one.shapes[0][1:])


@pytest.mark.parametrize("which", ["one tensor", "two tensors", "offload"])
def test_masks_from_the_server_equal_the_local_models(lraspp, which):
    loaded, analysis, _, images, _, (one, two) = lraspp
    policy = {"one tensor": f"static:{one.name}", "two tensors": f"static:{two.name}", "offload": "offload"}[which]
    with _client(lraspp, policy) as client:
        client.connect()
        for image in images:
            record = client.infer(image)
            assert (record.executed, record.fallback_reason, record.top1) == (
                "offload" if which == "offload" else "split", None, None)
            local = client.engine.local(client.engine.normalize(image))
            assert set(client.last_output) == {"out"} and client.last_output["out"].shape == (1, 21, 64, 64)
            assert np.array_equal(client.last_output["out"], local["out"])  # fp32 frames: bit for bit
            assert record.answer == answer_digest(local)
            assert pixel_agreement(client.last_output, local) == 1.0 and mean_iou(client.last_output, local) == 1.0
    sent = {r.bytes_sent for r in client.records}
    if which == "two tensors":  # both crossing tensors in one frame, float32
        assert min(sent) > 4 * two.elements


def test_an_answer_without_the_models_tensors_falls_back_to_the_local_masks(lraspp, monkeypatch):
    """A server that answers logits where the model answers {"out": masks}: the device answers itself."""
    loaded, analysis, _, images, _, (one, _) = lraspp
    with _client(lraspp, f"static:{one.name}") as client:
        client.connect()
        wrong = encode_tensors([("logits", np.zeros((1, 21, 64, 64), np.float32))], model_id=client.model_id,
                               cut=OUTPUT_CUT)
        with pytest.raises(Exception, match=r"an answer with tensors \['logits'\], not the model's output \['out'\]"):
            client._output(wrong)
        record = client.infer(images[0])
        assert record.fallback_reason is None and pixel_classes(client.last_output).shape == (64, 64)


def test_the_answer_frame_names_the_models_output(lraspp):
    loaded, analysis, _, images, server, (one, _) = lraspp
    engine = TorchEngine(analysis, loaded.normalization)
    x = engine.normalize(images[0])
    with _client(lraspp, "local") as client:
        mid = engine.head(one.name, x)
        body = split_codec("fp32").frame(mid, model_id=engine.model_id, cut=one.index)
        response = client.http.request("POST", "/v1/infer", body, {"content-type": "application/vnd.edgesplit.frame"})
    frame = decode_frame(response.body)
    assert [t.name for t in frame.tensors] == ["out"]
    with torch.inference_mode():
        expected = loaded.module(torch.from_numpy(x))["out"].numpy()
    assert np.array_equal(frame.tensors[0].array, expected)


def test_a_segmentation_model_answers_the_class_of_every_pixel(lraspp):
    """load_model gives segmentation models their post-processing: the server answers uint8 classes
    (64 × 64 bytes here), not 21 float32 scores per pixel, and a fallback answers the same."""
    loaded, analysis, options, images, _, (one, _) = lraspp
    engine = TorchEngine(analysis, loaded.normalization, loaded.postprocess)
    with LiveServer(create_app(TailEngine(analysis, loaded.normalization, postprocess=loaded.postprocess))) as server:
        client = DeviceClient(server.url, engine, options, make_policy(f"static:{one.name}", options, LinkState(1e6)),
                              make_estimator("harmonic"), ClientConfig(DeviceConfig(deadline_s=30.0)))
        with client:
            client.connect()
            record = client.infer(images[0])
            answer = client.last_output
            body = client.http.request("POST", "/v1/infer", split_codec("fp32").frame(
                engine.head(one.name, engine.normalize(images[0])), model_id=engine.model_id, cut=one.index),
                {"content-type": "application/vnd.edgesplit.frame"}).body
    scores = TorchEngine(analysis, loaded.normalization).local(engine.normalize(images[0]))
    assert (record.executed, record.fallback_reason) == ("split", None)
    assert answer["out"].dtype == np.uint8 and answer["out"].shape == (1, 64, 64)
    assert np.array_equal(answer["out"][0], pixel_classes(scores))
    assert record.answer == answer_digest(scores)  # classes or scores: the same answer
    assert len(body) == 24 + 14 + len("out") + 4 * 3 + 64 * 64
