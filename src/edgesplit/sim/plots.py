"""Figures of a simulation: latency over time with the chosen option, the rate, and latency CDFs."""

from __future__ import annotations

import os

from edgesplit.device import RequestRecord


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_timeline(runs: dict[str, list[RequestRecord]], trace_name: str, path: str | os.PathLike[str]) -> None:
    """Per policy: latency of each request coloured by the option it ran; below, true vs estimated rate."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(runs) + 1, 1, figsize=(11, 2.1 * (len(runs) + 1)), sharex=True,
                             layout="constrained")
    options = sorted({r.option for records in runs.values() for r in records})
    colours = {o: plt.get_cmap("tab20")(i % 20) for i, o in enumerate(options)}
    for ax, (policy, records) in zip(axes, runs.items()):
        for option in options:
            chosen = [r for r in records if r.option == option]
            if chosen:
                ax.scatter([r.arrival_s for r in chosen], [r.latency_s * 1000 for r in chosen], s=6,
                           color=colours[option], label=option)
        ax.set_yscale("log")
        ax.set_ylabel(f"{policy}\nlatency (ms)")
        ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[o], label=o) for o in options]
    axes[0].legend(handles=handles, fontsize=7, ncol=3, loc="upper right")
    reference = next((records for name, records in runs.items() if name == "dsc"), next(iter(runs.values())))
    rate_ax = axes[-1]
    known = [r for r in reference if r.true_bps is not None]
    rate_ax.plot([r.arrival_s for r in known], [r.true_bps / 1e6 for r in known], lw=0.8, label="true uplink rate")
    rate_ax.plot([r.arrival_s for r in reference], [r.estimated_bps / 1e6 for r in reference], lw=0.8,
                 label="estimated (dsc)" if "dsc" in runs else "estimated")
    rate_ax.set_ylabel("Mbit/s")
    rate_ax.set_xlabel("time (s)")
    rate_ax.legend(fontsize=7)
    rate_ax.grid(True, alpha=0.3)
    fig.suptitle(f"Latency per request and the option chosen — {trace_name}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cdf(runs: dict[str, list[RequestRecord]], trace_name: str, path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for policy, records in runs.items():
        values = sorted(r.latency_s * 1000 for r in records)
        ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=policy)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of requests ≤ latency")
    ax.set_title(f"Latency CDF per policy — {trace_name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
