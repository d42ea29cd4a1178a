"""The dynamic split computing paper's experiment (Bakhtiarnia et al., arXiv 2205.11269), for every
EfficientNet we can build offline, in one command.

The paper counts 14 EfficientNets. torchvision builds 11 of them (B0–B7, V2-S/M/L), whose counts are
checked against the paper's; the other three are not in torchvision (which three we could not check
here). The likely candidates, EfficientNetV2-B0…B3, are built from timm (``tf_efficientnetv2_b0…b3``)
and reported without a paper count to compare with.

For each model, built with random weights (``weights=None``: counts and timing depend on the architecture
only), at its native resolution (Keras's for the timm models):

1. **Counts.** Cuts restricted to block outputs (torchvision: ``MBConv|FusedMBConv``, the paper's view;
   timm: ``ConvBnAct|EdgeResidual|InvertedResidual``), the natural bottlenecks (c < 1) next to the paper's
   count, and the record-low blocks with their c.
2. **Profiles, measured here.** The server is one core of this machine (``--threads``, default 1: on a
   shared machine two threads wait for each other; a B0 forward then took 1–5 s, against 0.25–0.6 s
   with one thread, and 62 ms with two on an idle machine), with the record-low blocks as cuts. Per node
   for the models in ``--per-node`` (default EfficientNet-B0), at 1, 2, 4, …, 64: the paper's whole batch
   axis. FLOP-based for the others (the whole model timed at ``--batch-sizes``, default 1,2,4, each side
   its share of the FLOPs; marked † in the table): profiling B7 (600 × 600) or V2-L (480 × 480) per node
   up to batch 64 would take about 1,000 forward passes of several seconds each. The device is the same
   profile slowed down ``DEVICE_SLOWDOWN`` (8) times, as ``edgesplit profile --slowdown 8`` emulates a
   small ARM board.
3. **The seed's grid.** ``edgesplit grid --options seed``: local and fp32 splits at the record-low blocks,
   no RTT, 1–127 MB/s × batch 1–62 (B images per request from one device, head and tail timed at B).
   Beyond a profile's largest batch size, the time per image stays that of the largest.

Reported per model: the share of cells where a split beats running locally, the best static split (the
one the per-cell choice gains least over), the share of cells where it is optimal anyway, the dynamic
gain over it (mean and max over cells), and how often the optimum moves: the share of batch sizes at
which it changes with the rate, and of rates at which it changes with the batch size. Beside it, the
share of cells raw offload wins once it is priced too (``--options all``, no RTT), which the authors'
method never considered.

Writes ``benchmarks/results/reproduce.md`` (the table, quoted in docs/simulation.md) and
``reproduce.json`` (each model's counts, whole-model times and grid summary).

    nice -n 19 python benchmarks/reproduce.py [--models efficientnet_b0,...] [--batch-sizes 1,2,4]
                                              [--per-node efficientnet_b0] [--repeats 3] [--threads 1]
                                              [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from edgesplit import analyze, load_model
from edgesplit.measure import measure
from edgesplit.profile import Profile, with_slowdown
from edgesplit.sim.grid import GridResult, grid_variants

# The paper's natural-bottleneck counts (tests/test_paper.py checks the same numbers).
PAPER_COUNTS = {
    "efficientnet_b0": 15, "efficientnet_b1": 21, "efficientnet_b2": 21, "efficientnet_b3": 24,
    "efficientnet_b4": 30, "efficientnet_b5": 36, "efficientnet_b6": 42, "efficientnet_b7": 44,
    "efficientnet_v2_s": 34, "efficientnet_v2_m": 49, "efficientnet_v2_l": 68,
}
# EfficientNetV2-B0…B3: not in torchvision; timm builds them (at Keras's resolutions). No paper count here.
TIMM_V2_B = {"timm:tf_efficientnetv2_b0": 224, "timm:tf_efficientnetv2_b1": 240,
             "timm:tf_efficientnetv2_b2": 260, "timm:tf_efficientnetv2_b3": 300}
# cheapest first, so that an interrupted run has measured as many models as it could
MODELS = ("efficientnet_b0", "timm:tf_efficientnetv2_b0", "efficientnet_b1", "timm:tf_efficientnetv2_b1",
          "efficientnet_b2", "timm:tf_efficientnetv2_b2", "efficientnet_b3", "timm:tf_efficientnetv2_b3",
          "efficientnet_b4", "efficientnet_v2_s", "efficientnet_b5", "efficientnet_b6", "efficientnet_v2_m",
          "efficientnet_b7", "efficientnet_v2_l")
BLOCKS = {"torchvision": "MBConv|FusedMBConv", "timm": "ConvBnAct|EdgeResidual|InvertedResidual"}
DEVICE_SLOWDOWN = 8.0
PER_NODE_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
HERE = Path(__file__).resolve().parent
console = Console(width=160)


@dataclass(frozen=True)
class ModelRow:
    """What one model gave: its counts, its profile and the seed's grid on it."""

    model: str
    paper_count: int | None
    count: int
    record_low: list[tuple[str, float]]  # (cut, c)
    server: Profile
    device: Profile
    grid: GridResult
    with_offload: GridResult  # --options all's first variant: raw offload priced too, no RTT
    seconds: float  # wall time for this model

    def best_static_split(self) -> str:
        splits = [n for n in self.grid.names if n.startswith("split:")]
        return min(splits, key=lambda n: float(self.grid.gain_over(n).mean()))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "paper_count": self.paper_count, "count": self.count,
                "record_low": [{"cut": n, "c": c} for n, c in self.record_low],
                "method": self.server.method, "batch_sizes": list(self.server.batch_sizes),
                "server_model_s": {b: t.median_s for b, t in self.server.model_s.items()},
                "device_slowdown": self.device.slowdown, "best_static_split": self.best_static_split(),
                "grid": self.grid.to_dict(), "with_offload": self.with_offload.to_dict(),
                "seconds": self.seconds}


