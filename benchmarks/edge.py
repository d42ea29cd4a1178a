"""The edge server against stalled and oversize connections: how soon each is closed, what one stalled upload
costs a small request, and whether stalled uploads' memory comes back.

``edgesplit serve mobilenet_v3_small --input-size 64`` (random weights) runs in its own process with short
limits (``--timeout-s`` for the header and body timeouts, half of it for keep-alive). This script then

(a) opens each attack on a raw socket and times until the server closed it, beside the limit that applies;
(b) times a small request (the frame before the last linear layer: its tail runs inline on the event loop)
    in rounds that alternate without and with one stalled upload in progress (the largest body the server
    takes announced, half of it sent, then silence), ``--requests`` of each; reports median and p95 latency
    and the server's queue time;
(c) reads the server's RSS before, at the peak of, and after 10 stalled uploads of the largest body the
    server takes (each sent all but its last kilobyte), once the body timeout has dropped them.

The largest body is the server's ``max_body_bytes`` (``GET /v1/model``): never more than the longest frame
its model can take. A body announced beyond it (60 MB) is refused at once, before any of it is read.

    python benchmarks/edge.py [--timeout-s 2] [--requests 200] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from edgesplit.wire import FRAME_TYPE, encode_frame
from edgesplit.demo import free_ports, server_process

console = Console(width=150)
LOGS = Path("out")
MAX_HEADER_BYTES = 16 * 1024
OVERSIZE_BYTES = 60_000_000
ROUND = 10  # requests of one kind in a row


def _head(content_length: int | None) -> bytes:
    length = "Transfer-Encoding: chunked" if content_length is None else f"Content-Length: {content_length}"
    return f"POST /v1/infer HTTP/1.1\r\nHost: edge\r\nContent-Type: {FRAME_TYPE}\r\n{length}\r\n\r\n".encode()


def _until_closed(sock: socket.socket) -> str:
    """The status line the server sent before it closed the connection ("closed" when none)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with our bytes unread; what it wrote before still came first
        pass
    return data.split(b"\r\n", 1)[0].decode() or "closed"


