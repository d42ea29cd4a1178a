"""The paper's experiment: the best option on a grid of data rates × batch sizes, with perfect knowledge.

Bakhtiarnia et al. chose the cut by an argmin over profiled head/tail times and ``bytes / rate`` on a grid
of 1–127 MB/s × batch 1–62: a batch of B inputs runs through the head on the device at batch size B, the
B crossing tensors are sent, and the tail runs on the server at batch size B. Their assumptions: fp32
crossing tensors, the raw uint8 input for offload, no round trip. :func:`sweep` evaluates the same grid
under those assumptions or with RTT and JPEG offload added, vectorised over the whole grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgesplit.errors import ProfileError
from edgesplit.profile import Profile, interpolate_batch, require_batch_sizes

PAPER_RATES_MBPS = np.arange(1, 128, dtype=float)  # megabytes per second, as in the paper
PAPER_BATCH_SIZES = np.arange(1, 63)


@dataclass(frozen=True)
class GridResult:
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

    def best_counts(self) -> dict[str, int]:
        values, counts = np.unique(self.best, return_counts=True)
        pairs = sorted(((self.names[v], int(c)) for v, c in zip(values, counts)), key=lambda p: -p[1])
        return dict(pairs)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "scenarios": int(self.best.size),
                "share": {k: self.share(k) for k in ("local", "offload", "split")},
                "best_counts": self.best_counts(),
                "mean_gain_over": {n: float(self.gain_over(n).mean()) for n in self.names}}


def sweep(device: Profile, server: Profile, *, rtt_s: float = 0.0, jpeg: bool = False,
          rates_MBps: np.ndarray = PAPER_RATES_MBPS, batch_sizes: np.ndarray = PAPER_BATCH_SIZES,
          title: str = "") -> GridResult:
    """Latency of every option at every (batch size, rate): fp32 splits, local, raw (and JPEG) offload."""
    for profile in (device, server):
        require_batch_sizes(profile, int(batch_sizes.max()))
    cuts = [n for n in device.cuts if n in server.cuts and device.cuts[n].index > 0]
    if not cuts:
        raise ProfileError("the device and server profiles share no cut")
    batch = batch_sizes.astype(float)[:, None]
    rate_Bps = rates_MBps[None, :] * 1e6

    def per_batch(table: dict[int, Any]) -> np.ndarray:
        seconds = {b: t.median_s for b, t in table.items()}
        return np.array([interpolate_batch(seconds, int(b)) for b in batch_sizes])[:, None]

    names, kinds, rows = ["local"], ["local"], [per_batch(device.model_s) + 0 * rate_Bps]
    codecs = ["raw"] + ([k for k in server.input_codecs if k.startswith("jpeg")] if jpeg else [])
    for codec in codecs:
        entry = server.input_codecs[codec]
        encode = device.input_codecs.get(codec, entry)["encode_s"]
        names.append(f"offload:{codec}")
        kinds.append("offload")
        rows.append(batch * (encode + entry["decode_s"]) + batch * entry["bytes"] / rate_Bps + rtt_s
                    + per_batch(server.model_s))
    for name in cuts:
        head, tail = device.cuts[name], server.cuts[name]
        names.append(f"split:{name}:fp32")
        kinds.append("split")
        rows.append(per_batch(head.head_s) + batch * head.elements * 4 / rate_Bps + rtt_s + per_batch(tail.tail_s))
    return GridResult(title, rates_MBps, batch_sizes, names, kinds, np.stack(rows))


def plot_grids(results: list[GridResult], path: str) -> None:
    """Best-option maps side by side, then the gain over local, offload and the most frequent splits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extent = None
    statics: list[str] = ["local", "offload:raw"]
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
