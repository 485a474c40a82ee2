"""The diffusion generator's autoencoder: a diffusers ``AutoencoderKL`` trained on shapes renders.

CALIBRATION.md found the VAE caps shape accuracy: a 4x-downsampling VAE trained for minutes rounds
off corners, and the oracle then reads the wrong shape in reconstructions of *real* renders. So this
one downsamples once (64x64 renders -> 32x32x4 latents, where a small object still spans ~7 latents),
trains on L1 plus an image-gradient term (edges are what tell a star from a circle) with a small KL
weight, and is judged by the oracle accuracy of its reconstructions before the UNet trains on it.
Export: ``zoo/diffusion-vae`` (``AutoencoderKL.save_pretrained`` + meta.json); the diffusion
pipeline copies it as its ``vae`` component.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

from ..errors import UserError
from ..shapes.oracle import evaluate as oracle_evaluate
from ..shapes.render import render
from ..shapes.world import describe, sample
from ..utils import progress
from .common import (
    TrainLog,
    batch_samples,
    check_finite,
    checkpoint_due,
    cosine_lr,
    dirs,
    images_to_tensor,
    load_checkpoint,
    render_batch,
    save_checkpoint,
    set_lr,
    step_generator,
    stop_if_asked,
    write_meta,
)

NAME = "diffusion-vae"


def build_vae(model_cfg: dict[str, Any], image_size: int) -> AutoencoderKL:
    """``logvar_init``: start the posterior's log-variance there (e.g. -6, sigma ~0.05) instead of ~0. From
    sigma ~1 the decoder first sees mostly noise and learns blurred means, and Adam needs hundreds of
    steps to walk the log-variance down; starting low lets reconstructions sharpen from the start."""
    levels = len(model_cfg["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(model_cfg["block_out_channels"]),
        layers_per_block=model_cfg["layers_per_block"],
        latent_channels=model_cfg["latent_channels"],
        norm_num_groups=model_cfg.get("norm_num_groups", 32),
        mid_block_add_attention=model_cfg.get("mid_block_attention", False),
        sample_size=image_size,
    )
    if model_cfg.get("logvar_init") is not None:
        logvar = slice(model_cfg["latent_channels"], 2 * model_cfg["latent_channels"])  # moments: mean, logvar
        with torch.no_grad():
            vae.quant_conv.weight[logvar].mul_(0.1)
            vae.quant_conv.bias[logvar].fill_(model_cfg["logvar_init"])
    return vae


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def foreground(x: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """[B, 1, H, W] mask of pixels that differ from the image's background (its median color), grown by
    one pixel to take in antialiased edges."""
    bg = x.flatten(2).median(dim=2).values[..., None, None]
    mask = ((x - bg).abs().amax(dim=1, keepdim=True) > threshold).float()
    return F.max_pool2d(mask, 3, stride=1, padding=1)


def vae_loss(
    recon: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, latent_elements: int, cfg: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """L1 with object pixels weighted up (``foreground_weight``: objects cover a tenth of an image, yet
    they are all the oracle reads), + edge (L1 of image-gradient differences), + KL per latent element
    (diffusers' ``kl()`` sums over an image's latent elements; dividing makes the weight size-free)."""
    err = (recon - x).abs()
    weights = 1.0 + cfg.get("foreground_weight", 0.0) * foreground(x)
    rec = (err * weights).mean()
    (rx, ry), (tx, ty) = image_gradients(recon), image_gradients(x)
    edge = (rx - tx).abs().mean() + (ry - ty).abs().mean()
    kl = kl.mean() / latent_elements
    loss = rec + cfg["edge_weight"] * edge + cfg["kl_weight"] * kl
    return {"loss": loss, "l1": err.mean(), "l1_objects": (err * (weights > 1)).sum() / (weights > 1).sum().clamp(min=1) / 3,
            "edge": edge, "kl": kl}  # fmt: skip


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] tensors -> PIL images (as the pipeline's postprocessing rounds)."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    """Train for ``steps``; while the reconstructions' oracle accuracy is below ``oracle_target``, go on
    for ``extension_steps`` more at the final learning rate, at most ``max_extensions`` times."""
    out, work = dirs(NAME, out_dir, work_dir)
    torch.manual_seed(cfg["seed"])
    vae = build_vae(cfg["model"], cfg["image_size"])
    opt = torch.optim.AdamW(
        vae.parameters(), lr=cfg["lr"], betas=(0.9, 0.99), weight_decay=cfg.get("weight_decay", 0.0)
    )
    start, cpu, extensions = 0, 0.0, 0
    ckpt = load_checkpoint(work) if resume else None
    if ckpt:
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, cpu, extensions = ckpt["step"], ckpt["cpu_s"], ckpt.get("extensions", 0)
        print(f"resumed at step {start}", flush=True)
    log = TrainLog(work, cpu)
    target = cfg.get("oracle_target", 0.95)
    while True:
        end = cfg["steps"] + extensions * cfg.get("extension_steps", 0)
        _train_steps(vae, opt, log, work, cfg, start, end, extensions)
        vae.eval()
        figs = reconstruction_figures(vae, n=cfg.get("eval_n", 500), image_size=cfg["image_size"])
        log.write(step=end, final_eval=figs, extensions=extensions)
        if figs["oracle_full"] >= target or extensions >= cfg.get("max_extensions", 0):
            break
        print(f"step {end}: reconstructions {figs} below the {target} target; training on", flush=True)
        extensions, start = extensions + 1, end
        save_checkpoint(work, {"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": end,
                               "cpu_s": log.cpu_seconds(), "extensions": extensions, "config": cfg})  # fmt: skip
    scale = latent_scaling_factor(vae, cfg, n=cfg.get("scale_n", 512))
    vae.register_to_config(scaling_factor=scale)  # before save_pretrained, or the pipeline ignores it
    vae.save_pretrained(out, safe_serialization=True)
    meta = {"model": "AutoencoderKL", "params": sum(p.numel() for p in vae.parameters()), "steps": end,
            "batch_size": cfg["batch_size"], "cpu_seconds": round(log.cpu_seconds()), "scaling_factor": scale,
            "latent_shape": latent_shape(vae, cfg["image_size"]), "reconstruction": figs, "config": cfg}  # fmt: skip
    write_meta(out, meta)
    verdict = "meets" if figs["oracle_full"] >= target else "is BELOW"
    print(
        f"VAE exported to {out}: {figs}; oracle accuracy of reconstructions {verdict} the {target} target", flush=True
    )


def _train_steps(
    vae, opt, log: TrainLog, work: Path, cfg: dict[str, Any], start: int, end: int, extensions: int
) -> None:
    vae.train()
    for step in progress(range(start, end), desc=NAME, total=end - start):
        lr = cosine_lr(step, cfg["steps"], cfg["lr"], cfg["warmup"])  # constant at its final value past ``steps``
        set_lr(opt, lr)
        x = images_to_tensor(render_batch(batch_samples(step, cfg["batch_size"], cfg["seed"]), cfg["image_size"]))
        posterior = vae.encode(x).latent_dist
        z = (
            posterior.sample(generator=step_generator(cfg["seed"], step))
            if cfg.get("sample_posterior", True)
            else posterior.mode()
        )
        recon = vae.decode(z).sample
        parts = vae_loss(recon, x, posterior.kl(), posterior.mean[0].numel(), cfg)
        check_finite(parts["loss"], step)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        done = step + 1
        if done % cfg["log_every"] == 0:
            log.write(step=done, lr=lr, **{k: round(v.item(), 5) for k, v in parts.items()})
        if checkpoint_due(done, end, cfg):
            save_checkpoint(work, {"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": done,
                                   "cpu_s": log.cpu_seconds(), "extensions": extensions, "config": cfg})  # fmt: skip
            stop_if_asked(work, done)
        if cfg.get("eval_every") and done % cfg["eval_every"] == 0 and done < end:
            figs = reconstruction_figures(vae, n=cfg.get("eval_n_during", 100), image_size=cfg["image_size"])
            log.write(step=done, eval=figs)
            print(f"step {done}: loss {parts['loss'].item():.4f} {figs}", flush=True)
            vae.train()


def latent_shape(vae: AutoencoderKL, image_size: int) -> list[int]:
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    return [vae.config.latent_channels, image_size // down, image_size // down]


@torch.inference_mode()
def latent_scaling_factor(vae: AutoencoderKL, cfg: dict[str, Any], n: int = 512) -> float:
    """1 / std of posterior samples of training renders, so scaled latents have unit variance (as SD's 0.18215)."""
    samples = sample(n, seed=cfg["seed"], split="train", start=10_000_000)
    x = images_to_tensor(render_batch(samples, cfg["image_size"]))
    z = torch.cat(
        [
            vae.encode(x[i : i + 64]).latent_dist.sample(generator=torch.Generator().manual_seed(i))
            for i in range(0, n, 64)
        ]
    )
    return float(1.0 / z.float().std())


@torch.inference_mode()
def reconstruct(vae: AutoencoderKL, images: list[Image.Image], batch: int = 64) -> list[Image.Image]:
    out = []
    for i in range(0, len(images), batch):
        x = images_to_tensor(images[i : i + batch])
        out += to_pil(vae.decode(vae.encode(x).latent_dist.mode()).sample)
    return out


def reconstruction_figures(vae: AutoencoderKL, n: int = 500, image_size: int = 64, seed: int = 4321) -> dict[str, Any]:
    """Oracle accuracy of reconstructions of held-out renders, against their captions' specs and against
    the full description of each scene (every attribute stated), plus PSNR."""
    vae.eval()
    samples = sample(n, seed=seed, split="test")
    real = [render(s.scene, image_size) for s in samples]
    recon = reconstruct(vae, real)
    a = np.stack([np.asarray(im, dtype=np.float64) for im in real])
    b = np.stack([np.asarray(im, dtype=np.float64) for im in recon])
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    psnr = float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
    spec = oracle_evaluate(zip(recon, [s.spec for s in samples]), desc="oracle (spec)")
    full_specs = [describe(s.scene, random.Random(0), p_keep=1.0) for s in samples]
    full = oracle_evaluate(zip(recon, full_specs), desc="oracle (full)")
    shape = full.checks.get("shape", {}).get("accuracy")
    return {"n": n, "psnr": round(psnr, 2), "oracle_spec": round(spec.accuracy, 4), "oracle_full": round(full.accuracy, 4),
            "oracle_full_shape": None if shape is None else round(shape, 4)}  # fmt: skip


def load_vae(model_dir: str | Path) -> AutoencoderKL:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"no VAE in {model_dir}; train it first: python -m evalkit.zoo train diffusion-vae")
    return AutoencoderKL.from_pretrained(model_dir).eval()


def evaluate_cli(args) -> None:
    model_dir = Path(args.model) if args.model else dirs(NAME, None, None)[0]
    figs = reconstruction_figures(load_vae(model_dir), n=args.n)
    print(json.dumps(figs, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2))
