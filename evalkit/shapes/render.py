"""Deterministic rendering of shapes-world scenes (4x supersampled, box-filtered down)."""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from .world import BACKGROUNDS, COLORS, SIZES, Scene

SUPERSAMPLE = 4


def shape_polygon(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape centred at (cx, cy) within a square of half-side ``half``;
    ``None`` for shapes drawn as ellipses (circle, ring)."""
    if shape == "square":
        h = half * 0.9
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half * 0.85), (cx - half, cy + half * 0.85)]
    if shape == "cross":
        a, t = half, half * 0.36
        return [
            (cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t),
            (cx + a, cy + t), (cx + t, cy + t), (cx + t, cy + a), (cx - t, cy + a),
            (cx - t, cy + t), (cx - a, cy + t), (cx - a, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    if shape == "star":
        pts = []
        for k in range(10):
            r = half if k % 2 == 0 else half * 0.42
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(ang), cy + half * 0.1 + r * math.sin(ang)))
        return pts
    if shape in ("circle", "ring"):
        return None
    raise ValueError(f"unknown shape {shape!r}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float, fill, hole=None) -> None:
    """Draw one shape; ``hole`` is the colour showing through a ring's centre."""
    poly = shape_polygon(shape, cx, cy, half)
    if poly is not None:
        draw.polygon(poly, fill=fill)
        return
    draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    if shape == "ring":
        r = half * 0.5
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=hole)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render ``scene`` as an RGB image of ``size`` x ``size`` pixels."""
    big = size * SUPERSAMPLE
    bg = BACKGROUNDS[scene.background]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        half = SIZES[o.size] * big / 2
        draw_shape(draw, o.shape, o.x * big, o.y * big, half, COLORS[o.color], hole=bg)
    return img.resize((size, size), Image.Resampling.BOX)


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding with no metadata, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
