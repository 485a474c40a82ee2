"""Validity figures as PNG bytes: one ladder plot per metric, sample efficiency, rank agreement scatter,
per-image AUC and blind-spot bars. Same conventions as ``evalkit.plots`` (object API, Agg, no pyplot)."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..plots import _png, direction_label


def ladder_plot(metric: str, ladders: dict[str, list[float]], higher: bool, monotone: dict[str, bool]) -> bytes:
    """One line per disturbance over levels 0-4; a dashed line marks a ladder that is not monotone."""
    fig = Figure(figsize=(5.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for name, values in ladders.items():
        ok = monotone.get(name, False)
        ax.plot(range(len(values)), values, "o-" if ok else "o--", markersize=4,
                label=f"{name}{'' if ok else ' (not monotone)'}")  # fmt: skip
    ax.set_xlabel("disturbance level (0 = undisturbed)")
    ax.set_xticks(range(max((len(v) for v in ladders.values()), default=1)))
    ax.set_ylabel(direction_label(metric, higher))
    k = sum(monotone.values())
    ax.set_title(f"{metric}: worsens at every level on {k} of {len(ladders)} disturbances", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def efficiency_plot(kind: str, sizes: list[int], per_metric: dict[str, dict[str, Any]]) -> bytes:
    """One panel per metric (4 to a row): mean ± sd over subset seeds against n (log x, ticks at the sizes)."""
    cols = min(4, max(1, len(per_metric)))
    rows = -(-max(1, len(per_metric)) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (metric, s) in zip(axes, per_metric.items()):
        ax.errorbar(sizes, s["mean"], yerr=s["sd"], fmt="o-", markersize=4, capsize=3)
        if min(sizes) > 0 and max(sizes) / min(sizes) >= 4:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sizes, [str(n) for n in sizes], fontsize=7)
        ax.set_xlabel("n per side")
        ax.set_ylabel(direction_label(metric, s["higher_is_better"]), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[len(per_metric) :]:
        ax.set_visible(False)
    fig.suptitle(f"value vs n (mean ± sd over seeds); generated side: {kind}", fontsize=10)
    return _png(fig)


def rank_plot(figures: list[dict[str, Any]]) -> bytes:
    """One panel per metric: each generator's metric value against its oracle accuracy, τ in the title."""
    fig = Figure(figsize=(3.4 * max(1, len(figures)), 3.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(figures)), squeeze=False)[0]
    for ax, f in zip(axes, figures):
        gens = sorted(f["values"])
        xs, ys = [f["oracle"][g] for g in gens], [f["values"][g] for g in gens]
        ax.scatter(xs, ys, s=30, edgecolor="black", linewidth=0.5)
        for g, x, y in zip(gens, xs, ys):
            ax.annotate(g, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
        tau = f["kendall_tau"]
        ax.set_title(f"{f['metric']}: τ = {tau:.2f}" if tau is not None else f"{f['metric']}: τ undefined", fontsize=9)
        ax.set_xlabel("oracle accuracy")
        ax.set_ylabel(direction_label(f["metric"], f["higher_is_better"]))
        ax.grid(True, alpha=0.3)
    return _png(fig)


def bars_plot(title: str, groups: list[str], series: dict[str, list[tuple[float | None, list | None]]],
              y_label: str, chance: float | None = 0.5) -> bytes:  # fmt: skip
    """Grouped bars with CI whiskers: ``series[name][i] = (value, [lo, hi] or None)`` for ``groups[i]``."""
    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(series)) + 2), 4.4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ys = [v if v is not None else 0.0 for v, _ in vals]
        err = [[max(0.0, y - c[0]) if c else 0.0 for y, (_, c) in zip(ys, vals)],
               [max(0.0, c[1] - y) if c else 0.0 for y, (_, c) in zip(ys, vals)]]  # fmt: skip
        ax.bar(xs, ys, width=width, yerr=err, capsize=2, label=name)
    if chance is not None:
        ax.axhline(chance, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=2)  # below: extractor ids are long
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)
