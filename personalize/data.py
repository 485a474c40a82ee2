"""Training batches as a pure function of the step, so a resumed run sees exactly what an uninterrupted one would.

Images are encoded by the (frozen) VAE once; each step draws its latents from the stored posterior
(mean + std · noise) with a generator seeded by (seed, step), picks images by a per-epoch seeded
permutation and picks one caption or template per image, also seeded.
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .inputs import SubjectImage, fit_square

# Textual inversion's prompt templates (as in diffusers' textual_inversion.py), for images without captions.
OBJECT_TEMPLATES = (
    "a photo of a {token}", "a rendering of a {token}", "a cropped photo of the {token}", "the photo of a {token}",
    "a photo of a clean {token}", "a dark photo of the {token}", "a photo of my {token}", "a photo of the cool {token}",
    "a close-up photo of a {token}", "a bright photo of the {token}", "a good photo of the {token}",
    "a photo of one {token}", "a rendition of the {token}", "a photo of the nice {token}", "a photo of a small {token}",
    "a photo of the weird {token}", "a photo of the large {token}",
)  # fmt: skip
STYLE_TEMPLATES = (
    "a painting in the style of {token}", "a rendering in the style of {token}", "a cropped painting in the style of {token}",
    "the painting in the style of {token}", "a clean painting in the style of {token}", "a picture in the style of {token}",
    "a dark painting in the style of {token}", "a cool painting in the style of {token}", "a bright painting in the style of {token}",
    "a good painting in the style of {token}", "a close-up painting in the style of {token}", "a small painting in the style of {token}",
)  # fmt: skip


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images -> [B, 3, H, W] in [-1, 1], the VAE's input range."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div(127.5).sub(1.0)


@torch.no_grad()
def encode_posteriors(vae, images: list[Image.Image], batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior of each image, unscaled."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(to_tensor(images[i : i + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@dataclass
class Batch:
    latents: torch.Tensor  # scaled, [B, C, h, w]
    prompts: list[str]
    num_prior: int  # the last ``num_prior`` rows are class images


class ImageSet:
    """Encoded images with their prompt alternatives; ``take(step, n)`` is deterministic per step."""

    def __init__(self, vae, images: list[Image.Image], prompts: list[list[str]], seed: int, salt: str,
                 flip_p: float = 0.0):  # fmt: skip
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.mean, self.std = encode_posteriors(vae, images)
        self.flip_p = flip_p
        if flip_p > 0:
            self.flip_mean, self.flip_std = encode_posteriors(vae, [ImageOps.mirror(im) for im in images])
        self.prompts = prompts
        self.seed, self.salt = seed, salt

    def __len__(self) -> int:
        return self.mean.shape[0]

    def _rows(self, step: int, n: int) -> list[int]:
        """Rows ``[step*n, (step+1)*n)`` of an endless stream of seeded per-epoch permutations."""
        size, out, perms = len(self), [], {}
        for g in range(step * n, (step + 1) * n):
            epoch = g // size
            if epoch not in perms:
                perms[epoch] = random.Random(f"{self.seed}/{self.salt}/epoch{epoch}").sample(range(size), size)
            out.append(perms[epoch][g % size])
        return out

    def take(self, step: int, n: int) -> tuple[torch.Tensor, list[str]]:
        rng = random.Random(f"{self.seed}/{self.salt}/step{step}")
        gen = torch.Generator().manual_seed(hash_seed(self.seed, self.salt, step))
        rows = self._rows(step, n)
        means, stds, prompts = [], [], []
        for r in rows:
            flip = self.flip_p > 0 and rng.random() < self.flip_p
            means.append((self.flip_mean if flip else self.mean)[r])
            stds.append((self.flip_std if flip else self.std)[r])
            prompts.append(rng.choice(self.prompts[r]))
        mean, std = torch.stack(means), torch.stack(stds)
        latents = mean + std * torch.randn(mean.shape, generator=gen)
        return (latents - self.shift) * self.scale, prompts


def hash_seed(seed: int, salt: str, step: int) -> int:
    """A 63-bit seed from (seed, salt, step), stable across processes (unlike ``hash``).

    >>> hash_seed(0, "noise", 1) == hash_seed(0, "noise", 1) != hash_seed(0, "noise", 2)
    True
    """
    return int.from_bytes(hashlib.sha256(f"{seed}/{salt}/{step}".encode()).digest()[:8], "little") >> 1


class TrainingData:
    """Subject images (and class images for prior preservation) -> one ``Batch`` per step."""

    def __init__(self, vae, subject: list[SubjectImage], prompts: list[list[str]], size: int, batch_size: int,
                 seed: int, flip_p: float = 0.0, class_images: list[Image.Image] | None = None,
                 class_prompts: list[str] | None = None, subject_share: float = 0.0):  # fmt: skip
        """``class_prompts``: the prompt of each class image. ``subject_share``: the share of the class rows whose
        latents are drawn from the subject's images instead (their prompts stay class prompts)."""
        self.batch_size = batch_size
        self.instance = ImageSet(vae, [fit_square(s.image, size) for s in subject], prompts, seed, "instance", flip_p)
        self.prior = None
        self.num_subject_prior = 0
        if class_images:
            images = [fit_square(im, size) for im in class_images]
            self.prior = ImageSet(vae, images, [[p] for p in class_prompts], seed, "class", flip_p)
            self.num_subject_prior = round(subject_share * batch_size)
            self.subject_prior = copy.copy(self.instance)  # the same encoded images, drawn by a stream of its own
            self.subject_prior.salt = "subject-prior"

    def batch(self, step: int) -> Batch:
        latents, prompts = self.instance.take(step, self.batch_size)
        if self.prior is None:
            return Batch(latents, prompts, 0)
        prior_latents, prior_prompts = self.prior.take(step, self.batch_size)
        m = self.num_subject_prior
        if m:
            prior_latents[-m:] = self.subject_prior.take(step, m)[0]
        return Batch(torch.cat([latents, prior_latents]), prompts + prior_prompts, self.batch_size)


def instance_prompts(subject: list[SubjectImage], cfg) -> list[list[str]]:
    """Per image, its filled captions; else the configured instance prompt (DreamBooth) or TI templates."""
    if cfg.method == "ti" and not cfg.instance_prompt:
        default = STYLE_TEMPLATES if cfg.learnable_property == "style" else OBJECT_TEMPLATES
    else:
        default = (cfg.instance_prompt or ("a photo of {token} {class}" if cfg.class_word else "a photo of {token}"),)
    return [[cfg.fill(t) for t in (s.captions or default)] for s in subject]
