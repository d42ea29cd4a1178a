"""Kernel link emulation: a device and an edge server in two network namespaces, joined by a veth pair
whose uplink follows a :class:`~edgesplit.traces.RateTrace`::

    device namespace                          server namespace
    client sockets, 10.201.0.1  ──veth──▶  10.201.0.2:relay ──(+rtt/2 each way)──▶ 127.0.0.1:port
                                uplink shaped to the trace; downlink unshaped

The uplink shaper, on the device veth's egress, is an HTB class carrying the trace rate with a tbf leaf
below it (only tbf, htb and fifos are needed, so kernels without netem work):

- HTB carries the rate because a tbf ``change`` refills its bucket: at ~10 rate changes a second (the
  mahimahi traces) a busy tbf lets ``burst_bytes`` extra through at each, +240 kbit/s for 3000 B, a
  quarter too fast on a 1 Mbit/s uplink. An HTB class change keeps the class's token state.
- The tbf leaf is the outage gate. Both need a rate > 0, and an HTB class given a tiny rate would owe one
  packet's time at that rate (1.5 s at 8 kbit/s) once the outage ended. So for a rate of 0 HTB keeps its
  last rate and the gate closes to 8 kbit/s; reopening refills the gate's bucket, so nothing is owed. An
  outage lets at most ``burst_bytes`` through as it starts and 8 kbit/s during it.
- After an outage the kernel would not look at the queue again until the closed gate's timer (up to
  1.5 s) or the next packet, so reopening is a tc run of its own, waited for, then one empty UDP datagram
  to the server's discard port, whose enqueue runs the queue.
- The tbf leaf holds the drop-tail queue, ``queue_bytes`` (64 KiB: 65 ms at 8 Mbit/s, 0.5 s at
  1 Mbit/s). The senders are local sockets and the device veth sends one segment per packet
  (``gso_max_segs 1``), so a full queue pushes back into their send buffers instead of losing packets.
  With TSO/GSO super-packets HTB would let 64 KB out at once, and tbf, splitting one, would drop part of
  it while telling TCP it was sent: a real loss, then retransmissions and stalls.
- A trace's rate is goodput (TCP payload, as everywhere in edgesplit), but qdiscs count Ethernet frames:
  a bulk upload's 1448 B segments travel in 1514 B frames, so the HTB class is set to the trace rate ×
  1514 / 1448 and the payload moves at the trace rate. Rates below 8 kbit/s are set to 8 kbit/s; the
  gate passes up to 1 Gbit/s.

A driver thread samples the trace at t = 0, ``update_s``, 2 ``update_s``... after :meth:`KernelLink.restart`
and writes a change only when the rate differs, to one long-lived ``tc -batch -``. The kernel has no
delay qdisc, so the base round-trip time is added by a user-space relay (:mod:`edgesplit.netem.relay`)
in front of the edge server, see :meth:`KernelLink.expose`.

Namespaces are ``esplit-<pid>-<n>-device`` and ``-server``; the veth ends, ``es<pid>-<n>d`` and ``...s``,
are created inside them and vanish with them. The namespaces of a run that was killed (its pid is gone)
are removed when the next link starts; :func:`leftovers` lists what is left.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO

from edgesplit.errors import EdgesplitError
from edgesplit.netem import relay
from edgesplit.traces import SEGMENT_BYTES, RateTrace

_PREFIX = "esplit-"
_OURS = re.compile(r"esplit-(\d+)-")  # esplit-<pid>-<n>-device and -server
_DEVICE_IP, _SERVER_IP = "10.201.0.1", "10.201.0.2"  # /30; private to each pair of namespaces
_DEVICE_MAC, _SERVER_MAC = "02:00:0a:c9:00:01", "02:00:0a:c9:00:02"
_FRAME_BYTES = 1514  # a full Ethernet frame at MTU 1500, as qdiscs count it
_FLOOR_BPS = 8_000  # tbf and htb need a rate > 0: the closed gate's rate, and the lowest rate set
_GATE_OPEN_BPS = 1_000_000_000
_CLONE_NEWNET = 0x40000000
_STOP_TIMEOUT_S = 2.0
_RELAY_START_TIMEOUT_S = 10.0
_link_numbers = itertools.count()


class KernelLink:
    """Two network namespaces joined by a veth pair whose uplink follows ``trace`` (a context manager;
    use each instance once). See the module docstring for the shaper and its limits.

    ``rtt_s`` is the base round-trip time added by the relays :meth:`expose` starts; ``update_s`` how
    often the trace is sampled; ``burst_bytes`` the shaper's bucket (at least one 1514 B frame);
    ``queue_bytes`` the uplink's drop-tail queue.
    """

    def __init__(
        self,
        trace: RateTrace,
        rtt_s: float = 0.04,
        update_s: float = 0.1,
        burst_bytes: int = 3000,
        queue_bytes: int = 64 * 1024,
    ) -> None:
        if not 0 <= rtt_s < float("inf"):
            raise ValueError(f"rtt_s must be a finite number of seconds >= 0, got {rtt_s!r}")
        if not 0 < update_s < float("inf"):
            raise ValueError(f"update_s must be a finite number of seconds > 0, got {update_s!r}")
        if burst_bytes < _FRAME_BYTES or queue_bytes < _FRAME_BYTES:
            raise ValueError(
                f"burst_bytes and queue_bytes must each hold a full {_FRAME_BYTES} B frame, "
                f"got {burst_bytes!r} and {queue_bytes!r}"
            )
        if max(trace.rates_bps) > _GATE_OPEN_BPS:
            raise EdgesplitError(
                f"trace {trace.name!r} peaks at {max(trace.rates_bps) / 1e6:g} Mbit/s; KernelLink shapes "
                f"up to {_GATE_OPEN_BPS / 1e6:g} Mbit/s, scale the trace down"
            )
        self.trace = trace
        self.rtt_s = rtt_s
        self.update_s = update_s
        self.burst_bytes = burst_bytes
        self.queue_bytes = queue_bytes
        pid, number = os.getpid(), next(_link_numbers) % 10_000
        self.device_ns = f"{_PREFIX}{pid}-{number}-device"
        self.server_ns = f"{_PREFIX}{pid}-{number}-server"
        self.device_ip = _DEVICE_IP
        self.server_ip = _SERVER_IP
        self._device_veth = f"es{pid}-{number}d"
        self._server_veth = f"es{pid}-{number}s"
        self._tc: subprocess.Popen[str] | None = None
        self._tc_stderr: IO[bytes] | None = None
        self._kick: socket.socket | None = None
        self._relays: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []  # each with its stderr file
        self._driver: threading.Thread | None = None
        self._wake = threading.Condition()
        self._start = time.monotonic()
        self._epoch = 0  # bumped by restart(), so the driver starts counting ticks again
        self._closing = False
        self._applied_bps = 0.0  # what the shaper is set to: the rate, or 0 while the gate is closed
        self._class_bps = 0.0  # the HTB class rate, kept through outages
        self._driver_error: str | None = None

    def __enter__(self) -> KernelLink:
        try:
            _remove_stale()
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        problems = self.close()
        if problems and exc is None:
            raise EdgesplitError("; ".join(problems))

    def restart(self, trace: RateTrace | None = None) -> None:
        """Restart the trace (or follow ``trace`` instead) at t = 0 now; the shaper takes the rate at 0 at
        once."""
        with self._wake:
            if trace is not None:
                self.trace = trace
            self._start = time.monotonic()
            self._epoch += 1
            self._wake.notify()

    def elapsed_s(self) -> float:
        """Seconds since the link started or last restarted (not wrapped to the trace's duration)."""
        return time.monotonic() - self._start

    def current_rate_bps(self) -> float:
        """The uplink rate the shaper is set to now, in bits/s; 0 during an outage."""
        return self._applied_bps

    def expose(self, port: int) -> str:
        """Start a relay in the server namespace, on the server address, to ``127.0.0.1:port`` there
        (where the edge server listens), adding ``rtt_s / 2`` in each direction; the URL the device
        uses to reach it."""
        # By path in isolated mode, not with -m: the relay needs only the standard library, and importing
        # the edgesplit.netem package would import more.
        argv = self.server_command([
            sys.executable, "-I", relay.__file__, "--listen", f"{self.server_ip}:0", "--to", f"127.0.0.1:{port}",
            "--delay-ms", f"{self.rtt_s * 500:.6g}", "--watch-stdin",
        ])
        stderr = tempfile.TemporaryFile()
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self._relays.append((process, stderr))
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], _RELAY_START_TIMEOUT_S)
        line = process.stdout.readline().decode() if ready else ""
        if not line.startswith("ready "):
            _stop(process)
            raise EdgesplitError(
                f"the delaying relay did not start: {' '.join(argv)}: "
                f"{_read_back(stderr) or f'no ready line within {_RELAY_START_TIMEOUT_S:g} s'}"
            )
        return f"http://{line.split()[1]}"

    def device_command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the device namespace."""
        return ["ip", "netns", "exec", self.device_ns, *argv]

    def server_command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the server namespace."""
        return ["ip", "netns", "exec", self.server_ns, *argv]

    @contextmanager
    def entered_device(self) -> Iterator[None]:
        """Move the calling thread into the device namespace, and back on exit. Sockets made inside
        stay in the device namespace; threads started inside start there too; other threads are
        unaffected."""
        with _entered(self.device_ns):
            yield

    @contextmanager
    def entered_server(self) -> Iterator[None]:
        """Move the calling thread into the server namespace, and back on exit (see :meth:`entered_device`)."""
        with _entered(self.server_ns):
            yield

    def close(self) -> list[str]:
        """Stop the driver, the tc process and the relays and delete both namespaces (which deletes the
        veth pair); safe to call more than once. Returns what could not be removed."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._driver is not None:
            self._driver.join()
        if self._tc is not None and self._tc_stderr is not None:
            self._relays.append((self._tc, self._tc_stderr))
            self._tc = self._tc_stderr = None
        for process, stderr in self._relays:
            _stop(process)
            stderr.close()
        self._relays.clear()
        if self._kick is not None:
            self._kick.close()
        problems = [f"the rate driver stopped: {self._driver_error}"] if self._driver_error else []
        present = _namespaces()
        for name in (self.device_ns, self.server_ns):
            if name in present:
                try:
                    _run(["ip", "netns", "del", name])
                except EdgesplitError as exc:
                    problems.append(str(exc))
        return problems

    def _create(self) -> None:
        dev, srv = self.device_ns, self.server_ns
        _run(["ip", "netns", "add", dev])
        _run(["ip", "netns", "add", srv])
        _run([
            "ip", "link", "add", self._device_veth, "netns", dev, "address", _DEVICE_MAC, "type", "veth",
            "peer", "name", self._server_veth, "netns", srv, "address", _SERVER_MAC,
        ])
        for ns, veth, ip, peer_ip, peer_mac in (
            (dev, self._device_veth, _DEVICE_IP, _SERVER_IP, _SERVER_MAC),
            (srv, self._server_veth, _SERVER_IP, _DEVICE_IP, _DEVICE_MAC),
        ):
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", veth])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", veth, "gso_max_segs", "1", "up"])
            # A fixed neighbour entry: no ARP exchange that an outage could hold up.
            _run(["ip", "-n", ns, "neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", veth, "nud", "permanent"])
        rate = self.trace.rate_at(0.0)
        self._class_bps = _settable(rate or next(r for r in self.trace.rates_bps if r > 0))
        tc = self.device_command(["tc"])
        _run([*tc, "qdisc", "add", "dev", self._device_veth, "root", "handle", "1:", "htb", "default", "1"])
        _run([*tc, "class", "add", *self._class_args(self._class_bps)])
        _run([*tc, "qdisc", "add", *self._gate_args(open_=rate > 0)])
        self._applied_bps = _settable(rate) if rate > 0 else 0.0
        with _entered(dev):
            self._kick = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._tc_stderr = tempfile.TemporaryFile()
        self._tc = subprocess.Popen(
            self.device_command(["tc", "-batch", "-"]),
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._tc_stderr, text=True,
        )
        self._start = time.monotonic()
        self._driver = threading.Thread(target=self._drive, name=f"{self.device_ns}-rate", daemon=True)
        self._driver.start()

    def _class_args(self, rate_bps: float) -> list[str]:
        rate = f"{rate_bps * _FRAME_BYTES / SEGMENT_BYTES:.0f}bit"  # frames on the wire for rate_bps of payload
        burst = str(self.burst_bytes)
        return [
            "dev", self._device_veth, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate,
            "burst", burst, "cburst", burst, "quantum", burst,
        ]

    def _gate_args(self, *, open_: bool) -> list[str]:
        rate = _GATE_OPEN_BPS if open_ else _FLOOR_BPS
        return [
            "dev", self._device_veth, "parent", "1:1", "handle", "10:", "tbf", "rate", f"{rate}bit",
            "burst", str(self.burst_bytes), "limit", str(self.queue_bytes),
        ]

    def _drive(self) -> None:
        """Apply the trace's rate at every tick k * update_s after the (re)start, until closed."""
        epoch, tick = -1, 0
        with self._wake:
            while not self._closing:
                if epoch != self._epoch:
                    epoch, tick = self._epoch, 0
                elapsed = time.monotonic() - self._start
                if elapsed < tick * self.update_s:
                    self._wake.wait(tick * self.update_s - elapsed)
                    continue
                tick = max(tick, int(elapsed / self.update_s))  # skip ticks missed while the host stalled
                try:
                    self._apply(self.trace.rate_at(tick * self.update_s))
                except EdgesplitError as exc:
                    self._driver_error = str(exc)
                    return
                tick += 1

    def _apply(self, rate_bps: float) -> None:
        """Move the shaper to ``rate_bps`` (0: close the gate), if it differs from what is set."""
        target = _settable(rate_bps) if rate_bps > 0 else 0.0
        if target == self._applied_bps:
            return
        if target > 0 and target != self._class_bps:
            self._send_to_tc(["class", "change", *self._class_args(target)])
            self._class_bps = target
        if target == 0:
            self._send_to_tc(["qdisc", "change", *self._gate_args(open_=False)])
        elif self._applied_bps == 0:
            self._reopen_gate()
        self._applied_bps = target

    def _send_to_tc(self, command: list[str]) -> None:
        assert self._tc is not None and self._tc.stdin is not None
        try:
            self._tc.stdin.write(" ".join(command) + "\n")
            self._tc.stdin.flush()
        except OSError as exc:  # tc stops at the first line it cannot apply, and says which on stderr
            argv = " ".join(self._tc.args)
            raise EdgesplitError(f"{argv} stopped: {_read_back(self._tc_stderr) or exc}") from exc

    def _reopen_gate(self) -> None:
        """Open the gate after an outage, and make the kernel look at the queue at once. The closed gate
        set a timer for when 8 kbit/s lets its next packet go (up to 1.5 s away) that reopening does not
        reset, and nothing else runs the queue until a packet is enqueued. So this change is run on its
        own and waited for (tc -batch does not say when a line is applied), then an empty UDP datagram to
        the discard port is sent: its enqueue runs the queue."""
        _run(self.device_command(["tc", "qdisc", "change", *self._gate_args(open_=True)]))
        assert self._kick is not None
        self._kick.sendto(b"", (self.server_ip, 9))


