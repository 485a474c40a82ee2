"""Personalization: teach a Stable Diffusion pipeline a subject from a few images, bound to a new token.

Methods (one module each, with ``parse_args`` and ``main``): textual inversion
(``textual_inversion``), DreamBooth full fine-tuning (``dreambooth``) and DreamBooth LoRA through
peft (``dreambooth_lora``). Outputs are diffusers' own formats, loaded with diffusers' own loaders
(``load_textual_inversion``, ``load_lora_weights``, ``from_pretrained``). ``evaluate`` measures
a result (CLIP-I, CLIP-T, DINO-style similarity, before and after); ``detector`` checks the
embedded subjects.

The CLI (``python -m personalize train|evaluate|benchmark``) and the UI call the same functions:

>>> from personalize import TrainConfig, train                      # doctest: +SKIP
>>> train(TrainConfig(method="lora", images="personalize/subjects/housemark", out="runs/hm"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import evalkit  # noqa: F401  (offline-friendly environment defaults)

_EXPORTS = {
    "config": ("TrainConfig", "METHODS"),
    "training": ("train",),
    "evaluation": ("evaluate",),
    "weights": ("load_personalized",),
    "detector": ("detect_subject", "check_subject"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["METHODS", "TrainConfig", "check_subject", "detect_subject", "evaluate", "load_personalized", "train"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .config import METHODS, TrainConfig
    from .detector import check_subject, detect_subject
    from .evaluation import evaluate
    from .training import train
    from .weights import load_personalized
