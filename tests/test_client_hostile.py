"""The device client against a server that answers nonsense: every request still gets the local model's
answer, with the reason it fell back, and the client uses the server again once it answers well."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from rich.markup import render

from edgesplit import analyze
from edgesplit.wire import OUTPUT_CUT, VERSION, decode_frame, encode_frame
from edgesplit.device import DeviceConfig
from edgesplit.estimators import make_estimator
from edgesplit.latency import LinkState, build_options
from edgesplit.measure import measure
from edgesplit.models import Normalization
from edgesplit.policies import make_policy
from edgesplit.profile import with_slowdown
from edgesplit.runtime.client import ClientConfig, DeviceClient, fetch_server_profile
from edgesplit.runtime.device_engines import DeviceEngine, EmulatedDevice, TorchEngine
from edgesplit.runtime.transport import BadAnswer, HttpTransport
from toy_models import Toy

Answer = Callable[["FakeServer", socket.socket, bytes], None]  # writes the server's answer to a request's body


class RecordingEngine(TorchEngine):
    """The torch engine, keeping every whole-model answer it computed."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.answers: list[np.ndarray] = []

    def local(self, x: np.ndarray) -> np.ndarray:
        self.answers.append(super().local(x))
        return self.answers[-1]


class Toy8:
    """The toy model (3×8×8, five classes), its options and two images whose top-1 classes differ."""

    def __init__(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = Toy().eval()
        self.normalization = Normalization((127.5, 127.5, 127.5), (64.0, 64.0, 64.0))
        self.analysis = analyze(module, (3, 8, 8), "toy")
        self.profile = measure(self.analysis, self.analysis.natural_bottlenecks(), role="device",
                               batch_sizes=(1,), repeats=2, jpeg_qualities=(90,))
        self.options = build_options(self.profile, self.profile)
        self.model_id = self.engine().model_id
        rng = np.random.default_rng(0)
        with torch.inference_mode():  # the whole model, straight from torch: what every answer must equal
            candidates = [(image, module((torch.from_numpy(image)[None].float() - 127.5) / 64.0).numpy())
                          for image in rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)]
        first = candidates[0]
        second = next(c for c in candidates if c[1].argmax() != first[1].argmax())
        self.images, self.logits = [first[0], second[0]], [first[1], second[1]]

    def engine(self) -> RecordingEngine:
        return RecordingEngine(self.analysis, self.normalization)


