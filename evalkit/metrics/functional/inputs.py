"""Input checks shared by every metric: one clear error type for bad feature tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import UserError


class MetricInputError(UserError, ValueError):
    """Features a metric cannot use (wrong shape, too few samples, NaN): both a ``UserError`` and a ``ValueError``."""


def as_features(x: Any, name: str = "features", dtype: torch.dtype | None = None) -> Tensor:
    """Return ``x`` as a detached 2-D tensor ``[N, D]``; a 1-D input is one sample.

    >>> as_features([[1.0, 2.0]]).shape
    torch.Size([1, 2])
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise MetricInputError(f"{name}: expected a tensor [N, D], got {type(x).__name__}") from e
    x = x.detach()
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise MetricInputError(f"{name}: expected a tensor of shape [N, D], got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise MetricInputError(f"{name}: expected real-valued features, got dtype {x.dtype}")
    if dtype is not None:
        x = x.to(dtype)
    elif not x.is_floating_point():
        x = x.double()
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise MetricInputError(f"{name}: contains NaN or infinite values; check the feature extractor's output")
    return x


def require_samples(n: int, minimum: int, what: str, hint: str = "") -> None:
    """Raise a one-line ``MetricInputError`` when fewer than ``minimum`` samples are available."""
    if n < minimum:
        msg = f"{what} needs at least {minimum} samples, got {n}"
        raise MetricInputError(f"{msg}; {hint}" if hint else msg)


def require_same_dim(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(
            f"{what}: feature dimensions differ ({a.shape[1]} vs {b.shape[1]}); use the same extractor for both sides"
        )
