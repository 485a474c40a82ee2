"""Disturbance ladders (Heusel et al. 2017): does a metric get worse at every level of every disturbance?

A disjoint set of renders (the test set) is scored against reference renders undisturbed (the baseline,
level 0) and at levels 1-4 of each disturbance of ``evalkit.disturb``. A valid quality metric worsens at every
step: FID, KID and CMMD rise; precision, recall, density, coverage and CLIP score (each image with its own
caption) fall. A tie counts as a miss. One feature pass per disturbed set feeds every metric.
"""

from __future__ import annotations

from typing import Any

import torch

from ..disturb import LEVELS, apply, strength
from ..metric_names import HIGHER_IS_BETTER, RESULT_NAMES
from ..metrics import compute_metrics
from .sets import Encoder, RenderSet
from .stats import trend, worsens_monotonically, wrong_steps


def _score(
    ref: torch.Tensor, fake: torch.Tensor, text: torch.Tensor | None, metrics: list[str], kid_subsets: int, seed: int
) -> dict[str, float]:
    fake_set = {"image": fake} if text is None else {"image": fake, "text": text}
    res = compute_metrics({"image": ref}, fake_set, metrics, kid_subsets=kid_subsets, ci=False, seed=seed)
    return {name: r.value for name, r in res.items()}


def run_ladders(
    encoder: Encoder,
    reference: RenderSet,
    test: RenderSet,
    metrics: list[str],
    disturbances: list[str],
    kid_subsets: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Metric values at levels 0-4 of each disturbance and whether each ladder worsens monotonically.

    Returns ``{"levels", "strengths": {disturbance: [...]}, "values": {metric: {disturbance: [v0..v4]}},
    "monotone": {metric: {disturbance: bool}}, "trend", "wrong_steps", "summary": {metric: {"monotone", "of"}},
    "notes"}``; metric keys are result names (``pr`` gives ``precision`` and ``recall``).
    """
    notes = []
    if "clip" in metrics and not encoder.has_text:
        metrics = [m for m in metrics if m != "clip"]
        notes.append(f"{encoder.id} has no text encoder: CLIP score left out of the ladders")
    text = encoder.texts(test.captions) if "clip" in metrics else None
    ref = encoder.images(reference.images, desc="ladders: reference")
    baseline = _score(ref, encoder.images(test.images, desc="ladders: baseline"), text, metrics, kid_subsets, seed)
    names = [r for m in metrics for r in RESULT_NAMES[m]]
    values: dict[str, dict[str, list[float]]] = {r: {} for r in names}
    for name in disturbances:
        per_level = [baseline]
        for level in range(1, len(LEVELS[name]) + 1):
            images = apply(name, test.images, level, seed=seed)
            fake = encoder.images(images, desc=f"ladders: {name} {level}")
            per_level.append(_score(ref, fake, text, metrics, kid_subsets, seed))
        for r in names:
            values[r][name] = [s[r] for s in per_level]
    out: dict[str, Any] = {
        "levels": list(range(0, 1 + max((len(LEVELS[d]) for d in disturbances), default=0))),
        "strengths": {d: [strength(d, lv) for lv in range(len(LEVELS[d]) + 1)] for d in disturbances},
        "values": values, "monotone": {}, "trend": {}, "wrong_steps": {}, "summary": {}, "notes": notes,
        "n_reference": len(reference), "n_test": len(test), "extractor": encoder.id,
    }  # fmt: skip
    for r in names:
        higher = HIGHER_IS_BETTER[r]
        ladders = values[r]
        out["monotone"][r] = {d: worsens_monotonically(v, higher) for d, v in ladders.items()}
        out["trend"][r] = {d: trend(v) for d, v in ladders.items()}
        out["wrong_steps"][r] = {d: wrong_steps(v, higher) for d, v in ladders.items()}
        out["summary"][r] = {"monotone": sum(out["monotone"][r].values()), "of": len(ladders),
                             "higher_is_better": higher}  # fmt: skip
    return out
