"""CMMD as a torchmetrics ``Metric`` over bounded, deterministic CLIP-embedding buffers."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from .feature_buffer import DEFAULT_MAX_SAMPLES, BufferedFeatureMetric
from .functional.clip_mmd import SCALE, SIGMA, cmmd


class CMMD(BufferedFeatureMetric):
    """CMMD (google-research ``cmmd/distance.py``): biased RBF-kernel MMD (σ=10) × 1000 over CLIP embeddings.

    The RBF kernel has no finite sufficient statistics, so each side keeps a bounded buffer of at most
    ``max_samples`` embeddings (deterministic bottom-k sample, see ``feature_buffer``); below the cap the
    value is exact. ``normalize=True`` L2-normalises embeddings as the reference's CLIP encoder does.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> metric = CMMD()
        >>> x = torch.randn(40, 8, generator=g)
        >>> metric.update(x, real=True)
        >>> metric.update(x, real=False)
        >>> float(metric.compute()) < 1e-9
        True
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        normalize: bool = True,
        sigma: float = SIGMA,
        scale: float = SCALE,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        seed: int = 0,
        reset_real_features: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_samples=max_samples, seed=seed, reset_real_features=reset_real_features, **kwargs)
        self.normalize, self.sigma, self.scale = normalize, sigma, scale

    def update(self, features: Tensor | np.ndarray, real: bool) -> None:
        """Add ``[N, D]`` CLIP image embeddings to the real or fake buffer."""
        self._append(self._side(real), features)

    def compute(self) -> Tensor:
        return cmmd(self.features("real"), self.features("fake"), self.normalize, self.sigma, self.scale)
