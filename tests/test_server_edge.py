"""The server's edge on loopback, with raw sockets: every stalled or oversize connection is closed within its
limit, a stalled upload holds nobody's batch, and errors tell the client no more than they should."""

import json
import logging
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from edgesplit import analyze
from edgesplit.wire import FRAME_TYPE, encode_frame
from edgesplit.models import load_model
from edgesplit.runtime import server as server_module
from edgesplit.runtime.http_edge import EdgeProtocol, uvicorn_options
from edgesplit.runtime.server import ServerConfig, create_app
from edgesplit.runtime.tail_engine import TailEngine
from live_server import LiveServer
from test_cli import run

SHAPE = (3, 8, 8)
LIMITS = ServerConfig(header_timeout_s=1.0, body_timeout_s=0.5, keep_alive_timeout_s=0.3, max_header_bytes=16 * 1024)


class EdgeServer(LiveServer):
    """:class:`LiveServer` with the connection limits ``edgesplit serve`` applies."""

    def __init__(self, app, config: ServerConfig) -> None:
        super().__init__(app)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    **uvicorn_options(config)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def toy_engine() -> TailEngine:
    loaded = load_model("toy_models:toy")
    return TailEngine(analyze(loaded.module, SHAPE, "toy"), loaded.normalization)


@pytest.fixture(scope="module")
def engine():
    return toy_engine()


@pytest.fixture(scope="module")
def live(engine):
    with EdgeServer(create_app(engine, LIMITS), LIMITS) as server:
        yield server


def frame(engine, **kwargs) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (1, *SHAPE), dtype=np.uint8)
    return encode_frame(image, model_id=engine.model_id, cut=0, **kwargs)


def post(url: str, data: bytes, content_type: str | None = FRAME_TYPE) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    return httpx.post(f"{url}/v1/infer", content=data, headers=headers, timeout=10)


def connect(live) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port))
    sock.settimeout(5)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or resets) the connection, and when that was."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # it closed with our bytes unread: what it wrote before still arrives first
        pass
    return data, time.perf_counter()


EMPTY_PROBE = b"POST /v1/probe HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n"


