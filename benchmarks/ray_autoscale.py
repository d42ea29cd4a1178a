"""Ray Serve autoscaling, exercised: does ``--autoscale 1,2`` add a replica under load, how soon, what it
gives, and does it remove it again.

One server (mobilenet_v3_small at 224×224, random weights from seed 0) in its own process, as deployed:
``edgesplit serve --warm-up --backend ray --autoscale 1,2 --replica-cpus 1 --autoscale-delays UP,DOWN``
(a local Ray; each replica one CPU and one torch thread, so two fit on this 2-core machine). Then:

- idle: ``--idle-s`` seconds, no requests;
- load: ``--devices`` threads, each a client of its own sending the input as uint8 (cut 0, 147 KiB) back
  to back, for ``--load-s`` seconds; a 503 is backpressure: counted, and the client waits its
  ``Retry-After`` as a device would;
- cool: ``--cool-s`` seconds without requests, to see the replica removed after the down delay.

Throughout, ``GET /v1/model`` every ``--poll-s``: Ray Serve's replica states (RUNNING, STARTING, ...) and
the replicas the front end heard from. Every request is recorded (sent, answered, status); one that
failed without an answer is counted as an error, never dropped. Throughput counts the answers (200)
that arrived in a window, over the window; the load phase is split where the second replica was seen
STARTING and RUNNING, so that 1 and 2 replicas compare under the same offered load. Client and server
share the machine's two cores, so OpenMP waits passively, as in the other runtime benchmarks.

Ray Serve's delays: the front end's handle reports its queued and running requests to Ray Serve's
controller (``metrics_interval_s``, 10 s), which averages them over the last 30 s
(``look_back_period_s``) and wants ceil(replicas × average / ``target_ongoing_requests``) replicas
(target: ``--max-batch-size``, 8); it adds one after the wish has held for ``upscale_delay_s`` (Ray's
default 30 s) and removes one after ``downscale_delay_s`` (600 s): ``--delays`` shortens both.

    python benchmarks/ray_autoscale.py [--load-s 100] [--cool-s 60] [--delays 5,15]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; the server inherits it

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgesplit import load_model  # noqa: E402
from edgesplit.demo import loopback_server  # noqa: E402
from edgesplit.runtime.tail_engine import model_id  # noqa: E402
from edgesplit.wire import FRAME_TYPE, encode_frame  # noqa: E402

MODEL, SIZE = "mobilenet_v3_small", 224
LOGS = Path("out")
SERVE = ("serve", MODEL, "--input-size", str(SIZE), "--warm-up", "--backend", "ray", "--autoscale", "1,2",
         "--replica-cpus", "1")


@dataclass(frozen=True)
class Request:
    sent_s: float  # since the start of the idle phase
    done_s: float
    status: int | str  # the HTTP status, or the exception's name when no answer came
    retry_after_s: float | None


@dataclass(frozen=True)
class Poll:
    t_s: float
    running: int | None  # replicas_running; None when the poll failed
    states: dict[str, int]
    heard: dict[str, int]  # replica id -> its last reported queue length


def _frame() -> bytes:
    loaded = load_model(MODEL)
    image = np.random.default_rng(0).integers(0, 256, (1, 3, SIZE, SIZE), dtype=np.uint8)
    return encode_frame(image, model_id=model_id(loaded.module), cut=0)


def _poll(url: str, t0: float, period_s: float, stop: threading.Event, polls: list[Poll]) -> None:
    with httpx.Client(base_url=url, timeout=5) as client:
        while not stop.is_set():
            t = time.perf_counter() - t0
            try:
                info = client.get("/v1/model").json()
                polls.append(Poll(round(t, 3), info["replicas_running"], info["replica_states"],
                                  {r["replica"]: r["load"]["queue_length"] for r in info["replicas"]}))
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                polls.append(Poll(round(t, 3), None, {"poll failed": 1}, {type(exc).__name__: 0}))
            stop.wait(max(0.0, period_s - (time.perf_counter() - t0 - t)))


def _device(url: str, frame: bytes, t0: float, until: float) -> list[Request]:
    """Back to back until ``until`` (perf_counter); every request recorded, whatever became of it."""
    done: list[Request] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.perf_counter() < until:
            sent = time.perf_counter() - t0
            try:
                answer = client.post("/v1/infer", content=frame, headers={"content-type": FRAME_TYPE})
                retry = answer.headers.get("retry-after")
                done.append(Request(sent, time.perf_counter() - t0, answer.status_code,
                                    None if retry is None else float(retry)))
            except httpx.HTTPError as exc:
                done.append(Request(sent, time.perf_counter() - t0, type(exc).__name__, None))
                continue
            if answer.status_code == 503:
                time.sleep(min(float(retry or 1), max(0.0, until - time.perf_counter())))
    return done


def _counters(client: httpx.Client) -> dict[str, int]:
    """The front end's request and error counters (``/metrics``), summed over cuts, by error kind."""
    counts: dict[str, int] = {}
    for line in client.get("/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("edgesplit_requests_total"):
            counts["accepted"] = counts.get("accepted", 0) + int(float(value))
        elif name.startswith("edgesplit_errors_total"):
            counts[name.split('"')[1]] = int(float(value))
    return counts


def _first(polls: list[Poll], after_s: float, test) -> float | None:
    return next((p.t_s for p in polls if p.t_s >= after_s and test(p)), None)


def _window(name: str, start: float, end: float, requests: list[Request], polls: list[Poll]) -> dict[str, object]:
    """Answers that arrived in [start, end), and the replicas seen running meanwhile."""
    answered = [r for r in requests if start <= r.done_s < end]
    ok = [r.done_s - r.sent_s for r in answered if r.status == 200]
    running = [p.running for p in polls if start <= p.t_s < end and p.running is not None]
    span = end - start
    return {"phase": name, "start_s": round(start, 2), "end_s": round(end, 2),
            "replicas_min": min(running, default=None), "replicas_max": max(running, default=None),
            "answers": len(ok), "throughput_per_s": round(len(ok) / span, 2) if span > 0 else None,
            "p50_ms": round(float(np.percentile(ok, 50)) * 1e3, 1) if ok else None,
            "p95_ms": round(float(np.percentile(ok, 95)) * 1e3, 1) if ok else None,
            "status_503": sum(r.status == 503 for r in answered),
            "other_failures": sum(r.status not in (200, 503) for r in answered)}


def _plot(path: Path, polls: list[Poll], requests: list[Request], marks: dict[str, float | None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, layout="constrained")
    t = [p.t_s for p in polls]
    top.step(t, [p.running or 0 for p in polls], where="post", label="RUNNING", color="tab:blue")
    top.step(t, [p.states.get("STARTING", 0) for p in polls], where="post", label="STARTING", color="tab:orange")
    top.step(t, [p.states.get("STOPPING", 0) for p in polls], where="post", label="STOPPING", color="tab:red", ls=":")
    top.set_ylabel("replicas")
    top.set_yticks([0, 1, 2])
    top.legend(loc="center right")
    end = max((r.done_s for r in requests), default=0.0)
    edges = np.arange(0.0, max(end, t[-1] if t else 0.0) + 1.0, 1.0)
    done = [r.done_s for r in requests if r.status == 200]
    bottom.stairs(np.histogram(done, edges)[0], edges, label="answers/s (1 s bins)", color="tab:green")
    bottom.set_ylabel("answers / s")
    bottom.set_xlabel("time since the idle phase began (s)")
    for axis in (top, bottom):
        for label, at in marks.items():
            if at is not None:
                axis.axvline(at, color="0.5", ls="--", lw=0.8)
                if axis is top:
                    axis.annotate(label, (at, 2.05), fontsize=7, rotation=90, va="bottom", ha="right")
    top.set_ylim(0, 2.9)
    fig.suptitle(f"Ray Serve autoscaling 1–2 replicas, {MODEL} {SIZE}×{SIZE}, {len(done)} answers")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=16, help="client threads sending back to back under load")
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--load-s", type=float, default=100.0)
    parser.add_argument("--cool-s", type=float, default=60.0)
    parser.add_argument("--delays", default="5,15", help="--autoscale-delays UP,DOWN for the server, seconds")
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_autoscale.json"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/ray_autoscale.png"))
    args = parser.parse_args()
    console = Console(width=200)
    LOGS.mkdir(exist_ok=True)
    frame = _frame()
    serve = (*SERVE, "--autoscale-delays", args.delays)
    polls: list[Poll] = []
    requests: list[Request] = []
    stop = threading.Event()
    started = time.perf_counter()
    with loopback_server(lambda port: [sys.executable, "-m", "edgesplit", *serve, "--port", str(port)],
                         LOGS / "ray_autoscale.log") as url, httpx.Client(base_url=url, timeout=60) as client:
        console.print(f"server ready in {time.perf_counter() - started:.0f} s: edgesplit {' '.join(serve)}")
        warm = [client.post("/v1/infer", content=frame, headers={"content-type": FRAME_TYPE}).status_code
                for _ in range(3)]  # the path warm, as a running server's is
        before = _counters(client)
        t0 = time.perf_counter()
        poller = threading.Thread(target=_poll, args=(url, t0, args.poll_s, stop, polls), daemon=True)
        poller.start()
        time.sleep(args.idle_s)
        load_start = time.perf_counter() - t0
        console.print(f"load: {args.devices} devices for {args.load_s:g} s")
        with ThreadPoolExecutor(args.devices) as pool:
            until = t0 + load_start + args.load_s
            for done in pool.map(lambda _: _device(url, frame, t0, until), range(args.devices)):
                requests.extend(done)
        load_end = time.perf_counter() - t0  # the last request answered
        console.print(f"cool: {args.cool_s:g} s without requests")
        time.sleep(args.cool_s)
        stop.set()
        poller.join()
        after = _counters(client)
    end = polls[-1].t_s if polls else load_end

    starting = _first(polls, load_start, lambda p: p.states.get("STARTING", 0) > 0 or (p.running or 0) >= 2)
    second = _first(polls, load_start, lambda p: (p.running or 0) >= 2)
    back = _first(polls, load_end, lambda p: p.running == 1) if second else None
    windows = [_window("idle", 0.0, load_start, requests, polls)]
    if second is None:
        windows.append(_window("load, 1 replica throughout", load_start, load_end, requests, polls))
    else:
        windows += [_window("load, 1 replica", load_start, starting or second, requests, polls),
                    _window("load, 2nd replica STARTING", starting or second, second, requests, polls),
                    _window("load, 2 replicas", second, load_end, requests, polls)]
    windows += [_window("load, all", load_start, load_end, requests, polls),
                _window("cool", load_end, end + 1e-9, requests, polls)]
    statuses: dict[str, int] = {}
    for r in requests:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    unanswered = sum(not isinstance(r.status, int) for r in requests)  # sent, and no HTTP answer came
    server = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after.keys() | before.keys())}

    table = Table(title=f"Ray Serve autoscaling 1–2 replicas, {MODEL} {SIZE}×{SIZE}, {args.devices} devices back to "
                        f"back for {args.load_s:g} s, delays up,down {args.delays} s")
    for column in ("phase", "window s", "replicas min–max", "answers", "answers/s", "p50 ms", "p95 ms", "503",
                   "failed"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for w in windows:
        table.add_row(str(w["phase"]), f"{w['start_s']:.1f}–{w['end_s']:.1f}",
                      f"{w['replicas_min']}–{w['replicas_max']}", str(w["answers"]),
                      "" if w["throughput_per_s"] is None else f"{w['throughput_per_s']:.1f}",
                      "" if w["p50_ms"] is None else f"{w['p50_ms']:.0f}",
                      "" if w["p95_ms"] is None else f"{w['p95_ms']:.0f}", str(w["status_503"]), str(w["other_failures"]))
    console.print(table)

    def since(at: float | None, origin: float) -> str:
        return "not seen" if at is None else f"{at - origin:.1f} s"

    console.print(f"from load start: 2nd replica STARTING after {since(starting, load_start)}, RUNNING after "
                  f"{since(second, load_start)}; from load end: back to 1 RUNNING after {since(back, load_end)}")
    console.print(f"requests: {len(requests)} sent under load, answers by status {statuses}, {unanswered} without "
                  f"an answer; the front end counted {server} (warm-up {warm})")
    one, two = next((w for w in windows if w["phase"] == "load, 1 replica"), None), \
        next((w for w in windows if w["phase"] == "load, 2 replicas"), None)
    if one and two and one["throughput_per_s"] and two["throughput_per_s"]:
        console.print(f"throughput 1 → 2 replicas: {one['throughput_per_s']:.1f} → {two['throughput_per_s']:.1f} "
                      f"answers/s (×{two['throughput_per_s'] / one['throughput_per_s']:.2f}); p95 "
                      f"{one['p95_ms']:.0f} → {two['p95_ms']:.0f} ms")
    out = {"model": MODEL, "input_size": SIZE, "command": f"edgesplit {' '.join(serve)}", "devices": args.devices,
           "delays_up_down_s": args.delays, "idle_s": args.idle_s, "load_s": args.load_s, "cool_s": args.cool_s,
           "load_start_s": round(load_start, 2), "load_end_s": round(load_end, 2),
           "second_replica_starting_after_s": None if starting is None else round(starting - load_start, 2),
           "second_replica_running_after_s": None if second is None else round(second - load_start, 2),
           "back_to_one_after_load_s": None if back is None else round(back - load_end, 2),
           "requests_sent": len(requests), "statuses": statuses, "unanswered": unanswered,
           "front_end_counters": server, "windows": windows,
           "polls": [asdict(p) for p in polls],
           "requests": [[round(r.sent_s, 3), round(r.done_s, 3), r.status] for r in requests]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    console.print(f"wrote {args.out}")
    if args.plot:
        _plot(args.plot, polls, requests, {"load": load_start, "2nd STARTING": starting, "2nd RUNNING": second,
                                           "load ends": load_end, "back to 1": back})
        console.print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
