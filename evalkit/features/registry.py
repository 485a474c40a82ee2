"""One registry of feature extractors by spec string ``KIND`` or ``KIND:ARG`` (torch-fidelity's ``registry.py`` idea).

Built-ins:

- ``judge`` / ``judge:<dir>``: the embedded open_clip judge (``zoo/judge``) or any folder in its layout.
- ``clip:<arch>/<tag>`` / ``clip:<arch>/<file>`` / ``clip:hf-hub:<repo>``: any open_clip model.
- ``inception`` / ``inception:<file>``: the FID Inception-v3 weights from the torch hub cache or a file.

Add one: subclass ``FeatureExtractor``, write ``factory(arg, resize, device)``, call ``register_extractor``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..errors import UserError
from .base import FeatureExtractor
from .resize import check_resize_mode

Factory = Callable[[str | None, str, torch.device | str], FeatureExtractor]

_EXTRACTORS: dict[str, Factory] = {}
_KIND_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


def register_extractor(kind: str, factory: Factory) -> None:
    """Register ``factory(arg, resize, device) -> FeatureExtractor`` under ``kind``; names are unique."""
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValueError(f"extractor kind {kind!r} must match {_KIND_RE.pattern}")
    if kind in _EXTRACTORS:
        raise ValueError(f"extractor kind {kind!r} is already registered")
    _EXTRACTORS[kind] = factory


def list_extractors() -> list[str]:
    return sorted(_EXTRACTORS)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"clip:ViT-B-32/openai"`` → ``("clip", "ViT-B-32/openai")``; ``"judge"`` → ``("judge", None)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty feature extractor spec; choose one of {', '.join(list_extractors())}")
    kind, sep, arg = spec.strip().partition(":")
    if kind not in _EXTRACTORS:
        raise UserError(f"unknown feature extractor {kind!r} in {spec!r}; choose one of {', '.join(list_extractors())}")
    if sep and not arg:
        raise UserError(f"feature extractor spec {spec!r} has an empty argument after ':'")
    return kind, (arg or None)


def get_extractor(spec: str, resize: str = "clean", device: str | torch.device = "cpu") -> FeatureExtractor:
    """Build the extractor a spec names, with its images resized by ``resize`` (see ``evalkit.features.resize``)."""
    check_resize_mode(resize)
    kind, arg = parse_spec(spec)
    return _EXTRACTORS[kind](arg, resize, device)


def _judge(arg, resize, device):
    from .openclip import load_judge

    return load_judge(arg, resize, device)


def _clip(arg, resize, device):
    from .openclip import load_clip

    return load_clip(arg, resize, device)


def _inception(arg, resize, device):
    from .inception import load_inception

    return load_inception(arg, resize, device)


register_extractor("judge", _judge)
register_extractor("clip", _clip)
register_extractor("inception", _inception)
