"""The base model: any ``StableDiffusionPipeline`` evalkit can load, with its sampling defaults and a fingerprint.

Specs are evalkit's (``zoo/NAME``, ``dir:PATH``, ``hf:ORG/NAME``, a pipeline folder), so a missing
model fails at once with what to download and where. The fingerprint (file names, sizes, configs and
the ends of each weight file) keys the class-image cache and guards ``--resume`` against a swapped model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from evalkit.errors import UserError

FALLBACK_STEPS = 25
FALLBACK_GUIDANCE = 7.5


@dataclass
class BaseModel:
    pipe: Any  # StableDiffusionPipeline
    spec: str
    directory: Path | None
    fingerprint: str
    sample_steps: int
    guidance: float

    @property
    def size(self) -> int:
        """Native image side in pixels."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def check_resolution(self, size: int) -> None:
        """The VAE and each UNet downsampling halve the side, so it must divide by all of them."""
        step = int(self.pipe.vae_scale_factor) * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        if size % step:
            raise UserError(
                f"resolution {size} does not suit {self.spec}: use a multiple of {step} (native {self.size})"
            )


def model_fingerprint(directory: Path) -> str:
    """Cheap but specific: configs in full, weight files by size and their first and last MiB."""
    h = hashlib.sha256()
    for f in sorted(directory.rglob("*")):
        rel_parts = f.relative_to(directory).parts
        if not f.is_file() or f.name == "meta.json" or any(p.startswith(".") for p in rel_parts):
            continue
        rel = "/".join(rel_parts)
        h.update(rel.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            if f.suffix in (".json", ".txt"):
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, f.stat().st_size - (1 << 20)))
                h.update(fh.read())
    return h.hexdigest()[:16]


def _recommended(directory: Path | None) -> dict[str, Any]:
    """Sampling settings a model folder recommends in meta.json (``recommended`` as the zoo writes it, or ``generate``)."""
    if directory is None or not (directory / "meta.json").is_file():
        return {}
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except ValueError:
        return {}
    rec = dict(meta.get("generate") or {}) | dict(meta.get("recommended") or {})
    out = {}
    for key, names in {"steps": ("num_inference_steps", "steps"), "guidance": ("guidance_scale", "guidance")}.items():
        for n in names:
            if n in rec:
                out[key] = rec[n]
    return out


def load_base(spec: str, sample_steps: int | None = None, guidance: float | None = None) -> BaseModel:
    """Load ``spec`` as a fresh (uncached) StableDiffusionPipeline in float32 on the CPU."""
    from diffusers import StableDiffusionPipeline

    from evalkit.generators import load

    gen = load(spec, cache=False)
    pipe = getattr(gen, "pipe", None)
    if not isinstance(pipe, StableDiffusionPipeline):
        kind = type(pipe).__name__ if pipe is not None else type(gen).__name__
        raise UserError(f"{spec} is a {kind}; personalization needs a StableDiffusionPipeline")
    if len(pipe.tokenizer) <= 3:
        raise UserError(f"the tokenizer of {spec} loaded empty ({len(pipe.tokenizer)} tokens); its files are damaged")
    pipe.set_progress_bar_config(disable=True)
    source = Path(str(pipe.config._name_or_path or "")).expanduser()
    directory = source if source.is_dir() else None
    fingerprint = model_fingerprint(directory) if directory else hashlib.sha256(spec.encode()).hexdigest()[:16]
    rec = _recommended(directory)
    return BaseModel(
        pipe=pipe,
        spec=spec,
        directory=directory,
        fingerprint=fingerprint,
        sample_steps=int(sample_steps or rec.get("steps") or FALLBACK_STEPS),
        guidance=float(guidance if guidance is not None else rec.get("guidance", FALLBACK_GUIDANCE)),
    )


@contextlib.contextmanager
def quiet_diffusers():
    """diffusers and transformers warnings and progress bars off: a truncation warning on every step (which
    ``warn_long_prompts`` reports once instead), notes on how new embedding rows are initialized, shard bars."""
    from diffusers.utils import logging
    from transformers.utils import logging as tlog

    levels, bars = (logging.get_verbosity(), tlog.get_verbosity()), tlog.is_progress_bar_enabled()
    logging.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bars:
            tlog.enable_progress_bar()


def warn_long_prompts(tokenizer, prompts: list[str]) -> None:
    """Say once when prompts are cut to the text encoder's length (the pipeline would say so on every call)."""
    limit = tokenizer.model_max_length
    with quiet_diffusers():  # transformers would warn about the first long one itself
        long = sorted({p for p in prompts if len(tokenizer.tokenize(p)) + 2 > limit})  # + start and end tokens
    if long:
        print(f"warning: {len(long)} prompt(s) exceed the text encoder's {limit} tokens and are cut, e.g. {long[0]!r}",
              flush=True)  # fmt: skip


@torch.no_grad()
def sample(
    pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, size: int, batch: int = 8
) -> list[Image.Image]:
    """One image per (prompt, seed); each image's noise comes from its own seed, so batching never changes it."""
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]]
        out = pipe(list(prompts[i : i + batch]), generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                   height=size, width=size)  # fmt: skip
        images += out.images
    return images
