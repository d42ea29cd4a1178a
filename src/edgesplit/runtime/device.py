"""``edgesplit run``: a device serving a stream of images through :class:`DeviceClient`, or through
:class:`~edgesplit.runtime.edges.MultiEdgeClient` when it is given several edge servers.

With ``--engine onnx`` MODEL is a folder written by ``edgesplit export`` and nothing here needs torch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgesplit.device import DeviceConfig
from edgesplit.energy import PHONE_COMPUTE_W
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.images import load_images
from edgesplit.latency import LinkState, build_options
from edgesplit.outputs import Output, box_count
from edgesplit.policies import allowed_options, check_policy, make_policy
from edgesplit.profile import Profile, load_profile, read_agreement, with_agreement
from edgesplit.runtime.client import ClientConfig, DeviceClient, fetch_server_profile
from edgesplit.runtime.device_engines import OnnxEngine, TorchEngine
from edgesplit.runtime.edges import MultiEdgeClient
from edgesplit.runtime.transport import BadAnswer, HttpTransport, TransportError


def run_device(model: str, weights: str | None, input_size: int | None, input_shape: str | None, *,
               engine_name: str, server_url: str, policy_spec: str, estimator_spec: str, images: str | None,
               fps: float | None, count: int | None, deadline_ms: float | None, hedge: bool,
               device_profile: str | None, server_profile: str | None, private: bool, lossy: bool,
               codecs: tuple[str, ...], out_path: str | None, console: Console, min_agreement: float | None = None,
               fidelity: str | None = None, radio: str = "lte", compute_w: float = PHONE_COMPUTE_W,
               max_tensors: int = 1) -> dict:
    if policy_spec == "oracle":
        raise EdgesplitError("the oracle needs the true link rate, which a live device cannot know; "
                             "use it in edgesplit simulate")
    estimator = make_estimator(estimator_spec)
    check_policy(policy_spec)
    if engine_name == "onnx":
        if weights or input_size or input_shape:
            raise EdgesplitError("with --engine onnx, MODEL is an export folder: weights and input shape are fixed")
        engine = OnnxEngine(model)
        frames = load_images(images, engine.input_shape)
        device = load_profile(device_profile) if device_profile else engine.profile(frames)
    else:
        engine, device = _torch_engine(model, weights, input_size, input_shape, device_profile, console, max_tensors)
        frames = load_images(images, engine.input_shape)
    if fidelity:
        device = with_agreement(device, read_agreement(fidelity))
    config = DeviceConfig(deadline_s=deadline_ms / 1000 if deadline_ms else None, hedge=hedge, radio=radio,
                          compute_w=compute_w)
    clients = []
    for url in edge_urls(server_url):
        server = load_profile(server_profile) if server_profile else _server_profile(url, console) or device
        options = build_options(device, server, codecs=codecs, private=private)
        clients.append(DeviceClient(url, engine, allowed_options(options, private, lossy, min_agreement),
                                    make_policy(policy_spec, options, LinkState(config.prior_bps)),
                                    estimator if not clients else make_estimator(estimator_spec), ClientConfig(config)))
    client = clients[0] if len(clients) == 1 else MultiEdgeClient(clients)
    by_url = {c.url: c for c in clients}  # which client kept a request's answer (a local one: the first)
    total = count or (len(frames) if images else 20)
    with client:
        for line in (client.connect(),) if len(clients) == 1 else client.connect():
            console.print(line)
        started = time.perf_counter()
        for index in range(total):
            arrival = started + index / fps if fps else time.perf_counter()
            time.sleep(max(0.0, arrival - time.perf_counter()))
            r = client.infer(frames[index % len(frames)], arrived=arrival)
            note = f" · fallback: {r.fallback_reason}" if r.fallback_reason else ""
            note += f" · {r.edge}" if len(clients) > 1 and r.edge else ""
            answered = by_url.get(r.edge or "", clients[0]).last_output
            console.print(f"#{r.index:<4} {r.executed:<7} {r.cut or '-':<28} {r.latency_s * 1e3:8.1f} ms  "
                          f"{r.bytes_sent / 1024:7.1f} KiB  est {r.estimated_bps / 1e6:7.2f} Mbit/s  "
                          f"{answer_note(r.top1, answered)}{note}")
    summary = client.summary()
    table = Table(title=f"{model} · policy {policy_spec} · {server_url}")
    for column in ("requests", "fallbacks", "mean ms", "p95 ms", "probed B/s", f"mJ ({radio})"):
        table.add_column(column, justify="right")
    table.add_row(str(summary["count"]), str(summary["fallbacks"]), f"{summary['mean_ms']:.1f}",
                  f"{summary['p95_ms']:.1f}", f"{summary['probe_bytes_per_s']:.0f}",
                  f"{summary['mean_energy_mj']:.0f}")
    console.print(table)
    if "edges" in summary:
        console.print("answered by " + ", ".join(f"{url}: {n}" for url, n in summary["edges"].items()), markup=False)
    result = {"requests": [{k: r.to_dict()[k] for k in ("index", "cut", "codec", "executed", "fallback_reason",
                                                         "latency_ms", "bytes_sent", "top1", "edge")}
                           for r in client.records],
              "summary": {k: summary[k] for k in ("count", "fallbacks", "mean_ms", "p50_ms", "p95_ms",
                                                  "probe_bytes_per_s", "mean_energy_mj", "edges") if k in summary}}
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
        console.print(f"wrote {out_path}")
    return result


def answer_note(top1: int | None, output: Output | None) -> str:
    """What an answer says, for the per-request line: a detector's number of boxes, else the top-1 class
    (None for other models)."""
    boxes = None if output is None else box_count(output)
    return f"top1 {top1}" if boxes is None else f"{boxes} boxes"


def edge_urls(text: str) -> list[str]:
    """The edge servers in ``--server``: one URL, or several separated by commas."""
    urls = [url.strip().rstrip("/") for url in text.split(",")]
    for url in urls:
        if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
            raise EdgesplitError(f"--server: {url!r} is not an http:// or https:// URL")
    if len(set(urls)) != len(urls):
        raise EdgesplitError(f"--server lists an edge twice: {text}")
    return urls


def _torch_engine(model: str, weights: str | None, input_size: int | None, input_shape: str | None,
                  device_profile: str | None, console: Console, max_tensors: int = 1):  # type: ignore[no-untyped-def]
    try:
        from edgesplit.analysis import analyze
        from edgesplit.measure import measure
        from edgesplit.models import load_model, parse_input_shape
    except ImportError:
        raise EdgesplitError("the torch engine needs torch: pip install 'edgesplit[torch]', or use --engine onnx "
                             "with a folder from edgesplit export") from None
    loaded = load_model(model, weights)
    console.print(f"{model}: {loaded.weights}")
    shape = parse_input_shape(input_shape, input_size, loaded.native_input_shape)
    analysis = analyze(loaded.module, shape, name=model, max_tensors=max_tensors)
    if device_profile is None:
        console.print("measuring this device's profile (natural bottlenecks, batch 1)…")
        device = measure(analysis, analysis.natural_bottlenecks(), role="device", batch_sizes=(1,), repeats=5,
                         normalization=loaded.normalization, postprocess=loaded.postprocess)
    else:
        device = load_profile(device_profile)
    return TorchEngine(analysis, loaded.normalization, loaded.postprocess), device


def _server_profile(url: str, console: Console) -> Profile | None:
    """The server's own profile if it serves one; else None (and this device's profile stands in)."""
    try:
        with HttpTransport(url, timeout_s=5) as http:
            profile = fetch_server_profile(http, url)
    except BadAnswer as exc:
        console.print(f"the server's profile is unusable ({exc}): assuming it is as fast as this device",
                      markup=False)
        return None
    except TransportError:
        return None  # the client reports the unreachable server itself
    console.print("using the server's own profile (GET /v1/profile)" if profile else
                  "the server serves no profile (start it with --profile, or pass --server-profile): "
                  "assuming it is as fast as this device")
    return profile
