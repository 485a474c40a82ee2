"""Leaderboard: ``evalkit.leaderboard.build`` over the results database, filtered by recipe, metric and
category, as a sortable table (numbers stay numbers, so a header click sorts by value), with the
report's quality-versus-speed plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from .. import leaderboard as lbm
from .. import report as rpt
from ..errors import UserError
from ..plots import PlotPoint, pareto_plot
from ..results import ResultsDB
from .context import UiContext, failure, problem

ALL_RECIPES = "all recipes (latest run of each)"
OVERALL = "overall"


def _open(db: Path) -> ResultsDB:
    if not Path(db).is_file():
        raise UserError(f"no results yet in {db}: run an evaluation (Evaluate tab or `python -m evalkit run RECIPE`)")
    return ResultsDB(db)


def filter_choices(db: Path) -> tuple[list[str], list[str], list[str]]:
    """(recipes, metrics, categories) present in the database, for the filter menus."""
    if not Path(db).is_file():
        return [], [], []
    with ResultsDB(db) as rdb:
        recipes = sorted({r.recipe_name for r in rdb.runs()})
        rows = rdb.conn.execute("SELECT DISTINCT metric, category FROM results").fetchall()
    metrics = sorted({r["metric"] for r in rows})
    categories = sorted({r["category"] for r in rows if r["category"]})
    return recipes, metrics, categories


def _column(lb: lbm.Leaderboard, m: str) -> str:
    higher = lbm.direction(m)
    tau = lb.validity.get(m)
    return f"{m} {'↑' if higher else '↓'}" + (f" (τ={tau:.2f})" if tau is not None else "")


def _num(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def table(
    lb: lbm.Leaderboard, metrics: list[str] | None, category: str
) -> tuple[list[str], list[list[Any]], list[str]]:
    """(headers, rows, datatypes): one row per generator; overall figures with CIs, or one category's figures."""
    keep = (lambda m: lbm.base_metric(m) in metrics) if metrics else (lambda m: True)
    if category and category != OVERALL:
        cols = [m for m, cells in lb.categories.items() if keep(m) and any(c == category for _, c in cells)]
        head = ["generator", *(f"{_column(lb, m)} [{category}]" for m in cols)]
        body = []
        for g in lb.generators:
            values = [lb.categories[m].get((g, category)) for m in cols]
            if any(v is not None for v in values):
                body.append([g, *(_num(v.value) if v else None for v in values)])
        return head, body, ["str"] + ["number"] * len(cols)
    quality = [m for m in lb.metrics if keep(m)]
    speed = [m for m in lb.speed if keep(m)]
    head = ["generator", "win rate"]
    types = ["str", "number"]
    for m in quality:
        head += [_column(lb, m), f"{m} 95% CI"]
        types += ["number", "str"]
    head += [_column(lb, m) for m in speed]
    types += ["number"] * len(speed)
    win_rate = lb.win_rate
    if metrics:  # the win rate over the metrics shown, not over the whole board
        kept = lbm.quality_table(lb.cells, lb.generators, quality)
        win_rate = lbm.win_rates(kept, {m: lbm.direction(m) for m in kept})
    body = []
    for g in lb.generators:
        row: list[Any] = [g, _num(win_rate.get(g))]
        for m in quality:
            r = lb.cells.get((g, m))
            row += [_num(r.value) if r else None, f"[{r.ci[0]:.4g}, {r.ci[1]:.4g}]" if r and r.ci else ""]
        row += [_num(lb.cells[(g, m)].value) if (g, m) in lb.cells else None for m in speed]
        body.append(row)
    return head, body, types


def _families(rdb: ResultsDB, lb: lbm.Leaderboard) -> dict[str, str]:
    """Generator family per label, from the manifests the runs wrote (unknown where they are gone)."""
    out: dict[str, str] = {}
    for run_id in lb.run_ids:
        try:
            manifests = rpt.load_manifests(rpt.run_info(rdb, run_id), lb.generators)
        except (UserError, OSError):
            continue
        out |= {g: str(rows[0].get("family") or "unknown") for g, (_, rows) in manifests.items() if rows}
    return out


