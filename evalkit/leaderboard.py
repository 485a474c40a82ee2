"""Leaderboards from the results store: a row per generator, each metric with its CI and rank,
an overall win rate (HEIM-style: the chance of beating a random other generator, metric by
metric), per-category breakdowns and speed. Exports Markdown, CSV and HTML."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field

from .metric_names import QUALITY_DIRECTIONS as DIRECTIONS
from .metric_names import SPEED_DIRECTIONS
from .results import Result, ResultsDB, Validity

# speed figures are shown but do not enter the win rate
ORDER = ("oracle", "clip", "fid", "kid", "cmmd", "precision", "recall", "density", "coverage", "is")


@dataclass
class Leaderboard:
    """Columns are metric names; where one metric was measured on several datasets or with several extractors
    (runs of several recipes, a recipe with two extractors), each gets its own column, ``"fid [inception-v3-fid]"``
    (see ``base_metric``)."""

    run_ids: list[str]
    generators: list[str]
    metrics: list[str]
    cells: dict[tuple[str, str], Result]  # (generator, column) -> overall figure
    ranks: dict[tuple[str, str], int]
    win_rate: dict[str, float]
    speed: list[str] = field(default_factory=list)
    categories: dict[str, dict[tuple[str, str], Result]] = field(default_factory=dict)  # column -> (gen, cat)
    validity: dict[str, float] = field(default_factory=dict)  # metric -> rank agreement with the oracle (τ)
    validity_detail: dict[str, Validity] = field(default_factory=dict)  # metric -> everything measured


def base_metric(column: str) -> str:
    """The metric a leaderboard column holds: ``"fid [inception-v3-fid]"`` -> ``"fid"``."""
    return column.split(" [", 1)[0]


def direction(column: str) -> bool:
    """Higher is better for this column (quality or speed figure)."""
    m = base_metric(column)
    return DIRECTIONS.get(m, SPEED_DIRECTIONS.get(m, True))


def _columns(rows: list[Result]) -> dict[tuple[str, str, str], str]:
    """(metric, dataset, extractor) -> column name, qualified only by what varies for that metric."""
    groups: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        groups.setdefault(r.metric, set()).add((r.dataset, r.extractor))
    out = {}
    for metric, group in groups.items():
        for dataset, extractor in group:
            parts = [dataset] if len({d for d, _ in group}) > 1 else []
            parts += [extractor.split("|")[0] or "no extractor"] if len({e for _, e in group}) > 1 else []
            out[(metric, dataset, extractor)] = f"{metric} [{', '.join(parts)}]" if parts else metric
    return out


def _rank(values: dict[str, float], higher: bool) -> dict[str, int]:
    """Competition ranking (1 = best; ties share the better rank)."""
    ordered = sorted(values.values(), reverse=higher)
    return {g: ordered.index(v) + 1 for g, v in values.items()}


def win_rates(table: dict[str, dict[str, float]], directions: dict[str, bool]) -> dict[str, float]:
    """Mean over metrics of the fraction of other generators beaten (ties count half).

    >>> win_rates({"fid": {"a": 1.0, "b": 2.0, "c": 3.0}}, {"fid": False})
    {'a': 1.0, 'b': 0.5, 'c': 0.0}
    """
    gens = sorted({g for col in table.values() for g in col})
    scores: dict[str, list[float]] = {g: [] for g in gens}
    for metric, col in table.items():
        if len(col) < 2:
            continue
        sign = 1 if directions[metric] else -1
        for g, v in col.items():
            others = [w for h, w in col.items() if h != g]
            beat = sum(1.0 if sign * (v - w) > 0 else 0.5 if v == w else 0.0 for w in others)
            scores[g].append(beat / len(others))
    return {g: sum(s) / len(s) if s else float("nan") for g, s in scores.items()}


def quality_table(
    cells: dict[tuple[str, str], Result], generators: list[str], metrics: list[str]
) -> dict[str, dict[str, float]]:
    """Metric → generator → value, for the ranked quality metrics among ``metrics`` (what win rates are over)."""
    return {m: {g: cells[(g, m)].value for g in generators if (g, m) in cells and cells[(g, m)].value is not None}
            for m in metrics if base_metric(m) in DIRECTIONS}  # fmt: skip


def latest_run_ids(db: ResultsDB, recipe: str | None = None) -> list[str]:
    """The newest finished (else newest) run of each recipe, or of the one named."""
    runs = db.runs(recipe)  # oldest first
    latest: dict[str, str] = {}
    done: dict[str, str] = {}
    for run in runs:
        latest[run.recipe_name] = run.run_id
        if run.status == "done":
            done[run.recipe_name] = run.run_id
    chosen = {done.get(name, run_id) for name, run_id in latest.items()}
    # oldest first, so where two recipes share a generator label and a column the newer run's cell wins
    return [run.run_id for run in runs if run.run_id in chosen]


def build(db: ResultsDB, recipe: str | None = None, run_ids: list[str] | None = None) -> Leaderboard:
    run_ids = run_ids or latest_run_ids(db, recipe)
    rows = [r for rid in run_ids for r in db.results(rid)]  # runs oldest first: a newer run's same cell wins
    column = _columns(rows)
    cells: dict[tuple[str, str], Result] = {}
    cats: dict[str, dict[tuple[str, str], Result]] = {}
    for r in rows:
        col = column[(r.metric, r.dataset, r.extractor)]
        if r.category:
            cats.setdefault(col, {})[(r.generator, r.category)] = r
        else:
            cells[(r.generator, col)] = r
    generators = sorted({g for g, _ in cells} | {g for c in cats.values() for g, _ in c})
    present = {m for _, m in cells}

    def order(names: tuple[str, ...]) -> list[str]:
        return sorted((c for c in present if base_metric(c) in names), key=lambda c: (names.index(base_metric(c)), c))

    other = sorted(c for c in present if base_metric(c) not in ORDER and base_metric(c) not in SPEED_DIRECTIONS)
    metrics, speed = order(ORDER) + other, order(tuple(SPEED_DIRECTIONS))
    table = quality_table(cells, generators, metrics)
    ranks = {(g, m): rk for m, col in table.items() for g, rk in _rank(col, direction(m)).items()}
    for m in speed:
        col = {g: cells[(g, m)].value for g in generators if (g, m) in cells and cells[(g, m)].value is not None}
        ranks |= {(g, m): rk for g, rk in _rank(col, direction(m)).items()}
    wr = win_rates(table, {m: direction(m) for m in table})
    generators.sort(key=lambda g: -wr.get(g, 0.0) if wr.get(g) == wr.get(g) else 1.0)
    detail = validity_for(db, cells, metrics)
    tau = {m: v.kendall_tau for m, v in detail.items() if v.kendall_tau is not None}
    return Leaderboard(run_ids, generators, metrics, cells, ranks, wr, speed, cats, tau, detail)


def validity_for(db: ResultsDB, cells: dict[tuple[str, str], Result], metrics: list[str]) -> dict[str, Validity]:
    """The stored validity of each metric, measured with the extractor that metric's cells were computed with
    (a τ of the judge's FID says nothing about an Inception FID column)."""
    stored = {(v.metric, v.extractor): v for v in db.validity()}
    out = {}
    for m in metrics:
        extractors = {r.extractor for (_, mm), r in cells.items() if mm == m}
        if len(extractors) == 1 and (v := stored.get((base_metric(m), extractors.pop()))) is not None:
            out[m] = v
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    a = abs(v)
    return f"{v:.3g}" if a >= 100 or a == 0 else f"{v:.4f}" if a < 0.01 else f"{v:.3f}"


def _cell(lb: Leaderboard, g: str, m: str, ci: bool = True) -> str:
    r = lb.cells.get((g, m))
    if r is None:
        return "–"
    s = _fmt(r.value)
    if ci and r.ci:
        s += f" [{_fmt(r.ci[0])}, {_fmt(r.ci[1])}]"
    rank = lb.ranks.get((g, m))
    return f"{s} (#{rank})" if rank else s


def _header(lb: Leaderboard) -> list[str]:
    def name(m: str) -> str:
        arrow = "↑" if direction(m) else "↓"
        v = lb.validity.get(m)
        return f"{m} {arrow}" + (f" (τ={v:.2f})" if v is not None else "")

    return ["generator", "win rate", *map(name, lb.metrics), *map(name, lb.speed)]


def rows(lb: Leaderboard, ci: bool = True) -> list[list[str]]:
    return [
        [
            g,
            _fmt(lb.win_rate.get(g)),
            *(_cell(lb, g, m, ci) for m in lb.metrics),
            *(_cell(lb, g, m, False) for m in lb.speed),
        ]
        for g in lb.generators
    ]


def category_rows(lb: Leaderboard, metric: str) -> tuple[list[str], list[list[str]]]:
    cells = lb.categories.get(metric, {})
    cats = sorted({c for _, c in cells})
    body = [[g, *(_fmt(cells[(g, c)].value) if (g, c) in cells else "–" for c in cats)] for g in lb.generators]
    return ["generator", *cats], body


def _category_tables(lb: Leaderboard) -> list[str]:
    """The columns broken down by category in the exports: oracle accuracy, then CLIP score."""
    shown = ("oracle", "clip")
    return sorted((c for c in lb.categories if base_metric(c) in shown), key=lambda c: (shown.index(base_metric(c)), c))


def to_markdown(lb: Leaderboard) -> str:
    def table(head: list[str], body: list[list[str]]) -> str:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])

    out = [table(_header(lb), rows(lb))]
    if lb.validity:
        out.append("\n" + validity_note(lb))
    for metric in _category_tables(lb):
        out.append(f"\n**{metric} by category**\n\n" + table(*category_rows(lb, metric)))
    return "\n".join(out) + "\n"


