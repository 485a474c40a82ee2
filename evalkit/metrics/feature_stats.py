"""Mergeable Gaussian sufficient statistics of a feature set: n, Σx and Σxxᵀ in float64.

Sums (not means) are kept so that shards from several processes or runs add up exactly, in any order;
mean and covariance are rebuilt only when asked. Reference statistics (a LAION subset through one
extractor) are cached on disk as ``.npz`` or ``.safetensors`` and loaded instead of re-extracting.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..utils import atomic_write_bytes
from .functional.inputs import MetricInputError, as_features, require_samples

STATS_FORMAT = "evalkit.FeatureStats/1"
_SUFFIXES = (".npz", ".safetensors")


@dataclass(frozen=True)
class FeatureStats:
    """Count, feature sum and sum of outer products of a set of ``[N, D]`` features (float64).

    ``meta`` holds free-form strings (extractor id, weights hash, data set, ...) saved with the file,
    so a cached reference can be checked against the protocol it is used with.

    >>> a = FeatureStats.from_features(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    >>> b = FeatureStats.from_features(torch.tensor([[4.0, 5.0]]))
    >>> (a + b).n, (a + b).mean().tolist()
    (3, [2.0, 3.0])
    """

    n: int
    sum: Tensor
    outer: Tensor
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = self.sum.shape[0] if self.sum.dim() == 1 else -1
        if self.sum.dim() != 1 or tuple(self.outer.shape) != (d, d):
            raise MetricInputError(
                f"FeatureStats: sum must be [D] and outer [D, D], got {tuple(self.sum.shape)} and {tuple(self.outer.shape)}"
            )
        if self.n < 0:
            raise MetricInputError(f"FeatureStats: n must be >= 0, got {self.n}")

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def empty(cls, dim: int, device: torch.device | str | None = None) -> FeatureStats:
        """Statistics of no samples: the identity of ``merge``."""
        z = torch.zeros(dim, dtype=torch.float64, device=device)
        return cls(0, z, torch.zeros(dim, dim, dtype=torch.float64, device=device))

    @classmethod
    def from_features(cls, features: Tensor | np.ndarray, meta: dict[str, str] | None = None) -> FeatureStats:
        """Accumulate ``[N, D]`` features in float64."""
        x = as_features(features, "FeatureStats.from_features", dtype=torch.float64)
        return cls(int(x.shape[0]), x.sum(dim=0), x.T @ x, dict(meta or {}))

    @classmethod
    def from_mean_cov(cls, mean: Tensor | np.ndarray, cov: Tensor | np.ndarray, n: int) -> FeatureStats:
        """Rebuild sums from a mean, an unbiased covariance and n (e.g. a pytorch-fid/clean-fid ``mu, sigma``)."""
        require_samples(n, 2, "FeatureStats.from_mean_cov")
        mu = torch.as_tensor(mean, dtype=torch.float64)
        sigma = torch.as_tensor(cov, dtype=torch.float64)
        return cls(int(n), n * mu, (n - 1) * sigma + n * torch.outer(mu, mu))

    # -- algebra ------------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.sum.shape[0])

    def merge(self, *others: FeatureStats) -> FeatureStats:
        """Statistics of the union of the sets (exact up to float64 rounding; order does not matter)."""
        n, s, o = self.n, self.sum, self.outer
        for other in others:
            if other.dim != self.dim:
                raise MetricInputError(f"FeatureStats.merge: dimensions differ ({self.dim} vs {other.dim})")
            n, s, o = n + other.n, s + other.sum.to(s.device), o + other.outer.to(o.device)
        return FeatureStats(n, s, o, dict(self.meta))

    __add__ = merge

    def update(self, features: Tensor | np.ndarray) -> FeatureStats:
        """A new value with ``features`` added (the value type stays immutable)."""
        return self.merge(FeatureStats.from_features(features))

    def mean(self) -> Tensor:
        require_samples(self.n, 1, "FeatureStats.mean")
        return self.sum / self.n

    def cov(self) -> Tensor:
        """Unbiased covariance ``(Σxxᵀ - n μμᵀ) / (n - 1)``, symmetrised."""
        require_samples(self.n, 2, "a covariance", "add more images to this side")
        mu = self.sum / self.n
        c = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return (c + c.T) / 2

    def to(self, device: torch.device | str) -> FeatureStats:
        return FeatureStats(self.n, self.sum.to(device), self.outer.to(device), dict(self.meta))

    def allclose(self, other: FeatureStats, rtol: float = 1e-12, atol: float = 0.0) -> bool:
        return (
            self.n == other.n
            and torch.allclose(self.sum, other.sum.to(self.sum.device), rtol=rtol, atol=atol)
            and torch.allclose(self.outer, other.outer.to(self.outer.device), rtol=rtol, atol=atol)
        )

    # -- files --------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically to ``.npz`` or ``.safetensors`` (chosen by suffix); returns the path."""
        path = Path(path)
        meta = json.dumps(self.meta, sort_keys=True)
        s, o = self.sum.detach().cpu(), self.outer.detach().cpu()
        if path.suffix == ".npz":
            buf = io.BytesIO()
            np.savez(
                buf,
                format=np.str_(STATS_FORMAT),
                n=np.int64(self.n),
                sum=s.numpy(),
                outer=o.numpy(),
                meta=np.str_(meta),
            )
            data = buf.getvalue()
        elif path.suffix == ".safetensors":
            from safetensors.torch import save

            tensors = {"n": torch.tensor([self.n], dtype=torch.int64), "sum": s.contiguous(), "outer": o.contiguous()}
            data = save(tensors, metadata={"format": STATS_FORMAT, "meta": meta})
        else:
            raise UserError(f"feature statistics file must end in {' or '.join(_SUFFIXES)}: {path}")
        atomic_write_bytes(path, data)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read a file written by ``save``; a missing or foreign file is a one-line ``UserError``."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"feature statistics not found: {path} (compute them once and save with FeatureStats.save)")
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    fmt, n = str(z["format"]), int(z["n"])
                    s, o, meta = torch.from_numpy(z["sum"]), torch.from_numpy(z["outer"]), str(z["meta"])
            elif path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    header: dict[str, Any] = f.metadata() or {}
                    fmt, meta = header.get("format", ""), header.get("meta", "{}")
                    n, s, o = int(f.get_tensor("n")[0]), f.get_tensor("sum"), f.get_tensor("outer")
            else:
                raise UserError(f"feature statistics file must end in {' or '.join(_SUFFIXES)}: {path}")
        except UserError:
            raise
        except Exception as e:  # a truncated or foreign file: say which one
            raise UserError(f"cannot read feature statistics {path}: {e}") from e
        if fmt != STATS_FORMAT:
            raise UserError(f"{path} is not an evalkit FeatureStats file (format {fmt!r}, expected {STATS_FORMAT!r})")
        return cls(n, s.to(torch.float64), o.to(torch.float64), json.loads(meta))
