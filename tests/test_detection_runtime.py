"""A detector served live: the tail's raw outputs are decoded into boxes on the server, per request, or on the
device when it falls back; both answer the same boxes, scores and labels."""

import numpy as np
import pytest

from edgesplit import analyze
from edgesplit.codecs import split_codec
from edgesplit.device import DeviceConfig
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.images import PHOTOS, fit, photo
from edgesplit.latency import LinkState, build_options
from edgesplit.measure import measure
from edgesplit.models import load_model
from edgesplit.outputs import answer_digest, arrays, box_agreement, box_count, top1
from edgesplit.policies import make_policy
from edgesplit.runtime.client import ClientConfig, DeviceClient
from edgesplit.runtime.device import answer_note
from edgesplit.runtime.device_engines import TorchEngine
from edgesplit.runtime.engines import open_tail_engine
from edgesplit.runtime.server import create_app
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.wire import FRAME_TYPE, OUTPUT_CUT, decode_frame, encode_tensors
from live_server import LiveServer

SSDLITE = "ssdlite320_mobilenet_v3_large"
FASTER_RCNN = "fasterrcnn_mobilenet_v3_large_320_fpn"
SHAPE = (3, 320, 320)
KEYS = {"boxes", "scores", "labels"}


def _prepared(name, loaded):
    """The model, its analysis, options and photos, and its smallest record-low natural bottleneck."""
    analysis = analyze(loaded.module, SHAPE, name)
    cut = [c for c in analysis.natural_bottlenecks() if c.record_low][-1]  # the smallest tensor
    profile = measure(analysis, [cut], role="device", batch_sizes=(1,), repeats=1, jpeg_qualities=())
    images = [fit(photo(photo_name), SHAPE) for photo_name in PHOTOS[:3]]
    return loaded, analysis, build_options(profile, profile, jpeg=False), images, cut


@pytest.fixture(scope="module")
def ssdlite():
    loaded = load_model(SSDLITE)
    detector = loaded.module.detector  # random weights score every box low: keep a few per image anyway
    detector.score_thresh, detector.topk_candidates, detector.detections_per_img = 0.0, 5, 20
    return _prepared(SSDLITE, loaded)


@pytest.fixture(scope="module")
def faster_rcnn():
    loaded = load_model(FASTER_RCNN)
    loaded.module.detector.roi_heads.score_thresh = 0.0  # random weights score every class about 1/91
    return _prepared(FASTER_RCNN, loaded)


@pytest.fixture(scope="module")
def server(ssdlite):
    loaded, analysis, *_ = ssdlite
    with LiveServer(create_app(TailEngine(analysis, loaded.normalization, postprocess=loaded.postprocess))) as live:
        yield live


def _client(ssdlite, url, policy):
    loaded, analysis, options, _, _ = ssdlite
    return DeviceClient(url, TorchEngine(analysis, loaded.normalization, loaded.postprocess), options,
                        make_policy(policy, options, LinkState(1e6)), make_estimator("harmonic"),
                        ClientConfig(DeviceConfig(deadline_s=30.0)))  # the first request at a cut builds its tail


def _assert_equal_detections(got, expected):
    assert set(got) == KEYS and len(expected["boxes"]) > 0
    for key in KEYS:
        assert got[key].dtype == expected[key].dtype and np.array_equal(got[key], expected[key])
    assert got["labels"].dtype == np.int32 and got["boxes"].shape == (len(got["scores"]), 4)


@pytest.mark.parametrize("policy", ["split", "offload"])
def test_boxes_from_the_server_equal_the_local_detectors(ssdlite, server, policy):
    _, _, _, images, cut = ssdlite
    with _client(ssdlite, server.url, f"static:{cut.name}" if policy == "split" else "offload") as client:
        client.connect()
        for image in images:
            record = client.infer(image)
            assert (record.executed, record.fallback_reason, record.top1) == (policy, None, None)
            local = client.engine.local(client.engine.normalize(image))
            _assert_equal_detections(client.last_output, local)
            assert record.answer == answer_digest(local)
            assert box_agreement(client.last_output, local) == 1.0
            assert answer_note(record.top1, client.last_output) == f"{len(local['boxes'])} boxes"


