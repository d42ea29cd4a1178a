"""The application shaper: uploads paced to a trace (timed at the receiver), base RTT, deadlines, FIFO."""

import socket
import sys
import threading
import time

import pytest

from edgesplit.netem.app import SWITCH_INTERVAL_S, PacedLink, ShapedTransport
from edgesplit.runtime.transport import TransportTimeout
from edgesplit.traces import SEGMENT_BYTES, RateTrace


class Receiver:
    """A bare HTTP/1.1 endpoint that stamps when each request's first and last bytes arrive."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.arrivals: list[tuple[float, float, int]] = []  # (first byte, last byte, body bytes)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            buffer = b""
            while True:
                first = None
                while b"\r\n\r\n" not in buffer:
                    data = connection.recv(65536)
                    if not data:
                        return
                    first = first or time.perf_counter()
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                while len(buffer) < length:
                    data = connection.recv(65536)
                    if not data:
                        return
                    buffer += data
                self.arrivals.append((first, time.perf_counter(), length))
                buffer = buffer[length:]
                connection.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_one_megabyte_at_8_mbit_per_s_arrives_in_one_second(receiver):
    link = PacedLink(RateTrace.constant(8e6, duration_s=10), rtt_s=0.0)
    with ShapedTransport(receiver.url, link, timeout_s=5) as transport:
        started = time.perf_counter()
        assert transport.request("POST", "/upload", b"x" * 1_000_000).status == 204
    first, last, length = receiver.arrivals[0]
    assert length == 1_000_000
    assert last - first == pytest.approx(1.0, rel=0.10)  # at the receiver, not from send()
    assert time.perf_counter() - started == pytest.approx(1.0, rel=0.10)


def test_an_upload_across_a_rate_change_takes_what_the_trace_says(receiver):
    trace = RateTrace("step", (0.0, 0.5), (2e6, 16e6), 10.0)
    link = PacedLink(trace, rtt_s=0.0)
    with ShapedTransport(receiver.url, link, timeout_s=5) as transport:
        link.restart()
        transport.request("POST", "/upload", b"x" * 500_000)
    first, last, _ = receiver.arrivals[0]
    expected = trace.transfer_time(0.0, 500_000)  # 0.5 s at 2 Mbit/s (125 kB), then 375 kB at 16 Mbit/s
    assert expected == pytest.approx(0.6875)
    assert last - first == pytest.approx(expected, abs=0.05)


def test_the_base_rtt_is_added_around_every_request(receiver):
    link = PacedLink(RateTrace.constant(100e6), rtt_s=0.08)
    with ShapedTransport(receiver.url, link, timeout_s=5) as transport:
        transport.request("POST", "/small", b"abc")
        started = time.perf_counter()
        transport.request("POST", "/small", b"abc")
        assert 0.08 <= time.perf_counter() - started < 0.08 + 0.03


def test_an_upload_past_its_deadline_times_out_and_frees_the_link(receiver):
    link = PacedLink(RateTrace.constant(1e6, duration_s=100), rtt_s=0.0)
    started = time.perf_counter()
    with ShapedTransport(receiver.url, link, timeout_s=5) as transport, \
            pytest.raises(TransportTimeout, match=r"no answer within 0.3 s \(upload not delivered by the deadline"):
        transport.request("POST", "/big", b"x" * 1_000_000, timeout_s=0.3)  # needs 8 s
    assert time.perf_counter() - started == pytest.approx(0.3, abs=0.05)
    assert link.schedule(SEGMENT_BYTES)[0] - time.perf_counter() < 0.05  # nothing of it is still queued


def test_uploads_share_one_fifo_uplink():
    link = PacedLink(RateTrace.constant(8e6, duration_s=100), rtt_s=0.0)
    first = link.schedule(100_000)  # 0.1 s
    second = link.schedule(SEGMENT_BYTES)
    assert len(first) == -(-100_000 // SEGMENT_BYTES) and second[0] - first[-1] == pytest.approx(SEGMENT_BYTES * 8 / 8e6, rel=1e-6)
    assert link.truth().uplink_bps == 8e6


def test_an_outage_is_waited_out():
    trace = RateTrace("outage", (0.0, 1.0), (0.0, 8e6), 2.0)
    link = PacedLink(trace, rtt_s=0.0)
    due = link.schedule(SEGMENT_BYTES)
    assert due[0] - link.clock.to_wall(0.0) == pytest.approx(1.0 + SEGMENT_BYTES * 8 / 8e6, abs=0.01)
    assert link.truth().uplink_bps == 1.0  # an oracle sees the outage as (almost) no rate


def test_a_link_hands_segments_on_within_a_short_gil_switch():
    sys.setswitchinterval(0.005)  # Python's default
    try:
        PacedLink(RateTrace.constant(8e6, duration_s=10))
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        sys.setswitchinterval(1e-5)
        PacedLink(RateTrace.constant(8e6, duration_s=10))  # never raises a shorter one
        assert sys.getswitchinterval() == pytest.approx(1e-5)
    finally:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
