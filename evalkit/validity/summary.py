"""``summary.md`` from a validity report (the dict written to ``validity.json``), so either can be rebuilt
from the other, and JSON cleaning (NaN and infinities become null)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _f(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    a = abs(v)
    return f"{v:.{digits}g}" if a >= 1000 or (a < 1e-3 and a != 0) else f"{v:.{digits}f}"


def _ci(v: float | None, ci: list | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _table(head: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:  # extractor ids hold "|" (judge:x|resize=clean|64px)
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(head), "|" + "---|" * len(head), *map(line, rows)])


def _ladders(lad: dict[str, Any]) -> str:
    metrics = list(lad["monotone"])
    dists = list(next(iter(lad["monotone"].values()), {}))
    rows = [[m, *("✓" if lad["monotone"][m][d] else f"✗ ({lad['trend'][m][d]})" for d in dists),
             f"{lad['summary'][m]['monotone']}/{lad['summary'][m]['of']}"] for m in metrics]  # fmt: skip
    return (
        f"Does the metric worsen at every one of the 4 levels (✓)? {lad['n_test']} disturbed renders against "
        f"{lad['n_reference']} reference renders; ✗ gives the ladder's shape.\n\n"
        + _table(["metric", *dists, "monotone"], rows)
    )


def _rank(ra: dict[str, Any]) -> str:
    rows = [[f["metric"], f["category"] or "all", _ci(f["kendall_tau"], f["tau_ci"]), _ci(f["spearman_rho"], f["rho_ci"]),
             str(f["n_generators"])] for f in ra["metrics"] + ra["by_category"]]  # fmt: skip
    return (
        f"Ranking of the {len(ra['generators'])} generators of run `{ra['run']}` by each metric against their "
        "ranking by oracle accuracy (+1 = same order); 95% CI: bootstrap over generators.\n\n"
        + _table(["metric", "category", "Kendall τ [95% CI]", "Spearman ρ [95% CI]", "generators"], rows)
    )


def _per_image(pi: dict[str, Any]) -> str:
    rows = []
    for source, by_ext in pi.items():
        for ext, fig in by_ext.items():
            for cat, f in [("all", fig["overall"]), *fig["categories"].items()]:
                rows.append([source, ext, cat, _ci(f["auc"], f["ci"]), f"{f['n_correct']}/{f['n_wrong']}"])
    return (
        "ROC AUC of per-image CLIP score for the oracle's verdict (0.5 = chance); n = images the oracle "
        "accepts / rejects.\n\n" + _table(["source", "extractor", "category", "AUC [95% CI]", "n ok/wrong"], rows)
    )


def _efficiency(eff: dict[str, Any]) -> str:
    parts = [
        f"Value (mean ± sd over {eff['seeds']} subsets) at n images per side, subsets of pools of "
        f"{eff['pool']} renders; drift = (mean at n={eff['sizes'][0]} − mean at n={eff['sizes'][-1]}) / "
        f"|mean at n={eff['sizes'][-1]}|."
    ]
    for kind, per_metric in eff["fakes"].items():
        rows = [[m, *(f"{_f(mu)} ± {_f(sd, 2)}" for mu, sd in zip(s["mean"], s["sd"])), _f(s["relative_drift"], 2)]
                for m, s in per_metric.items()]  # fmt: skip
        parts.append(
            f"**generated side: {kind}**\n\n" + _table(["metric", *(f"n={n}" for n in eff["sizes"]), "drift"], rows)
        )
    return "\n\n".join(parts)


def _blind(bs: dict[str, Any]) -> str:
    groups = list(bs["oracle"])
    rows = [[name, *(_ci(fig[g]["accuracy"], fig[g]["ci"]) if g in fig else "–" for g in groups)]
            for name, fig in [("oracle (pair check)", bs["oracle"]), *bs["extractors"].items()]]  # fmt: skip
    n = ", ".join(f"{g}: {bs['oracle'][g]['n']}" for g in groups)
    return (
        f"Share of caption pairs where CLIP score prefers the true caption over one differing only in colour "
        f"binding or relation (0.5 = chance; pairs: {n}).\n\n" + _table(["scorer", *groups], rows)
    )


SECTIONS = (("ladders", "Disturbance ladders", _ladders), ("rank_agreement", "Rank agreement with the oracle", _rank),
            ("per_image", "Per-image agreement", _per_image), ("efficiency", "Sample efficiency", _efficiency),
            ("blind_spots", "Compositional blind spots", _blind))  # fmt: skip


def to_markdown(report: dict[str, Any]) -> str:
    ext = report["extractor"]
    lines = [f"# Metric validity on the shapes world\n\nextractor `{ext['id']}` (weights {ext['weights_hash'][:12]}), "
             f"n = {report['config']['n']}, seed {report['config']['seed']}, code {report['code_version']}, "
             f"{report['seconds']:.0f} s.\n"]  # fmt: skip
    for key, title, fmt in SECTIONS:
        if key in report["results"]:
            lines.append(f"## {title}\n\n{fmt(report['results'][key])}\n")
    if report["notes"]:
        lines.append("## Notes\n\n" + "\n".join(f"- {n}" for n in report["notes"]) + "\n")
    if report.get("plots"):
        lines.append("## Plots\n\n" + "\n".join(f"- [{p}]({p})" for p in report["plots"]) + "\n")
    return "\n".join(lines)
