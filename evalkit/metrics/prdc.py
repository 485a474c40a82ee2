"""Precision/recall and density/coverage as torchmetrics ``Metric`` classes over bounded feature buffers."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from .feature_buffer import DEFAULT_MAX_SAMPLES, BufferedFeatureMetric
from .functional.inputs import MetricInputError
from .functional.prdc import DEFAULT_CHUNK, density_coverage, precision_recall


class _KNNMetric(BufferedFeatureMetric):
    higher_is_better = True
    plot_lower_bound = 0.0
    default_k = 3

    def __init__(
        self,
        k: int | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        seed: int = 0,
        reset_real_features: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_samples=max_samples, seed=seed, reset_real_features=reset_real_features, **kwargs)
        k = self.default_k if k is None else k
        if not (isinstance(k, int) and k >= 1):
            raise MetricInputError(f"k must be a positive integer, got {k!r}")
        self.k, self.chunk_size = k, chunk_size

    def update(self, features: Tensor | np.ndarray, real: bool) -> None:
        """Add ``[N, D]`` features to the real or fake buffer."""
        self._append(self._side(real), features)


class PrecisionRecall(_KNNMetric):
    """Improved precision and recall (Kynkäänniemi et al. 2019), k=3 by default; ``compute`` → ``(p, r)``.

    Example:
        >>> import torch
        >>> x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        >>> metric = PrecisionRecall()
        >>> metric.update(x, real=True)
        >>> metric.update(x, real=False)
        >>> [float(v) for v in metric.compute()]
        [1.0, 1.0]
    """

    plot_upper_bound = 1.0
    default_k = 3

    def compute(self) -> tuple[Tensor, Tensor]:
        return precision_recall(self.features("real"), self.features("fake"), self.k, self.chunk_size)


class DensityCoverage(_KNNMetric):
    """Density and coverage (Naeem et al. 2020), k=5 by default; ``compute`` → ``(density, coverage)``.

    Example:
        >>> import torch
        >>> x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        >>> metric = DensityCoverage()
        >>> metric.update(x, real=True)
        >>> metric.update(x + 100, real=False)
        >>> [float(v) for v in metric.compute()]
        [0.0, 0.0]
    """

    default_k = 5

    def compute(self) -> tuple[Tensor, Tensor]:
        return density_coverage(self.features("real"), self.features("fake"), self.k, self.chunk_size)
