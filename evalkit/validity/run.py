"""``validate``: every validity part, one feature cache, then ``validity.json``, ``summary.md``, plots, and the
figures the leaderboard shows stored in the results database (table ``validity``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..features import FeatureCache
from ..results import ResultsDB, Validity, code_version
from ..utils import atomic_write_bytes, atomic_write_text
from . import plots
from .blind_spots import CATEGORIES, blind_spots, make_pairs, oracle_check
from .config import ValidityRecipe
from .efficiency import pool_size, run_efficiency
from .ladders import run_ladders
from .per_image import agreement, probe_items, sweep_items
from .rank_agreement import find_sweep_run, rank_agreement, sweep_name
from .sets import Encoder, RenderSet, renders
from .summary import jsonable, to_markdown

JSON_NAME, SUMMARY_NAME, PLOTS_DIR = "validity.json", "summary.md", "plots"


@dataclass
class ValidityOutputs:
    out_dir: Path
    json_path: Path
    summary_path: Path
    plots: list[Path] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    stored: int = 0  # validity rows written to the results database


def _first(s: RenderSet, n: int) -> RenderSet:
    return RenderSet(s.samples[:n], s.images[:n])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


class _Sweep:
    """The sweep run in the results store, if there is one (``--run-sweep`` runs it first)."""

    def __init__(
        self,
        recipe: ValidityRecipe,
        run_sweep: bool,
        cache: FeatureCache | None,
        stack: ExitStack,
        say: Callable[[str], None],
    ):
        self.name = sweep_name(recipe.rank_agreement.recipe)
        self.db: ResultsDB | None = None
        self.run_id: str | None = None
        self.note: str | None = None
        hint = f"run `python -m evalkit run {recipe.rank_agreement.recipe} --db {recipe.db}` first, or pass --run-sweep"
        skipped = "rank agreement and per-image agreement on the sweep's images skipped"
        if run_sweep:
            path = Path(recipe.rank_agreement.recipe)
            if not path.is_file():
                raise UserError(f"--run-sweep needs the sweep recipe file; not found: {path}")
            from ..recipe import load_recipe
            from ..runner import run

            say(f"sweep: running {path}")
            run(load_recipe(path), db_path=recipe.db, cache=cache)
        if not Path(recipe.db).is_file():
            self.note = f"no results database at {recipe.db}: {skipped}; {hint}"
            return
        self.db = stack.enter_context(ResultsDB(recipe.db))
        self.run_id = find_sweep_run(self.db, self.name)
        if self.run_id is None:
            self.note = f"no run of recipe {self.name!r} in {recipe.db}: {skipped}; {hint}"
        elif (status := self.db.get_run(self.run_id).status) != "done":
            self.note = (
                f"sweep run {self.run_id} is not finished ({status}): figures cover the generators scored so far"
            )


def validate(
    recipe: ValidityRecipe,
    *,
    cache: FeatureCache | None = None,
    run_sweep: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> ValidityOutputs:
    """Measure every part of ``recipe.parts``, write the outputs under ``recipe.out`` and return them."""
    say = on_stage or (lambda s: print(s, flush=True))
    start = time.time()
    encoder = Encoder.load(recipe.extractor, cache, recipe.batch_size)
    compare = [Encoder.load(spec, cache, recipe.batch_size) for spec in recipe.compare]
    scorers = [e for e in [encoder, *compare] if e.has_text]
    out = Path(recipe.out)
    results: dict[str, Any] = {}
    notes: list[str] = []
    timings: dict[str, float] = {}
    parts = recipe.parts
    eff = recipe.efficiency
    n_pool = max(recipe.n, pool_size(eff.sizes, eff.pool_factor) if "efficiency" in parts else 0)
    need_sets = {"ladders", "efficiency"} & set(parts)
    ref = renders(n_pool, recipe.seed, "reference") if need_sets else None
    test = renders(n_pool, recipe.seed, "test") if need_sets else None
    if len(scorers) < 1 + len(compare):
        notes.append("extractors without a text encoder are left out of per-image agreement and blind spots")

    with ExitStack() as stack:
        sweep = _Sweep(recipe, run_sweep, cache, stack, say) if {"rank_agreement", "per_image"} & set(parts) else None
        if sweep and sweep.note:
            notes.append(sweep.note)
        for part in parts:
            t0 = time.time()
            if part == "rank_agreement" and not (sweep and sweep.run_id):
                say("validity: rank_agreement skipped (no sweep run)")
                continue
            say(f"validity: {part}")
            if part == "ladders":
                lad = recipe.ladders
                results[part] = run_ladders(encoder, _first(ref, recipe.n), _first(test, recipe.n), lad.metrics,
                                            lad.disturbances, recipe.kid_subsets, recipe.seed)  # fmt: skip
                notes += results[part].pop("notes")
            elif part == "rank_agreement":
                try:
                    results[part] = rank_agreement(sweep.db, sweep.run_id, recipe.rank_agreement.n_boot, recipe.seed)
                except UserError as e:  # e.g. the sweep has no oracle figures yet: the other parts still count
                    notes.append(f"rank agreement skipped: {e}")
            elif part == "per_image":
                if found := _per_image(recipe, sweep, scorers, notes):
                    results[part] = found
            elif part == "efficiency":
                results[part] = run_efficiency(encoder, ref, test, eff.sizes, eff.seeds, eff.metrics, eff.fakes,
                                               recipe.kid_subsets, recipe.seed)  # fmt: skip
            elif part == "blind_spots":
                results[part] = _blind_spots(recipe, scorers)
            timings[part] = round(time.time() - t0, 2)
        report = {
            "config": recipe.model_dump(), "extractor": encoder.extractor.info(),
            "compare": [e.extractor.info() for e in compare], "code_version": code_version(), "created": time.time(),
            "results": results, "notes": notes, "timings": timings, "seconds": time.time() - start, "plots": [],
        }  # fmt: skip
        outputs = ValidityOutputs(out, out / JSON_NAME, out / SUMMARY_NAME, report=report)
        outputs.plots = _write_plots(results, out)
        report["plots"] = [str(p.relative_to(out)) for p in outputs.plots]
        if sweep and sweep.db is not None:
            outputs.stored = _store(sweep.db, results, encoder.id, outputs.json_path)
        elif results:
            notes.append("validity figures not stored for the leaderboard: no results database to store them in")
    atomic_write_text(outputs.json_path, json.dumps(jsonable(report), indent=1, sort_keys=False) + "\n")
    atomic_write_text(outputs.summary_path, to_markdown(jsonable(report)))
    return outputs


def _per_image(recipe: ValidityRecipe, sweep: _Sweep | None, scorers: list[Encoder], notes: list[str]) -> dict:
    sources: dict[str, list] = {}
    if "sweep" in recipe.per_image.sources and sweep and sweep.run_id:
        from ..report import load_manifests, run_info

        info = run_info(sweep.db, sweep.run_id)
        manifests = load_manifests(info, [g["label"] for g in info.generator_entries()])
        items, skipped = sweep_items(manifests)
        if items:
            sources["sweep"] = items
        else:
            notes.append(f"per-image agreement: no generated images with shapes specs under {info.out_dir}/images")
        if skipped:
            notes.append(f"per-image agreement: unusable sweep images skipped: {skipped}")
    if "probe" in recipe.per_image.sources:
        sources["probe"] = probe_items(renders(recipe.n, recipe.seed, "probe"), recipe.seed)
    nb = recipe.per_image.n_boot
    return {src: {e.id: agreement(items, e, nb, recipe.seed) for e in scorers} for src, items in sources.items()}


def _blind_spots(recipe: ValidityRecipe, scorers: list[Encoder]) -> dict[str, Any]:
    cfg = recipe.blind_spots
    pairs = make_pairs(renders(recipe.n, recipe.seed, "pairs", cfg.split, CATEGORIES), recipe.seed)
    return {
        "split": cfg.split,
        "oracle": oracle_check(pairs, cfg.n_boot, recipe.seed),
        "extractors": {e.id: blind_spots(pairs, e, cfg.n_boot, recipe.seed) for e in scorers},
    }


def _write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    written: list[Path] = []

    def put(name: str, png: bytes) -> None:
        path = out / PLOTS_DIR / name
        atomic_write_bytes(path, png)
        written.append(path)

    if lad := results.get("ladders"):
        for metric, ladders in lad["values"].items():
            put(f"ladder_{metric}.png", plots.ladder_plot(metric, ladders, lad["summary"][metric]["higher_is_better"],
                                                          lad["monotone"][metric]))  # fmt: skip
    if (ra := results.get("rank_agreement")) and ra["metrics"]:
        put("rank_agreement.png", plots.rank_plot(ra["metrics"]))
    for source, by_ext in (results.get("per_image") or {}).items():
        groups = ["all", *sorted({c for fig in by_ext.values() for c in fig["categories"]})]
        series = {}
        for ext, fig in by_ext.items():
            figs = [fig["overall"] if g == "all" else fig["categories"].get(g, {}) for g in groups]
            series[ext] = [(f.get("auc"), f.get("ci")) for f in figs]
        title = f"ROC AUC of per-image CLIP score for the oracle's verdict ({source})"
        put(f"per_image_{source}.png", plots.bars_plot(title, groups, series, "ROC AUC"))
    if eff := results.get("efficiency"):
        for kind, per_metric in eff["fakes"].items():
            put(f"efficiency_{_slug(kind)}.png", plots.efficiency_plot(kind, eff["sizes"], per_metric))
    if bs := results.get("blind_spots"):
        groups = list(bs["oracle"])
        series = {name: [(fig[g]["accuracy"], fig[g]["ci"]) if g in fig else (None, None) for g in groups]
                  for name, fig in [("oracle", bs["oracle"]), *bs["extractors"].items()]}  # fmt: skip
        put("blind_spots.png", plots.bars_plot("compositional blind spots: true caption preferred over its foil",
                                               groups, series, "accuracy"))  # fmt: skip
    return written


def _store(db: ResultsDB, results: dict[str, Any], extractor_id: str, json_path: Path) -> int:
    """The figures the leaderboard and report show, one row per (metric, extractor)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for f in (results.get("rank_agreement") or {}).get("metrics", []):
        by_cat = {c["category"]: c["kendall_tau"] for c in results["rank_agreement"]["by_category"]
                  if c["metric"] == f["metric"] and c["extractor"] == f["extractor"]}  # fmt: skip
        rows[(f["metric"], f["extractor"])] = {
            "kendall_tau": f["kendall_tau"], "tau_ci": f["tau_ci"], "spearman_rho": f["spearman_rho"],
            "rho_ci": f["rho_ci"], "n_generators": f["n_generators"], "source_run": results["rank_agreement"]["run"],
            "extra": {"tau_by_category": by_cat} if by_cat else {},
        }  # fmt: skip
    if lad := results.get("ladders"):
        for metric, s in lad["summary"].items():
            row = rows.setdefault((metric, extractor_id), {"extra": {}})
            row["extra"]["ladders"] = {"monotone": s["monotone"], "of": s["of"]}
    for row in rows.values():
        row["extra"]["validity_json"] = str(json_path)
    db.put_validity(Validity(m, e, **row) for (m, e), row in rows.items())
    return len(rows)