def validity_note(lb: Leaderboard) -> str:
    """One line saying what the τ beside a metric's name is, with each τ's 95% CI."""
    parts = []
    for m, v in lb.validity_detail.items():
        if v.kendall_tau is not None:
            ci = f" [{v.tau_ci[0]:.2f}, {v.tau_ci[1]:.2f}]" if v.tau_ci else ""
            parts.append(f"{m} {v.kendall_tau:.2f}{ci}")
    runs = sorted({v.source_run for v in lb.validity_detail.values() if v.source_run})
    return (f"τ: Kendall rank agreement of the metric with oracle accuracy over the generators of "
            f"{', '.join(runs) or 'a sweep run'} (`python -m evalkit validate`; +1 = the oracle's order), "
            f"95% CI over generators: {'; '.join(parts)}")  # fmt: skip


def to_csv(lb: Leaderboard) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["generator", "metric", "category", "value", "ci_lo", "ci_hi", "n", "rank", "win_rate", "validity_tau"])
    for g in lb.generators:
        for m in lb.metrics + lb.speed:
            r = lb.cells.get((g, m))
            if r:
                lo, hi = r.ci or (None, None)
                w.writerow([g, m, "", r.value, lo, hi, r.n, lb.ranks.get((g, m), ""), lb.win_rate.get(g),
                            lb.validity.get(m, "")])  # fmt: skip
        for m, cells in lb.categories.items():
            for (gg, c), r in sorted(cells.items()):
                if gg == g:
                    lo, hi = r.ci or (None, None)
                    w.writerow([g, m, c, r.value, lo, hi, r.n, "", "", ""])
    return buf.getvalue()