def reproduce(model: str, *, per_node: bool, batch_sizes: tuple[int, ...], repeats: int) -> ModelRow:
    """Count, profile and sweep one model (see the module docstring)."""
    start = time.perf_counter()
    loaded = load_model(model)
    size = TIMM_V2_B.get(model)
    shape = loaded.native_input_shape if size is None else (3, size, size)
    source = "timm" if model.startswith("timm:") else "torchvision"
    blocks = analyze(loaded.module, shape, model).select(BLOCKS[source])
    record_low = [c for c in blocks.cuts if c.record_low]
    server = measure(blocks, record_low, role="server", method="per-node" if per_node else "flops",
                     batch_sizes=PER_NODE_BATCH_SIZES if per_node else batch_sizes, repeats=repeats, warmup=1,
                     jpeg_qualities=())
    device = with_slowdown(replace(server, role="device"), DEVICE_SLOWDOWN)
    (grid,) = grid_variants(device, server, "seed", extrapolate_batches=True)
    with_offload = grid_variants(device, server, "all", extrapolate_batches=True)[0]
    return ModelRow(model, PAPER_COUNTS.get(model), blocks.counts()["natural_bottlenecks"],
                    [(c.name, c.ratio) for c in record_low], server, device, grid, with_offload,
                    time.perf_counter() - start)


def markdown(rows: list[ModelRow], total_s: float, batch_sizes: tuple[int, ...], load: tuple[float, float]) -> str:
    """The table, with the settings it was made with; ``load``: the 1-minute load average at start and end."""
    lines = [
        f"Made by `python benchmarks/reproduce.py` in {total_s / 60:.1f} min on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}; load average {load[0]:.1f} at "
        f"the start, {load[1]:.1f} at the end). Server: this machine, {torch.get_num_threads()} torch thread(s); "
        f"device: the same profile × {DEVICE_SLOWDOWN:g}. Grid: 1–127 MB/s × batch 1–62, local + fp32 splits "
        f"at the record-low blocks, no RTT. † FLOP-based profile timed at batch "
        f"{', '.join(map(str, batch_sizes))}; per node at {', '.join(map(str, PER_NODE_BATCH_SIZES))} otherwise; "
        "beyond the largest, time per image as there.",
        "",
        "| model | natural bottlenecks (paper) | record-low blocks: c | server ms, b1 | split beats local |"
        " best static split (block, c) | it is optimal in | dynamic gain over it: mean / max |"
        " optimum moves with rate / batch | raw offload priced too: it wins |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratios = dict(row.record_low)
        best = row.best_static_split()
        cut = best.split(":")[1]
        gain = row.grid.gain_over(best)
        optimal = row.grid.best_counts().get(best, 0) / row.grid.best.size
        mark = "" if row.server.method == "per-node" else " †"
        paper = "—" if row.paper_count is None else str(row.paper_count)
        lines.append(
            f"| {row.model} | {row.count} ({paper}) | {', '.join(f'{c:.4g}' for c in ratios.values())} | "
            f"{row.server.model_s[1].median_s * 1e3:.0f}{mark} | {row.grid.share('split'):.1%} | "
            f"{list(ratios).index(cut) + 1} of {len(ratios)} ({ratios[cut]:.4g}) | {optimal:.1%} | "
            f"{gain.mean():.1%} / {gain.max():.1%} | {row.grid.moves_with_rate():.0%} / "
            f"{row.grid.moves_with_batch():.0%} | {row.with_offload.share('offload'):.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated (default: all 15)")
    parser.add_argument("--batch-sizes", default="1,2,4", help="FLOP-based profiles: batch sizes to time")
    parser.add_argument("--per-node", default="efficientnet_b0", help="models profiled per node, at 1 … 64")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if not models:
        parser.error("--models names no model")
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(MODELS)}")
    per_node = {m.strip() for m in args.per_node.split(",") if m.strip()}
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    torch.set_num_threads(args.threads)
    start, load_at_start = time.perf_counter(), os.getloadavg()[0]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[ModelRow] = []
    for model in models:
        rows.append(reproduce(model, per_node=model in per_node, batch_sizes=batch_sizes, repeats=args.repeats))
        row, total = rows[-1], time.perf_counter() - start
        console.print(f"{model}: {row.count} natural bottlenecks (paper {row.paper_count}), "
                      f"{len(row.record_low)} record-low; split beats local in {row.grid.share('split'):.1%}; "
                      f"{row.seconds:.0f} s")
        # written after every model: an interrupted run keeps what it measured, and says so by its rows
        table = markdown(rows, total, batch_sizes, (load_at_start, os.getloadavg()[0]))
        (args.out_dir / "reproduce.md").write_text(table)
        (args.out_dir / "reproduce.json").write_text(json.dumps(
            {"seconds": total, "device_slowdown": DEVICE_SLOWDOWN, "models": [r.to_dict() for r in rows]},
            indent=1) + "\n")
    console.print(table, markup=False, highlight=False)


if __name__ == "__main__":
    main()
