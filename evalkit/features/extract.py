"""Batched feature extraction: one pass per image per extractor, cached hits skip the network."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from PIL import Image

from ..utils import progress
from .base import FeatureExtractor
from .cache import FeatureCache, image_digest, text_digest


def _stack(rows: list[dict[str, torch.Tensor]], dims: dict[str, int]) -> dict[str, torch.Tensor]:
    if not rows:
        return {k: torch.empty(0, d) for k, d in dims.items()}
    return {k: torch.stack([r[k] for r in rows]) for k in dims}


def extract(
    extractor: FeatureExtractor,
    images: Iterable[Image.Image],
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """Features of PIL RGB images in input order: ``{feature name: float32 N×dim}``.

    Images found in ``cache`` (same pixels, extractor id and weights) are not run through the
    network; the rest go in batches of ``batch_size`` and are added to the cache.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rows: list[dict[str, torch.Tensor] | None] = []
    todo_rows: list[int] = []
    todo_inputs: list[torch.Tensor] = []
    todo_digests: list[str | None] = []
    duplicates: dict[str, list[int]] = {}  # rows whose pixels wait in the current batch already

    def run_batch() -> None:
        if not todo_inputs:
            return
        out = extractor.encode(torch.stack(todo_inputs))
        for j, (i, digest) in enumerate(zip(todo_rows, todo_digests)):
            rows[i] = {k: v[j] for k, v in out.items()}
            if cache is not None:
                cache.put(extractor, digest, rows[i])
                for dup in duplicates.pop(digest, []):
                    rows[dup] = rows[i]
        todo_rows.clear()
        todo_inputs.clear()
        todo_digests.clear()

    total = len(images) if hasattr(images, "__len__") else None
    if cache is not None:
        cache.refresh(extractor)
    for image in progress(images, desc=desc or f"features {extractor.name}", total=total):
        digest = image_digest(image) if cache is not None else None
        hit = cache.get(extractor, digest) if cache is not None else None
        rows.append(hit)
        if hit is None and digest is not None and digest in todo_digests:
            duplicates.setdefault(digest, []).append(len(rows) - 1)
        elif hit is None:
            todo_rows.append(len(rows) - 1)
            todo_inputs.append(extractor.preprocess(image))
            todo_digests.append(digest)
            if len(todo_inputs) >= batch_size:
                run_batch()
    run_batch()
    if cache is not None:
        cache.flush()
    return _stack(rows, extractor.features)


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
