"""The paper's experiment: the best option on a grid of data rates × batch sizes, with perfect knowledge.

Bakhtiarnia et al. chose the cut by an argmin over profiled head/tail times and ``bytes / rate`` on a grid
of 1–127 MB/s × batch 1–62: a batch of B inputs from one device runs through the head on the device at
batch size B, the B crossing tensors are sent, and the tail runs on the server at batch size B. Their
dynamic method chose among running locally and fp32 splits at the record-low block outputs, with no round
trip; their notebook never priced full offload. :func:`grid_variants` builds the option sets:

    ======  =========================================================================================
    seed    local + fp32 splits at the profiles' record-low cuts; no RTT (the authors' setting)
    all     local + raw offload + fp32 splits at every profiled cut, no RTT; then the same with an RTT
            and JPEG offload added
    ======  =========================================================================================

:func:`sweep` evaluates one option set on the whole grid, vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from edgesplit.errors import EdgesplitError, ProfileError
from edgesplit.profile import Profile, interpolate_batch, require_batch_sizes

PAPER_RATES_MBPS = np.arange(1, 128, dtype=float)  # megabytes per second, as in the paper
PAPER_BATCH_SIZES = np.arange(1, 63)
OPTION_SETS = ("seed", "all")
DEFAULT_RTT_MS = 40.0


@dataclass(frozen=True)
class GridResult:
    """One variant's latencies in every cell, and what choosing the best option per cell gains."""

    name: str
    title: str
    rates_MBps: np.ndarray
    batch_sizes: np.ndarray
    names: list[str]  # option names, in the order of the first axis of ``seconds``
    kinds: list[str]
    seconds: np.ndarray  # (options, batch sizes, rates)

    @property
    def best(self) -> np.ndarray:
        return self.seconds.argmin(axis=0)

    def share(self, kind: str) -> float:
        best_kinds = np.array(self.kinds)[self.best]
        return float((best_kinds == kind).mean())

    def gain_over(self, name: str) -> np.ndarray:
        """Latency saved by the best option, as a share of the latency of always using ``name``."""
        static = self.seconds[self.names.index(name)]
        return (static - self.seconds.min(axis=0)) / static

    def best_static(self) -> str:
        """The static option the dynamic choice gains least over (the least mean gain; first on a tie)."""
        return min(self.names, key=lambda n: float(self.gain_over(n).mean()))

    def best_counts(self) -> dict[str, int]:
        values, counts = np.unique(self.best, return_counts=True)
        pairs = sorted(((self.names[v], int(c)) for v, c in zip(values, counts)), key=lambda p: -p[1])
        return dict(pairs)

    def moves_with_rate(self) -> float:
        """Share of batch sizes at which the best option is not the same at every rate."""
        return float((self.best != self.best[:, :1]).any(axis=1).mean())

    def moves_with_batch(self) -> float:
        """Share of rates at which the best option is not the same at every batch size."""
        return float((self.best != self.best[:1, :]).any(axis=0).mean())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "options": list(self.names),
                "scenarios": int(self.best.size), "split_share": self.share("split"),
                "best_static": self.best_static(),
                "dynamic_gain": {n: {"mean": float(g.mean()), "max": float(g.max())}
                                 for n in self.names for g in [self.gain_over(n)]},
                "share": {k: self.share(k) for k in ("local", "offload", "split")},
                "best_counts": self.best_counts(),
                "moves_with_rate": self.moves_with_rate(), "moves_with_batch": self.moves_with_batch()}


def record_low_cuts(profile: Profile) -> list[str]:
    """The profile's cuts that are record-low among its own cuts, in graph order: natural bottlenecks
    (fewer elements than the input) smaller than every earlier one (the paper's rule)."""
    input_elements = prod(profile.input_shape)
    names, smallest = [], input_elements
    for cut in sorted(profile.cuts.values(), key=lambda c: c.index):
        if cut.index > 0 and cut.elements < smallest:
            names.append(cut.name)
            smallest = cut.elements
    return names


def sweep(device: Profile, server: Profile, *, name: str, title: str, cuts: list[str] | None = None,
          offload: tuple[str, ...] = ("raw",), rtt_s: float = 0.0, rates_MBps: np.ndarray = PAPER_RATES_MBPS,
          batch_sizes: np.ndarray = PAPER_BATCH_SIZES, extrapolate_batches: bool = False) -> GridResult:
    """Latency of every option at every (batch size, rate): local, offload of the input with each codec in
    ``offload``, and fp32 splits at ``cuts`` (default: every cut both profiles share).

    Profiles must reach the largest batch size, unless ``extrapolate_batches``: beyond a profile's largest
    batch size, the time per input stays that of the largest (:func:`edgesplit.profile.interpolate_batch`).
    """
    if not extrapolate_batches:
        for profile in (device, server):
            require_batch_sizes(profile, int(batch_sizes.max()))
    shared = [n for n in device.cuts if n in server.cuts and device.cuts[n].index > 0]
    if cuts is None:
        cuts = shared
    missing = [n for n in cuts if n not in shared]
    if missing:
        raise ProfileError(f"the device and server profiles do not both have the cut {missing[0]!r}; they "
                           f"share {', '.join(shared) or 'none'}")
    if not cuts:
        raise ProfileError("the device and server profiles share no cut")
    unknown = [c for c in offload if c not in server.input_codecs]
    if unknown:
        raise ProfileError(f"the server profile has no input codec {unknown[0]!r}; it has "
                           f"{', '.join(server.input_codecs)}")
    batch = batch_sizes.astype(float)[:, None]
    rate_Bps = rates_MBps[None, :] * 1e6

    def per_batch(table: dict[int, Any]) -> np.ndarray:
        seconds = {b: t.median_s for b, t in table.items()}
        return np.array([interpolate_batch(seconds, int(b)) for b in batch_sizes])[:, None]

    names, kinds, rows = ["local"], ["local"], [per_batch(device.model_s) + 0 * rate_Bps]
    for codec in offload:
        entry = server.input_codecs[codec]
        encode = device.input_codecs.get(codec, entry)["encode_s"]
        names.append(f"offload:{codec}")
        kinds.append("offload")
        rows.append(batch * (encode + entry["decode_s"]) + batch * entry["bytes"] / rate_Bps + rtt_s
                    + per_batch(server.model_s))
    for cut in cuts:
        head, tail = device.cuts[cut], server.cuts[cut]
        names.append(f"split:{cut}:fp32")
        kinds.append("split")
        rows.append(per_batch(head.head_s) + batch * head.elements * 4 / rate_Bps + rtt_s + per_batch(tail.tail_s))
    return GridResult(name, title, rates_MBps, batch_sizes, names, kinds, np.stack(rows))


