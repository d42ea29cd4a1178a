"""Rate and fidelity of the pretrained EfficientNet-Lite0's splits against JPEG input offload.

Every record-low cut × split codec, and raw and JPEG offload at qualities 50/75/90/95, on the natural
photos that ship with scikit-image and matplotlib plus ``--augment`` random-resized crops of them
(seeded): :func:`edgesplit.fidelity.measure`. Then the issue's targets, on the crops:

- (a) at some cut before the classifier, >= 99 % top-1 agreement with fp32 at <= 1/6 of the cut's fp32
  bytes; checked over every cut (the pooled features included) and over the spatial feature maps alone;
- (b) the best split whose bytes are at most JPEG-90's agrees >= 10 points more often than JPEG-90.

    python benchmarks/fidelity.py [--augment 500] [--seed 0] [--cuts A,B] [--codecs C,D]
                                  [--out benchmarks/results/fidelity.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from rich.console import Console

from edgesplit.analysis import analyze
from edgesplit.fidelity import (DEFAULT_CODECS, INPUT, FidelityReport, FidelityRow, evaluation_images, measure,
                                natural_photos, plot, table, wilson_interval)
from edgesplit.models import PRETRAINED_LITE0, load_model
from edgesplit.runtime.device_engines import TorchEngine

console = Console(width=200)
MIN_AGREEMENT = 0.99
MAX_BYTES_RATIO = 1 / 6
JPEG_REFERENCE = "jpeg:90"
MIN_GAIN = 0.10


def on_crops(row: FidelityRow, crops: list[int]) -> tuple[float, tuple[float, float]]:
    """The row's agreement, and its 95 % interval, over the crops alone."""
    agreeing = sum(row.agrees[i] for i in crops)
    return agreeing / len(crops), wilson_interval(agreeing, len(crops))


def describe(row: FidelityRow, crops: list[int]) -> str:
    agreement, (low, high) = on_crops(row, crops)
    return (f"{row.cut} {row.codec}: {row.bytes / 1000:.1f} KB = {row.bytes / row.fp32_bytes:.3f} × fp32, "
            f"{100 * agreement:.1f} % agreement on the crops (95 % CI {100 * low:.1f}–{100 * high:.1f})")


def check_targets(report: FidelityReport, crops: list[int], feature_maps: set[str]) -> dict[str, dict]:
    """Each target's verdict and the row that meets it (or comes closest)."""
    splits = [row for row in report.rows if row.cut != INPUT]
    verdicts = {}
    for name, cuts in (("a", {row.cut for row in splits}), ("a_feature_maps", feature_maps)):
        small = [row for row in splits if row.cut in cuts and row.bytes <= MAX_BYTES_RATIO * row.fp32_bytes]
        best = max(small, key=lambda row: (on_crops(row, crops)[0], -row.bytes), default=None)
        verdicts[name] = {"pass": best is not None and on_crops(best, crops)[0] >= MIN_AGREEMENT,
                          "row": describe(best, crops) if best else "no row at <= 1/6 of fp32 bytes"}
    jpeg = report.row(INPUT, JPEG_REFERENCE)
    jpeg_agreement = on_crops(jpeg, crops)[0]
    for name, cuts in (("b", {row.cut for row in splits}), ("b_feature_maps", feature_maps)):
        cheaper = [row for row in splits if row.cut in cuts and row.bytes <= jpeg.bytes]
        best = max(cheaper, key=lambda row: (on_crops(row, crops)[0], -row.bytes), default=None)
        gain = on_crops(best, crops)[0] - jpeg_agreement if best else None
        verdicts[name] = {"pass": gain is not None and gain >= MIN_GAIN, "gain_points": None if gain is None
                          else round(100 * gain, 2), "row": describe(best, crops) if best else "no split that small",
                          "jpeg": describe(jpeg, crops)}
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--augment", type=int, default=500, help="random-resized crops of the photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codecs", default=",".join(DEFAULT_CODECS + ("int5c:zstd", "int4c:zstd")))
    parser.add_argument("--cuts", default="", help="comma-separated cuts (default: every record-low cut)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "fidelity.json")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = load_model(PRETRAINED_LITE0)
    analysis = analyze(loaded.module, loaded.native_input_shape, name=PRETRAINED_LITE0)
    cuts = [c for c in analysis.cuts if c.record_low]
    if args.cuts:
        named = {c.name: c for c in analysis.cuts}
        unknown = [name for name in args.cuts.split(",") if name not in named]
        if unknown:
            parser.error(f"unknown cut(s) {', '.join(unknown)}; record-low cuts: {', '.join(c.name for c in cuts)}")
        cuts = [named[name] for name in args.cuts.split(",")]
    photos = natural_photos()
    images = evaluation_images(photos, analysis.input_shape, augment=args.augment, seed=args.seed)
    rows = measure(TorchEngine(analysis, loaded.normalization), images, cuts=[c.name for c in cuts],
                   head_flops={c.name: c.head_flops for c in cuts},
                   codecs=args.codecs.split(","), batch_size=args.batch_size)
    report = FidelityReport(PRETRAINED_LITE0, tuple(photos), args.augment, tuple(rows), args.seed)
    console.print(table(report))
    crops = [i for i, image in enumerate(images) if "/crop-" in image.label] or list(range(len(images)))
    verdicts = check_targets(report, crops, {c.name for c in cuts if math.prod(c.shapes[0][2:]) > 1})
    for name, verdict in verdicts.items():
        console.print(f"target ({name}): {'PASS' if verdict['pass'] else 'FAIL'}: {verdict['row']}"
                      + (f"; vs {verdict['jpeg']}; gain {verdict['gain_points']} points" if "jpeg" in verdict else ""))
    elapsed = time.perf_counter() - started
    console.print(f"{len(images)} images ({len(photos)} photos + {args.augment} crops) in {elapsed:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report.to_dict(), "targets": verdicts, "elapsed_s": round(elapsed, 1)},
                                   indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
