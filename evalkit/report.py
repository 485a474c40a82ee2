"""The HTML report of a run: leaderboard and per-category tables, image grids on the same prompts
and seeds, quality-versus-speed (Pareto front) and quality-versus-steps plots, run metadata.

One HTML file with inline CSS; its images (upscaled thumbnails, plot PNGs) go to a ``report_files/``
folder next to it and are referenced by relative paths, or are inlined as base64 with ``inline=True``
(a single file, e.g. for embedding in a UI). Everything is read back from the results store and the
run's image folders, so ``python -m evalkit report`` rebuilds the same report a run wrote.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from . import leaderboard as lbm
from .data.images import SkipCounter, reasons_text, try_load_image
from .errors import UserError
from .generators.manifest import MANIFEST_NAME, read_manifest
from .plots import Curve, PlotPoint, pareto_front, pareto_plot, steps_plot
from .recipe import slug
from .results import ResultsDB
from .utils import atomic_write_bytes, atomic_write_text

REPORT_NAME = "report.html"
ASSETS_DIR = "report_files"
GRID_PROMPTS = 8
THUMB_PX = 128  # grid cells: small images are upscaled (NEAREST) to about this size, large ones shrunk
SPEED_METRIC = "images_per_s"
PLOT_METRICS = ("oracle", "fid", "clip")  # quality axes of the plots, when the run has them

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;
color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.sub,.note{color:#666;font-size:13px}nav a{margin-right:12px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}table.lb td:not(:first-child),table.cat td:not(:first-child){text-align:right;
font-variant-numeric:tabular-nums}
table.grid td,table.grid th{text-align:center;vertical-align:middle}table.grid th.prompt{text-align:left;
max-width:260px;font-weight:normal;background:#fafafa}table.grid .meta{color:#777;font-size:12px}
img{max-width:100%;height:auto}img.thumb{image-rendering:pixelated;display:block;max-width:none}
.missing{color:#a00;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:16px}.plots figure{margin:0;max-width:100%}figcaption{font-size:13px;color:#444;
max-width:580px}table.kv th{width:200px}
"""


@dataclass(frozen=True)
class RunInfo:
    """A run's row of the results store, with its stored recipe as a dict."""

    run_id: str
    recipe_name: str
    recipe_hash: str
    version: int
    status: str
    code_version: str
    host: str
    seeds: list[int]
    started: float
    finished: float | None
    recipe: dict[str, Any]

    @property
    def out_dir(self) -> Path:
        return Path(str(self.recipe.get("output_dir", "runs/{name}")).format(name=self.recipe_name))

    def generator_entries(self) -> list[dict[str, Any]]:
        """``[{label, spec, params}]`` in recipe order."""
        return [
            {"label": g.get("name") or g["spec"], "spec": g["spec"], "params": g.get("params") or {}}
            for g in self.recipe.get("generators", [])
        ]


def run_info(db: ResultsDB, run_id: str) -> RunInfo:
    row = db.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        known = ", ".join(r.run_id for r in db.runs()[-5:]) or "none"
        raise UserError(f"no run {run_id!r} in {db.path} (latest runs: {known})")
    return RunInfo(row["run_id"], row["recipe_name"], row["recipe_hash"], row["version"], row["status"],
                   row["code_version"], row["host"], json.loads(row["seeds"]), row["started"], row["finished"],
                   json.loads(row["recipe_json"]))  # fmt: skip


def select_run(db: ResultsDB, recipe: str | None = None, run_id: str | None = None) -> str:
    """``run_id`` if given (checked), else the newest finished (else newest) run of ``recipe`` or of any recipe."""
    if run_id:
        return run_info(db, run_id).run_id
    runs = db.runs(recipe)
    if not runs:
        if recipe:
            names = sorted({r.recipe_name for r in db.runs()})
            raise UserError(f"no run of recipe {recipe!r} in {db.path} (recipes there: {', '.join(names) or 'none'})")
        raise UserError(f"no runs in {db.path} (run `python -m evalkit run RECIPE` first)")
    done = [r for r in runs if r.status == "done"]
    return (done or runs)[-1].run_id


