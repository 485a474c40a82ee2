"""Embedded subjects: glyphs the shapes world never renders, shipped as a few images each.

A subject is an outline and a two-color pattern. ``housemark`` is a house: a yellow roof with eaves
over a purple body. No shapes-world prompt draws two colors in one object, nor this outline, so a
base model prompted with the class word almost never produces it, and the detector
(:mod:`personalize.detector`) can tell when a personalized model does.

Each subject folder holds ``N.png`` (64 px, like the shapes world) and ``N.txt`` captions, one
alternative per line, with ``{token}`` standing for the learned token. ``python -m personalize.subjects.make``
rewrites them byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from evalkit.errors import UserError
from evalkit.shapes.render import SUPERSAMPLE
from evalkit.shapes.world import BACKGROUNDS, COLORS

SUBJECTS_DIR = Path(__file__).resolve().parent

Polygon = list[tuple[float, float]]


def house_parts(cx: float, cy: float, half: float) -> tuple[Polygon, Polygon]:
    """(roof, body) polygons of the house glyph inside the square of half-side ``half`` centred at (cx, cy).

    The roof's eaves overhang the body, so the outline is neither a square, a triangle nor a pentagon.
    """
    eave_y = cy - 0.12 * half
    roof = [(cx, cy - half), (cx + half, eave_y), (cx - half, eave_y)]
    w = 0.68 * half
    body = [(cx - w, eave_y), (cx + w, eave_y), (cx + w, cy + half), (cx - w, cy + half)]
    return roof, body


@dataclass(frozen=True)
class Placement:
    """One image of a subject: centre and extent (fractions of the image side) and the background name."""

    x: float
    y: float
    extent: float
    background: str


@dataclass(frozen=True)
class Subject:
    name: str
    class_word: str  # a shapes-world shape: class-word prompts stay checkable by the oracle
    colors: tuple[str, str]  # (first part, second part) as named in ``evalkit.shapes.world.COLORS``
    parts: Callable[[float, float, float], tuple[Polygon, Polygon]]
    placements: tuple[Placement, ...]
    image_size: int = 64

    @property
    def folder(self) -> Path:
        return SUBJECTS_DIR / self.name

    def draw(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, half: float, colors=None) -> None:
        """Draw the glyph; ``colors`` overrides the pattern (RGB pairs), e.g. for detector tests."""
        rgb = colors or tuple(COLORS[c] for c in self.colors)
        for poly, fill in zip(self.parts(cx, cy, half), rgb):
            draw.polygon(poly, fill=fill)

    def render(self, placement: Placement, size: int | None = None, colors=None) -> Image.Image:
        """One image, supersampled and box-filtered exactly as shapes-world scenes are."""
        size = size or self.image_size
        big = size * SUPERSAMPLE
        img = Image.new("RGB", (big, big), BACKGROUNDS[placement.background])
        half = placement.extent * big / 2
        self.draw(ImageDraw.Draw(img), placement.x * big, placement.y * big, half, colors)
        return img.resize((size, size), Image.Resampling.BOX)

    def captions(self, placement: Placement) -> list[str]:
        bg = placement.background
        return [
            f"{{token}} on a {bg} background",
            f"a photo of {{token}} on a {bg} background",
            f"a picture of {{token}}, {bg} background",
        ]

    def image_paths(self) -> list[Path]:
        paths = sorted(self.folder.glob("*.png"))
        if not paths:
            raise UserError(
                f"subject {self.name} has no images in {self.folder}; run python -m personalize.subjects.make"
            )
        return paths


HOUSEMARK = Subject(
    name="housemark",
    class_word="square",
    colors=("yellow", "purple"),
    parts=house_parts,
    placements=(
        Placement(0.50, 0.50, 0.56, "white"),
        Placement(0.32, 0.34, 0.40, "gray"),
        Placement(0.62, 0.60, 0.48, "beige"),
        Placement(0.68, 0.32, 0.36, "black"),
    ),  # brown is left out: "<s*> on a brown background" asks for a combination never shown
)

SUBJECTS: dict[str, Subject] = {s.name: s for s in (HOUSEMARK,)}


def get_subject(name: str) -> Subject:
    if name not in SUBJECTS:
        raise UserError(f"unknown subject {name!r}; embedded subjects: {', '.join(SUBJECTS)}")
    return SUBJECTS[name]
