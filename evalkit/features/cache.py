"""On-disk feature cache: re-scoring the same pixels with the same extractor runs no network.

Key = extractor id (network + resize mode + size + crop) + weights sha256 + content digest, where
the digest hashes the decoded RGB pixels and size, so the same picture saved as PNG or as a
lossless WebP hits the same entry. Texts are keyed by their UTF-8 bytes.

Images that come as files or blobs are also indexed by the sha256 of their encoded bytes: a
``decoded`` index maps that digest to the pixel digest (and size) that decoding gave, so a warm
lookup reads and hashes the bytes and never decodes them. The index does not depend on the
extractor; its folder name carries the decoder version, so a new Pillow or decode rule starts
a fresh index instead of trusting old pixel digests.

Layout (root defaults to ``$EVALKIT_CACHE/features``, else ``~/.cache/t2i-evalkit/features``)::

    <root>/<sha256(format, id, weights hash)[:32]>/
        extractor.json                       the id, weights hash and dims, for people
        image/<time>-<pid>-<rand>.safetensors  "__digest__" uint8 N×32 + one float32 N×dim tensor per feature
        text/<...>.safetensors                 "__digest__" + "text" N×dim
    <root>/decoded-v<format>-pillow<version>/<...>.safetensors
                                             "__digest__" (file bytes) + "pixels" uint8 N×32 + "size" int64 N×2

New entries are buffered and written as one shard per flush (atomically, one fsync), not one file
per image: a per-image file costs ~3 ms of fsync here, 30 s for 10k images. Writers never touch
each other's shards, so several processes can share a root; more than ``max_shards`` shards in a
folder are merged into one on flush. One ``FeatureCache`` may be used from several threads (a lock
guards its state): ``extract`` looks entries up while it encodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import PIL
import torch
from PIL import Image

from ..utils import atomic_write_bytes, atomic_write_text
from .base import FeatureExtractor

CACHE_FORMAT = 1
DECODE_FORMAT = 2
"""Version of the bytes → pixels rule (``evalkit.data.images.load_image``); bump it when that rule changes."""
DIGEST_KEY = "__digest__"


def default_cache_root() -> Path:
    """``$EVALKIT_CACHE/features`` if set, else ``~/.cache/t2i-evalkit/features``."""
    base = os.environ.get("EVALKIT_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "t2i-evalkit") / "features"


def image_digest(image: Image.Image) -> str:
    """sha256 over the decoded RGB pixels and the size: equal pixels in any file format give equal digests."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    h_ = hashlib.sha256(f"RGB {w}x{h}\n".encode())
    h_.update(image.tobytes())
    return h_.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(data: bytes | bytearray | memoryview) -> str:
    """sha256 of an image file's encoded bytes: the key of the ``decoded`` index."""
    return hashlib.sha256(data).hexdigest()


class Decoded(NamedTuple):
    """What decoding some file bytes gave: the pixel digest (``image_digest``) and the size ``(w, h)``."""

    pixels: str
    size: tuple[int, int]


@lru_cache(maxsize=256)
def _folder_key(extractor_id: str, weights_hash: str) -> str:
    text = f"evalkit-features-v{CACHE_FORMAT}\n{extractor_id}\n{weights_hash}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _dims(extractor: FeatureExtractor, kind: str) -> dict[str, int]:
    if kind == "image":
        return dict(extractor.features)
    if kind == "text":
        if extractor.text_dim is None:
            raise TypeError(f"{extractor.name} has no text encoder")
        return {"text": extractor.text_dim}
    raise ValueError(f"kind must be 'image' or 'text', not {kind!r}")