# assets -------------------------------------------------------------------------------------------
class _Assets:
    """PNGs of the report: files under ``report_files/`` (relative ``src``) or base64 data URIs."""

    def __init__(self, out_dir: Path, inline: bool):
        self.out_dir, self.inline = out_dir, inline

    def add(self, name: str, png: bytes) -> str:
        if self.inline:
            return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        atomic_write_bytes(self.out_dir / ASSETS_DIR / name, png)
        return f"{ASSETS_DIR}/{name}"


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def thumbnail(img: Image.Image, size: int = THUMB_PX) -> Image.Image:
    """Small images upscaled by an integer factor with NEAREST (pixels stay crisp); large ones shrunk."""
    img = img.convert("RGB")
    w, h = img.size
    if max(w, h) <= size:
        f = max(1, size // max(w, h))
        return img.resize((w * f, h * f), Image.Resampling.NEAREST)
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return img


# data from the image folders -------------------------------------------------------------------------
def load_manifests(info: RunInfo, labels: list[str]) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """``label -> (folder, manifest rows)`` for each generator whose image folder has a manifest."""
    out = {}
    for label in labels:
        folder = info.out_dir / "images" / slug(label)
        if (folder / MANIFEST_NAME).is_file():
            out[label] = (folder, read_manifest(folder / MANIFEST_NAME).rows)
    return out


def select_prompts(manifests: Mapping[str, list[dict[str, Any]]], k: int = GRID_PROMPTS) -> list[str]:
    """Up to ``k`` prompt ids every generator has an image 0 of, taken round-robin over categories.

    >>> rows = [{"prompt_id": p, "image_index": 0, "category": c} for p, c in [("a", "x"), ("b", "x"), ("c", "y")]]
    >>> select_prompts({"g": rows, "h": rows[1:]}, k=2)
    ['b', 'c']
    """
    firsts = {g: [r for r in rows if r.get("image_index", 0) == 0] for g, rows in manifests.items()}
    everywhere = (
        set.intersection(*({str(r.get("prompt_id")) for r in rows} for rows in firsts.values())) if firsts else set()
    )
    by_cat: dict[str, list[str]] = {}
    for r in next(iter(firsts.values()), []):
        pid, cat = str(r.get("prompt_id")), str(r.get("category"))
        if pid in everywhere and pid not in by_cat.get(cat, []):
            by_cat.setdefault(cat, []).append(pid)
    picked: list[str] = []
    queues = [list(v) for v in by_cat.values()]
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop(0))
    return picked


def _skipped_from_folders(manifests: dict[str, tuple[Path, list[dict[str, Any]]]]) -> dict[str, dict[str, int]]:
    """Re-count unusable images of each generator folder (the counts a run records, minus the reference)."""
    out = {}
    for label, (folder, _) in manifests.items():
        read = read_manifest(folder / MANIFEST_NAME)
        skipped = SkipCounter()
        for row in read.rows:
            if isinstance(row.get("file"), str):
                try_load_image(folder / row["file"], skipped)
        out[label] = {**read.dropped, **skipped.as_dict()}
    return out


# sections ---------------------------------------------------------------------------------------------
def _e(s: Any) -> str:
    return html.escape(str(s))


def _leaderboard_section(lb: lbm.Leaderboard) -> str:
    parts = ['<section id="leaderboard"><h2>Leaderboard</h2>',
             lbm.html_table(lbm._header(lb), lbm.rows(lb), cls="lb"),
             '<p class="note">Each cell: value [95% CI] (#rank); ↑ higher is better, ↓ lower is better. '
             "Win rate: the mean over quality metrics of the share of other generators beaten (ties count half); "
             "speed columns are shown but do not enter it.</p>"]  # fmt: skip
    cats = [m for m in lbm.ORDER if m in lb.categories] + sorted(set(lb.categories) - set(lbm.ORDER))
    if cats:
        parts.append('<h2 id="categories">By category</h2>')
        for m in cats:
            arrow = "↑" if lbm.DIRECTIONS.get(m, True) else "↓"
            parts.append(f"<h3>{_e(m)} {arrow} by category</h3>" + lbm.html_table(*lbm.category_rows(lb, m), cls="cat"))
    return "".join(parts) + "</section>"


