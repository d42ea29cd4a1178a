"""Head time on the device: ONNX Runtime vs torch eager, same threads, interleaved, medians.

EfficientNet-B0 and the pretrained EfficientNet-Lite0 at 224×224; the heads at their record-low cuts and
the whole model. Both engines use torch's thread count (2 here); ONNX Runtime's threads do not spin
between runs (they would slow the interleaved torch runs down).

    python benchmarks/onnx_head.py [--repeats 30] [--out benchmarks/results/onnx_head.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from edgesplit import analyze, load_model, split
from edgesplit.export import export_cuts

console = Console(width=160)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "onnx_head.json")
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not steal torch's cores
    rows = []
    for name in ("efficientnet_b0", "efficientnet_lite0_pretrained"):
        loaded = load_model(name)
        analysis = analyze(loaded.module, loaded.native_input_shape, name)
        cuts = [c for c in analysis.cuts if c.record_low][:-1]
        with tempfile.TemporaryDirectory() as folder:
            manifest = export_cuts(analysis, cuts, folder, loaded.normalization)
            x = torch.randn(1, *analysis.input_shape, generator=torch.Generator().manual_seed(0))
            pairs = [("(whole model)", loaded.module, f"{folder}/{manifest['model_file']}")]
            pairs += [(e["name"], split(analysis, e["name"])[0], f"{folder}/{e['head']}") for e in manifest["cuts"]]
            for label, module, path in pairs:
                session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                feed = {"input": x.numpy()}
                torch_s, onnx_s = [], []
                for i in range(args.repeats + 3):
                    started = time.perf_counter()
                    with torch.inference_mode():
                        module(x)
                    a = time.perf_counter() - started
                    started = time.perf_counter()
                    session.run(None, feed)
                    b = time.perf_counter() - started
                    if i >= 3:
                        torch_s.append(a)
                        onnx_s.append(b)
                t, o = statistics.median(torch_s), statistics.median(onnx_s)
                rows.append({"model": name, "head": label, "torch_ms": t * 1e3, "onnx_ms": o * 1e3, "speedup": t / o})
    table = Table(title=f"Head time at batch 1, {torch.get_num_threads()} threads, medians of {args.repeats} interleaved runs")
    for column in ("model", "head up to", "torch ms", "ONNX Runtime ms", "speed-up"):
        table.add_column(column, justify="left" if column in ("model", "head up to") else "right")
    for r in rows:
        table.add_row(r["model"], r["head"], f"{r['torch_ms']:.2f}", f"{r['onnx_ms']:.2f}", f"{r['speedup']:.2f}×")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "onnxruntime": ort.__version__, "torch": torch.__version__},
                                   indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
