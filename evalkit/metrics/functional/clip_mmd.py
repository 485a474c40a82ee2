"""CMMD (Jayasumana et al. 2024, "Rethinking FID"): MMD between CLIP embeddings with a Gaussian RBF kernel.

Transcribes the reference implementation, google-research/google-research ``cmmd/distance.py`` (``mmd``):
``gamma = 1 / (2 σ²)`` with ``_SIGMA = 10``; ``k(a, b) = exp(-gamma (‖a‖² + ‖b‖² - 2 a·b))``; the
*biased* (minimum-variance) estimator, i.e. means over **all** pairs including ``i == j``:
``CMMD = _SCALE · (mean K_xx + mean K_yy - 2 mean K_xy)`` with ``_SCALE = 1000``. The reference embeds with
scenic's CLIP ``encode_image(normalize=True)`` (``cmmd/embedding.py``), i.e. L2-normalised embeddings;
``normalize=True`` here does the same to the features given (a no-op on already unit-norm embeddings).
The sets may differ in size. Kernel means are accumulated in row blocks (float64), never a full N×N matrix;
within one set the kernel is symmetric, so only the blocks on and above the diagonal are evaluated (off-diagonal
ones count twice): half the work, the same value up to float64 summation order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .inputs import as_features, require_same_dim, require_samples

SIGMA = 10.0
SCALE = 1000.0
_SELF_BLOCK = 256  # rows per block within one set: small enough that the upper block triangle is about half


def _rbf_kernel_mean(a: Tensor, b: Tensor, gamma: float, chunk_size: int) -> Tensor:
    """Mean of ``exp(-gamma ‖a_i - b_j‖²)`` over all pairs, expanded as in the reference (no clamping)."""
    a_sq, b_sq = (a * a).sum(dim=1), (b * b).sum(dim=1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[0], chunk_size):
        blk = a[start : start + chunk_size]
        d2 = -2 * blk @ b.T + a_sq[start : start + chunk_size, None] + b_sq[None, :]
        total = total + torch.exp(-gamma * d2).sum()
    return total / (a.shape[0] * b.shape[0])


def _rbf_kernel_mean_self(a: Tensor, gamma: float, chunk_size: int) -> Tensor:
    """``_rbf_kernel_mean(a, a)`` from the blocks on and above the diagonal (the kernel matrix is symmetric)."""
    a_sq = (a * a).sum(dim=1)
    n = a.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        d2 = -2 * a[start:stop] @ a[start:].T + a_sq[start:stop, None] + a_sq[None, start:]
        k = torch.exp(-gamma * d2)
        total = total + k[:, : stop - start].sum() + 2 * k[:, stop - start :].sum()
    return total / (n * n)


def cmmd(
    real_features: Tensor | np.ndarray,
    fake_features: Tensor | np.ndarray,
    normalize: bool = True,
    sigma: float = SIGMA,
    scale: float = SCALE,
    chunk_size: int = 256,
) -> Tensor:
    """CMMD between two sets of CLIP image embeddings (float64 scalar; lower is better).

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(30, 8, generator=g)
    >>> float(cmmd(x, x)) < 1e-9, bool(cmmd(x, x + 3.0) > 0)
    (True, True)
    """
    x = as_features(real_features, "CMMD real features", dtype=torch.float64)
    y = as_features(fake_features, "CMMD fake features", dtype=torch.float64)
    require_same_dim(x, y, "CMMD")
    require_samples(x.shape[0], 1, "CMMD (real side)")
    require_samples(y.shape[0], 1, "CMMD (fake side)")
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
        y = torch.nn.functional.normalize(y, dim=1).to(x.device)
    gamma = 1.0 / (2 * sigma**2)
    k_xx = _rbf_kernel_mean_self(x, gamma, min(chunk_size, _SELF_BLOCK))
    k_yy = _rbf_kernel_mean_self(y, gamma, min(chunk_size, _SELF_BLOCK))
    k_xy = _rbf_kernel_mean(x, y, gamma, chunk_size)
    return scale * (k_xx + k_yy - 2 * k_xy)
