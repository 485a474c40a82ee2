"""Inception Score (Salimans et al. 2016) from classifier logits: ``exp(E_x KL(p(y|x) ‖ p(y)))`` per split.

Splits are contiguous slices ``[i N / s, (i+1) N / s)`` and the spread is the population std (``ddof=0``),
as in the original OpenAI code and torch-fidelity. torchmetrics' ``InceptionScore`` instead always shuffles,
splits with ``torch.chunk`` (same slices when ``s`` divides N) and reports the sample std (``ddof=1``).
``seed`` (optional) shuffles first with ``torch.randperm``, matching torchmetrics after ``torch.manual_seed``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .inputs import MetricInputError, as_features, require_samples


def inception_score_splits(logits: Tensor | np.ndarray, splits: int = 10, seed: int | None = None) -> Tensor:
    """Per-split scores (float64 ``[splits]``)."""
    x = as_features(logits, "Inception Score logits", dtype=torch.float64)
    if not (isinstance(splits, int) and splits >= 1):
        raise MetricInputError(f"Inception Score: splits must be a positive integer, got {splits!r}")
    n = x.shape[0]
    require_samples(n, splits, f"Inception Score with {splits} splits", "lower splits or add images")
    if seed is not None:
        x = x[torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)]
    log_p = x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_marginal = torch.logsumexp(part, dim=0) - np.log(part.shape[0])
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp())
    return torch.stack(scores)


def inception_score(logits: Tensor | np.ndarray, splits: int = 10, seed: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean and population std of the per-split Inception Score (higher is better; at most the class count).

    >>> confident = torch.eye(4).repeat(5, 1) * 50  # 20 samples, every class equally often, one-hot
    >>> round(float(inception_score(confident, splits=1)[0]), 4)
    4.0
    """
    scores = inception_score_splits(logits, splits, seed)
    return scores.mean(), scores.std(unbiased=False)
