"""k-NN manifold metrics: precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

Each sample's radius is the distance to its k-th nearest neighbour in its own set (the sample itself not
counted). Formulas as in clovaai/generative-evaluation-prdc ``prdc.py``:

- precision = fraction of fake samples inside at least one real ball; recall = the same with roles swapped;
- density = mean over fake samples of (number of real balls containing it) / k;
- coverage = fraction of real samples whose ball contains at least one fake sample.

"Inside" is ``distance <= radius`` as in Kynkäänniemi et al.'s own code; clovaai's prdc uses ``<``, which
differs only on exact ties (duplicate features, where ``<`` turns every score to 0).

Distances are float64, in row blocks (memory ``chunk_size × N``). The fast ``torch.cdist`` (matrix-product
form) rounds differently depending on block shapes, which would flip exact ties, e.g. a fake sample equal to
a real one lying exactly on another real sample's radius. So every comparison within rounding distance of
its threshold, and every radius, is recomputed as ``sqrt(Σ (a - b)²)``: results do not depend on
``chunk_size`` and ties resolve the same way as in a direct full-matrix computation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...utils import progress
from .inputs import MetricInputError, as_features, require_same_dim, require_samples

DEFAULT_CHUNK = 1024


def _blocks(x: Tensor, chunk_size: int, desc: str):
    starts = range(0, x.shape[0], chunk_size)
    it = progress(starts, desc=desc, total=len(starts)) if len(starts) > 1 else starts
    for start in it:
        yield start, x[start : start + chunk_size]


def _exact(a: Tensor, b: Tensor) -> Tensor:
    """Row-paired distances ``‖a_i - b_i‖``, summed the same way whatever the operand order."""
    return (a - b).square().sum(dim=1).sqrt()


def _tolerance(a: Tensor, b: Tensor) -> float:
    """Bound on the squared-distance rounding error of the matrix-product form of ``cdist``."""
    return 1e-9 * (float(a.square().sum(dim=1).max()) + float(b.square().sum(dim=1).max())) + 1e-300


def _inside(blk: Tensor, ref: Tensor, radius: Tensor, tol2: float) -> Tensor:
    """``‖blk_i - ref_j‖ <= radius`` (radius ``[1, N]`` per column or ``[c, 1]`` per row) as bool ``[c, N]``."""
    d = torch.cdist(blk, ref)
    radius = radius.expand_as(d)
    inside = d <= radius
    near = (d.square() - radius.square()).abs() <= tol2
    if bool(near.any()):
        i, j = near.nonzero(as_tuple=True)
        inside[i, j] = _exact(blk[i], ref[j]) <= radius[i, j]
    return inside


def knn_radii(features: Tensor | np.ndarray, k: int, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Distance from each row to its k-th nearest other row (float64 ``[N]``).

    >>> knn_radii(torch.tensor([[0.0], [1.0], [3.0]]), k=1).tolist()
    [1.0, 1.0, 2.0]
    """
    x = as_features(features, "features", dtype=torch.float64)
    if not (isinstance(k, int) and k >= 1):
        raise MetricInputError(f"k must be a positive integer, got {k!r}")
    require_samples(x.shape[0], k + 1, f"a {k}-nearest-neighbour radius", "use more samples or a smaller k")
    tol2 = _tolerance(x, x)
    out = []
    for start, blk in _blocks(x, chunk_size, "k-NN radii"):
        d = torch.cdist(blk, x)
        approx = d.topk(k + 1, dim=1, largest=False).values[:, k : k + 1]
        # exact distances for every candidate that could be the (k+1)-th smallest (self included, at 0)
        cand = d.square() <= approx.square() + tol2
        i, j = cand.nonzero(as_tuple=True)
        exact = torch.full_like(d, float("inf"))
        exact[i, j] = _exact(blk[i], x[j])
        exact[torch.arange(blk.shape[0]), torch.arange(start, start + blk.shape[0])] = 0.0
        out.append(exact.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _prepare(real_features, fake_features, k: int) -> tuple[Tensor, Tensor]:
    real = as_features(real_features, "real features", dtype=torch.float64)
    fake = as_features(fake_features, "fake features", dtype=torch.float64).to(real.device)
    require_same_dim(real, fake, "k-NN metrics")
    require_samples(real.shape[0], k + 1, f"k-NN metrics with k={k} (real side)", "use more samples or a smaller k")
    require_samples(fake.shape[0], k + 1, f"k-NN metrics with k={k} (fake side)", "use more samples or a smaller k")
    return real, fake


def precision_recall(
    real_features: Tensor | np.ndarray, fake_features: Tensor | np.ndarray, k: int = 3, chunk_size: int = DEFAULT_CHUNK
) -> tuple[Tensor, Tensor]:
    """Improved precision and recall (Kynkäänniemi et al. 2019); both in [0, 1], higher is better.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(20, 3, generator=g)
    >>> [float(v) for v in precision_recall(x, x)], [float(v) for v in precision_recall(x, x + 100)]
    ([1.0, 1.0], [0.0, 0.0])
    """
    real, fake = _prepare(real_features, fake_features, k)
    r_real, r_fake = knn_radii(real, k, chunk_size)[None, :], knn_radii(fake, k, chunk_size)[None, :]
    tol2 = _tolerance(real, fake)
    precise = [_inside(b, real, r_real, tol2).any(dim=1) for _, b in _blocks(fake, chunk_size, "precision")]
    recalled = [_inside(b, fake, r_fake, tol2).any(dim=1) for _, b in _blocks(real, chunk_size, "recall")]
    return torch.cat(precise).double().mean(), torch.cat(recalled).double().mean()


def density_coverage(
    real_features: Tensor | np.ndarray, fake_features: Tensor | np.ndarray, k: int = 5, chunk_size: int = DEFAULT_CHUNK
) -> tuple[Tensor, Tensor]:
    """Density (unbounded above, about 1 for matching distributions) and coverage in [0, 1] (Naeem et al. 2020).

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(30, 3, generator=g)
    >>> [round(float(v), 6) for v in density_coverage(x, x + 100)]
    [0.0, 0.0]
    """
    real, fake = _prepare(real_features, fake_features, k)
    r_real = knn_radii(real, k, chunk_size)
    tol2 = _tolerance(real, fake)
    counts = [_inside(b, real, r_real[None, :], tol2).sum(dim=1) for _, b in _blocks(fake, chunk_size, "density")]
    covered = [
        _inside(b, fake, r_real[s : s + b.shape[0], None], tol2).any(dim=1)
        for s, b in _blocks(real, chunk_size, "coverage")
    ]
    return torch.cat(counts).double().mean() / k, torch.cat(covered).double().mean()