def html_table(head: list[str], body: list[list[str]], cls: str = "lb") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


def to_html(lb: Leaderboard) -> str:
    parts = [html_table(_header(lb), rows(lb))]
    if lb.validity:
        parts.append(f"<p>{html.escape(validity_note(lb))}</p>")
    for metric in _category_tables(lb):
        parts.append(f"<h3>{html.escape(metric)} by category</h3>" + html_table(*category_rows(lb, metric)))
    style = "table{border-collapse:collapse;font:14px sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}"
    return f"<!doctype html><meta charset=utf-8><title>Leaderboard</title><style>{style}</style>" + "".join(parts)


FORMATS = {"md": to_markdown, "csv": to_csv, "html": to_html}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="rank generators from the results database",
        description="Rank generators per metric (with CIs and win rates) from the results database.",
    )
    p.add_argument("--db", default="results.db")
    p.add_argument("--recipe", default=None, help="only this recipe's latest run (default: the latest run of each)")
    p.add_argument("--run", default=None, help="a run id")
    p.add_argument("--format", choices=sorted(FORMATS), default="md")
    p.add_argument("--out", default=None, help="write to this file instead of printing")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from pathlib import Path

    from .errors import UserError
    from .utils import atomic_write_text

    if args.db != ":memory:" and not Path(args.db).is_file():
        raise UserError(f"results database not found: {args.db} (run `python -m evalkit run RECIPE` first)")
    with ResultsDB(args.db) as db:
        lb = build(db, args.recipe, [args.run] if args.run else None)
    if not lb.generators:
        raise UserError(f"no results in {args.db}" + (f" for recipe {args.recipe!r}" if args.recipe else ""))
    text = FORMATS[args.format](lb)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0
