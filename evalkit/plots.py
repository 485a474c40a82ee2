"""Report plots: quality versus speed (with its Pareto front) and quality versus steps.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot global state, so it is
safe inside a server) and returned as PNG bytes; the caller decides whether they become files or
inline data.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

# one fixed colour per generator family (tab10), so a family looks the same in every plot
FAMILY_COLORS: dict[str, str] = {
    "diffusion": "#1f77b4",
    "gan": "#d62728",
    "masked": "#2ca02c",
    "autoregressive": "#9467bd",
    "folder": "#8c564b",
    "unknown": "#7f7f7f",
}
_EXTRA_COLORS = ("#ff7f0e", "#e377c2", "#bcbd22", "#17becf")
DPI = 110


@dataclass(frozen=True)
class PlotPoint:
    """One generator on a quality-versus-speed plot."""

    label: str
    x: float
    y: float
    family: str = "unknown"


@dataclass(frozen=True)
class Curve:
    """One generator spec run at several settings: ``xs`` (steps or NFE) against ``ys`` (a metric)."""

    label: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def pareto_front(
    xs: Sequence[float | None], ys: Sequence[float | None], *, x_higher: bool = True, y_higher: bool = True
) -> list[int]:
    """Indices of the points no other point dominates, ordered by x (ascending).

    A point is dominated when another is at least as good on both axes and strictly better on one;
    ``x_higher``/``y_higher`` say which way is better. Non-finite points are never on the front.

    >>> pareto_front([1, 2, 3, 2], [3, 2, 1, 1])  # (2, 1) is beaten by (2, 2)
    [0, 1, 2]
    >>> pareto_front([1, 2, 3], [5.0, 20.0, 10.0], y_higher=False)  # e.g. FID: lower is better
    [0, 2]
    """
    sx, sy = (1 if x_higher else -1), (1 if y_higher else -1)
    pts = [(i, sx * x, sy * y) for i, (x, y) in enumerate(zip(xs, ys)) if _finite(x) and _finite(y)]
    front = [i for i, x, y in pts if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, x2, y2 in pts if j != i)]
    return sorted(front, key=lambda i: (xs[i], i))


def family_color(family: str, seen: dict[str, str] | None = None) -> str:
    """A stable colour per family; unknown family names take the spare colours in order of first use."""
    if family in FAMILY_COLORS:
        return FAMILY_COLORS[family]
    seen = seen if seen is not None else {}
    if family not in seen:
        seen[family] = _EXTRA_COLORS[len(seen) % len(_EXTRA_COLORS)]
    return seen[family]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, written as plain numbers (0.5, 2, 100), not 5e-01."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def _log_x(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def direction_label(metric: str, higher: bool) -> str:
    return f"{metric} ({'higher' if higher else 'lower'} is better)"


def pareto_plot(points: Sequence[PlotPoint], *, metric: str, higher: bool, x_label: str = "images / s") -> bytes:
    """Quality (y) against speed (x, log scale, higher is faster), Pareto front dashed; PNG bytes."""
    pts = [p for p in points if _finite(p.x) and _finite(p.y)]
    fig = Figure(figsize=(5.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    extra: dict[str, str] = {}
    for fam in sorted({p.family for p in pts}):
        sel = [p for p in pts if p.family == fam]
        ax.scatter([p.x for p in sel], [p.y for p in sel], s=46, color=family_color(fam, extra), label=fam,
                   edgecolor="black", linewidth=0.5, zorder=3)  # fmt: skip
    for p in pts:
        ax.annotate(p.label, (p.x, p.y), xytext=(5, 4), textcoords="offset points", fontsize=8, zorder=4)
    front = pareto_front([p.x for p in pts], [p.y for p in pts], x_higher=True, y_higher=higher)
    if front:
        ax.plot([pts[i].x for i in front], [pts[i].y for i in front], "--o", color="0.35", linewidth=1.2,
                markersize=12, markerfacecolor="none", label="Pareto front", zorder=2)  # fmt: skip
    if pts and all(p.x > 0 for p in pts):
        _log_x(ax)
        x_label += " (log scale)"
    ax.margins(x=0.08, y=0.1)
    ax.set_xlabel(f"{x_label} → faster")
    ax.set_ylabel(direction_label(metric, higher))
    best = "top right" if higher else "bottom right"
    ax.set_title(f"{metric} versus speed (best: {best})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if pts:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no generator has both figures", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def steps_plot(panels: dict[str, tuple[bool, Sequence[Curve]]], *, x_label: str = "steps") -> bytes:
    """One panel per metric (``metric -> (higher_is_better, curves)``), one line per generator spec; PNG."""
    fig = Figure(figsize=(3.6 * max(1, len(panels)), 3.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (metric, (higher, curves)) in zip(axes, panels.items()):
        xs_all = [x for c in curves for x in c.xs if _finite(x)]
        for c in curves:
            order = sorted(range(len(c.xs)), key=lambda i: c.xs[i])
            ax.plot([c.xs[i] for i in order], [c.ys[i] for i in order], "o-", label=c.label, markersize=4)
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8:
            _log_x(ax)
        elif all(float(x).is_integer() for x in xs_all):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x_label)
        ax.set_ylabel(direction_label(metric, higher))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _png(fig)