def _grid_section(lb: lbm.Leaderboard, manifests, assets: _Assets, max_prompts: int) -> str:
    labels = [g for g in lb.generators if g in manifests] + [g for g in manifests if g not in lb.generators]
    missing = [g for g in lb.generators if g not in manifests]
    head = '<section id="grid"><h2>Images: every generator on the same prompts and seeds</h2>'
    note = f'<p class="missing">no image folder found for: {_e(", ".join(missing))}</p>' if missing else ""
    prompt_ids = select_prompts({g: manifests[g][1] for g in labels}, max_prompts)
    if not prompt_ids:
        return head + note + '<p class="note">No images to show.</p></section>'
    index = {g: {str(r.get("prompt_id")): r for r in manifests[g][1] if r.get("image_index", 0) == 0} for g in labels}
    ths = "".join(f'<th scope="col">{_e(g)}</th>' for g in labels)
    body = []
    for i, pid in enumerate(prompt_ids):
        ref = index[labels[0]][pid]
        seeds = sorted({index[g][pid].get("seed") for g in labels}, key=str)
        seed_txt = f"seed {seeds[0]}" if len(seeds) == 1 else "seeds differ: " + ", ".join(map(str, seeds))
        cat = f" · {_e(ref['category'])}" if ref.get("category") else ""
        cells = [f'<th scope="row" class="prompt">{_e(ref.get("prompt", pid))}<div class="meta">{_e(seed_txt)}{cat}'
                 "</div></th>"]  # fmt: skip
        for j, g in enumerate(labels):
            folder, row = manifests[g][0], index[g][pid]
            try:
                with Image.open(folder / row["file"]) as im:
                    thumb = thumbnail(im)
            except (OSError, KeyError, TypeError, ValueError):
                cells.append('<td class="missing">image missing</td>')
                continue
            src = assets.add(f"grid/g{j:02d}_p{i:02d}.png", _png_bytes(thumb))
            alt = f"{g}: {row.get('prompt', pid)}"
            cells.append(f'<td><img class="thumb" src="{_e(src)}" width="{thumb.width}" height="{thumb.height}" '
                         f'alt="{_e(alt)}" title="{_e(alt)} (seed {_e(row.get("seed"))})"></td>')  # fmt: skip
        body.append("<tr>" + "".join(cells) + "</tr>")
    n_img = {r.get("image_index", 0) for g in labels for r in manifests[g][1]}
    extra = f" Image 0 of {len(n_img)} per prompt shown." if len(n_img) > 1 else ""
    table = (f'<table class="grid"><thead><tr><th>prompt</th>{ths}</tr></thead><tbody>{"".join(body)}</tbody>'
             "</table>")  # fmt: skip
    caption = (
        f'<p class="note">{len(prompt_ids)} prompts (round-robin over categories), one column per generator '
        f"in leaderboard order; images upscaled with nearest-neighbour to about {THUMB_PX} px.{extra}</p>"
    )
    return head + note + caption + table + "</section>"


def _families(manifests) -> dict[str, str]:
    return {g: str(rows[0].get("family") or "unknown") for g, (_, rows) in manifests.items() if rows}


def _plot_metrics(lb: lbm.Leaderboard) -> list[str]:
    chosen = [c for m in PLOT_METRICS for c in lb.metrics if lbm.base_metric(c) == m]
    return chosen or [c for c in lb.metrics if lbm.base_metric(c) in lbm.DIRECTIONS][:1]


def _value(lb: lbm.Leaderboard, g: str, m: str) -> float | None:
    r = lb.cells.get((g, m))
    return r.value if r is not None else None


