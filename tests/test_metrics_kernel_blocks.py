"""KID and CMMD over several row blocks: the half-kernel (symmetric) sums equal the full per-subset formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.image.kid import poly_mmd

from evalkit.metrics.functional import cmmd, kid_subset_values, poly_mmd2
from evalkit.metrics.functional.kernel_mmd import _kid_subset_values_gram


def randn(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_kid_over_many_blocks_equals_each_subsets_own_kernel():
    real, fake = randn(700, 12, seed=1), randn(650, 12, seed=2, shift=0.2)  # 3 blocks of 256 rows per side
    subsets, size, seed = 12, 320, 5
    g = torch.Generator().manual_seed(seed)
    draws = [(torch.randperm(700, generator=g)[:size], torch.randperm(650, generator=g)[:size]) for _ in range(subsets)]
    direct = torch.stack([poly_mmd2(real[r], fake[f]) for r, f in draws])
    theirs = torch.stack([poly_mmd(real[r], fake[f]) for r, f in draws])  # torchmetrics' per-subset estimator
    gram = _kid_subset_values_gram(real, fake, draws, 3, None, 1.0)
    torch.testing.assert_close(gram, direct, rtol=1e-10, atol=0)
    torch.testing.assert_close(gram, theirs, rtol=1e-10, atol=0)
    torch.testing.assert_close(kid_subset_values(real, fake, subsets, size, seed=seed), direct, rtol=1e-10, atol=0)


def cmmd_reference(x: np.ndarray, y: np.ndarray) -> float:
    """google-research cmmd/distance.py ``mmd`` on L2-normalised embeddings, in numpy float64."""
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    x_sq, y_sq = (x * x).sum(1), (y * y).sum(1)
    gamma = 1 / (2 * 10**2)
    k_xx = np.mean(np.exp(-gamma * (-2 * x @ x.T + x_sq[:, None] + x_sq[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * x @ y.T + x_sq[:, None] + y_sq[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * y @ y.T + y_sq[:, None] + y_sq[None, :])))
    return 1000 * (k_xx + k_yy - 2 * k_xy)


@pytest.mark.parametrize("chunk_size", [7, 100, 256, 4096])
def test_cmmd_over_many_blocks_matches_the_reference(chunk_size):
    x, y = randn(600, 10, seed=3), randn(530, 10, seed=4, shift=0.25)
    ref = cmmd_reference(x.numpy(), y.numpy())
    assert ref > 1e-2
    assert float(cmmd(x, y, chunk_size=chunk_size)) == pytest.approx(ref, rel=1e-10)
