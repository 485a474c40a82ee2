"""``manifest.jsonl``: one JSON row per image of a generated folder; the folder's source of truth.

Rows are appended one at a time after their PNG is in place (flushed and fsynced), so a killed run
leaves at worst one torn last line, which :func:`read_manifest` drops. A row names its image by
``file`` (relative to the folder) and pins its bytes by ``sha256``.

A distributed run writes one shard manifest per process (``manifest.shard<rank>.jsonl``, same row format) and
folds them into ``manifest.jsonl`` when every process is done (see ``to_folder.merge_shard_manifests``).
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..utils import atomic_write_text, sha256_file

MANIFEST_NAME = "manifest.jsonl"
_SHARD_NAME = re.compile(r"manifest\.shard(\d+)\.jsonl")


def shard_manifest_name(rank: int) -> str:
    """The manifest process ``rank`` of a distributed run appends to."""
    return f"manifest.shard{int(rank)}.jsonl"


def shard_manifests(folder: str | Path) -> list[Path]:
    """Shard manifests present in ``folder`` (of this or an earlier, perhaps killed, distributed run), by rank."""
    found = []
    for path in Path(folder).glob("manifest.shard*.jsonl"):
        if m := _SHARD_NAME.fullmatch(path.name):
            found.append((int(m.group(1)), path))
    return [path for _, path in sorted(found)]


@dataclass
class ManifestRead:
    """Rows that parsed, plus what was dropped and why (``{reason: count}``)."""

    rows: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def read_manifest(path: str | Path) -> ManifestRead:
    """Parse a manifest, tolerating a torn last line and skipping any other unparsable line (counted)."""
    path = Path(path)
    result = ManifestRead([])
    if not path.is_file():
        return result
    data = path.read_bytes()
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        last = i == len(lines) - 1  # no newline after it: the write may have been cut short
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            result.drop("torn last line" if last else "unparsable line")
            continue
        result.rows.append(row)
    return result


def row_file_ok(root: Path, row: dict[str, Any]) -> str | None:
    """None if the row's image exists with the recorded sha256, else why not."""
    file = row.get("file")
    if not isinstance(file, str) or not file:
        return "row without file"
    path = root / file
    if not path.is_file():
        return "image file missing"
    if row.get("sha256") and sha256_file(path) != row["sha256"]:
        return "image sha256 mismatch"
    return None


def rewrite_manifest(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace the manifest atomically with exactly ``rows`` (used after dropping torn or stale rows)."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


class ManifestAppender:
    """Appends rows durably: the rows of one call are one ``write`` of full lines, then flush and fsync."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, *rows: dict[str, Any]) -> None:
        self._f.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ManifestAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps or text chunks): same pixels, same bytes, same sha256."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()
