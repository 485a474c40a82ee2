"""Kernel Inception Distance: unbiased MMD² with a cubic polynomial kernel, averaged over random subsets.

Kernel, estimator and subset sampling follow torchmetrics' ``KernelInceptionDistance`` (itself after
Bińkowski et al. 2018): ``k(x, y) = (γ x·y + coef)^degree`` with ``γ = 1/D`` by default; per subset two
``torch.randperm`` draws (real, then fake) from one generator seeded with ``seed``, so a run with
``torch.manual_seed(seed)`` before torchmetrics' ``compute`` picks the same subsets. Computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...utils import progress
from .inputs import MetricInputError, as_features, require_same_dim, require_samples

_GRAM_BLOCK = 1024  # kernel rows per block when subsets are summed over the full kernel: memory 1024 x N
_SELF_BLOCK = 256  # rows per block within one set, where only blocks on and above the diagonal are evaluated


def poly_kernel(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> Tensor:
    """``(γ x yᵀ + coef)^degree`` with ``γ = 1/D`` unless given."""
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (x @ y.T * gamma + coef) ** degree


def mmd2_unbiased(k_xx: Tensor, k_xy: Tensor, k_yy: Tensor) -> Tensor:
    """Unbiased MMD² from kernel matrices of two equal-size samples (diagonals of ``k_xx``, ``k_yy`` excluded)."""
    m = k_xx.shape[0]
    xx = k_xx.sum() - k_xx.diagonal().sum()
    yy = k_yy.sum() - k_yy.diagonal().sum()
    return (xx + yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m**2)


def poly_mmd2(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> Tensor:
    """Unbiased MMD² between ``x`` and ``y`` (same number of rows) under the polynomial kernel."""
    k_xx = poly_kernel(x, x, degree, gamma, coef)
    k_yy = poly_kernel(y, y, degree, gamma, coef)
    k_xy = poly_kernel(x, y, degree, gamma, coef)
    return mmd2_unbiased(k_xx, k_xy, k_yy)


def kid_subset_values(
    real_features: Tensor | np.ndarray,
    fake_features: Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """MMD² of each of ``subsets`` random subset pairs (float64 tensor ``[subsets]``)."""
    real = as_features(real_features, "KID real features", dtype=torch.float64)
    fake = as_features(fake_features, "KID fake features", dtype=torch.float64)
    require_same_dim(real, fake, "KID")
    if not (isinstance(subsets, int) and subsets > 0):
        raise MetricInputError(f"KID: subsets must be a positive integer, got {subsets!r}")
    if not (isinstance(subset_size, int) and subset_size >= 2):
        raise MetricInputError(f"KID: subset_size must be an integer >= 2, got {subset_size!r}")
    hint = f"lower subset_size (now {subset_size}) or add images"
    require_samples(real.shape[0], subset_size, "KID (real side)", hint)
    require_samples(fake.shape[0], subset_size, "KID (fake side)", hint)
    g = torch.Generator().manual_seed(seed)
    draws = [
        (
            torch.randperm(real.shape[0], generator=g)[:subset_size],
            torch.randperm(fake.shape[0], generator=g)[:subset_size],
        )
        for _ in range(subsets)
    ]
    n_r, n_f, d = real.shape[0], fake.shape[0], real.shape[1]
    if (n_r * n_r + n_f * n_f + n_r * n_f) * (d + subsets) < 3 * subsets * subset_size**2 * d:
        return _kid_subset_values_gram(real, fake, draws, degree, gamma, coef)
    values = []
    for idx_r, idx_f in progress(draws, desc="KID subsets"):
        values.append(poly_mmd2(real[idx_r.to(real.device)], fake[idx_f.to(fake.device)], degree, gamma, coef))
    return torch.stack(values)


def _masked_kernel_sums(
    a: Tensor, b: Tensor, mask_a: Tensor, mask_b: Tensor, degree: int, gamma: float, coef: float
) -> Tensor:
    """``Σ_{i∈A_s, j∈B_s} k(a_i, b_j)`` for every subset ``s`` (0/1 columns of ``mask_a`` ``[Na, S]``, ``mask_b``
    ``[Nb, S]``), in one pass over the kernel matrix in row blocks of ``_GRAM_BLOCK``."""
    out = torch.zeros(mask_a.shape[1], dtype=a.dtype, device=a.device)
    for start in range(0, a.shape[0], _GRAM_BLOCK):
        k = poly_kernel(a[start : start + _GRAM_BLOCK], b, degree, gamma, coef)
        out += (mask_a[start : start + _GRAM_BLOCK] * (k @ mask_b)).sum(dim=0)
    return out


def _masked_kernel_sums_self(a: Tensor, mask: Tensor, degree: int, gamma: float, coef: float) -> Tensor:
    """``_masked_kernel_sums(a, a, mask, mask, ...)`` from the blocks on and above the diagonal of the symmetric
    kernel matrix, off-diagonal blocks counted twice: about half the work, equal up to summation order."""
    out = torch.zeros(mask.shape[1], dtype=a.dtype, device=a.device)
    for start in range(0, a.shape[0], _SELF_BLOCK):
        stop = min(start + _SELF_BLOCK, a.shape[0])
        k = poly_kernel(a[start:stop], a[start:], degree, gamma, coef)
        on = k[:, : stop - start] @ mask[start:stop]
        above = k[:, stop - start :] @ mask[stop:]
        out += (mask[start:stop] * (on + 2 * above)).sum(dim=0)
    return out


def _kid_subset_values_gram(
    real: Tensor, fake: Tensor, draws: list[tuple[Tensor, Tensor]], degree: int, gamma: float | None, coef: float
) -> Tensor:
    """The per-subset MMD² of ``poly_mmd2`` on each drawn subset, from the kernel over all row pairs once.

    When subsets overlap a lot (100 subsets of 1000 out of 2000 rows), evaluating the kernel over every row
    pair once and summing each subset's entries through 0/1 masks (``mᵀ K m``) costs a fraction of building
    each subset's kernel matrices (and within one side only half the kernel is needed, it is symmetric); the
    values are equal up to float64 summation order.
    """
    m = draws[0][0].shape[0]
    fake = fake.to(real.device)

    def masks(n: int, side: int) -> Tensor:
        mask = torch.zeros(n, len(draws), dtype=real.dtype, device=real.device)
        for s, pair in enumerate(draws):
            mask[pair[side].to(real.device), s] = 1
        return mask

    m_r, m_f = masks(real.shape[0], 0), masks(fake.shape[0], 1)
    gamma = 1.0 / real.shape[1] if gamma is None else gamma
    diag_r = ((real * real).sum(dim=1) * gamma + coef) ** degree
    diag_f = ((fake * fake).sum(dim=1) * gamma + coef) ** degree
    xx = _masked_kernel_sums_self(real, m_r, degree, gamma, coef) - diag_r @ m_r
    yy = _masked_kernel_sums_self(fake, m_f, degree, gamma, coef) - diag_f @ m_f
    xy = _masked_kernel_sums(real, fake, m_r, m_f, degree, gamma, coef)
    return (xx + yy) / (m * (m - 1)) - 2 * xy / (m**2)


def kid(
    real_features: Tensor | np.ndarray,
    fake_features: Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """KID mean and standard deviation (population std, ``unbiased=False`` as torchmetrics) over subsets.

    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 1
    >>> mean, std = kid(x, y, subsets=5, subset_size=20)
    >>> bool(mean > 0.1)
    True
    """
    values = kid_subset_values(real_features, fake_features, subsets, subset_size, degree, gamma, coef, seed)
    return values.mean(), values.std(unbiased=False)
