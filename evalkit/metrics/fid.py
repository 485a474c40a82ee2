"""FID as a torchmetrics ``Metric`` over features: float64 sufficient statistics, summed across processes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from .feature_stats import FeatureStats
from .functional.frechet import fid_from_stats
from .functional.inputs import MetricInputError, as_features
from .sync import synced


class FrechetDistance(Metric):
    """Fréchet distance between Gaussians fitted to real and fake features (FID for Inception features).

    Each side keeps ``n``, ``Σx`` and ``Σxxᵀ`` in float64 with ``sum`` reduction, so memory is ``O(D²)`` and
    processes merge exactly. The trace term uses ``eigh`` (see ``functional.frechet``); the value is clamped at 0.

    Args:
        num_features: feature dimension D.
        reset_real_features: ``False`` keeps the real statistics across ``reset`` (as torchmetrics).
        reference: fixed real-side statistics (e.g. ``FeatureStats.load`` of a cached reference). They are held
            outside the synced states, so every process may load them without being counted once per process;
            ``update(..., real=True)`` is then an error.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> metric = FrechetDistance(num_features=4)
        >>> metric.update(torch.randn(100, 4, generator=g), real=True)
        >>> metric.update(torch.randn(100, 4, generator=g) + 1, real=False)
        >>> bool(3.0 < float(metric.compute()) < 5.0)
        True
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        num_features: int,
        reset_real_features: bool = True,
        reference: FeatureStats | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (isinstance(num_features, int) and num_features >= 1):
            raise MetricInputError(f"num_features must be a positive integer, got {num_features!r}")
        if not isinstance(reset_real_features, bool):
            raise MetricInputError("reset_real_features must be a bool")
        if reference is not None and reference.dim != num_features:
            raise MetricInputError(
                f"reference statistics have D={reference.dim}, metric has num_features={num_features}"
            )
        self.num_features = num_features
        self.reset_real_features = reset_real_features
        self.reference = reference
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, features: Tensor | np.ndarray, real: bool) -> None:
        """Add ``[N, D]`` features to the real or fake side."""
        if real and self.reference is not None:
            raise MetricInputError("the real side is fixed by `reference`; pass only fake features")
        x = as_features(features, "FID features", dtype=torch.float64).to(self.real_sum.device)
        if x.shape[1] != self.num_features:
            raise MetricInputError(f"FID: expected {self.num_features} features per sample, got {x.shape[1]}")
        side = "real" if real else "fake"
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + x.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + x.sum(dim=0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + x.T @ x)

    def update_stats(self, stats: FeatureStats, real: bool) -> None:
        """Add precomputed statistics (e.g. one shard's) to a side."""
        if real and self.reference is not None:
            raise MetricInputError("the real side is fixed by `reference`; pass only fake statistics")
        if stats.dim != self.num_features:
            raise MetricInputError(f"FID: statistics have D={stats.dim}, metric has num_features={self.num_features}")
        side = "real" if real else "fake"
        dev = self.real_sum.device
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + stats.n)
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + stats.sum.to(dev))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + stats.outer.to(dev))

    def stats(self, real: bool) -> FeatureStats:
        """A side's statistics over all processes (synced like ``compute``), e.g. to ``save`` a reference."""
        if real and self.reference is not None:
            return self.reference
        side = "real" if real else "fake"
        with synced(self):
            n, s, o = getattr(self, f"{side}_n"), getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer")
            return FeatureStats(int(n), s.clone(), o.clone())

    def compute(self) -> Tensor:
        """FID (float64 scalar, >= 0); ``MetricInputError`` if a side has fewer than 2 samples."""
        return fid_from_stats(self.stats(real=True).to(self.real_sum.device), self.stats(real=False))

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        names = ("real_n", "real_sum", "real_outer")
        saved = {name: self._defaults.pop(name) for name in names}
        try:
            super().reset()
        finally:
            self._defaults.update(saved)
