"""Compositional blind spots: can CLIP score tell a caption from the same words bound differently?

For renders of two coloured objects (prompt categories ``color_attr`` and ``position``) each true caption gets
a foil that differs only in

- ``binding``: the two colours swapped between the objects ("a red circle left of a blue square" → "a blue
  circle left of a red square"); same words, so a bag-of-words model is at chance;
- ``relation``: the relation reversed (``world.OPPOSITE``: "left of" → "right of").

The figure is the share of pairs where the image's CLIP score with the true caption beats the foil's (ties
count half; chance is 0.5), per kind and prompt category, with a bootstrap CI. The oracle is run on both
captions as a check of the pairs themselves: it should accept the true one and reject the foil every time.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from ..metrics import bootstrap_ci
from ..metrics.functional import clip_score_per_sample
from ..shapes.oracle import check, detect
from ..shapes.world import OPPOSITE, PromptSpec, Sample, caption_for
from .sets import Encoder, RenderSet

CATEGORIES = ["color_attr", "position"]
KINDS = ("binding", "relation")
_RELATION_WORDS = {"to the left of": "to the right of", "to the right of": "to the left of", "left of": "right of",
                   "right of": "left of", "above": "below", "below": "above", "under": "above"}  # fmt: skip
_RELATION_RE = re.compile(r"\b(" + "|".join(sorted(_RELATION_WORDS, key=len, reverse=True)) + r")\b")


@dataclass
class Pair:
    image: Image.Image
    kind: str
    category: str
    caption: str
    foil: str
    spec: PromptSpec
    foil_spec: PromptSpec


def foil(s: Sample, kind: str, seed: int = 0) -> tuple[str, str, PromptSpec] | None:
    """``(caption, foil caption, foil spec)`` for one sample and kind, phrased alike; None if it does not apply.

    >>> from evalkit.shapes import sample
    >>> s = sample(1, seed=3, categories=["position"])[0]
    >>> s.caption, foil(s, "relation")[1]
    ('a cyan square right of a large purple cross', 'a cyan square left of a large purple cross')
    """
    spec = s.spec
    if kind == "binding":
        if (
            len(spec.objects) != 2
            or not all(o.color for o in spec.objects)
            or spec.objects[0].color == spec.objects[1].color
        ):
            return None
        a, b = spec.objects
        swapped = replace(spec, objects=(replace(a, color=b.color), replace(b, color=a.color)))
        # the same random stream phrases both (same structure, same draws), so only the colours differ
        return (caption_for(spec, random.Random(f"{seed}/{s.key}")), caption_for(swapped, random.Random(f"{seed}/{s.key}")),
                swapped)  # fmt: skip
    if kind == "relation":
        if spec.relation is None:
            return None
        a, rel, b = spec.relation
        flipped = replace(spec, relation=(a, OPPOSITE[rel], b))
        text = _RELATION_RE.sub(lambda m: _RELATION_WORDS[m.group(1)], s.caption, count=1)
        return s.caption, text, flipped
    raise ValueError(f"unknown foil kind {kind!r}; expected one of {KINDS}")


def make_pairs(renders: RenderSet, seed: int = 0) -> list[Pair]:
    out = []
    for s, image in zip(renders.samples, renders.images):
        for kind in KINDS:
            made = foil(s, kind, seed)
            if made is not None and made[0] != made[1]:
                out.append(Pair(image, kind, s.spec.category, made[0], made[1], s.spec, made[2]))
    return out


def _groups(pairs: list[Pair]) -> dict[str, np.ndarray]:
    kinds = np.array([p.kind for p in pairs])
    labels = np.array([f"{p.kind}/{p.category}" for p in pairs])
    out = {k: kinds == k for k in KINDS if (kinds == k).any()}
    out |= {str(g): labels == g for g in sorted(set(labels))}
    return out


def _accuracy(wins: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    ci = bootstrap_ci(wins, n_boot=n_boot, seed=seed) if wins.shape[0] >= 2 else None
    return {"accuracy": float(wins.mean()), "ci": list(ci) if ci else None, "n": int(wins.shape[0])}


def oracle_check(pairs: list[Pair], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Share of pairs where the oracle accepts the caption and rejects the foil (the pairs are what they claim)."""
    ok = []
    for p in pairs:
        det = detect(p.image)
        ok.append(float(check(det, p.spec).correct and not check(det, p.foil_spec).correct))
    wins = np.array(ok)
    return {g: _accuracy(wins[m], n_boot, seed) for g, m in _groups(pairs).items()}


def blind_spots(pairs: list[Pair], encoder: Encoder, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of CLIP score at picking the true caption over its foil, per kind and kind/category."""
    image = encoder.images([p.image for p in pairs], desc="blind spots: images")
    true = clip_score_per_sample(image, encoder.texts([p.caption for p in pairs])).numpy()
    false = clip_score_per_sample(image, encoder.texts([p.foil for p in pairs])).numpy()
    wins = np.where(true > false, 1.0, np.where(true == false, 0.5, 0.0))
    return {g: _accuracy(wins[m], n_boot, seed) for g, m in _groups(pairs).items()}
