"""Uploaded subject images: checked, renamed and stored under the uploader's own session folder.

Nothing a browser sends is trusted: the count, each file's size and whether it decodes as an image
are checked before anything is copied, the stored names are rebuilt from safe characters (a name
like ``../../etc/x.png`` becomes ``00-x.png``), and every session writes only below
``WORK_DIR/sessions/<session>/``. A bad upload is answered with a :class:`~evalkit.errors.UserError`
naming the files at fault, which the tabs show as a message.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..data.images import ImageSkip, load_image
from ..errors import UserError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_counter = itertools.count()


def sanitize_name(name: str, index: int, max_len: int = 48) -> str:
    """``NN-stem.ext`` from safe characters only, with no directory part and no leading dot.

    >>> sanitize_name("../../etc/pass wd.PNG", 3)
    '03-pass_wd.png'
    >>> sanitize_name(".hidden", 0)
    '00-hidden'
    """
    base = Path(str(name).replace("\\", "/")).name
    stem, dot, ext = base.rpartition(".") if "." in base.lstrip(".") else (base, "", "")
    stem = _UNSAFE.sub("_", stem).strip("._-")[:max_len] or "image"
    ext = _UNSAFE.sub("", ext).lower()[:8]
    return f"{index:02d}-{stem}" + (f".{ext}" if dot and ext else "")


def session_dir(work_dir: Path, session: str | None) -> Path:
    """The folder of one browser session (gradio's session hash, reduced to safe characters)."""
    key = _UNSAFE.sub("", session or "")[:64] or "anonymous"
    path = Path(work_dir) / "sessions" / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_job_dir(parent: Path, prefix: str) -> Path:
    """A fresh, numbered folder under ``parent`` (two jobs of one session never share one)."""
    while True:
        path = parent / f"{prefix}-{next(_counter):04d}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue


def _name_of(upload: str | Path | dict) -> tuple[Path, str]:
    """(file on disk, name the user gave it) for what gradio hands a handler (a path or a FileData dict)."""
    if isinstance(upload, dict):
        path = Path(upload.get("path") or "")
        return path, str(upload.get("orig_name") or path.name)
    path = Path(upload)
    return path, path.name


def store_images(
    uploads: Sequence[str | Path | dict] | None, dest: Path, *, max_images: int, max_mb: float
) -> list[Path]:
    """Check uploaded images and copy them into ``dest`` under sanitized names; returns the stored files.

    Raises ``UserError`` when there are none, more than ``max_images``, or any file is over ``max_mb``
    or does not decode as an image (all offending files are named at once).
    """
    uploads = [u for u in (uploads or []) if u]
    if not uploads:
        raise UserError(f"upload 1 to {max_images} images of the subject (3-5 varied ones are usually enough)")
    if len(uploads) > max_images:
        raise UserError(f"{len(uploads)} files uploaded; personalization takes 1 to {max_images} images")
    limit = int(max_mb * 1024 * 1024)
    files, problems = [], []
    for upload in uploads:
        path, name = _name_of(upload)
        if not path.is_file():
            problems.append(f"{name} (upload missing)")
            continue
        size = path.stat().st_size
        if size > limit:
            problems.append(f"{name} ({size / 2**20:.1f} MB; the limit is {max_mb:g} MB)")
            continue
        try:
            load_image(path, name=name)
        except ImageSkip as e:
            problems.append(f"{name} (not an image we can read: {e.reason})")
            continue
        files.append((path, name))
    if problems:
        raise UserError("these uploads cannot be used: " + "; ".join(problems))
    dest.mkdir(parents=True, exist_ok=True)
    stored = []
    for i, (path, name) in enumerate(files):
        target = dest / sanitize_name(name, i)
        shutil.copyfile(path, target)
        stored.append(target)
    return stored