def _pareto_section(lb: lbm.Leaderboard, families: dict[str, str], assets: _Assets) -> str:
    head = '<section id="pareto"><h2>Quality versus speed</h2>'
    if SPEED_METRIC not in lb.speed:
        return head + '<p class="note">The run has no speed figures (add <code>speed</code> to the recipe\'s ' \
                      "metrics).</p></section>"  # fmt: skip
    figs = []
    for m in _plot_metrics(lb):
        higher = lbm.direction(m)
        pts = [PlotPoint(g, x, y, families.get(g, "unknown")) for g in lb.generators
               if (x := _value(lb, g, SPEED_METRIC)) is not None and (y := _value(lb, g, m)) is not None]  # fmt: skip
        if not pts:
            continue
        src = assets.add(f"pareto_{slug(m)}.png", pareto_plot(pts, metric=m, higher=higher))
        front = [pts[i].label for i in pareto_front([p.x for p in pts], [p.y for p in pts], y_higher=higher)]
        figs.append(f'<figure><img src="{_e(src)}" alt="{_e(m)} versus images per second">'
                    f'<figcaption>x: images/s (log), y: {_e(m)} ({"higher" if higher else "lower"} is better); '
                    f'colour: generator family. Pareto front (slowest to fastest): <b class="front">'
                    f'{_e(", ".join(front))}</b></figcaption></figure>')  # fmt: skip
    if not figs:
        return head + '<p class="note">No generator has both a quality and a speed figure.</p></section>'
    return head + '<div class="plots">' + "".join(figs) + "</div></section>"


def steps_curves(info: RunInfo, lb: lbm.Leaderboard, manifests) -> tuple[str, dict[str, list[Curve]]]:
    """Generators sharing a spec at several settings: x = steps (else NFE) per member; one curve per spec."""
    groups: dict[str, list[str]] = {}
    for g in info.generator_entries():
        if g["label"] in lb.generators:
            groups.setdefault(g["spec"], []).append(g["label"])

    def steps(label: str) -> float | None:
        rows = manifests.get(label, (None, []))[1]
        params = rows[0].get("params") if rows else None
        v = params.get("steps") if isinstance(params, dict) else None
        return float(v) if isinstance(v, int | float) else None

    multi = {s: m for s, m in groups.items() if len(m) >= 2}
    use_steps = bool(multi) and all(steps(g) is not None for m in multi.values() for g in m)
    x_of = steps if use_steps else (lambda g: _value(lb, g, "nfe"))
    curves: dict[str, list[Curve]] = {}
    for metric in _plot_metrics(lb):
        for spec, members in multi.items():
            pts = [(x, y) for g in members if (x := x_of(g)) is not None and (y := _value(lb, g, metric)) is not None]
            if len({x for x, _ in pts}) >= 2:
                pts.sort()
                curves.setdefault(metric, []).append(Curve(_short_spec(spec), *map(tuple, zip(*pts))))
    return ("steps" if use_steps else "network evaluations per image (NFE)"), curves


def _short_spec(spec: str) -> str:
    for prefix in ("dir:", "folder:"):
        if spec.startswith(prefix):
            return Path(spec[len(prefix) :]).name or spec
    return spec


def _steps_section(info: RunInfo, lb: lbm.Leaderboard, manifests, assets: _Assets) -> str:
    x_label, curves = steps_curves(info, lb, manifests)
    if not curves:
        return ""
    panels = {m: (lbm.direction(m), cs) for m, cs in curves.items()}
    src = assets.add("steps.png", steps_plot(panels, x_label=x_label))
    return ('<section id="steps"><h2>Quality versus steps</h2><div class="plots"><figure>'
            f'<img src="{_e(src)}" alt="quality versus {_e(x_label)}"><figcaption>One line per generator spec run at '
            f"several settings; x: {_e(x_label)}.</figcaption></figure></div></section>")  # fmt: skip


