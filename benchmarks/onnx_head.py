"""Head time on the device: ONNX Runtime vs torch eager, each as a device would run it alone.

EfficientNet-B0 and the pretrained EfficientNet-Lite0 at 224×224; the heads at their record-low cuts and
the whole model; batch 1, torch's thread count (2 here) for both. A device runs one engine, not both, so
each runs as it would alone: torch in a worker process with its default (spinning) OpenMP threads, ONNX
Runtime here as edgesplit's device engine sets it up (idle threads do not spin). Blocks of runs
alternate between the two (``--block`` timed runs each, ``--repeats`` in all, each block after one
untimed run: a core that idled is slower), with a pause after each torch block: in one process, or with
no pause, spinning threads left by one engine steal the 2 cores from the other (measured here: ONNX Runtime's spinning made torch 2-3x slower; torch's made ONNX Runtime 1.5x
slower; with neither spinning, torch itself is 20-45 % slower).

    python benchmarks/onnx_head.py [--repeats 30] [--block 5] [--out benchmarks/results/onnx_head.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from edgesplit import analyze, load_model, split
from edgesplit.export import export_cuts

MODELS = ("efficientnet_b0", "efficientnet_lite0_pretrained")
console = Console(width=160)


def _heads(name: str) -> tuple[torch.Tensor, list[tuple[str, torch.nn.Module]], object, list]:
    """The input, (label, head module) for the whole model and every record-low cut but the last, the
    analysis and the cuts."""
    loaded = load_model(name)
    analysis = analyze(loaded.module, loaded.native_input_shape, name)
    cuts = [c for c in analysis.cuts if c.record_low][:-1]
    x = torch.randn(1, *analysis.input_shape, generator=torch.Generator().manual_seed(0))
    return x, [("(whole model)", loaded.module)] + [(c.name, split(analysis, c)[0]) for c in cuts], analysis, cuts


def _torch_worker() -> None:
    """Answer 'MODEL LABEL N' lines with the seconds of N torch runs of that head, as a JSON list."""
    heads = {}
    for line in sys.stdin:
        name, label, count = line.split("\t")
        if name not in heads:
            x, pairs, _, _ = _heads(name)
            heads[name] = (x, dict(pairs))
        x, modules = heads[name]
        times = []
        for _ in range(int(count) + 1):
            started = time.perf_counter()
            with torch.inference_mode():
                modules[label](x)
            times.append(time.perf_counter() - started)
        print(json.dumps(times[1:]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "onnx_head.json")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return _torch_worker()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as edgesplit's OnnxEngine
    worker = subprocess.Popen([sys.executable, __file__, "--torch-worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def torch_block(name: str, label: str, count: int) -> list[float]:
        worker.stdin.write(f"{name}\t{label}\t{count}\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    rows = []
    try:
        for name in MODELS:
            x, pairs, analysis, cuts = _heads(name)
            with tempfile.TemporaryDirectory() as folder:
                manifest = export_cuts(analysis, cuts, folder, load_model(name).normalization)
                files = [f"{folder}/{manifest['model_file']}"] + [f"{folder}/{e['head']}" for e in manifest["cuts"]]
                for (label, _), path in zip(pairs, files):
                    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                    feed = {"input": x.numpy()}
                    torch_block(name, label, 3)  # warm-up
                    torch_s, onnx_s = [], []
                    for _ in range(3):
                        session.run(None, feed)
                    while len(torch_s) < args.repeats:
                        torch_s += torch_block(name, label, args.block)
                        time.sleep(0.05)  # torch's OpenMP threads spin a while after its last run
                        for i in range(args.block + 1):
                            started = time.perf_counter()
                            session.run(None, feed)
                            if i:
                                onnx_s.append(time.perf_counter() - started)
                    t, o = statistics.median(torch_s), statistics.median(onnx_s)
                    rows.append({"model": name, "head": label, "torch_ms": t * 1e3, "onnx_ms": o * 1e3,
                                 "speedup": t / o})
    finally:
        worker.stdin.close()
        worker.wait(30)
    table = Table(title=f"Head time at batch 1, {torch.get_num_threads()} threads, medians of {args.repeats} runs each "
                        f"in alternating blocks of {args.block}")
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
