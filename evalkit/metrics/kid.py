"""KID as a torchmetrics ``Metric`` over bounded, deterministic feature buffers."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from .feature_buffer import DEFAULT_MAX_SAMPLES, BufferedFeatureMetric
from .functional.inputs import MetricInputError
from .functional.kernel_mmd import kid_subset_values


class KernelDistance(BufferedFeatureMetric):
    """Kernel Inception Distance: unbiased polynomial-kernel MMD² over ``subsets`` random subsets.

    Same kernel, estimator and subset draws as torchmetrics' ``KernelInceptionDistance`` (see
    ``functional.kernel_mmd``), but each side keeps at most ``max_samples`` features (a deterministic bottom-k
    sample, see ``feature_buffer``) instead of all of them. While a side has seen no more than
    ``max_samples`` rows, nothing is dropped and results equal torchmetrics' for the same ``seed``.
    ``compute`` returns ``(mean, std)`` with the population std, as torchmetrics.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> metric = KernelDistance(subsets=10, subset_size=50)
        >>> metric.update(torch.randn(100, 8, generator=g), real=True)
        >>> metric.update(torch.randn(100, 8, generator=g) + 1, real=False)
        >>> mean, std = metric.compute()
        >>> bool(mean > 0.1)
        True
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        subsets: int = 100,
        subset_size: int = 1000,
        degree: int = 3,
        gamma: float | None = None,
        coef: float = 1.0,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        seed: int = 0,
        reset_real_features: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_samples=max_samples, seed=seed, reset_real_features=reset_real_features, **kwargs)
        if not (isinstance(subsets, int) and subsets > 0):
            raise MetricInputError(f"subsets must be a positive integer, got {subsets!r}")
        if not (isinstance(subset_size, int) and 2 <= subset_size <= max_samples):
            raise MetricInputError(
                f"subset_size must be an integer in [2, max_samples={max_samples}], got {subset_size!r}"
            )
        if not (isinstance(degree, int) and degree > 0):
            raise MetricInputError(f"degree must be a positive integer, got {degree!r}")
        self.subsets, self.subset_size, self.degree, self.gamma, self.coef = subsets, subset_size, degree, gamma, coef

    def update(self, features: Tensor | np.ndarray, real: bool) -> None:
        """Add ``[N, D]`` features to the real or fake buffer."""
        self._append(self._side(real), features)

    def subset_values(self) -> Tensor:
        """MMD² of each subset (float64 ``[subsets]``)."""
        return kid_subset_values(
            self.features("real"), self.features("fake"), self.subsets, self.subset_size,
            self.degree, self.gamma, self.coef, self.seed,
        )  # fmt: skip

    def compute(self) -> tuple[Tensor, Tensor]:
        values = self.subset_values()
        return values.mean(), values.std(unbiased=False)