def grid_variants(device: Profile, server: Profile, options: str = "seed", *, rtt_ms: float | None = None,
                  extrapolate_batches: bool = False) -> list[GridResult]:
    """The variants of option set ``options`` (see the module docstring); ``rtt_ms`` only for ``all``."""
    if options not in OPTION_SETS:
        raise EdgesplitError(f"unknown option set {options!r}; known: {', '.join(OPTION_SETS)}")
    if options == "seed":
        if rtt_ms is not None:
            raise EdgesplitError("--rtt-ms applies to --options all; the seed's setting has no round trip")
        cuts = [c for c in record_low_cuts(server) if c in device.cuts]
        if not cuts:
            raise ProfileError(f"the profiles of {server.model} share no record-low cut (one smaller than the input "
                               "and than every earlier cut); profile with --cuts natural or --cuts record-low")
        return [sweep(device, server, name="seed", cuts=cuts, offload=(),
                      title="seed: local + fp32 splits at the record-low cuts, no RTT",
                      extrapolate_batches=extrapolate_batches)]
    rtt = DEFAULT_RTT_MS if rtt_ms is None else rtt_ms
    if not (np.isfinite(rtt) and rtt >= 0):
        raise EdgesplitError(f"--rtt-ms must be finite and >= 0, got {rtt!r}")
    jpeg = tuple(k for k in server.input_codecs if k.startswith("jpeg"))
    return [sweep(device, server, name="no-rtt", title="all options, no RTT, raw offload",
                  extrapolate_batches=extrapolate_batches),
            sweep(device, server, name=f"rtt-{rtt:g}ms", title=f"all options, RTT {rtt:g} ms, raw and JPEG offload",
                  offload=("raw", *jpeg), rtt_s=rtt / 1000, extrapolate_batches=extrapolate_batches)]


def plot_grids(results: list[GridResult], path: str) -> None:
    """Best-option maps side by side, then the gain over local, raw offload (where priced) and the most
    frequent splits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extent = None
    statics = ["local"] + (["offload:raw"] if any("offload:raw" in r.names for r in results) else [])
    for result in results:
        statics += [n for n in result.best_counts() if n.startswith("split:") and n not in statics][:2]
    fig, axes = plt.subplots(1 + len(statics), len(results), figsize=(6.5 * len(results), 3.2 * (1 + len(statics))),
                             squeeze=False, layout="constrained")
    for column, result in enumerate(results):
        extent = (result.rates_MBps[0] - 0.5, result.rates_MBps[-1] + 0.5,
                  result.batch_sizes[0] - 0.5, result.batch_sizes[-1] + 0.5)
        used = list(result.best_counts())
        index = {n: i for i, n in enumerate(used)}
        mapped = np.vectorize(lambda k: index[result.names[k]])(result.best)
        cmap = plt.get_cmap("tab20", max(2, len(used)))
        ax = axes[0][column]
        image = ax.imshow(mapped, origin="lower", aspect="auto", extent=extent, cmap=cmap,
                          vmin=-0.5, vmax=len(used) - 0.5, interpolation="nearest")
        bar = fig.colorbar(image, ax=ax, ticks=range(len(used)))
        bar.ax.set_yticklabels([n.replace("split:", "").replace(":fp32", "") for n in used], fontsize=6)
        ax.set_title(f"{result.title}\nbest option (split wins {result.share('split'):.0%} of scenarios)",
                     fontsize=9)
        ax.set_xlabel("data rate (MB/s)")
        ax.set_ylabel("batch size")
        for row, name in enumerate(statics, start=1):
            ax = axes[row][column]
            if name not in result.names:
                ax.axis("off")
                continue
            gain = result.gain_over(name) * 100
            image = ax.imshow(gain, origin="lower", aspect="auto", extent=extent, cmap="viridis", vmin=0,
                              interpolation="nearest")
            fig.colorbar(image, ax=ax, label="latency saved (%)")
            ax.set_title(f"gain of the best option over always {name} (mean {gain.mean():.1f} %)", fontsize=8)
            ax.set_xlabel("data rate (MB/s)")
            ax.set_ylabel("batch size")
    fig.savefig(path, dpi=100)
    plt.close(fig)
