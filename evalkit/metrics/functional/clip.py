"""CLIP score (Hessel et al. 2021, as popularised by torchmetrics) from paired image and text embeddings.

Per sample: ``100 · max(cos(image, text), 0)``; the score of a set is the mean of those. torchmetrics'
``CLIPScore`` instead averages the *unclamped* ``100 · cos`` and clamps the mean at 0. Both agree when every
cosine is >= 0; otherwise ours is larger by exactly ``100 · mean(max(-cos, 0))`` (while torchmetrics' mean is
still positive). Clamping per sample keeps each image's score in [0, 100], so per-image scores can be
bootstrapped and compared across runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .inputs import MetricInputError, as_features, require_samples


def clip_cosines(image_embeds: Tensor | np.ndarray, text_embeds: Tensor | np.ndarray) -> Tensor:
    """Row-wise cosine similarity of paired embeddings (float64 ``[N]``)."""
    img = as_features(image_embeds, "CLIP image embeddings", dtype=torch.float64)
    txt = as_features(text_embeds, "CLIP text embeddings", dtype=torch.float64).to(img.device)
    if img.shape != txt.shape:
        raise MetricInputError(
            f"CLIP score: image and text embeddings must pair up with one shape, got {tuple(img.shape)} and "
            f"{tuple(txt.shape)} (one prompt embedding per image, from the same CLIP model)"
        )
    img_norm, txt_norm = img.norm(dim=1, keepdim=True), txt.norm(dim=1, keepdim=True)
    if bool((img_norm == 0).any() | (txt_norm == 0).any()):
        raise MetricInputError("CLIP score: an embedding is all zeros, so its cosine is undefined")
    img, txt = img / img_norm, txt / txt_norm
    return (img * txt).sum(dim=1)


def clip_score_per_sample(image_embeds: Tensor | np.ndarray, text_embeds: Tensor | np.ndarray) -> Tensor:
    """``100 · max(cos, 0)`` for each image/prompt pair (float64 ``[N]``)."""
    return 100 * clip_cosines(image_embeds, text_embeds).clamp(min=0)


def clip_score(image_embeds: Tensor | np.ndarray, text_embeds: Tensor | np.ndarray) -> Tensor:
    """Mean per-sample CLIP score in [0, 100] (higher is better).

    >>> float(clip_score(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, -1.0]])))
    50.0
    """
    scores = clip_score_per_sample(image_embeds, text_embeds)
    require_samples(scores.shape[0], 1, "CLIP score")
    return scores.mean()
