"""Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

The trace term uses a symmetric eigendecomposition instead of ``scipy.linalg.sqrtm(Σ1 Σ2)``:
``tr sqrt(Σ1 Σ2) = Σ sqrt(λ_i(A))`` with ``A = sqrt(Σ1) Σ2 sqrt(Σ1)``. ``A`` is symmetric positive
semi-definite and similar to ``Σ1 Σ2``, so ``torch.linalg.eigh`` in float64 gives real eigenvalues; tiny
negative ones (rounding on singular covariances, e.g. fewer samples than dimensions) are clamped to 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..feature_stats import FeatureStats
from .inputs import MetricInputError, require_samples


def sqrtm_psd(mat: Tensor) -> Tensor:
    """Symmetric square root of a positive semi-definite matrix; negative eigenvalues clamp to 0.

    >>> sqrtm_psd(torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64))).diag().tolist()
    [2.0, 3.0]
    """
    mat = (mat + mat.T) / 2
    w, v = torch.linalg.eigh(mat)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """``tr sqrt(Σ1 Σ2)`` for symmetric PSD ``Σ1, Σ2`` via eigenvalues of ``sqrt(Σ1) Σ2 sqrt(Σ1)``."""
    s1 = sqrtm_psd(sigma1.to(torch.float64))
    a = s1 @ sigma2.to(torch.float64) @ s1
    eig = torch.linalg.eigvalsh((a + a.T) / 2)
    return eig.clamp(min=0).sqrt().sum()


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """``‖μ1-μ2‖² + tr Σ1 + tr Σ2 - 2 tr sqrt(Σ1 Σ2)`` in float64, clamped at 0.

    The exact value is never negative; rounding can make it ``-1e-12``-ish when both sets are equal, so the
    result is clamped at 0 rather than reported as a negative distance.

    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> float(frechet_distance(torch.zeros(2), eye, torch.ones(2), eye))
    2.0
    """
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise MetricInputError(
            f"frechet_distance: shapes do not match (mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
            f"sigma {tuple(sigma1.shape)}/{tuple(sigma2.shape)})"
        )
    diff = (mu1 - mu2).square().sum()
    value = diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)
    return value.clamp(min=0)


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> Tensor:
    """FID between two ``FeatureStats``; each side needs n >= 2 (a covariance)."""
    require_samples(real.n, 2, "FID (real side)", "a covariance needs two or more images")
    require_samples(fake.n, 2, "FID (fake side)", "a covariance needs two or more images")
    if real.dim != fake.dim:
        raise MetricInputError(f"FID: feature dimensions differ ({real.dim} vs {fake.dim}); use one extractor")
    fake = fake.to(real.sum.device)
    return frechet_distance(real.mean(), real.cov(), fake.mean(), fake.cov())


def fid(real_features: Tensor | np.ndarray, fake_features: Tensor | np.ndarray) -> Tensor:
    """FID between two ``[N, D]`` feature sets (float64 scalar tensor, never negative).

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(50, 4, generator=g)
    >>> float(fid(x, x)) < 1e-9
    True
    """
    return fid_from_stats(FeatureStats.from_features(real_features), FeatureStats.from_features(fake_features))