def available() -> str | None:
    """None when kernel link emulation can work here; otherwise why not, and what to do."""
    if not sys.platform.startswith("linux"):
        return f"kernel link emulation needs Linux network namespaces; this is {sys.platform}"
    if os.geteuid() != 0:
        return "kernel link emulation needs root: it creates network namespaces and qdiscs"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"kernel link emulation needs `{tool}` on PATH; install iproute2"
    try:
        with KernelLink(RateTrace.constant(1e6)):
            pass
    except EdgesplitError as exc:
        return f"kernel link emulation does not work here: {exc}"
    return None


def leftovers() -> list[str]:
    """Our namespaces that no live link owns: this process's own, and those of runs that were killed.
    Empty once every link of this process has closed. (The veth ends are made inside the namespaces,
    in one command, so no interface of ours can be anywhere else.)"""
    return [name for name, pid in _our_namespaces() if pid == os.getpid() or not _alive(pid)]


def _remove_stale() -> None:
    """Delete the namespaces of runs that were killed (their pid is gone), and with them their veths."""
    for name, pid in _our_namespaces():
        if not _alive(pid):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)  # another run may get there first


def _our_namespaces() -> list[tuple[str, int]]:
    """(name, pid of the run that made it) for every namespace of ours."""
    return [(name, int(m.group(1))) for name in _namespaces() if (m := _OURS.match(name))]


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        pass
    return True


def _run(argv: list[str]) -> str:
    """Run a command; its stdout, or an EdgesplitError naming the command and its stderr."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EdgesplitError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise EdgesplitError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _settable(rate_bps: float) -> float:
    """A positive rate as the shaper can take it: whole bits/s, at least 8 kbit/s."""
    return float(max(_FLOOR_BPS, round(rate_bps)))


def _stop(process: subprocess.Popen) -> None:
    """Close the process's stdin (the relay and tc exit on end of input), then kill it if it lingers."""
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        process.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _read_back(file: IO[bytes] | None) -> str:
    if file is None:
        return ""
    file.seek(0)
    return file.read().decode(errors="replace").strip()


@contextmanager
def _entered(namespace: str) -> Iterator[None]:
    """The calling thread inside ``namespace`` (by setns(2); Python < 3.12 has no os.setns), and back."""
    path = Path("/run/netns") / namespace
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise EdgesplitError(f"cannot open network namespace {path}: {exc.strerror}; is the link open?") from exc
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise EdgesplitError(f"setns(CLONE_NEWNET) failed: {os.strerror(errno)}")