class _Shelf:
    """The shards of one (extractor, kind): an in-memory index over every shard file plus pending rows."""

    def __init__(
        self,
        directory: Path,
        dims: dict[str, int],
        meta: dict[str, str],
        dtypes: dict[str, torch.dtype] | None = None,
    ) -> None:
        self.dir = directory
        self.dims = dims
        self.dtypes = {k: (dtypes or {}).get(k, torch.float32) for k in dims}
        self.meta = meta
        self.files: list[Path] = []
        self.shards: list[dict[str, torch.Tensor]] = []
        self.index: dict[bytes, tuple[int, int]] = {}
        self.pending: dict[bytes, dict[str, torch.Tensor]] = {}

    def refresh(self) -> None:
        """Load shards written since the last look (by this or another process)."""
        from safetensors.torch import load_file

        known = set(self.files)
        for path in sorted(self.dir.glob("*.safetensors")):
            if path in known:
                continue
            try:
                shard = load_file(str(path))
            except Exception as e:  # unreadable shard: skip it, the entries are recomputed
                warnings.warn(f"skipping unreadable feature cache shard {path}: {e}", stacklevel=2)
                continue
            n = shard.get(DIGEST_KEY, torch.empty(0, 32)).shape[0]
            if DIGEST_KEY not in shard or any(
                k not in shard or tuple(shard[k].shape) != (n, d) or shard[k].dtype != self.dtypes[k]
                for k, d in self.dims.items()
            ):
                warnings.warn(f"skipping feature cache shard {path}: features don't match {self.dims}", stacklevel=2)
                continue
            self._add(path, shard)

    def _add(self, path: Path, shard: dict[str, torch.Tensor]) -> None:
        i = len(self.shards)
        self.files.append(path)
        self.shards.append(shard)
        for row, digest in enumerate(shard[DIGEST_KEY].numpy()):
            self.index[digest.tobytes()] = (i, row)

    def get(self, digest: bytes) -> dict[str, torch.Tensor] | None:
        if digest in self.pending:
            return self.pending[digest]
        loc = self.index.get(digest)
        if loc is None:
            return None
        shard = self.shards[loc[0]]
        return {k: shard[k][loc[1]] for k in self.dims}

    def put(self, digest: bytes, features: dict[str, torch.Tensor]) -> None:
        row = {}
        for k, d in self.dims.items():
            v = torch.as_tensor(features[k]).detach().to("cpu", self.dtypes[k]).reshape(-1)
            if v.numel() != d:
                raise ValueError(f"feature {k!r} has {v.numel()} values, the extractor declares {d}")
            row[k] = v.clone()
        self.pending[digest] = row

    def _write(self, digests: list[bytes], rows: list[dict[str, torch.Tensor]]) -> tuple[Path, dict]:
        from safetensors.torch import save

        shard = {DIGEST_KEY: torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8).reshape(-1, 32)}
        shard.update(self._columns(rows))
        name = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
        path = self.dir / name
        atomic_write_bytes(path, save(shard, metadata=self.meta))
        return path, shard

    def _columns(self, rows: list) -> dict[str, torch.Tensor]:
        return {k: torch.stack([r[k] for r in rows]).contiguous() for k in self.dims}

    def flush(self, max_shards: int) -> None:
        if self.pending:
            path, shard = self._write(list(self.pending), list(self.pending.values()))
            self.pending = {}
            self._add(path, shard)
        if len(self.files) > max_shards:
            self.compact()

    def compact(self) -> None:
        """Merge every loaded shard into one file, then delete the merged ones (new shards of others are kept)."""
        if len(self.files) < 2:
            return
        digests = list(self.index)
        rows = [self.get(d) for d in digests]
        old = list(self.files)
        path, shard = self._write(digests, rows)
        for p in old:
            p.unlink(missing_ok=True)
        self.files, self.shards, self.index = [], [], {}
        self._add(path, shard)


class _DecodedIndex(_Shelf):
    """The file-bytes → (pixel digest, size) index: a ``_Shelf`` on disk, a plain dict in memory (one lookup
    per image, so no tensors per entry)."""

    def __init__(self, directory: Path, meta: dict[str, str]) -> None:
        super().__init__(directory, {"pixels": 32, "size": 2}, meta, {"pixels": torch.uint8, "size": torch.int64})
        self.entries: dict[bytes, tuple[bytes, int, int]] = {}

    def _add(self, path: Path, shard: dict[str, torch.Tensor]) -> None:
        super()._add(path, shard)
        keys, pixels = shard[DIGEST_KEY].numpy(), shard["pixels"].numpy()
        for key, pix, (w, h) in zip(keys, pixels, shard["size"].tolist()):
            self.entries[key.tobytes()] = (pix.tobytes(), w, h)

    def get(self, digest: bytes) -> tuple[bytes, int, int] | None:
        return self.entries.get(digest)

    def put(self, digest: bytes, entry: tuple[bytes, int, int]) -> None:
        if digest not in self.entries:
            self.entries[digest] = self.pending[digest] = entry

    def _columns(self, rows: list[tuple[bytes, int, int]]) -> dict[str, torch.Tensor]:
        pixels = torch.frombuffer(bytearray(b"".join(r[0] for r in rows)), dtype=torch.uint8).reshape(-1, 32)
        return {"pixels": pixels, "size": torch.tensor([r[1:] for r in rows], dtype=torch.int64).reshape(-1, 2)}