def _http(status: int, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class FakeServer:
    """A raw-socket HTTP server on loopback. ``infer`` answers POST /v1/infer (default: :meth:`good`, the toy
    model's logits, as the real server answers), ``model`` GET /v1/model (default: the toy's id), ``profile``
    GET /v1/profile (default: 404); POST /v1/probe is answered 204."""

    def __init__(self, toy: Toy8) -> None:
        self.toy, self.engine = toy, toy.engine()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopped = threading.Event()
        self.reset()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        self.infer: Answer = self.good
        self.model: Answer = reply(_http(200, json.dumps({"model_id": self.toy.model_id.hex()}).encode()))
        self.profile: Answer = reply(_http(404, b'{"detail": "no profile"}'))

    @staticmethod
    def good(server: FakeServer, conn: socket.socket, body: bytes) -> None:
        image = decode_frame(body).array[0]
        logits = server.engine.local(server.engine.normalize(image))
        conn.sendall(_http(200, encode_frame(logits, model_id=server.toy.model_id, cut=OUTPUT_CUT)))

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        routes = {"POST /v1/infer": lambda: self.infer, "GET /v1/model": lambda: self.model,
                  "GET /v1/profile": lambda: self.profile}
        with conn:
            try:
                while (request := _read_request(conn)) is not None and not self.stopped.is_set():
                    route, body = request
                    routes.get(route, lambda: reply(_http(204)))()(self, conn, body)
            except OSError:
                pass  # the client went away, or the answer closed the connection


def _read_request(conn: socket.socket) -> tuple[str, bytes] | None:
    """The next request's method and path, and its body; None once the client closed the connection.
    (Reads past the request are not kept: the client sends one request at a time.)"""
    data = b""
    while b"\r\n\r\n" not in data:
        if not (chunk := conn.recv(65536)):
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = sum(int(value) for name, _, value in (line.partition(":") for line in lines[1:])
                 if name.strip().lower() == "content-length")
    while len(body) < length:
        if not (chunk := conn.recv(65536)):
            return None
        body += chunk
    return " ".join(lines[0].split()[:2]), body


def reply(raw: bytes) -> Answer:
    return lambda server, conn, body: conn.sendall(raw)


def frame(array: np.ndarray, model_id: bytes | None = None, cut: int = OUTPUT_CUT) -> Answer:
    """A 200 answer carrying ``array`` as a frame (the toy's model id unless another is given)."""
    return lambda server, conn, body: conn.sendall(
        _http(200, encode_frame(array, model_id=model_id or server.toy.model_id, cut=cut)))


def overflowing_frame(server: FakeServer, conn: socket.socket, body: bytes) -> None:
    """An output frame of shape (65536,)*4 and no payload, checksummed as docs/wire.md says: 2**64 elements,
    which wrapped to 0 in int64 and made the codec raise ValueError once."""
    header = struct.pack("<4sBBH8sI", b"ESPL", VERSION, 1, OUTPUT_CUT, server.toy.model_id, 24 + 14 + 16)
    section = struct.pack("<BBBBBBII", 1, 0, 0, 4, 0, 0, 0, 0) + struct.pack("<4I", *(65536,) * 4)
    checksum = struct.pack("<I", zlib.crc32(section, zlib.crc32(header)))
    conn.sendall(_http(200, header + checksum + section))


def early_hints(server: FakeServer, conn: socket.socket, body: bytes) -> None:
    """A 103 before the real answer, which http.client takes for the answer: the real one must not be read
    as the next request's."""
    conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
    server.good(server, conn, body)


def endless_chunks(server: FakeServer, conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    while True:
        conn.sendall(chunk)


def reset_mid_answer(server: FakeServer, conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    time.sleep(0.05)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def close_at_once(server: FakeServer, conn: socket.socket, body: bytes) -> None:
    conn.shutdown(socket.SHUT_RDWR)


def never_answer(server: FakeServer, conn: socket.socket, body: bytes) -> None:
    server.stopped.wait()


def dribble(server: FakeServer, conn: socket.socket, body: bytes) -> None:
    """A whole answer's worth of headers, then one byte of the body every 50 ms: each read succeeds."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not server.stopped.wait(0.05):
        conn.sendall(b"x")


TOY = Toy8()
LIMIT = "max_answer_bytes=4194304"
BAD = r"bad answer from the server \("

# what the server answers, and the fallback reason it must give (a regular expression; where the words are
# the codec's, only the part that names the field)
CASES: dict[str, tuple[Answer, str]] = {
    "500 with a detail": (reply(_http(500, b'{"detail": "boom"}')), r"server answered 500: boom"),
    "302 elsewhere": (reply(_http(302, Location="http://example.com/")), r"server answered 302"),
    "404 page": (reply(_http(404, b"<html>no such page</html>")), r"server answered 404: <html>no such page</html>"),
    "204 no content": (reply(_http(204)), r"server answered 204"),
    "103 before the answer": (early_hints, r"server answered 103"),
    "200 text": (reply(_http(200, b"<html>this is a web page, not a frame</html>")),
                 BAD + r"not an edgesplit frame.*\)"),
    "200 empty": (reply(_http(200)), BAD + r"truncated frame.*\)"),
    "another model's logits": (frame(TOY.logits[0], model_id=b"\x01" * 8), BAD + r".*model id 0101010101010101.*\)"),
    "an input frame": (frame(TOY.images[0][None], cut=0), BAD + r".*cut id 0.*\)"),
    "two rows of logits": (frame(np.zeros((2, 5), np.float32)), BAD + r"batch of 2.*\)"),
    "six classes": (frame(np.zeros((1, 6), np.float32)), BAD + r".*shape \(1, 6\).*\)"),
    "uint8 logits": (frame(np.zeros((1, 5), np.uint8)), BAD + r"dtype uint8.*\)"),
    "NaN logits": (frame(np.full((1, 5), np.nan, np.float32)), BAD + r"an answer whose values are not all finite\)"),
    "a shape of 2**64 elements": (overflowing_frame, BAD + r".*\(65536, 65536, 65536, 65536\).*\)"),
    "1 GiB announced": (reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n"),
                        BAD + rf"an answer of 1073741824 bytes, more than {LIMIT}\)"),
    "endless chunks": (endless_chunks, BAD + rf"an answer of more than {LIMIT}\)"),
    "broken chunk": (reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
                     BAD + r"IncompleteRead.*\)"),
    "garbage status line": (reply(b"HELLO [/x] \x1b[31m\r\n\r\n"), BAD + r"BadStatusLine: HELLO \?/x\] \?\[31m\?\?\)"),
    "header of 70 KB": (reply(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"), BAD + r"LineTooLong.*\)"),
    "reset mid-answer": (reset_mid_answer, r"server unreachable \(ConnectionResetError: .*\)"),
    "closed before answering": (close_at_once, r"server unreachable \(RemoteDisconnected: .*\)"),
    "never answers": (never_answer, r"deadline"),
    "dribbles its answer": (dribble, r"deadline"),
}


@pytest.fixture(scope="module")
def fake_server():
    server = FakeServer(TOY)
    yield server
    server.close()


@pytest.fixture()
def fake(fake_server):
    yield fake_server
    fake_server.reset()


def _client(url: str, engine: DeviceEngine | None = None, **device: object) -> DeviceClient:
    options = TOY.options
    return DeviceClient(url, engine or TOY.engine(), options, make_policy("offload", options, LinkState(1e6)),
                        make_estimator("harmonic"),
                        ClientConfig(DeviceConfig(deadline_s=0.5, probe_on_connect=False, **device), timeout_s=1.0,
                                     backoff_s=0.05))


def _answered_locally(client: DeviceClient, image: int, engine: RecordingEngine | None = None) -> bool:
    """The device's last whole-model run is the torch model's exact answer for the image, and its top-1 the
    last record's."""
    return (np.array_equal((engine or client.engine).answers[-1], TOY.logits[image])
            and client.records[-1].top1 == int(TOY.logits[image].argmax()))


def _prints_as_is(text: str) -> bool:
    """Printable, and rich's console prints it as it is (no markup in it)."""
    return text.isprintable() and render(text).plain == text


def _uses_the_server_again(client: DeviceClient, fake: FakeServer) -> bool:
    fake.reset()
    time.sleep(max(0.0, client.down_until - time.monotonic()))
    record = client.infer(TOY.images[1])  # the other top-1: an answer left over from before would show
    return (record.executed, record.fallback_reason, record.top1) == ("offload", None, int(TOY.logits[1].argmax()))


def test_what_an_answer_says_of_the_server_reaches_the_next_decision(fake):
    """The queue wait and the compute an answer reports are learnt on the clock the device decides on (a
    live client's records count from its own epoch, its decisions on perf_counter time: they once missed
    each other, and the device forgot every wait at once)."""
    offload = next(o for o in TOY.options if o.name == "offload:raw")
    profiled_ms = offload.tail_at(1) * 1e3

    def slow_and_queued(server: FakeServer, conn: socket.socket, body: bytes) -> None:
        logits = server.engine.local(server.engine.normalize(decode_frame(body).array[0]))
        conn.sendall(_http(200, encode_frame(logits, model_id=server.toy.model_id, cut=OUTPUT_CUT),
                           server_timing=f"queue;dur=80, compute;dur={2 * profiled_ms:.6f}"))

    fake.infer = slow_and_queued
    with _client(fake.url) as client:
        client.epoch -= 1000.0  # records count from long before this moment
        record = client.infer(TOY.images[0])
        assert (record.executed, record.queue_s) == ("offload", pytest.approx(0.08))
        met = client.core.reported(time.perf_counter())
        assert met.met_s == pytest.approx(0.08) and met.compute_scale == pytest.approx(2.0, rel=1e-4)


@pytest.mark.parametrize("answer, reason", CASES.values(), ids=CASES)
def test_every_bad_answer_ends_in_the_local_answer(fake, answer, reason):
    with _client(fake.url) as client:
        assert "holds the same model" in client.connect()
        fake.infer = answer
        started = time.perf_counter()
        record = client.infer(TOY.images[0])
        assert record.executed == "local" and re.fullmatch(reason, record.fallback_reason), record.fallback_reason
        assert _prints_as_is(record.fallback_reason)
        assert time.perf_counter() - started < 1.0  # the deadline (0.5 s) and a local run
        assert _answered_locally(client, 0)
        assert _uses_the_server_again(client, fake)


def test_the_hedged_device_answers_itself_when_the_server_answers_nonsense(fake):
    engine = TOY.engine()
    slow = EmulatedDevice(engine, with_slowdown(TOY.profile, 0.2 / TOY.profile.model_s[1].median_s))  # 200 ms
    with _client(fake.url, slow, hedge=True) as client:
        client.connect()
        fake.infer = reply(_http(200, b"<html>this is a web page, not a frame</html>"))
        record = client.infer(TOY.images[0])
        assert record.executed == "local" and record.fallback_reason.startswith(
            "bad answer from the server (not an edgesplit frame")
        assert _answered_locally(client, 0, engine)
        assert _uses_the_server_again(client, fake)  # its answer comes before the device's


def test_whatever_else_the_codec_raises_ends_in_the_local_answer(fake, monkeypatch):
    """A frame the codec does not foresee once made it raise ValueError (a shape whose product overflowed)."""
    with _client(fake.url) as client:
        client.connect()

        def broken(*args: object, **kwargs: object) -> None:
            raise ValueError("cannot reshape array of size 0 into shape (65536,65536,65536,65536)")

        monkeypatch.setattr("edgesplit.runtime.client.decode_frame", broken)
        record = client.infer(TOY.images[0])
        assert record.fallback_reason == ("bad answer from the server (ValueError: cannot reshape array of size 0 "
                                          "into shape (65536,65536,65536,65536))")
        assert _answered_locally(client, 0)


MODEL = r"gave a bad answer to GET /v1/model \("
MODEL_CASES: dict[str, tuple[bytes, str]] = {
    "500": (_http(500, b'{"detail": "boom"}'), MODEL + r"status 500: boom\)"),
    "not JSON": (_http(200, b"<html>"), MODEL + r"no model id in it: JSONDecodeError: .*\)"),
    "a list": (_http(200, b"[1, 2]"), MODEL + r"no model id in it: TypeError: .*\)"),
    "no model id": (_http(200, b"{}"), MODEL + r"no model id in it: KeyError: 'model_id'\)"),
    "a number for an id": (_http(200, b'{"model_id": 7}'), MODEL + r"a model id of type int, not a string\)"),
    "nested 100 000 deep": (_http(200, b"[" * 100_000), MODEL + r"no model id in it: RecursionError: .*\)"),
    "1 GiB announced": (b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n",
                        MODEL + rf"an answer of 1073741824 bytes, more than {LIMIT}\)"),
    "garbage": (b"\x00\xff[/x]\r\n\r\n", MODEL + r"BadStatusLine: .*\)"),
}


@pytest.mark.parametrize("raw, message", MODEL_CASES.values(), ids=MODEL_CASES)
def test_a_nonsense_model_description_leaves_the_device_local_until_the_server_answers(fake, raw, message):
    fake.model = reply(raw)
    with _client(fake.url) as client:
        said = client.connect()
        assert re.fullmatch(rf"server {fake.url} {message}; running locally, retrying with backoff", said), said
        assert _prints_as_is(said)
        record = client.infer(TOY.images[0])
        assert record.executed == "local" and record.fallback_reason.startswith("server down (retrying in ")
        assert _answered_locally(client, 0)
        assert _uses_the_server_again(client, fake)


def test_a_silent_model_description_times_out(fake):
    fake.model = never_answer
    with _client(fake.url) as client:
        started = time.perf_counter()
        assert client.connect() == (f"server {fake.url} unreachable (no answer within 1 s); running locally, "
                                    "retrying with backoff")
        assert time.perf_counter() - started < 1.5


def test_another_models_id_with_markup_is_refused_and_printable(fake):
    fake.model = reply(_http(200, b'{"model_id": "[/x][bold]0000"}'))
    with _client(fake.url) as client:
        said = client.connect()
        assert said.startswith("the server's model id ?/x]?bold]0000 differs from ours ") and _prints_as_is(said)
        record = client.infer(TOY.images[0])
        assert (record.executed, record.fallback_reason) == ("local", "model mismatch")
        assert _answered_locally(client, 0)


PROFILE_CASES: dict[str, tuple[bytes, str]] = {
    "500 with markup": (_http(500, b'{"detail": "[boom]"}'), r"/v1/profile answered 500: \?boom\]"),
    "not JSON": (_http(200, b"{"), r"/v1/profile is not JSON \(Expecting .*\)"),
    "malformed": (_http(200, b'{"format": "edgesplit-profile/1", "cuts": 5}'),
                  r"/v1/profile is a malformed profile \(TypeError: .*\)"),
    "another format": (_http(200, b'{"format": "nonsense"}'), r"/v1/profile is not an edgesplit profile .*"),
}


@pytest.mark.parametrize("raw, message", PROFILE_CASES.values(), ids=PROFILE_CASES)
def test_a_nonsense_profile_is_a_bad_answer(fake, raw, message):
    fake.profile = reply(raw)
    with HttpTransport(fake.url, timeout_s=1) as http, pytest.raises(BadAnswer) as caught:
        fetch_server_profile(http, fake.url)
    assert re.fullmatch(re.escape(fake.url) + message, str(caught.value)), str(caught.value)
    fake.reset()
    with HttpTransport(fake.url, timeout_s=1) as http:
        assert fetch_server_profile(http, fake.url) is None  # 404: the server has none


def test_an_emulated_device_takes_its_profiles_encode_time_and_replays_each_frame():
    """The frame is the device's work too: a JPEG or a quantised head output takes the profile's encode time
    (this machine encodes faster than the device it emulates), and a replaying device makes each frame once."""
    import dataclasses

    jpeg = dataclasses.replace(next(o for o in TOY.options if o.name == "offload:jpeg:90"), encode_s=0.05)
    device = EmulatedDevice(TOY.engine(), TOY.profile, replay=True)
    made: list[int] = []

    def make(image: np.ndarray) -> bytes:
        made.append(1)
        return encode_frame(image[None], model_id=TOY.engine().model_id, cut=0, codec="jpeg", jpeg_quality=90)

    frames, seconds = [], []
    for image in (TOY.images[0], TOY.images[0], TOY.images[1]):
        started = time.perf_counter()
        frames.append(device.encode(jpeg, image, lambda image=image: make(image)))
        seconds.append(time.perf_counter() - started)
    assert frames[0] == frames[1] != frames[2] and decode_frame(frames[0]).codec == "jpeg"
    assert len(made) == 2  # the second request for the same image replayed its frame
    assert min(seconds) >= 0.05
    assert TOY.engine().encode(jpeg, TOY.images[0], lambda: b"frame") == b"frame"  # a real engine takes its own time
