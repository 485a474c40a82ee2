"""Subject images and tokens: everything a user hands in, checked before any model loads.

A subject folder holds 1 to 20 images of any size, format and EXIF orientation (decoded by
``evalkit.data.images.load_image``: upright 8-bit RGB, transparency on white, CMYK converted).
``N.txt`` beside ``N.png`` may hold captions, one alternative per line, with ``{token}`` (or the
token itself) where the subject goes. Hidden files and subfolders are ignored; anything else that
is not an image is an error, so a stray file never silently becomes training data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from evalkit.data.images import ImageSkip, load_image
from evalkit.errors import UserError

MAX_IMAGES = 20
CAPTION_SUFFIX = ".txt"


@dataclass
class SubjectImage:
    path: Path
    image: Image.Image  # upright RGB at its own size
    captions: list[str] = field(default_factory=list)  # templates with {token}; empty: use prompt templates


def load_subject_images(
    folder: str | Path, token: str | None = None, max_images: int = MAX_IMAGES
) -> list[SubjectImage]:
    """The subject images of ``folder``, sorted by file name, with their captions.

    Raises ``UserError`` for a missing folder, no images, more than ``max_images``, files that are
    not images, and captions without an image or without the token.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"subject image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    captions = {p.stem: p for p in files if p.suffix.lower() == CAPTION_SUFFIX}
    candidates = [p for p in files if p.suffix.lower() != CAPTION_SUFFIX]
    if not candidates:
        raise UserError(f"no images in {root}; put 1 to {max_images} photos of the subject there")
    if len(candidates) > max_images:
        raise UserError(
            f"{len(candidates)} files in {root}, but personalization takes 1 to {max_images} images; "
            f"keep the {max_images} best (3-5 varied ones are usually enough)"
        )
    items, bad = [], []
    for path in candidates:
        try:
            items.append(SubjectImage(path, load_image(path)))
        except ImageSkip as e:
            bad.append(f"{path.name} ({e.reason}{': ' + e.detail if e.detail else ''})")
    if bad:
        raise UserError(f"not usable as images in {root}: {'; '.join(bad)}; remove or replace them")
    stems = {it.path.stem for it in items}
    orphans = sorted(p.name for s, p in captions.items() if s not in stems)
    if orphans:
        raise UserError(f"caption files without an image of the same name in {root}: {', '.join(orphans)}")
    for it in items:
        if it.path.stem in captions:
            it.captions = read_captions(captions[it.path.stem], token)
    return items


def read_captions(path: Path, token: str | None) -> list[str]:
    """Non-empty lines of a caption file as templates; the literal token becomes ``{token}``."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read captions {path}: {e}") from None
    if not lines:
        raise UserError(f"caption file {path} is empty; write one caption per line with {{token}} in it")
    out = []
    for line in lines:
        if token and "{token}" not in line and token in line:
            line = line.replace(token, "{token}")
        if "{token}" not in line:
            raise UserError(f"caption {line!r} in {path} does not mention {{token}}; the model would not learn it")
        out.append(line)
    return out


def subject_fingerprint(items: list[SubjectImage]) -> str:
    """sha256 over file bytes and captions: two runs on the same inputs share it."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.path.name.encode())
        h.update(it.path.read_bytes())
        h.update("\n".join(it.captions).encode())
    return h.hexdigest()


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` and crop the centre square (diffusers' Resize + CenterCrop)."""
    return ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def new_token_names(token: str, num_vectors: int) -> list[str]:
    """``token, token_1, ...``: the names diffusers' ``load_textual_inversion`` gives a multi-vector embedding.

    >>> new_token_names("<s*>", 3)
    ['<s*>', '<s*>_1', '<s*>_2']
    """
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def check_new_tokens(tokenizer, token: str, num_vectors: int = 1) -> list[str]:
    """The tokens textual inversion will add; raises if any is already in the vocabulary."""
    if len(tokenizer) <= 3:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens: it loaded empty (damaged or missing files)")
    vocab = tokenizer.get_vocab()
    names = new_token_names(token, num_vectors)
    for name in names:
        if name in vocab or f"{name}</w>" in vocab:
            raise UserError(
                f"the token {name!r} is already in the tokenizer's vocabulary; textual inversion needs a new one "
                f"(e.g. '<{token.strip('<>')}-subject>' or '<s*>')"
            )
    return names
