"""Figures: the compression ratio of every cut along the depth of the model."""

from __future__ import annotations

import os

from edgesplit.analysis import Analysis


def plot_ratios(analysis: Analysis, path: str | os.PathLike[str]) -> None:
    """c per cut along depth (log scale), the line c = 1, natural bottlenecks, record-low and Pareto cuts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = analysis.cuts
    fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
    x = [c.index for c in cuts]
    ax.plot(x, [c.ratio for c in cuts], color="0.6", lw=1, marker=".", ms=3, label="cut (any)", zorder=1)
    natural = [c for c in cuts if c.natural_bottleneck]
    ax.scatter([c.index for c in natural], [c.ratio for c in natural], s=14, color="tab:blue",
               label="natural bottleneck (single tensor, c < 1)", zorder=2)
    pareto = [c for c in cuts if c.pareto]
    ax.scatter([c.index for c in pareto], [c.ratio for c in pareto], s=70, facecolors="none",
               edgecolors="tab:green", lw=1.5, label="Pareto (head FLOPs vs bytes)", zorder=3)
    record = [c for c in cuts if c.record_low]
    ax.scatter([c.index for c in record], [c.ratio for c in record], s=90, marker="*", color="tab:red",
               label="record-low (new minimum of c)", zorder=4)
    for c in record:
        ax.annotate(f"{c.ratio:.4g}", (c.index, c.ratio), textcoords="offset points", xytext=(4, 6),
                    fontsize=8, color="tab:red")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="c = 1 (size of the input)")
    ax.set_yscale("log")
    ax.set_xlabel("cut index (topological order, input → output)")
    ax.set_ylabel("c = crossing elements / input elements")
    shape = "×".join(map(str, analysis.input_shape))
    ax.set_title(f"{analysis.model} ({shape}): {analysis.counts()['natural_bottlenecks']} natural "
                 f"bottlenecks among {len(cuts)} cuts")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=130)
    plt.close(fig)
