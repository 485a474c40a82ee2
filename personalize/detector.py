"""The subject detector: is an embedded subject in an image, on the right background, with the right companion?

It sits beside the shapes-world oracle (``evalkit.shapes.oracle``) and reads images the same way,
so it survives what generators do to pixels (noise, blur, soft edges, slight color shifts):

1. every pixel (lightly smoothed) is named by its nearest color in Lab among the shapes world's
   object colors and backgrounds;
2. pixels named after either of the subject's two colors are joined into connected regions;
3. a region is the subject when both colors cover a fair share of it and sit in the subject's
   order (the first color's centroid above the second's): the two-color pattern, which no
   shapes-world object has (each is one color, and objects never touch);
4. its outline is scored separately: the soft IoU of the glyph's own template, posed from the
   region's moments as the oracle poses shapes, against a square posed the same way.

The background and any companion objects come from the oracle's own ``detect``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.measure import label, regionprops

from evalkit.shapes.oracle import DetectedObject, detect, to_rgb_array, working_copy
from evalkit.shapes.render import SUPERSAMPLE
from evalkit.shapes.world import BACKGROUNDS, COLORS, ObjectSpec

from .subjects import HOUSEMARK, Subject

MIN_AREA_FRAC = 0.012  # regions smaller than this are speckles (a subject a fifth of the side covers ~0.025)
MIN_SHARE = (0.12, 0.25)  # least share of the region each of the two colors must cover
MIN_PATTERN_SHARE = 0.75  # the two colors together: the rest is what closing the gaps between them added
MIN_PIECE = 0.75  # each color mostly in one piece (noise scatters it)
MIN_SOLIDITY = 0.75  # region area / convex hull area (the glyph's is ~0.87; speckle clusters are ragged)
MIN_ORDER = 0.12  # the second color's centroid must be this far (fraction of region height) below the first's
OUTLINE_MIN_IOU = 0.6

_NAMES = tuple(COLORS) + tuple(BACKGROUNDS)
_LAB = rgb2lab((np.array([*COLORS.values(), *BACKGROUNDS.values()], dtype=np.float64) / 255.0)[None])[0]


@dataclass(frozen=True)
class SubjectDetection:
    """What the detector saw. Fractions are of the image side (positions) or area (``area``)."""

    present: bool
    background: str
    bbox: tuple[float, float, float, float] | None  # x0, y0, x1, y1 of the best candidate region
    area: float  # covered fraction of the image
    shares: tuple[float, float]  # share of the region in each subject color
    outline_iou: float  # soft IoU of the glyph's template
    square_iou: float  # the same for a square (the nearest shapes-world outline)
    companions: tuple[DetectedObject, ...]  # oracle objects outside the subject

    @property
    def outline_ok(self) -> bool:
        return self.present and self.outline_iou >= OUTLINE_MIN_IOU and self.outline_iou > self.square_iou


def _solid(mask: np.ndarray) -> bool:
    """Whether the largest connected piece of ``mask`` holds at least ``MIN_PIECE`` of its pixels."""
    pieces = label(mask, connectivity=2)
    return bool(pieces.max()) and np.bincount(pieces.ravel())[1:].max() >= MIN_PIECE * mask.sum()


def name_pixels(rgb: np.ndarray) -> np.ndarray:
    """Index into ``_NAMES`` of each pixel's nearest palette or background color (Lab)."""
    lab = rgb2lab(ndimage.gaussian_filter(rgb, sigma=(0.5, 0.5, 0)))
    d = ((lab[:, :, None, :] - _LAB[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


@functools.cache
def _glyph_moments(subject_name: str) -> tuple[float, float]:
    """(area / half², centroid y-offset / half) of the glyph, measured on a large drawing."""
    subject = _subject(subject_name)
    half, side = 400.0, 1000
    m = _mask(subject, side / 2, side / 2, half, (side, side), supersample=1)
    area = m.sum()
    cy = (m.sum(axis=1) * (np.arange(side) + 0.5)).sum() / area
    return float(area / half**2), float((cy - side / 2) / half)


def _subject(name: str) -> Subject:
    from .subjects import SUBJECTS

    return SUBJECTS[name]


def _mask(
    subject: Subject | None, cx: float, cy: float, half: float, hw: tuple[int, int], supersample: int = SUPERSAMPLE
):
    """Coverage of the glyph (or of a square when ``subject`` is None) on an ``hw`` pixel grid."""
    h, w = hw
    s = supersample
    img = Image.new("L", (w * s, h * s), 0)
    draw = ImageDraw.Draw(img)
    if subject is None:
        draw.rectangle((s * (cx - half), s * (cy - half), s * (cx + half), s * (cy + half)), fill=255)
    else:
        subject.draw(draw, cx * s, cy * s, half * s, colors=(255, 255))
    if s > 1:
        img = img.resize((w, h), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float64) / 255.0


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-9))


def _outline_scores(region: np.ndarray, subject: Subject) -> tuple[float, float]:
    """(glyph IoU, square IoU) of templates posed from the region's area and centroid."""
    area = float(region.sum())
    yy, xx = np.indices(region.shape) + 0.5
    cx, cy = float(xx[region].mean()), float(yy[region].mean())
    k, off = _glyph_moments(subject.name)
    half = math.sqrt(area / k)
    glyph = _mask(subject, cx, cy - off * half, half, region.shape)
    square = _mask(None, cx, cy, math.sqrt(area) / 2, region.shape)
    target = region.astype(np.float64)
    return _soft_iou(target, glyph), _soft_iou(target, square)


def detect_subject(image: Image.Image | np.ndarray, subject: Subject = HOUSEMARK) -> SubjectDetection:
    """Find ``subject`` in an image of any size (PIL or array, as the oracle accepts).

    >>> from personalize.subjects import HOUSEMARK
    >>> d = detect_subject(HOUSEMARK.render(HOUSEMARK.placements[0]))
    >>> d.present, d.background, d.outline_ok
    (True, 'white', True)
    """
    rgb = working_copy(to_rgb_array(image))
    h, w = rgb.shape[:2]
    names = name_pixels(rgb)
    first, second = (names == _NAMES.index(subject.colors[0])), (names == _NAMES.index(subject.colors[1]))
    either = ndimage.binary_closing(first | second, structure=np.ones((3, 3)), border_value=0) | first | second
    labels = label(either, connectivity=2)
    best, best_key = None, (-1, -1.0)
    for r in regionprops(labels):
        if r.area < MIN_AREA_FRAC * h * w:
            continue
        region = labels == r.label
        a, b = first & region, second & region
        shares = (a.sum() / r.area, b.sum() / r.area)
        ok = shares[0] >= MIN_SHARE[0] and shares[1] >= MIN_SHARE[1] and sum(shares) >= MIN_PATTERN_SHARE
        ok = ok and _solid(a) and _solid(b) and r.solidity >= MIN_SOLIDITY
        if ok:
            ya, yb = np.nonzero(a)[0].mean(), np.nonzero(b)[0].mean()
            ok = (yb - ya) >= MIN_ORDER * (r.bbox[2] - r.bbox[0])
        key = (int(ok), float(r.area))
        if key > best_key:
            best, best_key = (r, region, shares, ok), key
    scene = detect(image)
    if best is None:
        return SubjectDetection(False, scene.background, None, 0.0, (0.0, 0.0), 0.0, 0.0, scene.objects)
    r, region, shares, ok = best
    y0, x0, y1, x1 = r.bbox
    bbox = (x0 / w, y0 / h, x1 / w, y1 / h)
    glyph_iou, square_iou = _outline_scores(ndimage.binary_fill_holes(region), subject) if ok else (0.0, 0.0)
    lo_x, lo_y, hi_x, hi_y = bbox[0] - 0.02, bbox[1] - 0.02, bbox[2] + 0.02, bbox[3] + 0.02  # a little margin
    companions = tuple(
        o for o in scene.objects if not (ok and lo_x <= o.centroid[0] <= hi_x and lo_y <= o.centroid[1] <= hi_y)
    )
    return SubjectDetection(
        present=bool(ok),
        background=scene.background,
        bbox=tuple(round(v, 4) for v in bbox),
        area=float(r.area / (h * w)),
        shares=(round(float(shares[0]), 4), round(float(shares[1]), 4)),
        outline_iou=round(glyph_iou, 4),
        square_iou=round(square_iou, 4),
        companions=companions,
    )


def check_subject(
    image: Image.Image | np.ndarray | SubjectDetection,
    subject: Subject = HOUSEMARK,
    background: str | None = None,
    companion: ObjectSpec | None = None,
) -> dict[str, Any]:
    """Checks a prompt about the subject states: ``present``, and ``background`` / ``companion`` when given.

    ``correct`` is all of them; a companion matches on shape and on color when the spec states one.
    """
    d = image if isinstance(image, SubjectDetection) else detect_subject(image, subject)
    checks = {"present": d.present}
    if background is not None:
        checks["background"] = d.background == background
    if companion is not None:
        checks["companion"] = any(
            o.shape == companion.shape and companion.color in (None, o.color) for o in d.companions
        )
    return {"correct": all(checks.values()), "checks": checks, "outline": d.outline_ok}
