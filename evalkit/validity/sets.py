"""The image sets validity is measured on: seeded shapes-world renders with their captions, and one
extractor's features of any image list (through the feature cache, so a re-run encodes nothing).

Each part draws from its own sample stream (``sample(n, seed=stream_seed(seed, part))``); sample ``i`` of
a stream depends on ``i`` alone, so the ladder sets are the first ``n`` images of the larger sample-efficiency
pools and their features come from the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..features import FeatureCache, FeatureExtractor, encode_texts, extract, get_extractor
from ..shapes import render, sample
from ..shapes.world import Sample

STREAMS: dict[str, int] = {"reference": 1, "test": 2, "probe": 3, "pairs": 4}


def stream_seed(seed: int, part: str) -> int:
    """The sample-stream seed of one part of a validity run (disjoint from the recipes' shapes:N:0/1 sets).

    >>> stream_seed(0, "reference"), stream_seed(0, "test")
    (1001, 1002)
    """
    return 1000 * (seed + 1) + STREAMS[part]


@dataclass
class RenderSet:
    samples: list[Sample]
    images: list[Image.Image]

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)


def renders(n: int, seed: int, part: str, split: str = "test", categories: list[str] | None = None) -> RenderSet:
    """``n`` captioned renders of one part's stream (64 px, as the zoo is trained on)."""
    samples = sample(n, seed=stream_seed(seed, part), split=split, categories=categories)
    return RenderSet(samples, [render(s.scene) for s in samples])


@dataclass
class Encoder:
    """One extractor with the cache and batch size every part uses."""

    extractor: FeatureExtractor
    cache: FeatureCache | None = None
    batch_size: int = 128

    @classmethod
    def load(cls, spec: str, cache: FeatureCache | None, batch_size: int) -> Encoder:
        return cls(get_extractor(spec), cache, batch_size)

    @property
    def id(self) -> str:
        return self.extractor.id

    @property
    def has_text(self) -> bool:
        return self.extractor.text_dim is not None

    @property
    def feature(self) -> str:
        """The output distribution metrics read: ``image`` (CLIP embeddings), else the first one (Inception pool)."""
        names = self.extractor.features
        return "image" if "image" in names else next(iter(names))

    def images(self, images: Sequence[Image.Image], desc: str) -> torch.Tensor:
        """Image features ``[N, D]`` in input order."""
        return extract(self.extractor, images, self.batch_size, self.cache, desc=desc)[self.feature]

    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        return encode_texts(self.extractor, texts, cache=self.cache)
