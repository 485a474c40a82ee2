"""Small shared helpers: atomic writes, hashing, progress bars."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hub_offline() -> bool:
    """Offline for the Hugging Face hub. huggingface_hub reads HF_HUB_OFFLINE once, when first imported: a program
    that imported diffusers before evalkit set its offline default would otherwise go to the network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def progress_enabled() -> bool:
    return os.environ.get("EVALKIT_PROGRESS", "1") not in ("0", "false", "False")


def progress(it: Iterable[T], desc: str = "", total: int | None = None, **kw) -> Iterator[T]:
    """The one tqdm wrapper; ``EVALKIT_PROGRESS=0`` silences every bar."""
    return iter(tqdm(it, desc=desc, total=total, disable=not progress_enabled(), leave=False, **kw))
