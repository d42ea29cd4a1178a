"""Head time on the device: ONNX Runtime vs torch eager, each at its own best settings, cross-checked.

EfficientNet-B0 and the pretrained EfficientNet-Lite0 at 224×224; the heads at their record-low cuts and
the whole model; batch 1. A device runs one engine, not both, so each engine runs in a worker process of
its own (neither one's idle threads can spin on the other's cores; torch one per candidate setting,
building its module from the model's name, so nothing is unpickled), and the parent only sends commands.
The settings are chosen in one set of workers; every timed block then runs in a worker started for it
alone, as the plain loop does: long-lived torch workers ran the whole Lite0
25-31 ms a block where fresh processes, interleaved with them, ran it in 18-19 ms (a worker that had
taken part in the choice, 23.5-24.8 against 17.8-19.7 ms for a fresh one beside it; cause not found: no
idle worker used any CPU, and a lone long-lived worker kept its speed).

Settings, chosen by measurement per head (the table says which won):
  torch: eval mode, ``torch.inference_mode``, ``torch.set_num_threads`` 1 or 2, channels_last or not;
  ONNX Runtime: graph optimisation ORT_ENABLE_ALL, sequential execution, inter-op 1 thread, intra-op 1 or
  2 threads, with 2 idle threads spinning or not (with 1 thread there is no pool to spin).
All candidates of both engines run in turn, ``--select`` blocks of ``--select-block`` runs each; after the
first round a candidate over 1.5x the engine's fastest is dropped; the lowest median wins.

Timing: blocks of ``--block`` timed runs (``--whole-block`` for the whole model) alternate between the two
engines until each has ``--repeats``.
Every block starts with 3 untimed runs (as the plain loop does: the first runs after an idle are slower)
and is followed by a 0.15 s pause (measured here: libgomp's threads spin ~5 ms after a run, ONNX
Runtime's with spinning on ~100 ms; either would slow the other engine's next block). Medians.

Cross-check: for the whole model, each engine at its chosen settings also runs in a fresh process doing
nothing but ``for _ in range(n): t0 = perf_counter(); run(); times.append(perf_counter() - t0)`` (after 3
warm-up runs), ``--plain-rounds`` times spread over the whole-model blocks (before the first, between
them, after the last; the whole model gets ``--whole-repeats`` runs, as on this busy VM consecutive
plain loops differ by up to 30 %), so both see the same machine; like a block's worker, a plain loop starts
once the previous worker has exited (Lite0's plain loops, started beside an idle worker, had run fast more
often: 7 of 16 slow against 13 of 16 blocks, once). A torch process here runs at one of two
speeds for its whole life (Lite0 whole: about 19 or about 25 ms, in 8 fresh processes in a row 5 and 3,
with address-space randomisation on or off): so the whole model is timed in many short processes on
both sides (16 blocks of 10 runs, 16 plain loops of 10), which both sample that mixture alike. The
benchmark's median must be within 10 % of the plain loops' median (all their runs pooled); otherwise a
FAIL line is printed and the exit status is 1.
The 1-minute load average and CPU pressure before and after are recorded: on a busy VM both engines
are measured under contention (torch at 2 threads then collapses; 1 thread wins).

    python benchmarks/onnx_head.py [--repeats 60] [--whole-repeats 160] [--block 20] [--whole-block 10]
                                   [--select 3] [--select-block 5] [--plain-rounds 16] [--plain-runs 10]
                                   [--models ...]
                                   [--out benchmarks/results/onnx_head.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOLERANCE = 0.10
WARMUP = 3  # untimed runs before every block and before the plain loop
PRUNE = 1.5  # after the first selection round, candidates this much slower than the best are dropped
PAUSE_S = 0.15  # after each block: measured here, libgomp spins ~5 ms after a run, ONNX Runtime (spinning on) ~100 ms
MODELS = ("efficientnet_b0", "efficientnet_lite0_pretrained")
TORCH_CANDIDATES = [{"threads": t, "channels_last": c} for t in (1, 2) for c in (False, True)]
ONNX_CANDIDATES = [{"threads": 1, "spinning": False}, {"threads": 2, "spinning": False},
                   {"threads": 2, "spinning": True}]


def describe(engine: str, s: dict) -> str:
    if engine == "torch":
        return f"{s['threads']} thr{', channels_last' if s['channels_last'] else ''}"
    return f"{s['threads']} thr{', spinning' if s['spinning'] else ''}"


# ---- torch side (worker and plain loop) -----------------------------------------------------------------

WHOLE = "(whole model)"


def _torch_module(model: str, label: str):
    """The module to time, built in this process from the model's name, so nothing is unpickled: the whole
    model as loaded (as a device loads it), or its head up to cut ``label`` (analysed here: a process that
    ran the analysis ran EfficientNet-B0 6-10 % slower afterwards, once measured; the heads are not
    cross-checked, the whole model is)."""
    from edgesplit import analyze, load_model, split
    loaded = load_model(model)
    if label == WHOLE:
        return loaded.module
    analysis = analyze(loaded.module, loaded.native_input_shape, model)
    return split(analysis, next(c for c in analysis.cuts if c.name == label))[0]


def _targets(name: str):
    """The input, the labels to time (the whole model, then every record-low cut but the last), and what
    exporting them takes: the analysis, those cuts and the model's normalisation. The modules themselves
    are built by the processes that time them (:func:`_torch_module`)."""
    import torch

    from edgesplit import analyze, load_model
    loaded = load_model(name)
    analysis = analyze(loaded.module, loaded.native_input_shape, name)
    cuts = [c for c in analysis.cuts if c.record_low][:-1]
    x = torch.randn(1, *analysis.input_shape, generator=torch.Generator().manual_seed(0))
    return x, [WHOLE] + [c.name for c in cuts], analysis, cuts, loaded.normalization


def _torch_runner(module, x, channels_last: bool):
    import copy

    import torch
    module = copy.deepcopy(module).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode():
            module(x)
    return run


def _onnx_session(path: str, threads: int, spinning: bool):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _worker_name(engine: str, settings: dict) -> str:
    """The worker process that runs ``engine`` at ``settings``: ONNX Runtime one for all its sessions, torch
    one per candidate (thread count and memory format). Switching the thread count in one process (2
    threads for a candidate, then 1) left 1-thread runs up to 20 % slower than a plain loop here, and a
    process that had also run the channels_last copy of a model ran the other one slower too."""
    if engine == "onnx":
        return "onnx"
    return f"torch{settings['threads']}{'cl' if settings['channels_last'] else ''}"


WORKERS = ["onnx"] + [_worker_name("torch", s) for s in TORCH_CANDIDATES]


def _worker(engine: str) -> None:
    """Answer JSON commands {model, label, path, input, settings, count} with the seconds of ``count`` runs
    (after ``WARMUP`` untimed ones, as in the plain loop) of that head at those settings, as a JSON list.
    A torch worker sets its thread count once, before any torch work (see :func:`_worker_name`)."""
    import numpy as np
    runners = {}
    if engine.startswith("torch"):
        import torch
        torch.set_num_threads(int(engine[len("torch")]))
    for line in sys.stdin:
        c = json.loads(line)
        key = (c["model"], c["label"], json.dumps(c["settings"], sort_keys=True))
        if key not in runners:
            if engine.startswith("torch"):  # built, copied and the built one dropped, as the plain loop
                # does (where a process keeps its weights may be what sets its speed: see the docstring)
                x = torch.from_numpy(np.load(c["input"]))
                runners[key] = _torch_runner(_torch_module(c["model"], c["label"]), x,
                                             c["settings"]["channels_last"])
            else:
                session = _onnx_session(c["path"], c["settings"]["threads"], c["settings"]["spinning"])
                feed = {"input": np.load(c["input"])}
                runners[key] = lambda session=session, feed=feed: session.run(None, feed)
        run = runners[key]
        for _ in range(WARMUP):
            run()
        times = []
        for _ in range(c["count"]):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        print(json.dumps(times), flush=True)


def _plain(engine: str, model: str, path: str, input_path: str, settings: dict, n: int) -> None:
    """The cross-check: a fresh process, the whole model at the given settings, a plain loop."""
    if engine == "torch":
        import torch

        torch.set_num_threads(settings["threads"])
        x = torch.from_numpy(__import__("numpy").load(input_path))
        run = _torch_runner(_torch_module(model, WHOLE), x, settings["channels_last"])
    else:
        import numpy as np
        session = _onnx_session(path, settings["threads"], settings["spinning"])
        feed = {"input": np.load(input_path)}

        def run() -> None:
            session.run(None, feed)
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)


# ---- parent ---------------------------------------------------------------------------------------------

def _load() -> dict:
    """The 1-minute load average and, where the kernel has it, the share of the last minute some task
    waited for a CPU."""
    out = {"loadavg_1m": round(os.getloadavg()[0], 2)}
    try:
        out["cpu_pressure_avg60"] = float(Path("/proc/pressure/cpu").read_text().split()[2].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60, help="timed runs per engine and head")
    parser.add_argument("--block", type=int, default=20, help="timed runs per block")
    parser.add_argument("--whole-block", type=int, default=10, help="timed runs per block of the whole model")
    parser.add_argument("--select", type=int, default=3, help="blocks per candidate setting when choosing")
    parser.add_argument("--select-block", type=int, default=5, help="timed runs per block when choosing")
    parser.add_argument("--whole-repeats", type=int, default=160,
                        help="timed runs per engine for the whole model (the cross-checked one)")
    parser.add_argument("--plain-rounds", type=int, default=16, help="fresh plain-loop processes per engine")
    parser.add_argument("--plain-runs", type=int, default=10, help="timed runs per plain-loop process")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "onnx_head.json")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return 0
    if args.plain:
        _plain(**json.loads(args.plain))
        return 0

    import numpy as np
    import onnxruntime as ort
    import torch
    from rich.console import Console
    from rich.table import Table

    from edgesplit.export import export_cuts
    console = Console(width=170)

    workers: dict[str, subprocess.Popen] = {}

    def start_workers(names: list[str]) -> None:
        """Fresh workers (the others stopped): all candidates' to choose, one for each timed block."""
        stop_workers()
        workers.update({e: subprocess.Popen([sys.executable, __file__, "--worker", e], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True) for e in names})

    def stop_workers() -> None:
        for w in workers.values():
            w.stdin.close()
            w.wait(30)
        workers.clear()

    def block(engine: str, common: dict, settings: dict, count: int) -> list[float]:
        w = workers[_worker_name(engine, settings)]
        w.stdin.write(json.dumps({**common, "settings": settings, "count": count}) + "\n")
        w.stdin.flush()
        times = json.loads(w.stdout.readline())
        time.sleep(PAUSE_S)
        return times

    def plain(engine: str, common: dict, settings: dict) -> list[float]:
        spec = {"engine": engine, "model": common["model"], "input_path": common["input"],
                "path": common["path"],
                "settings": settings, "n": args.plain_runs}
        out = subprocess.run([sys.executable, __file__, "--plain", json.dumps(spec)], capture_output=True, text=True,
                             check=True).stdout
        time.sleep(PAUSE_S)
        return json.loads(out.strip().splitlines()[-1])

    rows, checks = [], []
    load = {"before": _load()}
    ms = lambda v: statistics.median(v) * 1e3  # noqa: E731
    try:
        for name in args.models:
            x, labels, analysis, cuts, normalization = _targets(name)
            with tempfile.TemporaryDirectory() as folder:
                manifest = export_cuts(analysis, cuts, folder, normalization)
                np.save(f"{folder}/input.npy", x.numpy())
                files = [f"{folder}/{manifest['model_file']}"] + [f"{folder}/{e['head']}" for e in manifest["cuts"]]
                for label, path in zip(labels, files):
                    start_workers(WORKERS)
                    whole = label == WHOLE
                    common = {"model": name, "label": label, "path": path, "input": f"{folder}/input.npy"}
                    candidates = {"torch": TORCH_CANDIDATES, "onnx": ONNX_CANDIDATES}
                    trials = {e: [[] for _ in c] for e, c in candidates.items()}
                    alive = {e: list(range(len(c))) for e, c in candidates.items()}
                    for r in range(args.select):  # the candidates of both engines in turn
                        for k in range(max(len(a) for a in alive.values())):
                            for e, live in alive.items():
                                if k < len(live):
                                    trials[e][live[k]] += block(e, common, candidates[e][live[k]], args.select_block)
                        if r == 0:  # a candidate far behind (torch at 2 threads on a busy VM: 10x) goes
                            for e, live in alive.items():
                                fastest = min(statistics.median(trials[e][i]) for i in live)
                                alive[e] = [i for i in live if statistics.median(trials[e][i]) <= PRUNE * fastest]
                    chosen = {e: min(alive[e], key=lambda i, e=e: statistics.median(trials[e][i])) for e in alive}
                    best = {e: candidates[e][i] for e, i in chosen.items()}
                    selection = {e: [{"settings": s, "ms": ms(t), "runs": len(t)} for s, t in zip(candidates[e], trials[e])]
                                 for e in candidates}
                    times = {"torch": [], "onnx": []}
                    plains = {"torch": [], "onnx": []}
                    blocks = {"torch": [], "onnx": []}
                    size = args.whole_block if whole else args.block
                    n_blocks = -(-(args.whole_repeats if whole else args.repeats) // size)
                    plain_at = ({round(k * n_blocks / (args.plain_rounds - 1)) for k in range(args.plain_rounds)}
                                if whole and args.plain_rounds > 1 else {0} if whole else set())
                    for b in range(n_blocks + 1):
                        if b in plain_at:
                            stop_workers()  # a plain loop starts once the last worker has exited, as a block's does
                            for e in ("torch", "onnx"):
                                plains[e].append(plain(e, common, best[e]))
                        if b < n_blocks:
                            for e in ("torch", "onnx"):
                                start_workers([_worker_name(e, best[e])])
                                blocks[e].append(block(e, common, best[e], size))
                                times[e] += blocks[e][-1]
                    t, o = ms(times["torch"]), ms(times["onnx"])
                    rows.append({"model": name, "head": label, "torch_ms": t, "onnx_ms": o, "speedup": t / o,
                                 "torch_settings": best["torch"], "onnx_settings": best["onnx"],
                                 "selection": selection})
                    console.print(f"{name} {label}: torch {t:.2f} ms ({describe('torch', best['torch'])}), "
                                  f"ONNX Runtime {o:.2f} ms ({describe('onnx', best['onnx'])}), {t / o:.2f}×")
                    if whole:
                        for e, bench in (("torch", t), ("onnx", o)):
                            pooled = ms([v for p in plains[e] for v in p])
                            ratio = bench / pooled
                            checks.append({"model": name, "engine": e, "settings": best[e], "benchmark_ms": bench,
                                           "plain_ms": pooled, "plain_ms_each": [ms(p) for p in plains[e]],
                                           "plain_runs": [len(p) for p in plains[e]], "ratio": ratio,
                                           "benchmark_ms_each_block": [ms(b) for b in blocks[e]],
                                           "ok": abs(ratio - 1) <= TOLERANCE})
    finally:
        stop_workers()
    load["after"] = _load()

    table = Table(title=f"Head time at batch 1, each engine at its best settings, medians of {args.repeats} runs "
                        f"({args.whole_repeats} for the whole model) each in alternating blocks of {args.block} "
                        f"({args.whole_block})")
    for column in ("model", "head up to", "torch settings", "torch ms", "ORT settings", "ONNX Runtime ms", "speed-up"):
        table.add_column(column, justify="right" if column.endswith(("ms", "up")) else "left")
    for r in rows:
        table.add_row(r["model"], r["head"], describe("torch", r["torch_settings"]), f"{r['torch_ms']:.2f}",
                      describe("onnx", r["onnx_settings"]), f"{r['onnx_ms']:.2f}", f"{r['speedup']:.2f}×")
    console.print(table)
    check_table = Table(title=f"Cross-check, whole model: benchmark median vs plain loops in fresh processes "
                              f"({args.plain_rounds} × {args.plain_runs} runs, pooled), tolerance {TOLERANCE:.0%}")
    for column in ("model", "engine", "settings", "benchmark ms", "plain loop ms", "each plain loop ms", "ratio", ""):
        check_table.add_column(column, justify="right" if column.endswith(("ms", "ratio")) else "left")
    for c in checks:
        check_table.add_row(c["model"], c["engine"], describe(c["engine"], c["settings"]), f"{c['benchmark_ms']:.2f}",
                            f"{c['plain_ms']:.2f}", " ".join(f"{v:.2f}" for v in c["plain_ms_each"]),
                            f"{c['ratio']:.3f}", "ok" if c["ok"] else "FAIL")
    console.print(check_table)
    console.print(f"machine load (other jobs): before {load['before']}, after {load['after']}")
    if max(load["before"]["loadavg_1m"], load["after"]["loadavg_1m"]) > os.cpu_count():
        console.print("note: more runnable tasks than cores; both engines and their settings are measured under "
                      "contention, not as a device alone would run them")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": rows, "cross_check": checks, "tolerance": TOLERANCE, "load": load, "cores": os.cpu_count(),
        "settings": {"repeats": args.repeats, "whole_repeats": args.whole_repeats, "block": args.block,
                     "whole_block": args.whole_block,
                     "select": args.select,
                     "select_block": args.select_block, "prune": PRUNE, "warmup": WARMUP,
                     "plain_rounds": args.plain_rounds, "plain_runs": args.plain_runs, "pause_s": PAUSE_S},
        "onnxruntime": ort.__version__, "torch": torch.__version__}, indent=1) + "\n")
    console.print(f"wrote {args.out}")
    failed = [c for c in checks if not c["ok"]]
    for c in failed:
        console.print(f"FAIL: {c['model']} {c['engine']}: benchmark {c['benchmark_ms']:.2f} ms vs plain loop "
                      f"{c['plain_ms']:.2f} ms (ratio {c['ratio']:.3f}, tolerance {TOLERANCE:.0%})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
