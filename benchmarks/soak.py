"""Soak: 16 device clients against one edge server for minutes: no request lost, no memory leaked.

``edgesplit serve resnet18 --input-size 64 --warm-up`` runs in its own process (random weights from seed 0),
started here as the demo starts it. Sixteen device threads in this process, each a
:class:`~edgesplit.runtime.client.DeviceClient` holding the same model, serve random images at about
``--rate`` requests/s (2, from a random phase), each with a policy of its own, round robin over dsc,
offload and every natural bottleneck as a static cut (resnet18 has 14): the server sees many cuts at once.
A request is lost when ``infer`` raises instead of answering; there must be none.

After ``--warm-up-s`` of that load (every tail built, the allocator settled) the server's resident memory
(VmRSS of /proc/PID/status) is read, then every 15 s until the end of ``--minutes``. The server's
/metrics count of answered requests is set beside the answers the devices took from it: the server
counts more when a device had given up on an answer (its deadline) before it came.

    python benchmarks/soak.py [--minutes 5] [--devices 16] [--rate 2] [--out benchmarks/results/soak.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; the server inherits it

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgesplit import analyze, load_model  # noqa: E402
from edgesplit.demo import free_ports, server_process  # noqa: E402
from edgesplit.device import RequestRecord  # noqa: E402
from edgesplit.estimators import make_estimator  # noqa: E402
from edgesplit.latency import LinkState, Option, build_options  # noqa: E402
from edgesplit.measure import measure  # noqa: E402
from edgesplit.policies import allowed_options, make_policy  # noqa: E402
from edgesplit.runtime.client import DeviceClient  # noqa: E402
from edgesplit.runtime.device_engines import TorchEngine  # noqa: E402
from edgesplit.runtime.transport import HttpTransport  # noqa: E402

console = Console(width=150)
RESULTS = Path(__file__).resolve().parent / "results"
LOGS = Path("out")
MODEL, INPUT_SIZE = "resnet18", 64
RSS_EVERY_S = 15.0


@dataclass(frozen=True)
class Device:
    """What every emulated device holds: the model, and the options it may pick."""

    engine: TorchEngine
    options: list[Option]
    allowed: list[Option]
    cuts: list[str]

    @classmethod
    def build(cls, model: str, input_size: int) -> Device:
        """The model (random weights, seed 0, as the server builds it), this machine's profile of it, and
        every head built once (not during the first request at it)."""
        loaded = load_model(model)
        analysis = analyze(loaded.module, (3, input_size, input_size), name=model)
        cuts = analysis.natural_bottlenecks()
        profile = measure(analysis, cuts, role="device", batch_sizes=(1,), repeats=3, jpeg_qualities=(90,))
        options = build_options(profile, profile)  # the server runs on this machine too
        engine = TorchEngine(analysis, loaded.normalization)
        blank = engine.normalize(np.zeros(engine.input_shape, np.uint8))
        for cut in cuts:
            engine.head(cut.name, blank)
        return cls(engine, options, allowed_options(options, private=False, lossy=False), [c.name for c in cuts])


@dataclass(frozen=True)
class Served:
    device: int
    policy: str
    at: float  # time.monotonic() when it was answered
    record: RequestRecord


class Fleet:
    """``count`` device threads, device k a :class:`DeviceClient` with policy ``policies[k % len(policies)]``,
    each serving random images at ``rate`` requests/s against ``url`` until :meth:`stop`."""

    def __init__(self, url: str, device: Device, policies: list[str], count: int, rate: float) -> None:
        self.url, self.device, self.policies, self.rate = url, device, policies, rate
        self.served: list[Served] = []
        self.lost: list[str] = []  # what infer raised instead of answering
        self.connected: list[str] = []
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), name=f"device-{k}") for k in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join()

    def _run(self, k: int) -> None:
        policy = self.policies[k % len(self.policies)]
        rng = np.random.default_rng(k)
        device = self.device
        with DeviceClient(self.url, device.engine, device.allowed, make_policy(policy, device.options, LinkState(1e9)),
                          make_estimator("harmonic")) as client:
            self.connected.append(f"device {k:>2} ({policy}): {client.connect()}")
            arrival = time.perf_counter() + rng.uniform(0, 1 / self.rate)
            while not self._stopping.wait(max(0.0, arrival - time.perf_counter())):
                image = rng.integers(0, 256, device.engine.input_shape, dtype=np.uint8)
                try:
                    record = client.infer(image, arrived=arrival)
                except Exception as exc:  # noqa: BLE001 — a lost request: counted, and the device carries on
                    self.lost.append(f"{type(exc).__name__}: {exc}")
                else:
                    self.served.append(Served(k, policy, time.monotonic(), record))
                arrival += 1 / self.rate


def policies_for(device: Device, dynamic: bool = True) -> list[str]:
    """dsc (if ``dynamic``), offload, then every natural bottleneck as a static cut."""
    return (["dsc"] if dynamic else []) + ["offload"] + [f"static:{cut}" for cut in device.cuts]


def serve_command(model: str, input_size: int, port: int) -> list[str]:
    return [sys.executable, "-m", "edgesplit", "serve", model, "--input-size", str(input_size), "--port", str(port),
            "--warm-up"]


def fallback_kind(reason: str) -> str:
    """A fallback reason without its particulars: "server down (retrying in 0.4 s)" → "server down"."""
    return reason.split(" (")[0]


def tally(fleet: Fleet) -> dict[str, Any]:
    """Requests sent, answered (remotely, locally, of which fell back), lost; fallbacks by kind; latency."""
    records = [s.record for s in fleet.served]
    latencies = sorted(r.latency_s * 1e3 for r in records)
    reasons = Counter(fallback_kind(r.fallback_reason) for r in records if r.fallback_reason)
    remote = [r for r in records if r.executed != "local"]
    return {"sent": len(records) + len(fleet.lost), "answered": len(records), "remote": len(remote),
            "local": len(records) - len(remote), "fell_back": sum(reasons.values()), "lost": len(fleet.lost),
            "lost_errors": Counter(fleet.lost).most_common(5), "fallbacks": dict(reasons.most_common()),
            "options_served_remotely": len({r.option for r in remote}),
            "p50_ms": statistics.median(latencies) if latencies else None,
            "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None}


def rss_mib(pid: int) -> float:
    """The resident memory of process ``pid`` (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def server_counts(url: str) -> dict[str, Any]:
    """The server's /metrics: requests answered (all cuts) and errors by kind."""
    with HttpTransport(url, timeout_s=5) as http:
        text = http.request("GET", "/metrics").body.decode()
    answered, errors = 0, {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("edgesplit_requests_total{"):
            answered += int(float(value))
        elif name.startswith("edgesplit_errors_total{"):
            errors[name.split('kind="')[1].rstrip('"}')] = int(float(value))
    return {"answered": answered, "errors": errors}


def print_tally(title: str, counts: dict[str, Any], extra: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [("requests sent", counts["sent"]), ("answered remotely", counts["remote"]),
            ("answered locally", counts["local"]), ("  of which fell back", counts["fell_back"]),
            ("lost", counts["lost"]),
            ("options the server answered", counts["options_served_remotely"]),
            ("p50 latency", f"{counts['p50_ms']:.1f} ms"), ("p95 latency", f"{counts['p95_ms']:.1f} ms"),
            *extra, *((f"fallback: {kind}", n) for kind, n in counts["fallbacks"].items())]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    for error, n in counts["lost_errors"]:
        console.print(f"[red]lost {n}×:[/] {error}", highlight=False, markup=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second per device")
    parser.add_argument("--warm-up-s", type=float, default=20.0)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--input-size", type=int, default=INPUT_SIZE)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # sixteen devices share this machine's cores with the server
    device = Device.build(args.model, args.input_size)
    policies = policies_for(device)
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with server_process(serve_command(args.model, args.input_size, port), url, LOGS / "soak-server.log") as server:
        fleet = Fleet(url, device, policies, args.devices, args.rate)
        started = time.monotonic()
        fleet.start()
        time.sleep(args.warm_up_s)
        rss = [(0.0, rss_mib(server.pid))]
        end = time.monotonic() + args.minutes * 60
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(RSS_EVERY_S, left))
            rss.append((time.monotonic() - started - args.warm_up_s, rss_mib(server.pid)))
        fleet.stop()
        metrics = server_counts(url)
    elapsed = time.monotonic() - started
    counts = tally(fleet)
    growth = rss[-1][1] - rss[0][1]
    print_tally(f"soak: {args.devices} devices × {args.rate:g} requests/s, {args.model} {args.input_size}×"
                f"{args.input_size}, {elapsed / 60:.1f} min ({args.warm_up_s:g} s warm-up), {len(policies)} policies",
                counts,
                [("server RSS after warm-up", f"{rss[0][1]:.1f} MiB"),
                 ("server RSS at the end", f"{rss[-1][1]:.1f} MiB"), ("RSS growth", f"{growth:+.1f} MiB"),
                 ("/metrics: requests answered", metrics["answered"]),
                 ("devices: answers taken from it", counts["remote"]),
                 ("/metrics: errors", ", ".join(f"{k} {v}" for k, v in metrics["errors"].items()) or "none")])
    verdict = counts["lost"] == 0 and growth < 20
    console.print(f"{'PASS' if verdict else 'FAIL'}: {counts['lost']} lost (target 0), RSS growth {growth:+.1f} MiB "
                  f"over {args.minutes:g} min (target < 20 MiB)", style="green" if verdict else "red")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "input_size": args.input_size, "devices": args.devices, "rate": args.rate,
        "minutes": args.minutes, "warm_up_s": args.warm_up_s, "policies": policies, **counts,
        "rss_mib": [{"t_s": round(t, 1), "mib": round(m, 2)} for t, m in rss], "rss_growth_mib": round(growth, 2),
        "metrics": metrics, "connected": sorted(fleet.connected)}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
