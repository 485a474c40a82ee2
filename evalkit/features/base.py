"""What every feature extractor declares: preprocessing, feature names and dims, id and weights hash.

An extractor is a frozen network plus a declared preprocessing. Its ``id`` names the network and
the preprocessing (resize mode, size, crop), and ``weights_hash`` pins the exact weights, so a
cache key or a results row made from the two can't mix features of different protocols.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from ..utils import sha256_file
from .resize import center_crop_square, check_resize_mode, resize


@dataclass(frozen=True)
class Preprocess:
    """Crop, resize with a named mode, then normalize: ``(x/255 - mean) / std`` per channel.

    ``crop="center"`` keeps the centered square first (CLIP's eval transform); ``"none"`` squashes
    the whole image to the square, as FID code does.
    """

    size: int
    resize: str = "clean"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop: str = "none"

    def __post_init__(self) -> None:
        check_resize_mode(self.resize)
        if self.crop not in ("none", "center"):
            raise ValueError(f"crop must be 'none' or 'center', not {self.crop!r}")

    @property
    def tag(self) -> str:
        """The part of an extractor id that says how pixels reach the network."""
        crop = "|center-crop" if self.crop == "center" else ""
        return f"resize={self.resize}|{self.size}px{crop}"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image → normalized float32 ``3×size×size``."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.crop == "center":
            image = center_crop_square(image)
        x = resize(image, self.size, self.resize)
        mean = torch.tensor(self.mean, dtype=torch.float64).view(3, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float64).view(3, 1, 1) * 255.0
        return (x - mean.float()) / std.float()

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=64)
def _cached_file_hash(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def weights_sha256(*paths: str | Path) -> str:
    """sha256 of one weight file, or of the sorted per-file hashes for several; memoized per (path, size, mtime)."""
    hashes = []
    for p in paths:
        st = os.stat(p)
        hashes.append(_cached_file_hash(str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


class FeatureExtractor:
    """A frozen network with declared preprocessing; subclasses implement ``_forward``.

    Attributes:
        name: the network without preprocessing, e.g. ``"clip:ViT-B-32/laion2b_s34b_b79k"``.
        preprocess: how a PIL image becomes the network's input tensor.
        features: output feature names and their dims, e.g. ``{"image": 512}``.
        weights_hash: sha256 of the weight file(s).
        module: the ``nn.Module`` run on images (kept in eval mode; hook it to count forward calls).
        text_dim: dim of ``encode_text`` outputs, or ``None`` for image-only extractors.
    """

    name: str
    preprocess: Preprocess
    features: dict[str, int]
    weights_hash: str
    module: torch.nn.Module
    text_dim: int | None = None

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    @property
    def id(self) -> str:
        """Stable id naming the network and its preprocessing, e.g. ``judge:tiny|resize=clean|64px|center-crop``."""
        return f"{self.name}|{self.preprocess.tag}"

    def info(self) -> dict:
        """Everything a results row or cache entry needs to say which protocol made a feature."""
        return {
            "id": self.id,
            "name": self.name,
            "weights_hash": self.weights_hash,
            "features": dict(self.features),
            "text_dim": self.text_dim,
            "preprocess": self.preprocess.to_dict(),
        }

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def encode(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed batch ``N×3×S×S`` → ``{feature name: float32 N×dim}`` on the CPU."""
        self.module.eval()
        with torch.inference_mode():
            out = self._forward(batch.to(self.device))
        return {k: out[k].detach().float().cpu().clone() for k in self.features}

    def encode_images(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """PIL images → features, in one forward pass (no cache; see ``evalkit.features.extract``)."""
        return self.encode(torch.stack([self.preprocess(im) for im in images]))

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        raise TypeError(f"{self.name} has no text encoder")

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts → float32 ``N×text_dim`` on the CPU, for CLIP-like extractors."""
        if self.text_dim is None:
            raise TypeError(f"{self.name} has no text encoder")
        self.module.eval()
        with torch.inference_mode():
            out = self._encode_text(list(texts))
        return out.detach().float().cpu().clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, weights={self.weights_hash[:12]}, features={self.features})"