def _ci_text(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _validity_section(lb: lbm.Leaderboard) -> str:
    """Each metric's measured validity (``python -m evalkit validate``), when the results store has it."""
    if not lb.validity and not lb.validity_detail:
        return ""
    body = []
    for m in [m for m in lb.metrics if m in lb.validity or m in lb.validity_detail]:
        v = lb.validity_detail.get(m)
        if v is None:  # a τ without details
            body.append([m, f"{lb.validity[m]:.2f}", "–", "–", "–", "–"])
            continue
        lad = v.extra.get("ladders") or {}
        ladders = f"{lad['monotone']}/{lad['of']}" if "of" in lad else "–"
        body.append([m, _ci_text(v.kendall_tau, v.tau_ci), _ci_text(v.spearman_rho, v.rho_ci),
                     str(v.n_generators or "–"), ladders, v.source_run or "–"])  # fmt: skip
    head = ["metric", "Kendall τ [95% CI]", "Spearman ρ [95% CI]", "generators", "ladders monotone", "sweep run"]
    return ('<section id="validity"><h2>Metric validity</h2><p class="note">Agreement of each metric\'s ranking '
            "of the sweep's generators with the oracle's ranking by accuracy (+1: the same order; CI: bootstrap over "
            "generators), and on how many disturbance ladders (4 levels each) the metric gets worse at every level. Measured on the shapes world by <code>python -m evalkit validate</code>.</p>"
            + lbm.html_table(head, body, cls="kv") + "</section>")  # fmt: skip


def _skipped_section(skipped: Mapping[str, Mapping[str, int]], recorded: bool) -> str:
    body = [[src, str(sum(c.values())), reasons_text(c) or "–"]
            for src, c in skipped.items()]  # fmt: skip
    how = "as recorded by the run"
    if not recorded:
        how = "re-counted from the image folders (the reference's counts exist only in reports the run writes)"
    return (f'<section id="skipped"><h2>Skipped inputs</h2><p class="note">Images (and prompt rows with no prompt) that could not be used, {how}.</p>'
            + lbm.html_table(["source", "skipped", "reasons"], body, cls="kv") + "</section>")  # fmt: skip


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "–"


def _meta_section(info: RunInfo, lb: lbm.Leaderboard) -> str:
    r = info.recipe
    ref = r.get("reference") or {}
    ns = sorted({c.n for (_, m), c in lb.cells.items() if m in lb.metrics})
    n_txt = "–" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    rows = [
        ("recipe", info.recipe_name), ("run", f"{info.run_id} (version {info.version}, {info.status})"),
        ("recipe hash", info.recipe_hash), ("code version", info.code_version), ("host", info.host),
        ("started", _when(info.started)), ("finished", _when(info.finished)),
        ("prompts", r.get("prompts", "–")), ("images per prompt", r.get("images_per_prompt", "–")),
        ("n (images scored per generator)", n_txt), ("seeds", ", ".join(map(str, info.seeds))),
        ("reference", f"{ref.get('source')}" + (f" (n={ref['n']})" if ref.get("n") else "") if ref else "–"),
        ("generators", len(info.generator_entries())), ("metrics", ", ".join(r.get("metrics", []))),
        ("extractors", ", ".join(r.get("extractors", []))),
    ]  # fmt: skip
    trs = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    params = "".join(f"<tr><td>{_e(g['label'])}</td><td><code>{_e(g['spec'])}</code></td>"
                     f"<td><code>{_e(json.dumps(g['params'], sort_keys=True))}</code></td></tr>"
                     for g in info.generator_entries())  # fmt: skip
    return (f'<section id="run"><h2>Run</h2><table class="kv">{trs}</table><h3>Generators</h3><table>'
            f"<thead><tr><th>name</th><th>spec</th><th>params</th></tr></thead><tbody>{params}</tbody></table>"
            "</section>")  # fmt: skip


# the report -------------------------------------------------------------------------------------------
def render_report(
    db: ResultsDB,
    run_id: str,
    out_dir: str | Path,
    *,
    skipped: Mapping[str, Mapping[str, int]] | None = None,
    inline: bool = False,
    max_prompts: int = GRID_PROMPTS,
) -> str:
    """The report's HTML; its image assets are written under ``out_dir/report_files`` (unless ``inline``)."""
    info = run_info(db, run_id)
    lb = lbm.build(db, run_ids=[run_id])
    if not lb.generators:
        raise UserError(f"run {run_id} has no results yet (run its recipe to score the generators)")
    assets = _Assets(Path(out_dir), inline)
    manifests = load_manifests(info, lb.generators)
    recorded = skipped is not None
    skipped = dict(skipped) if recorded else _skipped_from_folders(manifests)
    sections = [
        _leaderboard_section(lb),
        _grid_section(lb, manifests, assets, max_prompts),
        _pareto_section(lb, _families(manifests), assets),
        _steps_section(info, lb, manifests, assets),
        _validity_section(lb),
        _skipped_section(skipped, recorded),
        _meta_section(info, lb),
    ]
    nav = [("leaderboard", "Leaderboard"), ("categories", "By category"), ("grid", "Images"),
           ("pareto", "Quality vs speed"), ("steps", "Quality vs steps"), ("validity", "Metric validity"),
           ("skipped", "Skipped inputs"), ("run", "Run")]  # fmt: skip
    body = "".join(sections)
    links = "".join(f'<a href="#{a}">{t}</a>' for a, t in nav if f'id="{a}"' in body)
    title = f"evalkit report: {info.recipe_name}"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width, initial-scale=1"><title>{_e(title)}</title><style>{CSS}</style></head>'
        f'<body><header><h1>{_e(title)}</h1><p class="sub">run {_e(info.run_id)} · {len(lb.generators)} '
        f"generators · {_e(_when(info.finished or info.started))} · code {_e(info.code_version)}</p>"
        f"<nav>{links}</nav></header>{body}</body></html>\n"
    )


