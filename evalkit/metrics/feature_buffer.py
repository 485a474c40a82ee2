"""Bounded, deterministic, mergeable feature buffers for metrics that need the features themselves.

torchmetrics' KID keeps every feature it is given. Here each side keeps at most ``max_samples`` rows: every
row gets a pseudo-random key hashed from its own values (and ``seed``), and a side holds the rows with the
``max_samples`` smallest keys (a "bottom-k" sample). That set is a uniform random sample of the stream, and
it depends only on *which* rows were seen, not on batch sizes, arrival order or how rows were split across
processes: the bottom-k of a union is the bottom-k of the per-shard bottom-k's. So buffers sync through
torchmetrics' own ``cat`` reduction and are trimmed again in ``compute``. Kept rows stay in arrival order.

Memory: between trims a side may hold up to ``2 · max_samples`` rows (trimming every batch would copy the
buffer each time): ``2 · max_samples · D · 4`` bytes per side for float32 (160 MB at 10k × 2048).
Identical rows share a key, so exact duplicates sit next to each other in key order; at the cut-off a group of
them may still be split (the sort is stable: of equal keys the earliest rows stay).

Distributed: every process must ``update`` each side it computes with at least one row before ``compute``
(torchmetrics cannot gather a ``cat`` state that is empty on one rank and 2-D on another).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .functional.inputs import MetricInputError, as_features
from .sync import synced

DEFAULT_MAX_SAMPLES = 10_000
_HASH_ROWS = 2048  # rows hashed per block: bounds the uint64 scratch array to 2048 · D · 8 bytes


def _splitmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def row_keys(features: Tensor, seed: int = 0) -> Tensor:
    """Keys in [0, 1) (float64 ``[N]``) hashed from each row's bytes: same row and seed, same key.

    >>> x = torch.arange(6.0).reshape(3, 2)
    >>> bool((row_keys(x) == row_keys(x.flip(0)).flip(0)).all())
    True
    """
    a = np.ascontiguousarray(features.detach().cpu().numpy())
    if a.ndim != 2:
        raise MetricInputError(f"row_keys: expected [N, D], got shape {a.shape}")
    bits = a.view(f"u{a.dtype.itemsize}")
    weights = np.random.default_rng(seed).integers(0, np.iinfo(np.uint64).max, size=a.shape[1], dtype=np.uint64) | 1
    out = np.empty(a.shape[0], dtype=np.uint64)
    for start in range(0, a.shape[0], _HASH_ROWS):
        blk = bits[start : start + _HASH_ROWS].astype(np.uint64)
        out[start : start + _HASH_ROWS] = (blk * weights).sum(axis=1, dtype=np.uint64)
    h = _splitmix64(out ^ np.uint64(a.shape[1]))
    return torch.from_numpy((h >> np.uint64(11)).astype(np.float64) * 2.0**-53).to(features.device)


def keep_bottom_k(features: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` rows with the smallest keys, in their original order."""
    if features.shape[0] <= k:
        return features, keys
    idx = torch.argsort(keys, stable=True)[:k].sort().values
    return features[idx], keys[idx]


class BufferedFeatureMetric(Metric):
    """Base for metrics over per-side feature buffers (``real``/``fake``), each bounded by ``max_samples``.

    States per side: ``{side}_features`` and ``{side}_keys`` (lists, ``cat``-reduced) and ``{side}_seen``
    (rows ever given, ``sum``-reduced). ``reset_real_features=False`` keeps the real side across ``reset``
    (a fixed reference set), like torchmetrics' FID/KID.
    """

    is_differentiable = False
    full_state_update = False
    sides: tuple[str, ...] = ("real", "fake")

    def __init__(
        self,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        seed: int = 0,
        reset_real_features: bool = True,
        buffer_dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (isinstance(max_samples, int) and max_samples >= 1):
            raise MetricInputError(f"max_samples must be a positive integer, got {max_samples!r}")
        if not isinstance(reset_real_features, bool):
            raise MetricInputError("reset_real_features must be a bool")
        if not buffer_dtype.is_floating_point:
            raise MetricInputError(f"buffer_dtype must be a floating dtype, got {buffer_dtype}")
        self.max_samples = max_samples
        self.seed = int(seed)
        self.reset_real_features = reset_real_features
        self.buffer_dtype = buffer_dtype
        for side in self.sides:
            self.add_state(f"{side}_features", [], dist_reduce_fx="cat")
            self.add_state(f"{side}_keys", [], dist_reduce_fx="cat")
            self.add_state(f"{side}_seen", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _side(self, real: bool) -> str:
        side = "real" if real else "fake"
        if side not in self.sides:
            raise MetricInputError(f"{type(self).__name__} takes only {' and '.join(self.sides)} features")
        return side

    def _append(self, side: str, features: Tensor | np.ndarray) -> None:
        x = as_features(features, f"{type(self).__name__} {side} features", dtype=self.buffer_dtype)
        if x.shape[0] == 0:
            return
        feats, keys = getattr(self, f"{side}_features"), getattr(self, f"{side}_keys")
        if feats and feats[0].shape[1] != x.shape[1]:
            raise MetricInputError(
                f"{type(self).__name__}: feature dimension changed from {feats[0].shape[1]} to {x.shape[1]}"
            )
        feats.append(x)
        keys.append(row_keys(x, self.seed))
        setattr(self, f"{side}_seen", getattr(self, f"{side}_seen") + x.shape[0])
        if sum(f.shape[0] for f in feats) > 2 * self.max_samples:
            kept, kept_keys = keep_bottom_k(dim_zero_cat(feats), dim_zero_cat(keys), self.max_samples)
            setattr(self, f"{side}_features", [kept])
            setattr(self, f"{side}_keys", [kept_keys])

    def features(self, side: str) -> Tensor:
        """The kept features of ``side`` over all processes (at most ``max_samples`` rows; ``[0, 0]`` when empty).

        Synced like ``compute`` (every process must call it); rows in arrival order, process by process.
        """
        with synced(self):
            feats, keys = getattr(self, f"{side}_features"), getattr(self, f"{side}_keys")
            if isinstance(feats, list) and not feats:
                return torch.zeros(0, 0, dtype=self.buffer_dtype, device=self.device)
            kept, _ = keep_bottom_k(dim_zero_cat(feats), dim_zero_cat(keys), self.max_samples)
            return kept

    def seen(self, side: str) -> int:
        """How many rows ``side`` was given in total over all processes (kept or not)."""
        with synced(self):
            return int(getattr(self, f"{side}_seen"))

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """torchmetrics' merge (lists concatenate), then trim each side back to ``max_samples``."""
        super().merge_state(incoming_state)
        for side in self.sides:
            feats = getattr(self, f"{side}_features")
            if (isinstance(feats, Tensor) or feats) and dim_zero_cat(feats).shape[0] > self.max_samples:
                kept, keys = keep_bottom_k(
                    dim_zero_cat(feats), dim_zero_cat(getattr(self, f"{side}_keys")), self.max_samples
                )
                setattr(self, f"{side}_features", [kept])
                setattr(self, f"{side}_keys", [keys])

    def reset(self) -> None:
        """Reset; with ``reset_real_features=False`` the real side is kept (as torchmetrics' FID/KID)."""
        if self.reset_real_features or "real" not in self.sides:
            super().reset()
            return
        names = ("real_features", "real_keys", "real_seen")
        saved = {name: self._defaults.pop(name) for name in names}
        try:
            super().reset()
        finally:
            self._defaults.update(saved)