def plot(rdb: ResultsDB, lb: lbm.Leaderboard, metric: str | None) -> Image.Image | None:
    """The report's quality-versus-speed plot (Pareto front dashed) for one quality metric."""
    candidates = [m for m in lb.metrics if lbm.base_metric(m) in lbm.DIRECTIONS]
    if rpt.SPEED_METRIC not in lb.speed or not candidates:
        return None
    wanted = [metric] if metric else list(rpt.PLOT_METRICS)  # a metric's first column (a menu names metrics)
    metric = next((c for m in wanted for c in candidates if c == m or lbm.base_metric(c) == m), candidates[0])
    families = _families(rdb, lb)
    points = [PlotPoint(g, lb.cells[(g, rpt.SPEED_METRIC)].value, lb.cells[(g, metric)].value, families.get(g, "unknown"))
              for g in lb.generators if (g, rpt.SPEED_METRIC) in lb.cells and (g, metric) in lb.cells]  # fmt: skip
    return Image.open(io.BytesIO(pareto_plot(points, metric=metric, higher=lbm.direction(metric))))


def view(ctx: UiContext, recipe: str | None, metrics: list[str] | None, category: str | None,
         plot_metric: str | None) -> tuple[Any, Image.Image | None, str]:  # fmt: skip
    """(table, plot, note) for the filters chosen."""
    empty = pd.DataFrame({"generator": []})
    try:
        with _open(ctx.config.db) as rdb:
            lb = lbm.build(rdb, None if not recipe or recipe == ALL_RECIPES else recipe)
            if not lb.generators:
                raise UserError(f"no results in {ctx.config.db}" + (f" for recipe {recipe!r}" if recipe else ""))
            image = plot(rdb, lb, plot_metric)
        head, body, types = table(lb, metrics, category or OVERALL)
        frame = pd.DataFrame(body, columns=head)
        for name, kind in zip(head, types):  # numbers stay numbers (missing: NaN), so sorting is by value
            if kind == "number":
                frame[name] = pd.to_numeric(frame[name])
    except UserError as e:
        return empty, None, problem(e)
    except Exception as e:  # a locked or damaged database, a plot that fails: say so, keep serving
        return empty, None, failure(e)
    note = f"Runs: {', '.join(f'`{r}`' for r in lb.run_ids)}. Click a column header to sort."
    if lb.validity:
        note += "\n\n" + lbm.validity_note(lb)
    return frame, image, note


def build(ctx: UiContext, tab: gr.Tab) -> None:
    with gr.Row():
        # choices come from the database at each refresh; values are checked by `view`, not against stale menus
        recipe = gr.Dropdown([ALL_RECIPES], value=ALL_RECIPES, label="Recipe", allow_custom_value=True)
        metrics = gr.Dropdown([], value=[], multiselect=True, label="Metrics (none: all)", allow_custom_value=True)
        category = gr.Dropdown([OVERALL], value=OVERALL, label="Category", allow_custom_value=True)
        plot_metric = gr.Dropdown([], value=None, label="Plot: quality metric", allow_custom_value=True)
        refresh = gr.Button("Refresh", elem_id="leaderboard-refresh")
    note = gr.Markdown(elem_id="leaderboard-note")
    board = gr.Dataframe(label="Leaderboard", datatype="auto", interactive=False, show_search="filter",
                         elem_id="leaderboard-table")  # fmt: skip
    pareto = gr.Image(label="Quality versus speed", type="pil", interactive=False, height=420)

    def menus():
        recipes, names, cats = filter_choices(ctx.config.db)
        quality = [m for m in names if m in lbm.DIRECTIONS]
        return (gr.Dropdown(choices=[ALL_RECIPES, *recipes]), gr.Dropdown(choices=names),
                gr.Dropdown(choices=[OVERALL, *cats]), gr.Dropdown(choices=quality))  # fmt: skip

    def show(recipe_, metrics_, category_, plot_metric_):
        return view(ctx, recipe_, metrics_, category_, plot_metric_)

    inputs, outputs = [recipe, metrics, category, plot_metric], [board, pareto, note]
    tab.select(menus, None, inputs, api_visibility="private").then(show, inputs, outputs, api_visibility="private")
    refresh.click(menus, None, inputs, api_visibility="private").then(show, inputs, outputs, api_name="leaderboard")
    for menu in inputs:
        menu.input(show, inputs, outputs, api_visibility="private")
