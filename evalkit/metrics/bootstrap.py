"""Percentile bootstrap confidence intervals for per-image scores and, at a cost, for set metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..utils import progress
from .functional.inputs import MetricInputError, as_features, require_samples

_MAX_DRAW = 1 << 22  # resampled values materialised at once (32 MB of float64)


def _as_1d(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise MetricInputError("bootstrap: values contain NaN or infinite entries")
    return v


def _check(n_boot: int, alpha: float) -> None:
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise MetricInputError(f"bootstrap: n_boot must be a positive integer, got {n_boot!r}")
    if not (0.0 < alpha < 1.0):
        raise MetricInputError(f"bootstrap: alpha must be in (0, 1), got {alpha!r}")


def bootstrap_ci(
    values: Tensor | np.ndarray | list[float],
    stat: Callable[..., Any] = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` percentile-bootstrap interval of ``stat`` over per-sample ``values``.

    ``stat`` takes a 1-D array (``np.mean``, ``np.median``, any callable); ``np.mean``/``np.median`` are
    vectorised over resamples. Resampling is seeded (``numpy.random.default_rng(seed)``), so intervals repeat.

    >>> lo, hi = bootstrap_ci(np.arange(100.0), seed=0)
    >>> bool(lo < 49.5 < hi)
    True
    """
    v = _as_1d(values)
    _check(n_boot, alpha)
    require_samples(v.shape[0], 2, "a bootstrap confidence interval")
    rng = np.random.default_rng(seed)
    n = v.shape[0]
    if stat in (np.mean, np.median, np.nanmean, np.nanmedian):
        per_block = max(1, _MAX_DRAW // n)
        stats = []
        for start in range(0, n_boot, per_block):
            idx = rng.integers(0, n, size=(min(per_block, n_boot - start), n))
            stats.append(stat(v[idx], axis=1))
        boot = np.concatenate(stats)
    else:
        boot = np.array([float(stat(v[rng.integers(0, n, size=n)])) for _ in range(n_boot)])
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_set_ci(
    metric_fn: Callable[[Tensor | None, Tensor], Any],
    real_features: Tensor | np.ndarray | None,
    fake_features: Tensor | np.ndarray,
    n_boot: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
    resample: str = "fake",
) -> tuple[float, float]:
    """Bootstrap interval of a set metric (FID, KID mean, precision, ...) by resampling feature rows.

    ``metric_fn(real, fake)`` must return a number (or 0-d tensor); wrap tuple-valued functions, e.g.
    ``lambda r, f: precision_recall(r, f)[0]``. ``resample`` is ``"fake"`` (reference set held fixed: the
    interval reflects the sampling of generated images; ``real_features`` may then be ``None`` when
    ``metric_fn`` holds the reference itself, e.g. as ``FeatureStats``) or ``"both"``.

    Cost: ``n_boot`` full metric evaluations (FID: an eigendecomposition of D×D each; precision/recall: all
    pairwise distances each), so keep ``n_boot`` small (default 100) and sets capped. Resampling with
    replacement duplicates rows, which biases FID upward and makes k-NN radii of resampled sets shrink (that
    is why ``"fake"`` is the default). The bootstrap quantiles are therefore shifted by the median's offset
    from the metric on the original sets: the interval keeps the bootstrap's width (the spread of the metric
    at this n) and is centred where the figure it comes with is. For two sets from one distribution, FID 0.9
    came with raw quantiles [1.02, 1.45].

    >>> from evalkit.metrics.functional import fid
    >>> g = torch.Generator().manual_seed(0)
    >>> lo, hi = bootstrap_set_ci(fid, torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g), n_boot=20)
    >>> 0 <= lo <= hi
    True
    """
    real = None if real_features is None else as_features(real_features, "bootstrap real features")
    fake = as_features(fake_features, "bootstrap fake features")
    _check(n_boot, alpha)
    if resample not in ("fake", "both"):
        raise MetricInputError(f"bootstrap: resample must be 'fake' or 'both', got {resample!r}")
    if resample == "both" and real is None:
        raise MetricInputError("bootstrap: resample='both' needs real features")
    require_samples(fake.shape[0], 2, "a bootstrap confidence interval (fake side)")
    g = torch.Generator().manual_seed(seed)
    boot = []
    for _ in progress(range(n_boot), desc="bootstrap"):
        f = fake[torch.randint(0, fake.shape[0], (fake.shape[0],), generator=g).to(fake.device)]
        r = real
        if resample == "both" and real is not None:
            r = real[torch.randint(0, real.shape[0], (real.shape[0],), generator=g).to(real.device)]
        boot.append(float(metric_fn(r, f)))
    lo, mid, hi = np.quantile(np.asarray(boot), [alpha / 2, 0.5, 1 - alpha / 2])
    shift = mid - float(metric_fn(real, fake))
    return float(lo - shift), float(hi - shift)
