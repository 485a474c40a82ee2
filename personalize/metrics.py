"""Subject metrics (DreamBooth paper): CLIP-I and DINO-style image similarity to the subject images,
CLIP-T prompt fidelity. Raw cosines, as the paper reports them (SD DreamBooth 0.668 DINO, 0.803 CLIP-I,
0.305 CLIP-T with their real models; figures from the embedded judge are not comparable to those).

- CLIP-I: per generated image, the mean cosine of its CLIP image embedding to each subject image's.
- DINO: the same with a self-supervised ViT's CLS token (``hf:facebook/dino-vits16`` or a local
  transformers folder). Offline, the judge's image tower before its projection stands in
  (``judge-tower``): features that were not squeezed into the text-aligned space.
- CLIP-T: cosine of a generated image's embedding to its prompt's, with the class word in place of
  the token (CLIP has never seen the token).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from evalkit.errors import ModelNotFoundError, UserError, first_line
from evalkit.features import get_extractor
from evalkit.metrics.bootstrap import bootstrap_ci


@dataclass
class Figure:
    value: float | None
    n: int
    ci: tuple[float, float] | None

    def to_dict(self) -> dict:
        return {"value": self.value, "n": self.n, "ci95": list(self.ci) if self.ci else None}


def figure(values) -> Figure:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return Figure(None, 0, None)
    ci = bootstrap_ci(v, seed=0) if v.size >= 2 else None
    return Figure(round(float(v.mean()), 5), int(v.size), tuple(round(float(c), 5) for c in ci) if ci else None)


def mean_cosine_to(refs: torch.Tensor, feats: torch.Tensor) -> np.ndarray:
    """Per row of ``feats``, its mean cosine to the rows of ``refs``."""
    return (F.normalize(feats.double(), dim=-1) @ F.normalize(refs.double(), dim=-1).T).mean(1).numpy()


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (F.normalize(a.double(), dim=-1) * F.normalize(b.double(), dim=-1)).sum(-1).numpy()


class _SpatialMean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class TowerFeatures:
    """An open_clip extractor's image tower without its final projection (the offline DINO stand-in): a
    ViT's pooled token before ``proj``; a ResNet's last stage averaged over space, before the attention pool."""

    def __init__(self, clip_extractor):
        visual = getattr(clip_extractor, "model", None)
        visual = getattr(visual, "visual", None)
        if visual is None or not (hasattr(visual, "proj") or hasattr(visual, "attnpool")):
            raise UserError(f"{clip_extractor.name} has no ViT or ResNet image tower; pass --dino hf:ID or none")
        self.module = copy.deepcopy(visual).eval()
        if hasattr(visual, "attnpool"):  # ModifiedResNet: its attention pool ends in the projection
            self.module.attnpool = _SpatialMean()
        else:
            self.module.proj = None
        self.preprocess = clip_extractor.preprocess
        self.id = f"dino-style:{clip_extractor.name}/tower|{clip_extractor.preprocess.tag}"

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.stack([self.preprocess(im) for im in images])
        out = self.module(x)
        return (out[0] if isinstance(out, tuple) else out).float()


class HFDinoFeatures:
    """CLS token of a transformers vision model (DINO ViT-S/16 and kin) with its own image processor."""

    def __init__(self, source: str, label: str):
        from transformers import AutoImageProcessor, AutoModel

        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).eval()
        except OSError as e:
            raise ModelNotFoundError(
                f"DINO model {label} could not be loaded ({first_line(e)}); on a connected machine run "
                f"`hf download facebook/dino-vits16 --local-dir models/dino-vits16` and pass --dino dir:models/dino-vits16, "
                "or use --dino judge-tower"
            ) from None
        self.id = f"dino:{label}"

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return self.model(**inputs).last_hidden_state[:, 0].float()


def load_dino(spec: str, clip_extractor):
    """``judge-tower`` (the CLIP extractor's own tower), ``hf:ORG/NAME``, ``dir:PATH`` or a folder; ``none`` skips."""
    if spec in ("none", ""):
        return None
    if spec in ("judge-tower", "tower"):
        return TowerFeatures(clip_extractor)
    if spec.startswith("hf:"):
        return HFDinoFeatures(spec[3:], spec)
    path = spec[4:] if spec.startswith("dir:") else spec
    from pathlib import Path

    if not Path(path).expanduser().is_dir():
        raise UserError(f"DINO model folder not found: {path} (expected judge-tower, hf:ORG/NAME, dir:PATH or none)")
    return HFDinoFeatures(str(Path(path).expanduser()), f"dir:{path}")


class SubjectScorer:
    """Reference features of the subject images, computed once; ``score`` gives per-image values."""

    def __init__(self, subject_images: list[Image.Image], extractor: str = "judge", dino: str = "judge-tower"):
        self.clip = get_extractor(extractor)
        if self.clip.text_dim is None:
            raise UserError(f"extractor {extractor} has no text tower; CLIP-T needs a CLIP model (judge or clip:...)")
        self.dino = load_dino(dino, self.clip)
        self.ref_clip = self.clip.encode_images(subject_images)["image"]
        self.ref_dino = self.dino.encode_images(subject_images) if self.dino else None

    @property
    def extractor_ids(self) -> dict[str, str]:
        ids = {"clip_i": self.clip.id, "clip_t": self.clip.id}
        if self.dino:
            ids["dino"] = self.dino.id
        return ids

    def score(self, images: list[Image.Image], texts: list[str], batch: int = 32) -> dict[str, np.ndarray]:
        feats, dino = [], []
        for i in range(0, len(images), batch):
            feats.append(self.clip.encode_images(images[i : i + batch])["image"])
            if self.dino:
                dino.append(self.dino.encode_images(images[i : i + batch]))
        img = torch.cat(feats)
        out = {"clip_i": mean_cosine_to(self.ref_clip, img), "clip_t": paired_cosine(img, self.clip.encode_text(texts))}
        if self.dino:
            out["dino"] = mean_cosine_to(self.ref_dino, torch.cat(dino))
        return out
