"""The statistics of metric validity, written out so tests can hold them against scipy and scikit-learn.

- rank agreement: Kendall's τ-b and Spearman's ρ (ties handled as scipy does), with percentile-bootstrap
  intervals over the paired units (generators);
- per-image agreement: ROC AUC by the Mann-Whitney rank sum (ties count half, as ``roc_auc_score``);
- monotonicity of a disturbance ladder: the direction of every step of a sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

Trend = str  # "increasing" | "decreasing" | "non-decreasing" | "non-increasing" | "constant" | "non-monotone"


def _pair(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have one length, got {a.shape[0]} and {b.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired values contain NaN or infinite entries")
    return a, b


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's τ-b: (concordant − discordant) / √(pairs untied in x · pairs untied in y); NaN if x or y is constant.

    >>> kendall_tau([1, 2, 3, 4], [10, 20, 40, 30])
    0.6666666666666666
    """
    a, b = _pair(x, y)
    if a.shape[0] < 2:
        return float("nan")
    sx = np.sign(a[:, None] - a[None, :])
    sy = np.sign(b[:, None] - b[None, :])
    den = np.sqrt((sx * sx).sum() * (sy * sy).sum())  # each pair counted twice in all three sums
    return float((sx * sy).sum() / den) if den > 0 else float("nan")


def spearman_rho(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's ρ: the Pearson correlation of average ranks; NaN if x or y is constant.

    >>> spearman_rho([1, 2, 3, 4], [10, 20, 40, 30])
    0.8
    """
    a, b = _pair(x, y)
    if a.shape[0] < 2:
        return float("nan")
    ra, rb = rankdata(a) - (a.shape[0] + 1) / 2, rankdata(b) - (b.shape[0] + 1) / 2
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def paired_bootstrap_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of ``stat(x, y)`` resampling the pairs (x_i, y_i) with replacement.

    Resamples where the statistic is undefined (NaN: e.g. every drawn x equal) are dropped; ``None`` when
    more than half are, or with fewer than 3 pairs (no interval worth the name).

    >>> lo, hi = paired_bootstrap_ci(range(10), range(10), kendall_tau, n_boot=200)
    >>> lo, hi
    (1.0, 1.0)
    """
    a, b = _pair(x, y)
    n = a.shape[0]
    if n < 3:
        return None
    rng = np.random.default_rng(seed)
    boot = np.array([stat(a[idx], b[idx]) for idx in rng.integers(0, n, size=(n_boot, n))])
    boot = boot[np.isfinite(boot)]
    if boot.shape[0] < n_boot / 2:
        return None
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` predicting ``labels`` (True = positive): the chance that a random
    positive scores above a random negative, ties counting half. ``None`` when one class is absent.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have one length, got {s.shape[0]} and {y.shape[0]}")
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_bootstrap_ci(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of the ROC AUC, resampling images; resamples with one class only are dropped."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if roc_auc(s, y) is None or s.shape[0] < 3:
        return None
    rng = np.random.default_rng(seed)
    boot = [roc_auc(s[idx], y[idx]) for idx in rng.integers(0, s.shape[0], size=(n_boot, s.shape[0]))]
    kept = np.array([v for v in boot if v is not None])
    if kept.shape[0] < n_boot / 2:
        return None
    lo, hi = np.quantile(kept, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def trend(values: Sequence[float] | np.ndarray, tol: float = 0.0) -> Trend:
    """The direction of a sequence from its steps; a step within ``tol`` of zero is a tie.

    >>> [trend(v) for v in ([1, 2, 3], [3, 2, 1], [1, 1, 2], [2, 2, 1], [1, 1, 1], [1, 3, 2])]
    ['increasing', 'decreasing', 'non-decreasing', 'non-increasing', 'constant', 'non-monotone']
    """
    steps = np.diff(np.asarray(values, dtype=np.float64))
    if steps.shape[0] == 0 or np.all(np.abs(steps) <= tol):
        return "constant"
    if np.all(steps > tol):
        return "increasing"
    if np.all(steps < -tol):
        return "decreasing"
    if np.all(steps >= -tol):
        return "non-decreasing"
    if np.all(steps <= tol):
        return "non-increasing"
    return "non-monotone"


def worsens_monotonically(values: Sequence[float] | np.ndarray, higher_is_better: bool, tol: float = 0.0) -> bool:
    """True when every step of a ladder (baseline, level 1, ..., level k) is strictly worse than the one before:
    a rise for a lower-is-better metric (FID), a fall for a higher-is-better one (precision). A tie fails: the
    metric did not see that level's extra damage.

    >>> worsens_monotonically([1.0, 2.0, 5.0], higher_is_better=False), worsens_monotonically([0.9, 0.9, 0.5], True)
    (True, False)
    """
    return trend(values, tol) == ("decreasing" if higher_is_better else "increasing")


def wrong_steps(values: Sequence[float] | np.ndarray, higher_is_better: bool, tol: float = 0.0) -> list[int]:
    """Levels (1-based: step from level i-1 to i) where a ladder did not get strictly worse.

    >>> wrong_steps([1.0, 2.0, 2.0, 1.5, 3.0], higher_is_better=False)
    [2, 3]
    """
    steps = np.diff(np.asarray(values, dtype=np.float64))
    bad = steps >= -tol if higher_is_better else steps <= tol
    return [int(i) + 1 for i in np.flatnonzero(bad)]
