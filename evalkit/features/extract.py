"""Batched feature extraction: one pass per image per extractor, cached hits skip the network.

Decoding, hashing and preprocessing run in a background thread that hands batches to the network
through a short queue (PIL, hashlib and numpy release the GIL for the heavy part), so on two cores
the forward pass does not wait for the next batch. Images given as file bytes (``EncodedImage``)
are first looked up by the digest of those bytes: a warm cache answers them without decoding.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass

import torch
from PIL import Image

from ..data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageSkip, SkipCounter, load_image
from ..utils import progress
from .base import FeatureExtractor
from .cache import FeatureCache, file_digest, image_digest, text_digest

PREFETCH_BATCHES = 2
"""Preprocessed batches the background thread may hold ready while the network runs."""


@dataclass(frozen=True)
class EncodedImage:
    """An image as file bytes (PNG, JPEG, ...), decoded with ``evalkit.data.images.load_image`` only when needed.

    ``image``: the decoded pixels when the caller already has them (e.g. to run a detector on them too);
    the bytes then still key the cache's file index. ``name`` labels the source in skip messages.
    """

    data: bytes
    name: str | None = None
    image: Image.Image | None = None


@dataclass
class Extracted:
    """Features of the images that decoded, and which inputs they are.

    Attributes:
        features: ``{feature name: float32 K×dim}``, rows in input order.
        kept: input positions of the K rows (inputs that failed to decode are missing).
    """

    features: dict[str, torch.Tensor]
    kept: list[int]


def _stack(rows: list[dict[str, torch.Tensor]], dims: dict[str, int]) -> dict[str, torch.Tensor]:
    if not rows:
        return {k: torch.empty(0, d) for k, d in dims.items()}
    return {k: torch.stack([r[k] for r in rows]) for k in dims}


def _decodable_size(size: tuple[int, int]) -> bool:
    """The size checks ``load_image`` makes with its defaults, for an image known only from the file index."""
    w, h = size
    return min(w, h) >= DEFAULT_MIN_SIDE and w * h <= DEFAULT_MAX_PIXELS


_DONE = object()


class _Pipeline:
    """Rows of one ``extract`` call: the producer thread fills lookups and batches, the caller runs the network."""

    def __init__(
        self,
        extractor: FeatureExtractor,
        batch_size: int,
        cache: FeatureCache | None,
        skipped: SkipCounter | None,
    ) -> None:
        self.ext, self.batch_size, self.cache, self.skipped = extractor, batch_size, cache, skipped
        self.rows: list[dict[str, torch.Tensor] | None] = []
        self.kept: list[int] = []
        self.alias: dict[int, int] = {}  # row -> earlier row with the same pixels, encoded in this call
        self.first: dict[str, int] = {}  # pixel digest -> its row, for images encoded in this call

    # -- lookups and decoding (in the producer) ----------------------------------------------------------------------
    def _decode(self, item: EncodedImage) -> Image.Image | None:
        try:
            return load_image(item.data, name=item.name)
        except ImageSkip as e:
            if self.skipped is None:
                raise
            self.skipped.add(e)
            return None

    def _lookup(self, pos: int, item: Image.Image | EncodedImage) -> tuple[Image.Image, str | None] | None:
        """Record the row of input ``pos``; return (image, pixel digest) when it must go through the network."""
        if isinstance(item, Image.Image):
            image, data = item, None
        elif isinstance(item, EncodedImage):
            image, data = item.image, item.data
        else:
            raise TypeError(f"extract takes PIL images or EncodedImage, not {type(item).__name__}")
        cache = self.cache
        if cache is None:
            image = image if image is not None else self._decode(item)
            if image is None:
                return None
            self.kept.append(pos)
            self.rows.append(None)
            return image, None
        fdigest = file_digest(data) if data is not None else None
        pdigest = None
        if fdigest is not None and image is None:  # known bytes: their pixel digest without decoding
            known = cache.decoded(fdigest)
            if known is not None and _decodable_size(known.size):
                pdigest = known.pixels
        if pdigest is None:
            image = image if image is not None else self._decode(item)
            if image is None:
                return None
            pdigest = image_digest(image)
            if fdigest is not None:
                cache.put_decoded(fdigest, pdigest, image.size)
        row = len(self.rows)
        if pdigest in self.first:  # the same pixels are being encoded in this call: not cached yet, a miss
            cache.count(hit=False)
            self.kept.append(pos)
            self.rows.append(None)
            self.alias[row] = self.first[pdigest]
            return None
        hit = cache.get(self.ext, pdigest)
        if hit is None and image is None:  # bytes known, but not these features: decode after all
            image = self._decode(item)
            if image is None:
                return None
        self.kept.append(pos)
        self.rows.append(hit)
        if hit is not None:
            if image is None:
                cache.decoded_hits += 1
            return None
        self.first[pdigest] = row
        return image, pdigest

    def produce(
        self, items: Iterable[Image.Image | EncodedImage], desc: str, total: int | None
    ) -> Generator[tuple[list[int], torch.Tensor, list[str | None]], None, None]:
        """Batches ``(rows, preprocessed inputs, pixel digests)`` of the images the network must see."""
        rows, inputs, digests = [], [], []
        for pos, item in enumerate(progress(items, desc=desc, total=total)):
            todo = self._lookup(pos, item)
            if todo is None:
                continue
            rows.append(len(self.rows) - 1)
            inputs.append(self.ext.preprocess(todo[0]))
            digests.append(todo[1])
            if len(inputs) >= self.batch_size:
                yield rows, torch.stack(inputs), digests
                rows, inputs, digests = [], [], []
        if inputs:
            yield rows, torch.stack(inputs), digests

    def _send(self, q: queue.Queue, stop: threading.Event, item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, batches: Generator, q: queue.Queue, stop: threading.Event) -> None:
        try:
            for batch in batches:
                if not self._send(q, stop, batch):
                    return
            self._send(q, stop, _DONE)
        except BaseException as e:  # handed to the caller's thread, raised there
            self._send(q, stop, e)
        finally:
            batches.close()  # the caller stopped early: close the input streams in this thread

    @contextlib.contextmanager
    def prefetched(self, batches: Generator, depth: int) -> Iterator[Iterator]:
        """``batches`` produced ``depth`` ahead by a background thread (``depth`` 0: in the caller's thread)."""
        if depth <= 0:
            yield batches
            return
        q: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()
        thread = threading.Thread(target=self._fill, args=(batches, q, stop), name="evalkit-extract", daemon=True)
        thread.start()

        def drain() -> Iterator:
            while (item := q.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item

        try:
            yield drain()
        finally:
            stop.set()
            thread.join()

    # -- consumer side (caller's thread) ------------------------------------------------------------------------
    def run(self, items: Iterable[Image.Image | EncodedImage], desc: str, prefetch: int) -> Extracted:
        total = len(items) if hasattr(items, "__len__") else None
        if self.cache is not None:
            self.cache.refresh(self.ext)
        try:
            with self.prefetched(self.produce(items, desc, total), prefetch) as batches:
                for rows, x, digests in batches:
                    out = self.ext.encode(x)
                    for j, (i, digest) in enumerate(zip(rows, digests)):
                        self.rows[i] = {k: v[j] for k, v in out.items()}
                        if self.cache is not None:
                            self.cache.put(self.ext, digest, self.rows[i])
        finally:
            if self.cache is not None:
                self.cache.flush()
        for row, first in self.alias.items():
            self.rows[row] = self.rows[first]
        return Extracted(_stack(self.rows, self.ext.features), self.kept)


def extract_images(
    extractor: FeatureExtractor,
    images: Iterable[Image.Image | EncodedImage],
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    desc: str | None = None,
    skipped: SkipCounter | None = None,
    prefetch: int | None = None,
) -> Extracted:
    """Features of PIL images and/or image file bytes, and the input positions they belong to.

    ``EncodedImage`` inputs are looked up in ``cache`` by the digest of their bytes first (no decoding on a
    hit); the rest are decoded with ``load_image``. An input that does not decode is counted in ``skipped``
    and left out (``kept`` says which inputs the rows are); without ``skipped`` its ``ImageSkip`` is raised.
    ``prefetch``: batches prepared ahead in a background thread (default ``PREFETCH_BATCHES``; 0 prepares
    each batch in the caller's thread). Everything else is as ``extract``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    depth = PREFETCH_BATCHES if prefetch is None else prefetch
    return _Pipeline(extractor, batch_size, cache, skipped).run(images, desc or f"features {extractor.name}", depth)


def extract(
    extractor: FeatureExtractor,
    images: Iterable[Image.Image],
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """Features of PIL RGB images in input order: ``{feature name: float32 N×dim}``.

    Images found in ``cache`` (same pixels, extractor id and weights) are not run through the
    network; the rest go in batches of ``batch_size`` and are added to the cache (with a cache,
    repeats of an image within one call are encoded once).
    """
    return extract_images(extractor, images, batch_size, cache, desc).features


def encode_texts(
    extractor: FeatureExtractor,
    texts: Iterable[str],
    batch_size: int = 256,
    cache: FeatureCache | None = None,
) -> torch.Tensor:
    """Text embeddings ``float32 N×text_dim`` of a CLIP-like extractor, cached by (extractor, text) when asked."""
    if extractor.text_dim is None:
        raise TypeError(f"{extractor.name} has no text encoder")
    texts = list(texts)
    out: list[torch.Tensor | None] = [None] * len(texts)
    first: dict[str, int] = {}  # each distinct text is encoded once
    todo = []
    for i, text in enumerate(texts):
        if text in first:
            continue
        first[text] = i
        hit = cache.get(extractor, text_digest(text), kind="text") if cache is not None else None
        if hit is None:
            todo.append(i)
        else:
            out[i] = hit["text"]
    for start in progress(range(0, len(todo), batch_size), desc=f"texts {extractor.name}"):
        idx = todo[start : start + batch_size]
        emb = extractor.encode_text([texts[i] for i in idx])
        for j, i in enumerate(idx):
            out[i] = emb[j]
            if cache is not None:
                cache.put(extractor, text_digest(texts[i]), {"text": emb[j]}, kind="text")
    out = [o if o is not None else out[first[t]] for o, t in zip(out, texts)]
    if cache is not None:
        cache.flush()
    if not texts:
        return torch.empty(0, extractor.text_dim)
    return torch.stack(out)
