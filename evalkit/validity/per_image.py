"""Per-image agreement: how well does one image's CLIP score tell whether the oracle accepts it?

Each image is paired with a caption and the oracle's verdict on that pair (correct / not, GenEval-style).
The figure is the ROC AUC of the per-image CLIP score ``100·max(cos, 0)`` for predicting "correct": 1 means
the score ranks every accepted image above every rejected one, 0.5 is chance. Reported overall and per prompt
category, with a percentile-bootstrap CI over images, for each extractor asked (the judge, and a real CLIP
where a user has one).

Two sources of (image, caption, verdict):

- ``sweep``: the generated images of the sweep run in the results store (each manifest row has its prompt's
  spec), the real use: generators' mistakes;
- ``probe``: renders, half of them disturbed (a random disturbance at a random level) and half captioned with
  a one-attribute hard negative (``world.perturb``), so there are wrong pairs without any trained generator.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import SkipCounter, try_load_image
from ..disturb import PER_IMAGE, strength
from ..metrics.functional import clip_score_per_sample
from ..shapes.oracle import check, detect
from ..shapes.world import PromptSpec, caption_for, perturb
from ..utils import progress
from .sets import Encoder, RenderSet
from .stats import auc_bootstrap_ci, roc_auc


@dataclass
class Judged:
    """One image with the caption it is scored against and the oracle's verdict on the pair."""

    image: Image.Image
    caption: str
    category: str
    correct: bool


def probe_items(renders: RenderSet, seed: int = 0) -> list[Judged]:
    """Renders with a coin flip each for "disturb" and "caption falsely"; the oracle judges every pair."""
    out = []
    names = sorted(PER_IMAGE)
    for i, (s, image) in enumerate(zip(renders.samples, renders.images)):
        rng = np.random.default_rng([seed, i])
        if rng.random() < 0.5:
            name = names[int(rng.integers(len(names)))]
            image = PER_IMAGE[name](image, strength(name, int(rng.integers(1, 5))), (seed, i))
        spec, caption = s.spec, s.caption
        if rng.random() < 0.5:
            spec = perturb(s.spec, random.Random(f"{seed}/{i}")) or s.spec
            caption = caption_for(spec, random.Random(f"{seed}/{i}/caption"))
        out.append(Judged(image, caption, s.spec.category, check(image, spec).correct))
    return out


def sweep_items(rows_by_generator: dict[str, tuple[Any, list[dict[str, Any]]]]) -> tuple[list[Judged], dict[str, int]]:
    """Generated images with a shapes spec (``{label: (folder, manifest rows)}``, as ``report.load_manifests``)."""
    items, skipped = [], SkipCounter()
    for label, (folder, rows) in rows_by_generator.items():
        usable = [r for r in rows if r.get("spec") and r.get("prompt") and isinstance(r.get("file"), str)]
        for r in progress(usable, desc=f"oracle {label}"):
            image = try_load_image(folder / r["file"], skipped)
            if image is None:
                continue
            spec = PromptSpec.from_dict(r["spec"])
            items.append(
                Judged(image, r["prompt"], str(r.get("category") or spec.category), check(detect(image), spec).correct)
            )
    return items, skipped.as_dict()


def _figure(scores: np.ndarray, correct: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    return {"auc": roc_auc(scores, correct), "ci": auc_bootstrap_ci(scores, correct, n_boot, seed=seed),
            "n": int(correct.shape[0]), "n_correct": int(correct.sum()), "n_wrong": int((~correct).sum()),
            "mean_score_correct": float(scores[correct].mean()) if correct.any() else None,
            "mean_score_wrong": float(scores[~correct].mean()) if (~correct).any() else None}  # fmt: skip


def agreement(items: Sequence[Judged], encoder: Encoder, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """ROC AUC of per-image CLIP score for the oracle's verdict, overall and per category."""
    image = encoder.images([it.image for it in items], desc="per-image: images")
    text = encoder.texts([it.caption for it in items])
    scores = clip_score_per_sample(image, text).numpy()
    correct = np.array([it.correct for it in items], dtype=bool)
    cats = np.array([it.category for it in items])
    return {
        "overall": _figure(scores, correct, n_boot, seed),
        "categories": {c: _figure(scores[cats == c], correct[cats == c], n_boot, seed) for c in sorted(set(cats))},
    }
