"""Run several policies over the same scenario (profiles, trace, workload) and summarise them."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, fields
from typing import Any

from edgesplit.device import DeviceConfig, RequestRecord, summarize
from edgesplit.energy import PHONE_COMPUTE_W
from edgesplit.errors import EdgesplitError
from edgesplit.estimators import make_estimator
from edgesplit.latency import LinkState, Option, build_options, find_option
from edgesplit.policies import allowed_options, make_policy
from edgesplit.profile import load_profile, read_agreement, require_batch_sizes, with_agreement
from edgesplit.sim.loop import SimConfig, Workload, simulate
from edgesplit.traces import LoadTrace, RateTrace, read_load_trace, read_trace

SUMMARY_KEYS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "miss_rate", "mean_bytes", "fallbacks", "probe_bytes_per_s",
                "mean_energy_mj", "mean_radio_mj", "cuts")


@dataclass(frozen=True)
class Scenario:
    """Everything a run needs except the policy."""

    options: list[Option]
    allowed: list[Option]  # what the device may pick
    trace: RateTrace
    workload: Workload
    config: SimConfig
    estimator: str
    load: LoadTrace | None = None

    @classmethod
    def from_files(cls, device_profile: str, server_profile: str, trace_path: str, *, load_trace: str | None = None,
                   codecs: tuple[str, ...] = ("fp32",), jpeg: bool = True, private: bool = False, lossy: bool = False,
                   estimator: str = "harmonic", fps: float = 2.0, arrivals: str = "periodic",
                   rtt_ms: float = 40.0, deadline_ms: float | None = None, hedge: bool = False, start_s: float = 0.0,
                   duration_s: float | None = None, seed: int = 0, min_agreement: float | None = None,
                   fidelity: str | None = None, radio: str = "lte", compute_w: float = PHONE_COMPUTE_W) -> Scenario:
        """Raises EdgesplitError, naming the CLI option, on a value out of range or NaN, a start past the
        trace's end, or a run of more than 10 million requests."""
        for option, value, zero_ok in (("--start", start_s, True), ("--duration", duration_s, False),
                                       ("--rtt-ms", rtt_ms, True), ("--deadline-ms", deadline_ms, False),
                                       ("--fps", fps, False)):
            if value is not None and not (0 <= value < float("inf") and (zero_ok or value > 0)):
                raise EdgesplitError(f"{option} must be a finite number {'>=' if zero_ok else '>'} 0, got {value:g}")
        trace = read_trace(trace_path)
        if start_s >= trace.duration_s:
            raise EdgesplitError(f"--start {start_s:g} is at or past the end of the trace ({trace.duration_s:g} s)")
        window, limit = duration_s or trace.duration_s - start_s, 10_000_000
        if window * fps > limit:
            raise EdgesplitError(f"{window:g} s at --fps {fps:g} would simulate {window * fps:,.0f} requests, "
                                 f"more than the limit of {limit:,}; shorten --duration or lower --fps")
        device, server = load_profile(device_profile), load_profile(server_profile)
        if fidelity:
            device = with_agreement(device, read_agreement(fidelity))
        config = SimConfig(DeviceConfig(rtt_s=rtt_ms / 1000, downlink_bps=20e6, hedge=hedge, radio=radio,
                                        compute_w=compute_w,
                                        deadline_s=deadline_ms / 1000 if deadline_ms else None))
        require_batch_sizes(server, config.max_batch_size)
        options = build_options(device, server, codecs=codecs, jpeg=jpeg, private=private)
        if start_s or duration_s:
            trace = trace.segment(start_s, duration_s or trace.duration_s - start_s)
        make_estimator(estimator)  # fail early on a bad spec
        return cls(options, allowed_options(options, private, lossy, min_agreement), trace,
                   Workload(fps=fps, arrivals=arrivals, seed=seed),  # type: ignore[arg-type]
                   config,
                   estimator, read_load_trace(load_trace) if load_trace else None)


@dataclass(frozen=True)
class Comparison:
    trace: str
    runs: dict[str, list[RequestRecord]]
    summaries: dict[str, dict[str, Any]]
    estimator_mape: float | None  # of the estimator as the dsc client used it

    def to_dict(self) -> dict[str, Any]:
        return {"trace": self.trace,
                "policies": {n: {k: s[k] for k in SUMMARY_KEYS} for n, s in self.summaries.items()},
                "estimator_mape": self.estimator_mape}

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        names = [f.name for f in fields(RequestRecord)]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["policy", *names])
            for policy, records in self.runs.items():
                for r in records:
                    writer.writerow([policy, *(getattr(r, n) for n in names)])


def run_policies(scenario: Scenario, policies: list[str]) -> Comparison:
    """Simulate each policy on the same scenario (same arrivals, same trace, same background load)."""
    device = scenario.config.device
    mean_link = LinkState(scenario.trace.mean_bps(), device.rtt_s, device.downlink_bps)
    built = [make_policy(spec, scenario.options, mean_link) for spec in policies]  # fail before any run
    runs: dict[str, list[RequestRecord]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    mape: float | None = None
    for spec, policy in zip(policies, built):
        estimator = make_estimator(scenario.estimator)
        records = simulate(policy, estimator, scenario.allowed, scenario.trace, scenario.workload, scenario.config,
                           scenario.load)
        runs[spec] = records
        summaries[spec] = summarize(records, device.deadline_for(find_option(scenario.allowed, "local").head_s))
        if spec == "dsc" or mape is None:
            mape = estimator.mape()
    return Comparison(scenario.trace.name, runs, summaries, mape)