def test_the_answer_frame_carries_boxes_not_the_raw_head_outputs(ssdlite, server):
    loaded, analysis, _, images, cut = ssdlite
    engine = TorchEngine(analysis, loaded.normalization)  # no post-processing: the core's raw outputs
    x = engine.normalize(images[0])
    raw = sum(a.nbytes for a in arrays(engine.local(x)))
    body = split_codec("fp32").frame(engine.head(cut.name, x), model_id=engine.model_id, cut=cut.index)
    with _client(ssdlite, server.url, "local") as client:
        response = client.http.request("POST", "/v1/infer", body, {"content-type": FRAME_TYPE})
    assert response.status == 200
    frame = decode_frame(response.body)
    assert {t.name: t.array.dtype.name for t in frame.tensors} == {"boxes": "float32", "scores": "float32",
                                                                   "labels": "int32"}
    assert len(response.body) < 2048 < raw  # 20 boxes: about 0.6 KB, against the head's 1.3 MB
    print(f"answer frame {len(response.body)} bytes, raw head outputs {raw} bytes")


def test_a_server_killed_mid_run_leaves_the_device_answering_its_own_detections(ssdlite):
    loaded, analysis, _, images, cut = ssdlite
    engine = TailEngine(analysis, loaded.normalization, postprocess=loaded.postprocess)
    with LiveServer(create_app(engine)) as live:
        client = _client(ssdlite, live.url, f"static:{cut.name}")
        client.connect()
        assert client.infer(images[0]).fallback_reason is None
    with client:
        for image in images[1:]:
            record = client.infer(image)
            assert record.executed == "local" and record.fallback_reason
            local = client.engine.local(client.engine.normalize(image))
            _assert_equal_detections(client.last_output, local)
            assert record.answer == answer_digest(local)


def test_a_faster_rcnn_split_answers_boxes_equal_to_the_local_ones(faster_rcnn):
    """Its tail ends with the FPN's maps (what the RoI heads pool), but only boxes come back."""
    loaded, analysis, _, images, cut = faster_rcnn
    engine = TorchEngine(analysis, loaded.normalization)  # no post-processing: the core's raw outputs
    raw = sum(a.nbytes for a in arrays(engine.local(engine.normalize(images[0]))))
    with (LiveServer(create_app(TailEngine(analysis, loaded.normalization, postprocess=loaded.postprocess))) as live,
          _client(faster_rcnn, live.url, f"static:{cut.name}") as client):
        client.connect()
        for image in images:
            record = client.infer(image)
            assert (record.executed, record.fallback_reason) == ("split", None)
            local = client.engine.local(client.engine.normalize(image))
            assert len(local["boxes"]) >= 50
            _assert_equal_detections(client.last_output, local)
            assert record.answer == answer_digest(local)
    answer = sum(a.nbytes for a in arrays(local))
    assert answer * 50 < raw  # 100 boxes: 2.4 KB, against 0.3 MB of maps and RPN outputs
    print(f"answer {answer} bytes, raw tail outputs {raw} bytes")


def test_answers_that_are_not_the_detectors_fall_back(ssdlite, server):
    _, _, _, _, cut = ssdlite
    with _client(ssdlite, server.url, f"static:{cut.name}") as client:
        empty = client._output(encode_tensors(
            [("boxes", np.zeros((0, 4), np.float32)), ("scores", np.zeros(0, np.float32)),
             ("labels", np.zeros(0, np.int32))], model_id=client.model_id, cut=OUTPUT_CUT))
        assert box_count(empty) == 0 and box_agreement(empty, empty) == 1.0  # an image without boxes
        float_labels = encode_tensors([("boxes", np.zeros((2, 4), np.float32)), ("scores", np.zeros(2, np.float32)),
                                       ("labels", np.zeros(2, np.float32))], model_id=client.model_id, cut=OUTPUT_CUT)
        with pytest.raises(Exception, match=r"an answer with tensors of dtypes and shapes"):
            client._output(float_labels)
        ragged = encode_tensors([("boxes", np.zeros((2, 4), np.float32)), ("scores", np.zeros(3, np.float32)),
                                 ("labels", np.zeros(2, np.int32))], model_id=client.model_id, cut=OUTPUT_CUT)
        with pytest.raises(Exception, match=r"one length for all"):
            client._output(ragged)