def write_report(
    db: ResultsDB | str | Path,
    run_id: str | None = None,
    *,
    recipe: str | None = None,
    out_dir: str | Path | None = None,
    skipped: Mapping[str, Mapping[str, int]] | None = None,
    inline: bool = False,
    max_prompts: int = GRID_PROMPTS,
) -> Path:
    """Write ``out_dir/report.html`` (default dir: the run's output dir) for ``run_id`` (default: the latest
    run, of ``recipe`` if named) and return its path. ``skipped`` (``{source: {reason: count}}``, as the
    runner records them) replaces counts re-derived from the image folders."""
    if not isinstance(db, ResultsDB):
        if str(db) != ":memory:" and not Path(db).is_file():
            raise UserError(f"results database not found: {db} (run `python -m evalkit run RECIPE` first)")
        with ResultsDB(db) as opened:
            return write_report(opened, run_id, recipe=recipe, out_dir=out_dir, skipped=skipped, inline=inline,
                                max_prompts=max_prompts)  # fmt: skip
    run_id = select_run(db, recipe, run_id)
    out = Path(out_dir) if out_dir is not None else run_info(db, run_id).out_dir
    text = render_report(db, run_id, out, skipped=skipped, inline=inline, max_prompts=max_prompts)
    path = out / REPORT_NAME
    atomic_write_text(path, text)
    return path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write the HTML report of a run",
        description="Write an HTML report of a run (leaderboard, per-category tables, image grids, quality versus "
        "speed and steps plots) from the results database and the run's image folders.",
    )
    p.add_argument("--db", default="results.db", help="results database (default: results.db)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--recipe", default=None, help="the latest run of this recipe (default: the latest run)")
    which.add_argument("--run", default=None, help="a run id")
    p.add_argument("--out", default=None, help="output folder (default: the run's output_dir)")
    p.add_argument("--inline", action="store_true", help="embed images as base64 (one file, no report_files/)")
    p.add_argument("--max-prompts", type=int, default=GRID_PROMPTS, help="prompts in the image grid")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    if args.max_prompts < 1:
        raise UserError(f"--max-prompts must be at least 1, got {args.max_prompts}")
    path = write_report(args.db, args.run, recipe=args.recipe, out_dir=args.out, inline=args.inline,
                        max_prompts=args.max_prompts)  # fmt: skip
    print(f"wrote {path}")
    return 0
