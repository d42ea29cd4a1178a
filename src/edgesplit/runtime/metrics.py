"""Prometheus text metrics, kept by hand (no client library needed): counters, a gauge, histograms."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}', f"{name}_sum{{{labels}}} {self.total:.6f}",
                f"{name}_count{{{labels}}} {self.n}"]
        return out


@dataclass
class Metrics:
    requests: Counter = field(default_factory=Counter)  # by cut id
    errors: Counter = field(default_factory=Counter)  # by kind
    queue_length: int = 0
    batch_sizes: _Histogram = field(default_factory=lambda: _Histogram(BATCH_BUCKETS))
    latency: _Histogram = field(default_factory=lambda: _Histogram(LATENCY_BUCKETS_S))
    compute: dict[int, _Histogram] = field(default_factory=dict)

    def observe_batch(self, batch_size: int, seconds: float) -> None:
        self.batch_sizes.observe(batch_size)
        self.compute.setdefault(batch_size, _Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def render(self) -> str:
        lines = ["# HELP edgesplit_requests_total Inference requests accepted, by cut id.",
                 "# TYPE edgesplit_requests_total counter"]
        lines += [f'edgesplit_requests_total{{cut="{c}"}} {n}' for c, n in sorted(self.requests.items())]
        lines += ["# HELP edgesplit_errors_total Requests refused or failed, by kind.",
                  "# TYPE edgesplit_errors_total counter"]
        lines += [f'edgesplit_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
        lines += ["# HELP edgesplit_queue_length Requests waiting for the model.", "# TYPE edgesplit_queue_length gauge",
                  f"edgesplit_queue_length {self.queue_length}",
                  "# HELP edgesplit_batch_size Requests per batch run.", "# TYPE edgesplit_batch_size histogram",
                  *self.batch_sizes.lines("edgesplit_batch_size"),
                  "# HELP edgesplit_request_seconds Time from the end of the body to the answer.",
                  "# TYPE edgesplit_request_seconds histogram", *self.latency.lines("edgesplit_request_seconds"),
                  "# HELP edgesplit_batch_compute_seconds Tail compute time per batch, by batch size.",
                  "# TYPE edgesplit_batch_compute_seconds histogram"]
        for size, histogram in sorted(self.compute.items()):
            lines += histogram.lines("edgesplit_batch_compute_seconds", f'batch_size="{size}"')
        return "\n".join(lines) + "\n"
