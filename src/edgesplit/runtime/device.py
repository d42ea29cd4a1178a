"""``edgesplit run``: a device serving a stream of images through :class:`DeviceClient`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgesplit.analysis import analyze
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.images import PHOTOS, fit, photo
from edgesplit.latency import LinkState, build_options
from edgesplit.models import load_model, parse_input_shape
from edgesplit.policies import allowed_options, make_policy
from edgesplit.profile import load_profile, measure
from edgesplit.runtime.client import ClientConfig, DeviceClient

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def load_images(folder: str | None, input_shape: tuple[int, ...]) -> list[np.ndarray]:
    """uint8 (3, H, W) arrays framed to the model's input: the folder's images, else scikit-image photos."""
    import torch
    from PIL import Image

    if folder is None:
        return [fit(photo(name), input_shape).numpy() for name in PHOTOS]
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise EdgesplitError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()
        except OSError as exc:
            raise EdgesplitError(f"cannot read image {path}: {exc}") from exc
        images.append(fit(torch.from_numpy(array), input_shape).numpy())
    return images


def run_device(model: str, weights: str | None, input_size: int | None, input_shape: str | None, *,
               server_url: str, policy_spec: str, estimator_spec: str, images: str | None, fps: float | None,
               count: int | None, deadline_ms: float | None, device_profile: str | None,
               server_profile: str | None, private: bool, lossy: bool, codecs: tuple[str, ...],
               out_path: str | None, console: Console) -> dict:
    loaded = load_model(model, weights)
    shape = parse_input_shape(input_shape, input_size, loaded.native_input_shape)
    analysis = analyze(loaded.module, shape, name=model)
    if policy_spec == "oracle":
        raise EdgesplitError("the oracle needs the true link rate, which a live device cannot know; "
                             "use it in edgesplit simulate")
    estimator = make_estimator(estimator_spec)
    if device_profile is None:
        console.print("measuring this device's profile (natural bottlenecks, batch 1)…")
        device = measure(analysis, analysis.natural_bottlenecks(), role="device", batch_sizes=(1,), repeats=5)
    else:
        device = load_profile(device_profile)
    server = load_profile(server_profile) if server_profile else device
    options = build_options(device, server, codecs=codecs, private=private)
    policy = make_policy(policy_spec, LinkState(ClientConfig().prior_bps))
    dynamic = policy_spec in ("dsc", "best-static")
    client = DeviceClient(server_url, analysis, loaded.normalization,
                          allowed_options(options, private, lossy) if dynamic else options, policy, estimator,
                          ClientConfig(deadline_s=deadline_ms / 1000 if deadline_ms else None))
    frames = load_images(images, shape)
    total = count or (len(frames) if images else 20)
    with client:
        console.print(client.connect())
        started = time.perf_counter()
        for index in range(total):
            if fps:
                wait = started + index / fps - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            r = client.infer(frames[index % len(frames)])
            note = f" · fallback: {r.fallback_reason}" if r.fallback_reason else ""
            console.print(f"#{r.index:<4} {r.executed:<7} {r.cut or '-':<28} {r.latency_ms:8.1f} ms  "
                          f"{r.bytes_sent / 1024:7.1f} KiB  est {r.estimated_mbps:7.2f} Mbit/s  top1 {r.top1}{note}")
    summary = client.summary()
    table = Table(title=f"{model} · policy {policy_spec} · {server_url}")
    for column in ("requests", "answered", "fallbacks", "mean ms", "p95 ms"):
        table.add_column(column, justify="right")
    table.add_row(str(summary["count"]), str(summary["answered"]), str(summary["fallbacks"]),
                  f"{summary['mean_ms']:.1f}", f"{summary['p95_ms']:.1f}")
    console.print(table)
    result = {"requests": [{k: r.to_dict()[k] for k in ("index", "cut", "codec", "executed", "fallback_reason",
                                                         "latency_ms", "bytes_sent", "top1")} for r in client.records],
              "summary": summary}
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
        console.print(f"wrote {out_path}")
    return result
