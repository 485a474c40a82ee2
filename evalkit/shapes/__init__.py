"""The embedded shapes world: a procedural, captioned data set with known ground truth."""

from .render import render
from .world import (
    BACKGROUNDS,
    CATEGORIES,
    COLORS,
    HELD_OUT,
    RELATIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    PlacedObject,
    PromptSpec,
    Sample,
    Scene,
    caption_for,
    sample,
)

__all__ = [
    "BACKGROUNDS", "CATEGORIES", "COLORS", "HELD_OUT", "RELATIONS", "SHAPES", "SIZES",
    "ObjectSpec", "PlacedObject", "PromptSpec", "Sample", "Scene", "caption_for", "render", "sample",
]  # fmt: skip
