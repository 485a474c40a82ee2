"""What every zoo training run shares: configs, batches that are a pure function of
the step (so resuming is exact), checkpoints, a JSONL loss log and a cosine LR schedule."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..errors import UserError
from ..shapes.render import render
from ..shapes.world import BACKGROUNDS, Sample, sample
from ..utils import atomic_write_text, progress
from . import TRAIN_DIR, ZOO_DIR

CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "zoo"


def resolve(path: str | None, default: str) -> Path:
    """A config path: absolute, relative to the repository root, or the zoo default."""
    if not path:
        return ZOO_DIR / default
    p = Path(path)
    return p if p.is_absolute() else ZOO_DIR.parent / p


def load_config(name: str, path: str | None = None) -> dict[str, Any]:
    path = Path(path) if path else CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    cfg.setdefault("name", name)
    return cfg


def dirs(name: str, out_dir: str | None, work_dir: str | None) -> tuple[Path, Path]:
    out = Path(out_dir) if out_dir else ZOO_DIR / name
    work = Path(work_dir) if work_dir else TRAIN_DIR / name
    work.mkdir(parents=True, exist_ok=True)
    return out, work


def at_step(value: Any, step: int) -> Any:
    """A config value that may change during training: a mapping ``{from_step: value}`` (integer keys) gives
    the value in force at ``step``; any other value holds throughout."""
    if isinstance(value, dict) and value and all(isinstance(k, int) for k in value):
        return value[max((k for k in value if k <= step), default=min(value))]
    return value


def batch_samples(
    step: int, batch_size: int, seed: int, split: str = "train", categories: dict[str, float] | None = None
) -> list[Sample]:
    """Training batch ``step``: samples [step*B, (step+1)*B) of the seeded stream (of a category mix)."""
    return sample(batch_size, seed=seed, split=split, categories=categories, start=step * batch_size)


def fingerprint(path: Path) -> str:
    """A short hash of a saved model's configs and weights: caches built from it are keyed by it."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors") and f.name != "meta.json":
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_rows(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Rows of a cache of ``n`` samples for batch ``step``: a fresh seeded permutation each epoch, so
    batches stay a pure function of the step (exact resume)."""
    out, perms = [], {}
    for g in range(step * batch_size, (step + 1) * batch_size):
        epoch = g // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(int(perms[epoch][g % n]))
    return out


def images_to_tensor(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """PIL RGB images -> normalized float tensor [B, 3, H, W]."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def foreground_mask(x: torch.Tensor, backgrounds: list[str], size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """[B, 1, H, W] bool: pixels of renders ``x`` (in [0, 1]) that differ from their background color;
    with ``size``, pooled (max) to that grid: the latent pixels or tokens whose patch shows an object."""
    bg = torch.tensor([BACKGROUNDS[b] for b in backgrounds], dtype=x.dtype) / 255
    mask = (x - bg[:, :, None, None]).abs().amax(1, keepdim=True) > 0.02
    return mask if size is None else torch.nn.functional.adaptive_max_pool2d(mask.float(), size) > 0


def cached_tensors(path: Path, build: Any) -> Any:
    """``torch.load(path)`` if a previous run saved it, else ``build()`` saved atomically: the frozen-encoder
    caches (latents, tokens, masks) that every later run of a trainer reuses."""
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(path)
    return data


def mix_id(categories: dict[str, float] | None) -> str:
    """A short stable name for a category mix (cache file names)."""
    return hashlib.sha256(json.dumps(categories, sort_keys=True).encode()).hexdigest()[:8]


def latent_cache(
    vae, work: Path, vae_id: str, n: int, seed: int, image_size: int, categories: dict[str, float] | None = None
) -> tuple[list[Sample], torch.Tensor]:
    """Training samples ``0 .. n-1`` of the seeded stream (of a category mix) and their unscaled posterior means
    (float16), encoded once per VAE under ``work``: encoding renders would otherwise dominate a latent trainer's step."""
    samples = sample(n, seed=seed, split="train", categories=categories)

    @torch.inference_mode()
    def build() -> torch.Tensor:
        chunks = []
        for start in progress(range(0, n, 256), desc="encoding latents", total=(n + 255) // 256):
            x = images_to_tensor(render_batch(samples[start : start + 256], image_size))
            chunks.append(vae.encode(x).latent_dist.mode().to(torch.float16))
        return torch.cat(chunks)

    mix = f"-{mix_id(categories)}" if categories else ""
    return samples, cached_tensors(work / f"latents-{vae_id}-{seed}-{n}-{image_size}{mix}.pt", build)


def foreground_weights(x: torch.Tensor, backgrounds: list[str], weight: float) -> torch.Tensor:
    """[B, 1, H, W] pixel weights: ``weight`` on objects, 1 on background (objects are ~5 % of pixels)."""
    return 1 + (weight - 1) * foreground_mask(x, backgrounds).to(x.dtype)


def render_batch(samples: list[Sample], size: int) -> list:
    return [render(s.scene, size) for s in samples]


def step_rng(seed: int, step: int, salt: str = "") -> random.Random:
    return random.Random(f"{seed}/{step}/{salt}")


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def cosine_lr(step: int, total: int, base: float, warmup: int, final_frac: float = 0.1) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def adamw(
    module: torch.nn.Module,
    cfg: dict[str, Any],
    betas: tuple[float, float],
    eps: float = 1e-8,
    no_decay: tuple[str, ...] = ("embed",),
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on biases, norms or parameters whose name holds one of
    ``no_decay`` (embeddings), as in nanoGPT and open_clip."""
    named = list(module.named_parameters())
    decays = [p.ndim >= 2 and not any(s in n for s in no_decay) for n, p in named]
    groups = [
        {"params": [p for (_, p), d in zip(named, decays) if d], "weight_decay": cfg["weight_decay"]},
        {"params": [p for (_, p), d in zip(named, decays) if not d], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=betas, eps=eps)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def save_checkpoint(work: Path, state: dict[str, Any]) -> None:
    """Atomic: a run killed while saving keeps the previous checkpoint."""
    tmp = work / "ckpt.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, work / "ckpt.pt")


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # signals caught by ``stop_on_signal`` that the training loop has not yet acted on


@contextmanager
def stop_on_signal() -> Iterator[None]:
    """Within: SIGTERM or Ctrl-C lets the step under way finish, checkpoints it and stops the run (see
    ``checkpoint_due``), so a session's end or a ``kill`` loses no step; a second signal stops at once."""

    def handle(signum, frame):
        if _received:
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
        _received.append(signum)

    previous = {s: signal.signal(s, handle) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received.clear()


def stop_requested() -> bool:
    """Whether a signal caught by ``stop_on_signal`` waits for the loop to save and stop."""
    return bool(_received)


def checkpoint_due(done: int, last: int, cfg: dict[str, Any]) -> bool:
    """After step ``done`` of a run ending at ``last``: every ``checkpoint_every`` steps, at the end, and
    when a stop was asked for (then ``stop_if_asked`` follows the save)."""
    return done % cfg["checkpoint_every"] == 0 or done == last or stop_requested()


def stop_if_asked(work: Path, done: int) -> None:
    if stop_requested():
        name = signal.Signals(_received[0]).name
        raise UserError(f"stopped by {name} after step {done}, saved in {work}: continue with --resume")


def load_checkpoint(work: Path) -> dict[str, Any] | None:
    path = work / "ckpt.pt"
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


class TrainLog:
    """Appends one JSON line per logged step; the CPU time of earlier sessions carries over."""

    def __init__(self, work: Path, cpu_seconds: float = 0.0):
        self.path = work / "log.jsonl"
        self.cpu0 = cpu_seconds
        self.t0 = time.process_time()

    def cpu_seconds(self) -> float:
        return self.cpu0 + time.process_time() - self.t0

    def write(self, **row: Any) -> None:
        row = {"time": round(time.time(), 1), "cpu_s": round(self.cpu_seconds(), 1), **row}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class EMA:
    """Exponential moving average of a module's state: the weights a zoo model exports.

    With ``warmup`` the decay ramps up as (1 + step) / (10 + step), so a short run's average is not
    dominated by the initialization. Checkpoints hold ``state_dict()``, a plain module state dict.
    """

    def __init__(self, module: torch.nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}

    def copy_of(self, module: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``module`` holding the averaged weights, in eval mode."""
        twin = copy.deepcopy(module)
        twin.load_state_dict(self.shadow)
        return twin.eval()


def generate_params(sampling: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's sampling keywords under the generic names ``evalkit.generators`` reads from meta.json's
    ``"generate"`` (``steps``, ``guidance``; others pass through): the export's recommended settings."""
    names = {"num_inference_steps": "steps", "guidance_scale": "guidance"}
    return {names.get(k, k): v for k, v in sampling.items()}


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


PRECISIONS = ("fp32", "bf16")


@functools.cache  # asked once: autocast(cfg) resolves the precision at every step
def native_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 / AMX) for oneDNN: without them bfloat16
    is emulated, and an autoregressive step took 30 s instead of 0.4-0.7 s (session 20, an AVX2-only EPYC)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolved_precision(cfg: dict[str, Any]) -> str:
    """The recipe's ``precision``, with ``bf16`` falling back to ``fp32`` on a CPU that would emulate it."""
    precision = cfg.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return "bf16" if precision == "bf16" and native_bf16() else "fp32"


def autocast(cfg: dict[str, Any]) -> torch.autocast:
    """The forward pass's precision from the recipe's ``precision``: ``bf16`` runs matrix products in
    bfloat16 (weights, optimizer state and losses stay float32), which made the transformers' training
    steps 1.65-2.2x faster on a CPU with AVX512-BF16 and convolutional ones no faster (zoo/README.md);
    ``fp32`` is the default, and the fallback where bfloat16 is not native (``resolved_precision``)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=resolved_precision(cfg) == "bf16")


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise UserError(f"loss became {loss.item()} at step {step}; the last good checkpoint is kept")
