"""Data: robust image decoding, LAION-format subsets and prompt sets."""

from .images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    SKIP_REASONS,
    ImageSkip,
    SkipCounter,
    load_image,
    to_rgb,
    try_load_image,
)
from .laion import LaionRecord, LaionSubset, load_subset, sample_indices
from .prompts import Prompt, PromptSet, load_prompts

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_MIN_SIDE", "SKIP_REASONS", "ImageSkip", "SkipCounter", "load_image", "to_rgb",
    "try_load_image", "LaionRecord", "LaionSubset", "load_subset", "sample_indices", "Prompt", "PromptSet",
    "load_prompts",
]  # fmt: skip