class FeatureCache:
    """Features on disk by (extractor id, weights hash, content digest), with hit/miss counters.

    Args:
        root: cache folder; default ``default_cache_root()``.
        flush_every: pending entries that trigger a shard write (so a killed run keeps its work).
        max_shards: shards per extractor folder before they are merged into one.

    Use ``evalkit.features.extract`` / ``encode_texts`` with ``cache=``; ``get``/``put`` work per entry.
    ``hits``/``misses`` count feature lookups; ``decoded_hits`` counts images found by their file bytes
    (features served without decoding).
    """

    def __init__(self, root: str | Path | None = None, flush_every: int = 4096, max_shards: int = 32) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.flush_every = flush_every
        self.max_shards = max_shards
        self.hits = 0
        self.misses = 0
        self.decoded_hits = 0
        self._shelves: dict[tuple[str, str], _Shelf] = {}
        self._lock = threading.RLock()

    @staticmethod
    def key(extractor: FeatureExtractor) -> str:
        """Folder name for an extractor: changes with its id (incl. resize mode), its normalization or its weights."""
        return _folder_key(f"{extractor.id}|mean={extractor.preprocess.mean}|std={extractor.preprocess.std}",
                           extractor.weights_hash)  # fmt: skip

    @staticmethod
    def decoded_key() -> str:
        """Folder name of the file-bytes → pixels index: changes with the decode rule or the Pillow version."""
        return f"decoded-v{DECODE_FORMAT}-pillow{PIL.__version__}"

    def _shelf(self, extractor: FeatureExtractor, kind: str) -> _Shelf:
        key = self.key(extractor)
        shelf = self._shelves.get((key, kind))
        if shelf is None:
            dims = _dims(extractor, kind)
            top = self.root / key
            info = top / "extractor.json"
            if not info.is_file():
                atomic_write_text(info, json.dumps(extractor.info(), indent=2, sort_keys=True) + "\n")
            meta = {"id": extractor.id, "weights_hash": extractor.weights_hash, "kind": kind}
            shelf = _Shelf(top / kind, dims, meta)
            shelf.dir.mkdir(parents=True, exist_ok=True)
            shelf.refresh()
            self._shelves[(key, kind)] = shelf
        return shelf

    def _decoded_shelf(self) -> _DecodedIndex:
        key = self.decoded_key()
        shelf = self._shelves.get((key, "decoded"))
        if shelf is None:
            meta = {"decode_format": str(DECODE_FORMAT), "pillow": PIL.__version__, "kind": "decoded"}
            shelf = _DecodedIndex(self.root / key, meta)
            shelf.dir.mkdir(parents=True, exist_ok=True)
            shelf.refresh()
            self._shelves[(key, "decoded")] = shelf
        return shelf

    def refresh(self, extractor: FeatureExtractor, kind: str = "image") -> None:
        """Pick up shards other processes wrote since this cache last looked (features and, for images, the
        file-bytes index)."""
        with self._lock:
            self._shelf(extractor, kind).refresh()
            if kind == "image":
                self._decoded_shelf().refresh()

    def get(self, extractor: FeatureExtractor, digest: str, kind: str = "image") -> dict[str, torch.Tensor] | None:
        """Cached features of one image (``image_digest``) or text (``text_digest``), or None; counts hits/misses."""
        with self._lock:
            found = self._shelf(extractor, kind).get(bytes.fromhex(digest))
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
            return found

    def put(
        self, extractor: FeatureExtractor, digest: str, features: dict[str, torch.Tensor], kind: str = "image"
    ) -> None:
        """Buffer one entry (1-D tensors per feature name); written at ``flush`` or every ``flush_every`` entries."""
        with self._lock:
            shelf = self._shelf(extractor, kind)
            shelf.put(bytes.fromhex(digest), features)
            if len(shelf.pending) >= self.flush_every:
                shelf.flush(self.max_shards)

    def decoded(self, file_digest: str) -> Decoded | None:
        """What the file bytes with this ``file_digest`` decoded to when last seen, or None (not counted)."""
        with self._lock:
            entry = self._decoded_shelf().get(bytes.fromhex(file_digest))
        return None if entry is None else Decoded(entry[0].hex(), (entry[1], entry[2]))

    def put_decoded(self, file_digest: str, pixels: str, size: tuple[int, int]) -> None:
        """Record that the file bytes ``file_digest`` decode to pixels with digest ``pixels`` and ``size`` (w, h)."""
        with self._lock:
            shelf = self._decoded_shelf()
            shelf.put(bytes.fromhex(file_digest), (bytes.fromhex(pixels), int(size[0]), int(size[1])))
            if len(shelf.pending) >= self.flush_every:
                shelf.flush(self.max_shards)

    def count(self, hit: bool) -> None:
        """Count a lookup answered without ``get`` (e.g. a repeat of an image already being encoded: a miss)."""
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def flush(self) -> None:
        """Write every buffered entry (one shard per extractor and kind)."""
        with self._lock:
            for shelf in self._shelves.values():
                shelf.flush(self.max_shards)

    def __len__(self) -> int:
        """Cached feature entries (images and texts) seen by this object; the file-bytes index is not counted."""
        with self._lock:
            return sum(len(s.index) + len(s.pending) for (_, kind), s in self._shelves.items() if kind != "decoded")

    def stats(self) -> dict:
        return {"root": str(self.root), "hits": self.hits, "misses": self.misses, "decoded_hits": self.decoded_hits}

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def __repr__(self) -> str:
        return f"FeatureCache(root={str(self.root)!r}, hits={self.hits}, misses={self.misses})"
