"""Inception Score as a torchmetrics ``Metric`` over a bounded buffer of classifier logits."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from .feature_buffer import DEFAULT_MAX_SAMPLES, BufferedFeatureMetric
from .functional.inception import inception_score_splits
from .functional.inputs import MetricInputError


class InceptionScore(BufferedFeatureMetric):
    """Inception Score from logits of generated images; ``compute`` → ``(mean, std)`` over ``splits``.

    Contiguous splits and population std as the original code and torch-fidelity (see
    ``functional.inception`` for how torchmetrics differs). Logits are kept in a bounded buffer of at
    most ``max_samples`` rows. ``shuffle_seed`` (default ``None``: keep order) permutes before splitting.

    Example:
        >>> import torch
        >>> metric = InceptionScore(splits=5)
        >>> metric.update(torch.eye(4).repeat(5, 1) * 50)
        >>> round(float(metric.compute()[0]), 3)
        4.0
    """

    higher_is_better = True
    plot_lower_bound = 1.0
    sides = ("fake",)

    def __init__(
        self, splits: int = 10, shuffle_seed: int | None = None, max_samples: int = DEFAULT_MAX_SAMPLES, **kwargs: Any
    ) -> None:
        super().__init__(max_samples=max_samples, **kwargs)
        if not (isinstance(splits, int) and splits >= 1):
            raise MetricInputError(f"splits must be a positive integer, got {splits!r}")
        self.splits, self.shuffle_seed = splits, shuffle_seed

    def update(self, logits: Tensor | np.ndarray) -> None:
        """Add ``[N, C]`` classifier logits of generated images."""
        self._append("fake", logits)

    def compute(self) -> tuple[Tensor, Tensor]:
        scores = inception_score_splits(self.features("fake"), self.splits, self.shuffle_seed)
        return scores.mean(), scores.std(unbiased=False)
