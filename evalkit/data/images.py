"""Decode any image once, to RGB, safely: the one place untrusted image bytes meet PIL.

Web-scraped sets (LAION, img2dataset shards) hold every kind of bad file: truncated
downloads, HTML error pages saved as ``.jpg``, 1×1 tracking pixels, CMYK JPEGs,
16-bit PNGs, palette images with transparency, phone photos rotated by an EXIF tag,
decompression bombs. :func:`load_image` turns each good one into the same thing (an
upright 8-bit RGB image; transparency composited on white) and each bad one into an
:class:`ImageSkip` with a short ``reason`` code, which a :class:`SkipCounter` tallies so
a CLI can report ``skipped 3 (corrupt: 1, truncated: 2)`` instead of a traceback.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import UserError

# Sides below this carry nothing any extractor can use; 1×1 and 2×2 tracking pixels are
# common in web scrapes. Generated test images (32×32) and shapes renders (64×64) pass.
DEFAULT_MIN_SIDE = 8
# PIL's own warning threshold (``Image.MAX_IMAGE_PIXELS``): ~256 MB as RGB. Checked from the
# header, before PIL allocates anything.
DEFAULT_MAX_PIXELS = 89_478_485

# Formats accepted at all. Others (EPS runs Ghostscript, PSD, FITS, ...) are refused as
# ``not_image``: no reason to expose their decoders to untrusted bytes.
_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "PPM", "TGA", "ICO", "AVIF", "JPEG2000")
Image.init()
FORMATS: tuple[str, ...] = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)

SKIP_REASONS: dict[str, str] = {
    "empty": "zero-byte file or blob",
    "missing": "file or image field not found",
    "not_image": "not an image in an accepted format",
    "truncated": "image data ends early",
    "corrupt": "the decoder failed on the data",
    "unsupported_mode": "pixel format with no RGB conversion",
    "too_small": "a side shorter than min_side",
    "decompression_bomb": "more pixels than max_pixels",
    "bad_aspect": "aspect ratio over max_aspect (checked after decoding when metadata has no size)",
}

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | Image.Image


class ImageSkip(UserError):
    """A bad image; ``reason`` is one of :data:`SKIP_REASONS`, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = "", source: str | None = None):
        self.reason, self.detail, self.source = reason, detail, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}skipped image ({reason}{': ' + detail if detail else ''})")

    def __reduce__(self):  # survives pickling (DataLoader workers, multiprocessing) with its fields
        return type(self), (self.reason, self.detail, self.source)


def _describe(source: ImageSource) -> str | None:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return None


def _open(source: ImageSource, name: str | None) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise ImageSkip("missing", "no such file", name)
        data = path.read_bytes()
    else:
        data = bytes(source)
    if not data:
        raise ImageSkip("empty", "zero bytes", name)
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below decides; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageSkip("decompression_bomb", str(e).split(",")[0], name) from None
    except Image.UnidentifiedImageError:
        raise ImageSkip("not_image", "unrecognized data", name) from None
    except Exception as e:  # PIL plugins raise anything on malformed headers
        raise _classify(e, name) from None


def _classify(e: Exception, name: str | None) -> ImageSkip:
    msg = str(e) or type(e).__name__
    if isinstance(e, EOFError) or "truncated" in msg.lower():
        return ImageSkip("truncated", msg, name)
    return ImageSkip("corrupt", f"{type(e).__name__}: {msg}"[:200], name)


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale to 8-bit L by scaling, not clipping
    (PIL's ``convert`` clips, which turns a 16-bit photo white)."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        scale = 255.0 if finite.size and finite.min() >= 0 and finite.max() <= 1 else 1.0
        a = np.nan_to_num(a * scale, nan=0.0, posinf=255.0, neginf=0.0)
    elif im.mode.startswith("I;16") or a.max(initial=0) > 255:
        a = np.clip(a.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparent pixels become white (the usual paper colour of
    logos and clip art, and what a viewer shows)."""
    if im.mode == "RGB" and "transparency" not in im.info:  # a PNG's tRNS colour key makes RGB transparent
        return im
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _high_bit_depth_to_l(im).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        if im.mode == "La":  # premultiplied; PIL converts it only via LA
            im = im.convert("LA")
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def load_image(
    source: ImageSource,
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode ``source`` (bytes, a path, or an opened PIL image) to an upright RGB image.

    EXIF orientation is applied, so ``size`` is the size as displayed. Raises
    :class:`ImageSkip` for bad data, never a PIL exception; ``name`` labels the source
    in messages (a path names itself).

    >>> import io
    >>> buf = io.BytesIO(); Image.new("LA", (16, 8), (0, 0)).save(buf, "PNG")
    >>> im = load_image(buf.getvalue()); (im.mode, im.size, im.getpixel((0, 0)))
    ('RGB', (16, 8), (255, 255, 255))
    >>> load_image(b"<html>404</html>")
    Traceback (most recent call last):
    ...
    evalkit.data.images.ImageSkip: skipped image (not_image: unrecognized data)
    """
    name = name or _describe(source)
    im = _open(source, name)
    w, h = im.size  # from the header: nothing decoded or allocated yet
    if w * h > max_pixels:
        raise ImageSkip("decompression_bomb", f"{w}x{h} is over {max_pixels} pixels", name)
    if min(w, h) < min_side:  # EXIF rotation keeps the short side
        raise ImageSkip("too_small", f"{w}x{h} has a side under {min_side}px", name)
    try:
        im.load()
    except Exception as e:
        raise _classify(e, name) from None
    if im.format == "PPM" and im.mode == "I":  # a 16-bit PGM: scale by its depth, not by its brightest pixel
        im = Image.fromarray(np.asarray(im).astype(np.uint16))  # mode I;16
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block does not spoil the pixels
        pass
    try:
        return to_rgb(im)
    except ValueError as e:
        raise ImageSkip("unsupported_mode", f"{im.mode}: {e}", name) from None


def reasons_text(counts: Mapping[str, int]) -> str:
    """``reason: count, ...`` in the given order: how every command prints what it skipped or dropped."""
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


class SkipCounter:
    """Counts skipped items by reason (and keeps a few example sources per reason) so a
    command can report them in one line or in JSON; counters from shards merge with ``update``."""

    def __init__(self, max_examples: int = 3):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def add(self, reason: str | ImageSkip, source: str | None = None) -> None:
        if isinstance(reason, ImageSkip):
            reason, source = reason.reason, source or reason.source
        self.counts[reason] += 1
        if source is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < self.max_examples:
                ex.append(str(source))

    def update(self, other: SkipCounter) -> None:
        self.counts.update(other.counts)
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ex[: max(0, self.max_examples - len(mine))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def as_dict(self) -> dict[str, int]:
        """``{reason: count}``, most frequent first."""
        return dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "reasons": self.as_dict(),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }

    def __str__(self) -> str:
        if not self.total:
            return "skipped 0"
        return f"skipped {self.total} ({reasons_text(self.as_dict())})"

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


def try_load_image(source: ImageSource, skipped: SkipCounter, **kw: Any) -> Image.Image | None:
    """:func:`load_image`, but a bad image is counted in ``skipped`` and returns None."""
    try:
        return load_image(source, **kw)
    except ImageSkip as e:
        skipped.add(e)
        return None