def upload_head(length: int, content_type: str = FRAME_TYPE) -> bytes:
    return (f"POST /v1/infer HTTP/1.1\r\nHost: edge\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def test_half_sent_headers_are_closed_within_the_header_timeout(live):
    started = time.perf_counter()  # before the server can arm its timer
    with connect(live) as sock:
        sock.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: edge\r\n")
        data, closed = read_until_closed(sock)
    assert data == b"" and 0.95 <= closed - started < 3


def test_slowloris_headers_after_a_response_are_closed_within_the_header_timeout(live):
    """A connection that trickles header lines (the keep-alive timeout never fires) is timed from the end of
    its previous response."""
    with connect(live) as sock:
        sock.sendall(EMPTY_PROBE)
        assert sock.recv(65536).startswith(b"HTTP/1.1 204 No Content")  # headers only: all of the answer
        answered = time.perf_counter()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.settimeout(0.1)
        data = None
        while data is None and time.perf_counter() - answered < 4:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                data = sock.recv(65536)
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                data = b""
    assert data == b"" and 0.5 <= time.perf_counter() - answered < 3  # timed from before we read the answer


def test_an_idle_new_socket_is_closed_within_the_header_timeout(live):
    started = time.perf_counter()
    with connect(live) as sock:
        data, closed = read_until_closed(sock)
    assert data == b"" and 0.95 <= closed - started < 3


def test_an_idle_connection_after_a_response_is_closed_at_the_keep_alive_timeout(live):
    with connect(live) as sock:
        sock.sendall(EMPTY_PROBE)
        assert sock.recv(65536).startswith(b"HTTP/1.1 204 No Content")  # headers only: all of the answer
        answered = time.perf_counter()
        data, closed = read_until_closed(sock)
    assert data == b"" and 0.15 <= closed - answered < 0.95  # 0.3 s, before the 1 s header timeout


@pytest.mark.parametrize("kind", ["short of its Content-Length", "an unfinished chunked body"])
def test_a_stalled_body_is_answered_408_and_closed_and_the_server_keeps_serving(live, engine, kind):
    good = frame(engine)
    started = time.perf_counter()  # before the server has the body's last bytes
    with connect(live) as sock:
        if kind == "an unfinished chunked body":
            head = upload_head(0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
            sock.sendall(head + b"%x\r\n" % 100 + good[:100] + b"\r\n")
            sent = 100
        else:
            sock.sendall(upload_head(len(good)) + good[:-10])
            sent = len(good) - 10
        response, closed = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 408 Request Timeout") and b"connection: close" in response
    assert json_body(response) == {"error": "body_timeout", "detail": f"the body stopped arriving: no bytes for "
                                                                      f"0.5 s after {sent} (body_timeout_s=0.5)"}
    assert 0.475 <= closed - started < 3
    assert post(live.url, good).status_code == 200


@pytest.mark.parametrize("size", [1024 * 1024, 8 * 1024 * 1024])
def test_an_oversize_header_is_refused_431(live, size):
    request = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    with connect(live) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # refused before the kernel took it all
            pass
        response, _ = read_until_closed(sock)
    assert response == (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        b"content-length: 45\r\nconnection: close\r\n\r\n"
                        b"request headers exceed max_header_bytes=16384")
    assert httpx.get(f"{live.url}/healthz").status_code == 200


def test_headers_just_under_the_limit_are_served_with_a_body_in_the_same_read(live, engine):
    good = frame(engine)
    head = upload_head(len(good))
    padding = 16 * 1024 - len(head) - len(b"X-Pad: \r\n")
    head = head.replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * padding + b"\r\n\r\n")
    assert len(head) == 16 * 1024
    with connect(live) as sock:
        sock.sendall(head + good)  # one write: the body follows the headers' last byte in the same read
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_connections_beyond_max_connections_are_refused(engine):
    config = ServerConfig(max_connections=2, header_timeout_s=5, keep_alive_timeout_s=5)
    with EdgeServer(create_app(engine, config), config) as live:
        with connect(live) as first, connect(live) as second:
            for sock in (first, second):  # each answered once, so the server holds it
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            refused = httpx.get(f"{live.url}/healthz")
            assert (refused.status_code, refused.text) == (503, "Service Unavailable")
            first.close()
            deadline = time.monotonic() + 3
            while httpx.get(f"{live.url}/healthz").status_code != 200:  # once the server has seen the close
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_a_wrong_or_missing_content_type_is_refused_415(live, engine):
    good = frame(engine)
    wrong = post(live.url, good, "application/octet-stream")
    assert wrong.status_code == 415 and wrong.json() == {
        "error": "unsupported_media_type",
        "detail": "Content-Type must be application/vnd.edgesplit.frame, got application/octet-stream"}
    missing = post(live.url, good, None)
    assert missing.status_code == 415 and missing.json()["detail"].endswith(", got none")
    assert post(live.url, good, "Application/Vnd.Edgesplit.Frame; v=2").status_code == 200


def test_a_failing_model_is_answered_500_with_an_id_and_logged_with_its_traceback(caplog):
    engine = toy_engine()

    def broken(cut, batch):
        raise RuntimeError("secret path /srv/model.pt")

    engine.run = broken
    with LiveServer(create_app(engine, ServerConfig())) as live, caplog.at_level(logging.ERROR):
        response = post(live.url, frame(engine))
    assert response.status_code == 500 and "secret" not in response.text
    body = response.json()
    match = re.fullmatch(r"the model failed on this input; the server's log has the traceback as model error "
                         r"([0-9a-f]{8})", body["detail"])
    assert body["error"] == "model_error" and match
    (record,) = [r for r in caplog.records if r.name == "edgesplit.runtime.server"]
    assert record.getMessage() == f"model error {match[1]} (cut 0, shape (1, 3, 8, 8))"
    assert record.exc_info[0] is RuntimeError and "secret path" in caplog.text  # the traceback stays here


def test_a_stalled_upload_does_not_hold_a_small_request_for_the_batch_window(engine):
    config = ServerConfig(batch_wait_timeout_s=0.5, body_timeout_s=10)
    good = frame(engine)
    with EdgeServer(create_app(engine, config), config) as live:
        for _ in range(2):  # the server learns that this tail is short
            assert post(live.url, good).status_code == 200
        with connect(live) as stalled:
            stalled.sendall(upload_head(len(good)) + good[:-10])
            time.sleep(0.6)  # silent for longer than a batch window: no partner to wait for
            response = post(live.url, good)
    queue_ms = float(response.headers["server-timing"].split("queue;dur=")[1].split(",")[0])
    assert response.status_code == 200 and queue_ms < 250  # waiting for the stalled body took the whole 500


def test_large_or_compressed_frames_are_decoded_off_the_event_loop(live, engine, monkeypatch):
    on_loop, statuses, release = [], [], threading.Event()
    decode = server_module.decode_frame

    def recording(data, **kwargs):
        on_loop.append(threading.current_thread() is live.thread)
        if len(data) > 64 * 1024:
            assert release.wait(5)
        return decode(data, **kwargs)

    monkeypatch.setattr(server_module, "decode_frame", recording)
    big = frame(engine)[:32] + bytes(64 * 1024 - 31)  # garbage, refused once decoded: 1 byte over the loop's limit
    waiting = threading.Thread(target=lambda: statuses.append(post(live.url, big).status_code))
    waiting.start()
    deadline = time.monotonic() + 10
    while not on_loop:
        assert time.monotonic() < deadline and waiting.is_alive(), f"the big frame was never decoded: {statuses}"
        time.sleep(0.01)
    assert httpx.get(f"{live.url}/healthz").status_code == 200  # answered while the big frame decodes
    release.set()
    waiting.join()
    for data in (frame(engine), frame(engine, compression="zstd"), frame(engine, codec="jpeg")):
        statuses.append(post(live.url, data).status_code)
    assert statuses == [400, 200, 200, 200]
    assert on_loop == [False, True, False, False]  # on the loop: only the small raw frame


def test_serve_passes_its_connection_limits_to_uvicorn_and_the_app(monkeypatch, capsys):
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    code, _, err = run(monkeypatch, capsys, "serve", "toy_models:toy", "--input-shape", "3,8,8",
                       "--header-timeout-s", "2", "--body-timeout-s", "0.2", "--keep-alive-timeout-s", "4",
                       "--max-header-bytes", "4096", "--max-connections", "9")
    assert code == 0, err
    protocol = served.pop("http")
    assert (protocol.func, protocol.keywords) == (EdgeProtocol, {"header_timeout_s": 2.0, "max_header_bytes": 4096})
    app = served.pop("app")
    assert served == {"host": "127.0.0.1", "port": 8700, "log_level": "warning", "timeout_keep_alive": 4.0,
                      "limit_concurrency": 10}
    with EdgeServer(app, ServerConfig()) as live, connect(live) as sock:
        sock.sendall(upload_head(100))
        response, _ = read_until_closed(sock)
    assert json_body(response)["detail"].endswith("(body_timeout_s=0.2)")


def test_the_body_limit_is_the_longest_frame_the_model_can_take(live, engine):
    longest = engine.expectation(LIMITS.max_batch_size).max_frame_bytes()
    assert longest == 24 + 14 + 64 + 16 + 8 + 2 * 3 * 8 * 8 + 64 * 1024  # a JPEG of the 8×8 input outgrows 8 raw samples
    assert httpx.get(f"{live.url}/v1/model").json()["max_body_bytes"] == longest
    response = post(live.url, frame(engine)[:32] + bytes(longest - 31))
    assert response.status_code == 413 and response.json() == {
        "error": "too_large", "detail": f"body exceeds max_body_bytes={longest}"}