def _slowloris(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")

    def trickle() -> None:
        try:
            while True:
                time.sleep(0.2)
                sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            pass

    threading.Thread(target=trickle, daemon=True).start()


def _keep_alive_idle(sock: socket.socket) -> None:
    sock.sendall(b"POST /v1/probe HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n")
    sock.recv(65536)  # the answer (204: headers only); from here the connection idles


def _huge_header(sock: socket.socket) -> None:
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n")
    except OSError:  # refused before the kernel took it all
        pass


def attacks(body_bytes: int) -> list[tuple[str, str, Callable[[socket.socket], None]]]:
    """Each attack: its name, the limit that stops it, and how it starts on a fresh socket (``body_bytes``:
    the largest body the server takes)."""
    half = body_bytes // 2
    return [
        ("slowloris headers (a line every 0.2 s)", "header_timeout_s", _slowloris),
        ("idle new socket", "header_timeout_s", lambda sock: None),
        ("idle after a response", "keep_alive_timeout_s", _keep_alive_idle),
        ("body short of its Content-Length", "body_timeout_s", lambda sock: sock.sendall(_head(body_bytes) + bytes(half))),
        ("unfinished chunked body", "body_timeout_s", lambda sock: sock.sendall(_head(None) + b"%x\r\n" % half + bytes(half))),
        ("8 MiB header", "max_header_bytes", _huge_header),
        (f"{OVERSIZE_BYTES / 1e6:.0f} MB announced", "max_body_bytes", lambda sock: sock.sendall(_head(OVERSIZE_BYTES))),
    ]


def attack(port: int, start: Callable[[socket.socket], None]) -> tuple[float, str]:
    """Seconds from the attack's start until the server closed its connection, and the last answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(60)
        started = time.perf_counter()
        start(sock)
        answer = _until_closed(sock)
        return time.perf_counter() - started, answer


def _stall(port: int, announced: int, sent: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_head(announced) + bytes(sent))
    return sock


def latency(url: str, port: int, payload: bytes, requests: int, body_bytes: int) -> dict[str, dict[str, float]]:
    """A small request's latency without and with one stalled upload in progress, alternating rounds."""
    samples: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    with httpx.Client(base_url=url, headers={"content-type": FRAME_TYPE}, timeout=30) as http:
        for _ in range(20):  # warm: the server learns the tail is short
            http.post("/v1/infer", content=payload)
        for round_ in range(requests // ROUND):
            for kind in (("without", "with") if round_ % 2 == 0 else ("with", "without")):
                stalled = _stall(port, body_bytes, body_bytes // 2) if kind == "with" else None
                time.sleep(0.05)  # the stalled body is silent by now (either way, the same pause)
                for _ in range(ROUND):
                    started = time.perf_counter()
                    response = http.post("/v1/infer", content=payload)
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, response.text
                    queue = float(response.headers["server-timing"].split("queue;dur=")[1].split(",")[0])
                    samples[kind].append((elapsed * 1e3, queue))
                if stalled is not None:
                    stalled.close()
    return {kind: {"median_ms": statistics.median(s[0] for s in rows),
                   "p95_ms": float(np.percentile([s[0] for s in rows], 95)),
                   "queue_median_ms": statistics.median(s[1] for s in rows), "requests": len(rows)}
            for kind, rows in samples.items()}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def memory(pid: int, port: int, body_bytes: int, count: int = 10) -> dict[str, object]:
    """The server's RSS before, at the peak of and after ``count`` stalled uploads of ``body_bytes``."""
    before = _rss_mib(pid)
    answers: list[str] = []

    def upload() -> None:
        with _stall(port, body_bytes, body_bytes - 1000) as sock:
            answers.append(_until_closed(sock))

    threads = [threading.Thread(target=upload) for _ in range(count)]
    for thread in threads:
        thread.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, _rss_mib(pid))
        time.sleep(0.02)
    time.sleep(0.5)
    return {"uploads": count, "bytes_each": body_bytes, "rss_before_mib": before, "rss_peak_mib": peak,
            "rss_after_mib": _rss_mib(pid), "answers": sorted(set(answers))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-s", type=float, default=2.0, help="header and body timeouts; keep-alive half")
    parser.add_argument("--requests", type=int, default=200, help="small requests of each kind (with, without)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "edge.json")
    args = parser.parse_args()
    limits = {"header_timeout_s": args.timeout_s, "body_timeout_s": args.timeout_s,
              "keep_alive_timeout_s": args.timeout_s / 2, "max_header_bytes": MAX_HEADER_BYTES}
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "edgesplit", "serve", "mobilenet_v3_small", "--input-size", "64", "--port", str(port),
            *(f"--{name.replace('_', '-')}={value}" for name, value in limits.items())]
    with server_process(argv, url, LOGS / "edge-server.log") as server:
        info = httpx.get(f"{url}/v1/model").json()
        cut = info["cuts"][-1]  # the input of the last linear layer: a 4 KiB frame, a tail well under 2 ms
        payload = encode_frame(np.random.default_rng(0).standard_normal((1, *cut["shape"])).astype(np.float32),
                               model_id=bytes.fromhex(info["model_id"]), cut=cut["id"])
        body_bytes = info["max_body_bytes"]
        limits["max_body_bytes"] = body_bytes
        results = []
        for name, limit, start in attacks(body_bytes):
            seconds, answer = attack(port, start)
            results.append({"attack": name, "limit": limit, "limit_value": limits[limit], "closed_after_s": seconds,
                            "answer": answer})
        small = latency(url, port, payload, args.requests, body_bytes)
        rss = memory(server.pid, port, body_bytes)
    ratio = small["with"]["median_ms"] / small["without"]["median_ms"]

    table = Table(title="(a) attacks: time until the server closed the connection (mobilenet_v3_small 64×64)")
    for column in ("attack", "limit", "closed after s", "answer"):
        table.add_column(column, justify="left" if column in ("attack", "answer") else "right")
    for a in results:
        table.add_row(a["attack"], f"{a['limit']}={a['limit_value']:g}", f"{a['closed_after_s']:.3f}", a["answer"])
    console.print(table)
    table = Table(title=f"(b) a small request ({len(payload)} B frame at {cut['name']}), in alternating rounds")
    for column in ("stalled upload", "requests", "median ms", "p95 ms", "server queue median ms"):
        table.add_column(column, justify="left" if column == "stalled upload" else "right")
    for kind in ("without", "with"):
        s = small[kind]
        table.add_row(kind, str(s["requests"]), f"{s['median_ms']:.2f}", f"{s['p95_ms']:.2f}",
                      f"{s['queue_median_ms']:.3f}")
    console.print(table)
    console.print(f"median with / without: {ratio:.3f}")
    table = Table(title=f"(c) server RSS, {rss['uploads']} stalled uploads of {body_bytes / 1e6:.2f} MB "
                        "(the largest body it takes)")
    for column in ("before MiB", "peak MiB", "after they were dropped MiB", "answers"):
        table.add_column(column, justify="left" if column == "answers" else "right")
    table.add_row(f"{rss['rss_before_mib']:.0f}", f"{rss['rss_peak_mib']:.0f}", f"{rss['rss_after_mib']:.0f}",
                  ", ".join(rss["answers"]))
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"limits": limits, "attacks": results, "small_request": {**small, "ratio": ratio},
                                    "memory": rss}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
