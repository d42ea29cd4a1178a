"""Kernel link emulation: shaped uplink timed at the receiver, the relay's RTT, namespaces, clean teardown
(root only; skipped with the reason otherwise), and the delaying relay alone on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from edgesplit.netem.kernel import KernelLink, available, leftovers
from edgesplit.traces import RateTrace

_UNAVAILABLE = available()
needs_kernel = pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"no kernel link emulation: {_UNAVAILABLE}")

MB = 1_000_000


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    yield
    if _UNAVAILABLE is None:
        assert leftovers() == []


class Receiver(threading.Thread):
    """Accepts one connection in the server namespace and reads it to the end; times are taken here,
    where the bytes arrive (the sender's send() returns long before)."""

    def __init__(self, link: KernelLink) -> None:
        super().__init__(daemon=True)
        self.link = link
        self.listening = threading.Event()
        self.port = 0
        self.received = 0
        self.start_trace_s = self.accepted = self.last_byte = 0.0

    def run(self) -> None:
        with self.link.entered_server(), socket.create_server((self.link.server_ip, 0)) as server:
            self.port = server.getsockname()[1]
            self.listening.set()
            conn, _ = server.accept()
        with conn:
            self.accepted, self.start_trace_s = time.perf_counter(), self.link.elapsed_s()
            while chunk := conn.recv(1 << 16):
                self.received += len(chunk)
                self.last_byte = time.perf_counter()
            conn.sendall(b"k")

    def seconds(self) -> float:
        return self.last_byte - self.accepted


def upload(link: KernelLink, n_bytes: int, *, restart: bool = False) -> Receiver:
    """Send ``n_bytes`` from the device namespace to a receiver in the server namespace."""
    receiver = Receiver(link)
    receiver.start()
    assert receiver.listening.wait(5)
    if restart:
        link.restart()
    with link.entered_device():
        client = socket.create_connection((link.server_ip, receiver.port), timeout=30)
    with client:
        client.sendall(b"x" * n_bytes)
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b"k"
    receiver.join(5)
    assert receiver.received == n_bytes
    return receiver


@needs_kernel
def test_constant_rate_upload_takes_bytes_over_rate() -> None:
    with KernelLink(RateTrace.constant(8e6, duration_s=10)) as link:
        assert link.current_rate_bps() == 8e6
        for _ in range(2):
            assert upload(link, MB).seconds() == pytest.approx(1.0, rel=0.10)


@needs_kernel
def test_upload_follows_a_rate_change() -> None:
    trace = RateTrace("step", (0.0, 1.0), (4e6, 16e6), 10.0)
    with KernelLink(trace) as link:
        receiver = upload(link, MB, restart=True)
        assert receiver.seconds() == pytest.approx(trace.transfer_time(receiver.start_trace_s, MB), rel=0.15)
        assert link.current_rate_bps() == 16e6


@needs_kernel
def test_outage_holds_the_upload() -> None:
    trace = RateTrace("outage", (0.0, 0.5, 1.0), (8e6, 0.0, 8e6), 10.0)
    with KernelLink(trace) as link:
        receiver = upload(link, MB, restart=True)
        assert receiver.seconds() == pytest.approx(trace.transfer_time(receiver.start_trace_s, MB), rel=0.15)
        link.restart()
        time.sleep(0.65)
        assert link.current_rate_bps() == 0.0


@needs_kernel
def test_relay_adds_the_round_trip_time() -> None:
    with KernelLink(RateTrace.constant(8e6), rtt_s=0.04) as link:
        echo = Echo(link)
        echo.start()
        assert echo.listening.wait(5)
        url = urlsplit(link.expose(echo.port))
        assert url.scheme == "http" and url.hostname == link.server_ip
        with link.entered_device():
            client = socket.create_connection((url.hostname, url.port), timeout=5)
        with client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(5):
                sent = time.perf_counter()
                client.sendall(b"ping")
                assert client.recv(16) == b"ping"
                assert 0.04 <= time.perf_counter() - sent < 0.04 + 0.03
            client.shutdown(socket.SHUT_WR)
            assert client.recv(16) == b"bye"  # the half-close went through the relay, and the answer
            assert client.recv(16) == b""  # and the echo's close came back
        echo.join(5)


@needs_kernel
def test_teardown_after_an_exception_leaves_nothing() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with KernelLink(RateTrace.constant(1e6)) as link:
            link.expose(9)
            assert len(leftovers()) == 2  # the two namespaces; the veth ends live inside them
            raise RuntimeError("boom")
    assert leftovers() == []


@needs_kernel
def test_stale_objects_of_a_killed_run_are_removed() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"esplit-{dead.pid}-0-device"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    assert stale in leftovers()
    with KernelLink(RateTrace.constant(1e6)):
        assert stale not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_kernel
def test_entered_device_moves_only_the_calling_thread() -> None:
    go, seen_outside = threading.Event(), []
    other = threading.Thread(target=lambda: go.wait(5) and seen_outside.extend(n for _, n in socket.if_nameindex()))
    other.start()  # before entering: a thread started inside would start in the device namespace too
    with KernelLink(RateTrace.constant(1e6)) as link:
        with link.entered_device():
            inside = [name for _, name in socket.if_nameindex()]
            go.set()
            other.join(5)
            made_inside = socket.create_server((link.device_ip, 0))  # only the device namespace has this address
        with made_inside:
            assert made_inside.getsockname()[0] == link.device_ip
        assert os.stat("/proc/thread-self/ns/net").st_ino != os.stat(f"/run/netns/{link.device_ns}").st_ino
    (veth,) = set(inside) - {"lo"}
    assert "lo" in seen_outside and veth not in seen_outside


def test_relay_delays_each_chunk_without_holding_up_the_next() -> None:
    """The relay alone, on loopback (no root needed): sequential connections, per-chunk delay, half-close."""
    echo = Echo(connections=3)
    echo.start()
    assert echo.listening.wait(5)
    relay = subprocess.Popen(
        [sys.executable, "-m", "edgesplit.netem.relay", "--listen", "127.0.0.1:0",
         "--to", f"127.0.0.1:{echo.port}", "--delay-ms", "30", "--watch-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert relay.stdin is not None and relay.stdout is not None
    try:
        ready, address = relay.stdout.readline().split()
        assert ready == "ready"
        host, port = address.rsplit(":", 1)
        for _ in range(echo.connections):
            with socket.create_connection((host, int(port)), timeout=5) as client:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sent = time.perf_counter()
                client.sendall(b"a")
                time.sleep(0.01)
                client.sendall(b"b")
                arrivals = [(client.recv(1), time.perf_counter() - sent) for _ in range(2)]
                assert [chunk for chunk, _ in arrivals] == [b"a", b"b"]
                assert 0.06 <= arrivals[0][1] < 0.06 + 0.02
                assert 0.07 <= arrivals[1][1] < 0.07 + 0.02  # b waited its own 2 x 30 ms, not behind a
                client.shutdown(socket.SHUT_WR)
                assert client.recv(16) == b"bye"  # the echo saw the half-close and answered it
                assert client.recv(16) == b""
    finally:
        relay.stdin.close()
        assert relay.wait(5) == 0
        relay.stdout.close()
    echo.join(5)


class Echo(threading.Thread):
    """Echoes ``connections`` connections, one after another, on 127.0.0.1 (in the server namespace,
    where an edge server would listen, when given a link); answers each half-close with ``bye``."""

    def __init__(self, link: KernelLink | None = None, connections: int = 1) -> None:
        super().__init__(daemon=True)
        self.link = link
        self.connections = connections
        self.listening = threading.Event()
        self.port = 0

    def run(self) -> None:
        where = self.link.entered_server() if self.link else contextlib.nullcontext()
        with where, socket.create_server(("127.0.0.1", 0)) as server:
            self.port = server.getsockname()[1]
            self.listening.set()
            for _ in range(self.connections):
                conn, _ = server.accept()
                with conn:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    while chunk := conn.recv(16):
                        conn.sendall(chunk)
                    conn.sendall(b"bye")
