"""Sample efficiency: how a distribution metric's value and its spread move with the number of images.

The CMMD paper (Jayasumana et al. 2024) reports that FID is biased at small n (its expected value falls as n
grows) while CMMD is not. Here every metric is computed at n = 100 ... 2000 images per side, 5 subsets each:
the reference side from a pool of renders, the generated side from a disjoint pool (``renders``: true
distance 0, so any value of FID/KID/CMMD above 0 is bias and noise) or that pool disturbed (e.g.
``gaussian_blur:1``: a fixed, non-zero true distance).

Both pools are ``pool_factor`` × the largest n and are encoded once; every subset reads rows of those
features. Subsets of one pool overlap, so the spread at the largest n (half the pool by default) is an
underestimate by the finite-population factor √(1 − n/pool).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..disturb import apply
from ..metric_names import HIGHER_IS_BETTER, RESULT_NAMES
from ..metrics import compute_metrics
from ..utils import progress
from .config import parse_fake
from .sets import Encoder, RenderSet


def pool_size(sizes: list[int], pool_factor: float) -> int:
    return int(np.ceil(max(sizes) * pool_factor))


def run_efficiency(
    encoder: Encoder,
    reference: RenderSet,
    test: RenderSet,
    sizes: list[int],
    seeds: int,
    metrics: list[str],
    fakes: list[str],
    kid_subsets: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Values of each metric for every (fake set, n, subset seed); ``reference`` and ``test`` are the pools.

    Returns ``{"sizes", "seeds", "pool", "fakes": {fake: {metric: {"mean", "sd", "values", "relative_drift"}}}}``
    where ``values[i]`` holds the ``seeds`` values at ``sizes[i]`` and ``relative_drift`` is
    (mean at the smallest n − mean at the largest) / |mean at the largest| (None when that mean is 0).
    """
    pool = min(len(reference), len(test))
    if max(sizes) > pool:
        raise ValueError(f"sizes up to {max(sizes)} need pools of at least that many renders, got {pool}")
    ref = encoder.images(reference.images, desc="efficiency: reference pool")
    names = [r for m in metrics for r in RESULT_NAMES[m]]
    out: dict[str, Any] = {"sizes": sizes, "seeds": seeds, "pool": pool, "fakes": {}, "extractor": encoder.id}
    for kind in fakes:
        disturbance = parse_fake(kind)
        images = test.images if disturbance is None else apply(disturbance[0], test.images, disturbance[1], seed=seed)
        fake = encoder.images(images, desc=f"efficiency: {kind} pool")
        values = {r: [[0.0] * seeds for _ in sizes] for r in names}
        jobs = [(i, n, k) for i, n in enumerate(sizes) for k in range(seeds)]
        for i, n, k in progress(jobs, desc=f"efficiency: {kind}"):
            rng = np.random.default_rng([seed, n, k])
            r_idx = rng.choice(ref.shape[0], n, replace=False)
            f_idx = rng.choice(fake.shape[0], n, replace=False)
            res = compute_metrics({"image": ref[r_idx]}, {"image": fake[f_idx]}, metrics, kid_subsets=kid_subsets,
                                  ci=False, seed=seed + k)  # fmt: skip
            for r in names:
                values[r][i][k] = res[r].value
        out["fakes"][kind] = {r: _summary(values[r], HIGHER_IS_BETTER[r]) for r in names}
    return out


def _summary(values: list[list[float]], higher: bool) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    mean = v.mean(axis=1)
    sd = v.std(axis=1, ddof=1) if v.shape[1] > 1 else np.zeros_like(mean)
    drift = float((mean[0] - mean[-1]) / abs(mean[-1])) if mean[-1] != 0 else None
    return {"mean": mean.tolist(), "sd": sd.tolist(), "values": v.tolist(), "relative_drift": drift,
            "higher_is_better": higher}  # fmt: skip
