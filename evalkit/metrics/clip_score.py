"""CLIP score as a torchmetrics ``Metric`` over paired image/text embeddings, keeping per-sample scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .functional.clip import clip_score_per_sample
from .functional.inputs import require_samples
from .sync import synced


class CLIPScore(Metric):
    """Mean of per-sample ``100 · max(cos(image, text), 0)`` (torchmetrics clamps the mean instead; see
    ``functional.clip``). Embeddings come from one CLIP model's image and text towers.

    States: ``score_sum`` and ``n`` (``sum``) for the exact mean, and ``scores`` (``cat``, one float64 per
    image, 8 bytes each) so confidence intervals can be bootstrapped (``per_sample()``).

    Example:
        >>> metric = CLIPScore()
        >>> metric.update(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        >>> round(float(metric.compute()), 4)
        85.3553
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 100.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, image_embeds: Tensor | np.ndarray, text_embeds: Tensor | np.ndarray) -> None:
        """Add ``[N, D]`` image embeddings and the ``[N, D]`` embeddings of their prompts."""
        s = clip_score_per_sample(image_embeds, text_embeds).to(self.score_sum.device)
        self.scores.append(s)
        self.score_sum = self.score_sum + s.sum()
        self.n = self.n + s.shape[0]

    def per_sample(self) -> Tensor:
        """Every per-sample score so far over all processes (float64 ``[N]``); synced like ``compute``."""
        with synced(self):
            if isinstance(self.scores, list) and not self.scores:
                return torch.zeros(0, dtype=torch.float64, device=self.score_sum.device)
            return dim_zero_cat(self.scores)

    def compute(self) -> Tensor:
        require_samples(int(self.n), 1, "CLIP score")
        return self.score_sum / self.n