def test_only_the_torch_engine_serves_post_processing(ssdlite):
    loaded, analysis, *_ = ssdlite
    with pytest.raises(EdgesplitError, match=r"^--engine onnx serves models without post-processing; use "
                                             r"--engine torch$"):
        open_tail_engine("onnx", analysis, loaded.normalization, postprocess=loaded.postprocess)
    engine, timings = open_tail_engine("torch", analysis, loaded.normalization, postprocess=loaded.postprocess)
    assert engine.postprocess is loaded.postprocess and timings == []


def _answer(boxes, labels, scores=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.linspace(1.0, 0.5, len(boxes), dtype=np.float32) if scores is None else np.asarray(scores, np.float32)
    return {"boxes": boxes, "scores": scores, "labels": np.asarray(labels, np.int32)}


def test_box_agreement_matches_boxes_of_one_label_at_iou_half():
    reference = _answer([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    assert box_agreement(reference, reference) == 1.0
    shifted = _answer([[0, 0, 10, 10], [24.2857, 20, 34.2857, 30]], [1, 2])  # IoU 0.4 with the second box
    assert box_agreement(shifted, reference) == 0.5
    assert box_agreement(_answer([[0, 0, 10, 10], [22, 20, 32, 30]], [1, 2]), reference) == 1.0  # IoU 0.67
    assert box_agreement(_answer([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 3]), reference) == 0.5  # a wrong label
    assert box_agreement(_answer([], []), reference) == 0.0
    assert box_agreement(reference, _answer([], [])) == 0.0 and box_agreement(_answer([], []), _answer([], [])) == 1.0
    with pytest.raises(ValueError, match="two detection answers"):
        box_agreement(np.zeros((1, 10), np.float32), reference)


def test_box_agreement_is_greedy_by_score_and_one_to_one():
    reference = _answer([[0, 0, 10, 10], [0, 0, 10, 12]], [1, 1])
    # the higher-scored box takes the reference box it overlaps most (the first); the second box may only
    # take what is left, at IoU 10/12
    assert box_agreement(_answer([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1]), reference) == 1.0
    assert box_agreement(_answer([[0, 0, 10, 10]] * 3, [1, 1, 1]), _answer([[0, 0, 10, 10]], [1])) == 1.0
    lone = _answer([[0, 0, 10, 10]], [1])
    assert box_agreement(lone, reference) == 0.5  # one box matches one reference box, not two
    # the better-scored box takes the reference box it overlaps most (IoU 0.857 against 0.833), leaving the
    # other box only the reference box it overlaps at IoU 0.476; scored the other way round, both match
    near, far = [[0, 0, 10, 12], [0, 0, 10, 21]], _answer([[0, 0, 10, 10], [0, 0, 10, 14]], [1, 1])
    assert box_agreement(_answer(near, [1, 1], scores=[0.9, 0.2]), far) == 0.5
    assert box_agreement(_answer(near, [1, 1], scores=[0.2, 0.9]), far) == 1.0


def test_a_detection_answers_digest_names_its_boxes_and_labels():
    answer = _answer([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    nudged = {**answer, "boxes": answer["boxes"] + np.float32(0.001), "scores": answer["scores"] / 2}
    assert answer_digest(nudged) == answer_digest(answer) and top1(answer) is None
    assert answer_digest({**answer, "labels": np.array([1, 3], np.int32)}) != answer_digest(answer)
    assert answer_digest({**answer, "boxes": answer["boxes"] + np.float32(0.5)}) != answer_digest(answer)
