"""Rank agreement: does ranking generators by a metric give the oracle's ranking?

Over the generators (and step settings) of one sweep run in the results store, each metric's values are
turned so that higher is better and compared with oracle accuracy by Kendall's τ-b and Spearman's ρ: +1 is the
oracle's order, 0 none, −1 the reverse. Metrics with per-category figures (CLIP score) are also compared
with per-category oracle accuracy.

Confidence intervals resample *generators* with replacement (percentile bootstrap): the unit being ranked is a
generator, and a metric like FID has no per-image values to resample. The interval therefore says how much τ
depends on which generators happened to be in the sweep; it does not include each figure's own sampling noise
(the stored per-figure CIs show that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..leaderboard import latest_run_ids
from ..metric_names import QUALITY_DIRECTIONS
from ..results import Result, ResultsDB
from .stats import kendall_tau, paired_bootstrap_ci, spearman_rho

MIN_GENERATORS = 3


def sweep_name(recipe: str) -> str:
    """The recipe name of a sweep given as a recipe file (its ``name:``) or as the name itself."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            return path.stem
        from ..recipe import load_recipe

        return load_recipe(path, check_files=False).name
    return recipe


def find_sweep_run(db: ResultsDB, name: str) -> str | None:
    """The newest finished (else newest) run of the sweep recipe ``name``, or None."""
    ids = latest_run_ids(db, name)
    return ids[0] if ids else None


def _agreement(goodness: list[float], oracle: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    return {
        "kendall_tau": kendall_tau(goodness, oracle),
        "tau_ci": paired_bootstrap_ci(goodness, oracle, kendall_tau, n_boot, seed=seed),
        "spearman_rho": spearman_rho(goodness, oracle),
        "rho_ci": paired_bootstrap_ci(goodness, oracle, spearman_rho, n_boot, seed=seed),
    }


def _columns(rows: list[Result]) -> dict[tuple[str, str, str], dict[str, float]]:
    """``(metric, extractor, category) -> {generator: value}`` of the quality metrics with a value."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        if r.metric in QUALITY_DIRECTIONS and r.value is not None:
            out.setdefault((r.metric, r.extractor if r.metric != "oracle" else "", r.category), {})[r.generator] = (
                r.value
            )
    return out


def rank_agreement(db: ResultsDB, run_id: str, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """τ and ρ of every metric of ``run_id`` against oracle accuracy, overall and per category.

    Returns ``{"run", "generators", "oracle": {generator: accuracy}, "metrics": [figure], "by_category": [figure]}``,
    each figure ``{metric, extractor, category, n_generators, kendall_tau, tau_ci, spearman_rho, rho_ci,
    higher_is_better, values}``; τ or ρ is None (NaN in the statistics) when either ranking is all ties.
    """
    cols = _columns(db.results(run_id))
    oracle = cols.get(("oracle", "", ""), {})
    if not oracle:
        raise UserError(f"run {run_id} has no oracle accuracy (its recipe must list `oracle` in metrics)")
    figures: dict[str, list[dict[str, Any]]] = {"metrics": [], "by_category": []}
    for (metric, extractor, category), col in sorted(cols.items()):
        truth = cols.get(("oracle", "", category), {})
        gens = sorted(set(col) & set(truth))
        if metric == "oracle" or len(gens) < MIN_GENERATORS:
            continue
        higher = QUALITY_DIRECTIONS[metric]
        goodness = [col[g] if higher else -col[g] for g in gens]
        fig = {"metric": metric, "extractor": extractor, "category": category, "n_generators": len(gens),
               **_agreement(goodness, [truth[g] for g in gens], n_boot, seed), "higher_is_better": higher,
               "values": {g: col[g] for g in gens}, "oracle": {g: truth[g] for g in gens}}  # fmt: skip
        for key in ("kendall_tau", "spearman_rho"):
            fig[key] = None if fig[key] != fig[key] else fig[key]  # NaN → None (JSON, the DB)
        figures["by_category" if category else "metrics"].append(fig)
    return {"run": run_id, "generators": sorted(oracle), "oracle": oracle, **figures}
