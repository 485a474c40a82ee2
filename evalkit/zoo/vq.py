"""The VQ tokenizer shared by the masked (aMUSEd) and autoregressive generators.

A diffusers ``VQModel`` (``lookup_from_codebook=True``, as ``AmusedPipeline`` decodes token ids) turns a
64x64 render in [0, 1] into 16x16 codebook indices. Training uses its encoder and decoder but quantizes
with an EMA codebook and restarts dead codes from encoder outputs, so every code stays in use;
nearest-code search is the same Euclidean one the model's own ``quantize`` does at inference. The
loss is L1 + L2 on pixels plus L1 on image gradients (corners and thin strokes decide the oracle's
shape call; CALIBRATION.md) and the commitment term.

``foreground_weight`` multiplies the loss on object pixels and the EMA weight of the patches holding
them: objects cover ~5 % of a render, and without it the first VQ run (2,200 steps) spent its codes
and capacity on backgrounds and reconstructed objects in the wrong colors (oracle color check 0.08).

With ``normalize: true`` the codes are unit vectors and lookup compares the *normalized* encoder output
with them (ViT-VQGAN's l2 codebook, which keeps rare patterns such as small colored objects from being
absorbed by background codes). The exported model needs no change for this: with unit-norm codes,
``VQModel.quantize``'s Euclidean argmin over the raw output picks the same code as the cosine one.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import VQModel
from PIL import Image

from ..errors import UserError
from ..shapes.world import describe, sample
from ..utils import progress
from .common import (
    TrainLog,
    batch_samples,
    check_finite,
    checkpoint_due,
    cosine_lr,
    dirs,
    foreground_weights,
    images_to_tensor,
    load_checkpoint,
    render_batch,
    save_checkpoint,
    set_lr,
    step_generator,
    stop_if_asked,
    write_meta,
)

# ---------------------------------------------------------------------------------------------- model


def build_vq(model_cfg: dict[str, Any]) -> VQModel:
    """A ``VQModel`` from the config's ``model`` section; the codebook dimension is ``latent_channels``
    (``AmusedPipeline`` reshapes looked-up codes to ``latent_channels``)."""
    n = len(model_cfg["block_out_channels"])
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(model_cfg["block_out_channels"]),
        layers_per_block=model_cfg.get("layers_per_block", 1),
        latent_channels=model_cfg["latent_channels"],
        num_vq_embeddings=model_cfg["codebook_size"],
        norm_num_groups=model_cfg.get("norm_num_groups", 32),
        sample_size=model_cfg.get("sample_size", 64),
        mid_block_add_attention=model_cfg.get("mid_block_attention", False),
        lookup_from_codebook=True,
    )


def load_vq(path: str | Path) -> VQModel:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"no VQ model in {path}; train it first: python -m evalkit.zoo train vq")
    return VQModel.from_pretrained(str(path)).eval()


def to_unit(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> [B, 3, H, W] in [0, 1], the range aMUSEd's VQ model reads and writes."""
    return images_to_tensor(images, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


@torch.no_grad()
def encode_tokens(vq: VQModel, x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> codebook indices [B, h, w] through the model's own quantizer."""
    h = vq.encode(x).latents
    _, _, (_, _, idx) = vq.quantize(h)
    return idx.view(h.shape[0], h.shape[2], h.shape[3])


@torch.no_grad()
def decode_tokens(vq: VQModel, tokens: torch.Tensor) -> torch.Tensor:
    """Indices [B, h, w] -> images in [0, 1], exactly as ``AmusedPipeline`` decodes."""
    b, h, w = tokens.shape
    out = vq.decode(tokens.reshape(b, -1), force_not_quantize=True, shape=(b, h, w, vq.config.latent_channels))
    return out.sample.clip(0, 1)


# ---------------------------------------------------------------------------------------------- codebook


class EMACodebook:
    """Exponential-moving-average codebook updates with dead-code restarts (VQ-VAE-2 / Jukebox style).

    Works on the ``VQModel``'s own embedding table, which is then excluded from the optimizer."""

    def __init__(self, embedding: torch.nn.Embedding, decay: float, eps: float = 1e-5, normalize: bool = False):
        self.weight = embedding.weight
        self.normalize = normalize
        self.weight.requires_grad_(False)
        k = self.weight.shape[0]
        self.decay, self.eps = decay, eps
        self.cluster_size = torch.zeros(k)
        self.embed_sum = self.weight.detach().clone()
        self.initialized = False

    def state_dict(self) -> dict[str, Any]:
        return {"cluster_size": self.cluster_size, "embed_sum": self.embed_sum, "initialized": self.initialized}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cluster_size = state["cluster_size"].clone()
        self.embed_sum = state["embed_sum"].clone()
        self.initialized = state["initialized"]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest codes for rows of ``z`` (squared Euclidean, as ``torch.cdist``'s argmin)."""
        w = self.weight
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ w.t() + w.pow(2).sum(1)[None]
        return d.argmin(1)

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, gen: torch.Generator) -> None:
        """Seed the codebook with distinct encoder outputs, so no code starts dead."""
        k = self.weight.shape[0]
        pick = torch.randperm(z.shape[0], generator=gen)[:k]
        if len(pick) < k:
            pick = torch.randint(0, z.shape[0], (k,), generator=gen)
        self.weight.copy_(z[pick])
        self.embed_sum = z[pick].clone()
        self.cluster_size = torch.ones(k)
        self.initialized = True

    @torch.no_grad()
    def update(
        self,
        z: torch.Tensor,
        idx: torch.Tensor,
        gen: torch.Generator,
        dead_threshold: float,
        weights: torch.Tensor | None = None,
    ) -> int:
        """One (weighted) EMA step over a batch's encoder outputs; returns how many dead codes were restarted."""
        k, d = self.weight.shape
        w = torch.ones(len(idx)) if weights is None else weights
        counts = torch.bincount(idx, weights=w, minlength=k).float()
        sums = torch.zeros(k, d).index_add_(0, idx, z * w[:, None])
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total
        means = self.embed_sum / smoothed[:, None]
        self.weight.copy_(F.normalize(means, dim=1) if self.normalize else means)
        dead = (self.cluster_size < dead_threshold).nonzero().flatten()
        if len(dead):
            # re-seed from the worst-represented outputs (drawn in proportion to their error), so codes
            # move to rare patterns (uncommon colors, thin tips) rather than to more background
            err = w * (z - self.weight[idx]).pow(2).sum(1) + 1e-12
            rows = z[torch.multinomial(err, len(dead), replacement=len(dead) > len(err), generator=gen)]
            self.weight[dead] = rows
            self.embed_sum[dead] = rows
            self.cluster_size[dead] = 1.0
        return len(dead)


# ---------------------------------------------------------------------------------------------- training


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vq_loss(
    vq: VQModel, codebook: EMACodebook, x: torch.Tensor, cfg: dict[str, Any], w: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """Pixel-weighted reconstruction + edge + commitment loss; returns (loss, parts, encoder outputs, their
    code indices)."""
    w = torch.ones_like(x[:, :1]) if w is None else w
    h = vq.encode(x).latents
    b, c, hh, ww = h.shape
    z = h.permute(0, 2, 3, 1).reshape(-1, c)
    if codebook.normalize:
        z = F.normalize(z, dim=1)
    idx = codebook.nearest(z.detach())
    zq = codebook.weight[idx]
    commit = F.mse_loss(z, zq.detach())
    zq = z + (zq - z).detach()  # straight-through
    quant = zq.view(b, hh, ww, c).permute(0, 3, 1, 2)
    rec = vq.decoder(vq.post_quant_conv(quant))
    l1 = (w * (rec - x).abs()).mean() / w.mean()
    l2 = (w * (rec - x).pow(2)).mean() / w.mean()
    (rdx, rdy), (xdx, xdy) = image_gradients(rec), image_gradients(x)
    edge = (rdx - xdx).abs().mean() + (rdy - xdy).abs().mean()
    loss = cfg["l1_weight"] * l1 + cfg["l2_weight"] * l2 + cfg["edge_weight"] * edge + cfg["commitment_weight"] * commit
    parts = {"l1": l1.item(), "l2": l2.item(), "edge": edge.item(), "commit": commit.item()}
    return loss, parts, z.detach(), idx


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    out, work = dirs("vq", out_dir, work_dir)
    torch.manual_seed(cfg["seed"])
    vq = build_vq(cfg["model"])
    codebook = EMACodebook(vq.quantize.embedding, cfg["ema_decay"], normalize=cfg.get("normalize", False))
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.99), weight_decay=cfg.get("weight_decay", 0.0))
    start, cpu = 0, 0.0
    ckpt = load_checkpoint(work) if resume else None
    if ckpt:
        vq.load_state_dict(ckpt["model"])
        codebook.load_state_dict(ckpt["codebook"])
        opt.load_state_dict(ckpt["optimizer"])
        start, cpu = ckpt["step"], ckpt["cpu_s"]
        print(f"resumed at step {start}")
    log = TrainLog(work, cpu)
    steps, size = cfg["steps"], cfg["image_size"]
    restart_until = int(cfg.get("restart_fraction", 0.8) * steps)
    usage = torch.zeros(cfg["model"]["codebook_size"])
    vq.train()
    for step in progress(range(start, steps), desc="vq", total=steps - start):
        lr = cosine_lr(step, steps, cfg["lr"], cfg["warmup"])
        set_lr(opt, lr)
        samples = batch_samples(step, cfg["batch_size"], cfg["seed"])
        x = to_unit(render_batch(samples, size))
        w = foreground_weights(x, [s.scene.background for s in samples], cfg.get("foreground_weight", 1.0))
        gen = step_generator(cfg["seed"], step)
        if not codebook.initialized:
            with torch.no_grad():
                h = vq.encode(x).latents
            z0 = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
            codebook.init_from(F.normalize(z0, dim=1) if codebook.normalize else z0, gen)
        loss, parts, z, idx = vq_loss(vq, codebook, x, cfg, w)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        threshold = cfg["dead_code_threshold"] if step < restart_until else 0.0
        down = x.shape[-1] // int(math.isqrt(len(idx) // x.shape[0]))
        patch_w = F.avg_pool2d(w, down).flatten()  # rows of z are (batch, y, x) like this
        restarted = codebook.update(z, idx, gen, threshold, patch_w)
        usage += torch.bincount(idx, minlength=len(usage)).float()
        done = step + 1
        if done % cfg["log_every"] == 0:
            used = int((usage > 0).sum())
            log.write(step=done, loss=round(loss.item(), 5), **{k: round(v, 5) for k, v in parts.items()},
                      lr=lr, codes_used=used, restarted=restarted)  # fmt: skip
            usage.zero_()
        if checkpoint_due(done, steps, cfg):
            save_checkpoint(work, {"model": vq.state_dict(), "codebook": codebook.state_dict(),
                                   "optimizer": opt.state_dict(), "step": done, "cpu_s": log.cpu_seconds(),
                                   "config": cfg})  # fmt: skip
            stop_if_asked(work, done)
        if cfg.get("eval_every") and done % cfg["eval_every"] == 0 and done < steps:
            vq.eval()
            figs = reconstruction_figures(vq, n=cfg.get("eval_every_n", 200), image_size=size)
            log.write(step=done, eval=figs)
            print(f"step {done}: loss {loss.item():.4f} {figs}", flush=True)
            vq.train()
    vq.eval()
    out.mkdir(parents=True, exist_ok=True)
    vq.save_pretrained(str(out))
    figs = reconstruction_figures(vq, n=cfg.get("eval_n", 500), image_size=size)
    write_meta(out, {"model": "VQModel", "params": sum(p.numel() for p in vq.parameters()), "steps": steps,
                     "batch_size": cfg["batch_size"], "cpu_seconds": round(log.cpu_seconds()),
                     "reconstruction_test": figs, "config": cfg})  # fmt: skip
    log.write(step=steps, final_eval=figs)
    print(f"vq exported to {out}: {figs}")


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def reconstruction_figures(
    vq: VQModel, n: int = 500, image_size: int = 64, split: str = "test", seed: int = 12345, batch: int = 50
) -> dict[str, Any]:
    """Oracle accuracy of reconstructions of real renders (against their captions and against the
    full scene description), PSNR and codebook use."""
    from ..shapes.oracle import evaluate
    from ..shapes.render import render

    samples = sample(n, seed=seed, split=split)
    recs: list[Image.Image] = []
    counts = torch.zeros(vq.config.num_vq_embeddings)
    mse = []
    for i in range(0, n, batch):
        x = to_unit([render(s.scene, image_size) for s in samples[i : i + batch]])
        tokens = encode_tokens(vq, x)
        counts += torch.bincount(tokens.flatten(), minlength=len(counts)).float()
        rec = decode_tokens(vq, tokens)
        rec8 = (rec * 255).round() / 255
        mse += ((rec8 - x) ** 2).mean(dim=(1, 2, 3)).tolist()
        recs += to_pil(rec)
    caption = evaluate(zip(recs, [s.spec for s in samples]), desc="oracle")
    full_specs = [describe(s.scene, random.Random(0), p_keep=1.0) for s in samples]
    full = evaluate(zip(recs, full_specs), desc="oracle")
    p = counts / counts.sum()
    perplexity = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    return {
        "oracle_caption": round(caption.accuracy, 4),
        "oracle_full_scene": round(full.accuracy, 4),
        "oracle_checks": {k: round(v["accuracy"], 4) for k, v in full.checks.items()},
        "psnr": round(float(np.mean([10 * math.log10(1 / max(m, 1e-10)) for m in mse])), 2),
        "codes_used": int((counts > 0).sum()),
        "perplexity": round(perplexity, 1),
        "n": n,
    }


def evaluate_cli(args) -> None:
    model_dir = Path(args.model) if args.model else dirs("vq", None, None)[0]
    figs = reconstruction_figures(load_vq(model_dir), n=args.n)
    print(json.dumps(figs, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2))
