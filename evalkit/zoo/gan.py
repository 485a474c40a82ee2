"""Training the zoo's text-conditional GAN (DF-GAN style) on the shapes world.

One step: the frozen text encoder embeds each caption and a mismatched one; the discriminator
takes a matching-aware hinge loss (real/matched up, fake/matched and real/mismatched down), DF-GAN's
matching-aware gradient penalty on real/matched pairs (every ``gp_every`` steps, scaled up to match)
and an image-sentence contrastive term on real images; the generator takes the hinge generator loss
plus the same contrastive term on its images. Both see the images through DiffAugment translation,
applied identically to real and fake so the generator is not taught to shift its output.

Mismatched captions are, with probability ``hard_negative_prob``, a caption of the image's own spec
changed in one attribute (``perturb``: shape, color, size, count, relation, binding...), else another
image's caption: hard negatives teach the discriminator, and through it the generator, the attributes
that random pairs rarely contrast. Batches, captions, noise and augmentation are functions of
``(seed, step)``, so a resumed run repeats an uninterrupted one exactly. The export is the EMA of the
generator's weights inside a :class:`~evalkit.zoo.gan_pipeline.GANPipeline` with copies of the text
encoder and tokenizer, so ``zoo/gan`` loads on its own.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..shapes.world import Sample, caption_for, describe, perturb, sample
from ..utils import progress
from . import ZOO_DIR
from .common import (
    EMA,
    TrainLog,
    at_step,
    batch_samples,
    cache_rows,
    check_finite,
    checkpoint_due,
    cosine_lr,
    dirs,
    fingerprint,
    images_to_tensor,
    latent_cache,
    load_checkpoint,
    mix_id,
    render_batch,
    resolve,
    save_checkpoint,
    step_generator,
    step_rng,
    stop_if_asked,
    write_meta,
)
from .gan_pipeline import GANDiscriminator, GANGenerator, GANPipeline, encode_text

TEXT_ENCODER_DIR = ZOO_DIR / "text-encoder"
EVAL_CATEGORIES = ("single_object", "two_object", "counting", "position", "colors", "background")


# --------------------------------------------------------------------------- text encoder


def load_text_encoder(path: str | Path | None = None):
    """(text_encoder, tokenizer) from the zoo's text-encoder export (``text_encoder/``, ``tokenizer/``), frozen."""
    from .textenc import load_text_encoder as load

    text_encoder, tokenizer = load(Path(path) if path else TEXT_ENCODER_DIR)
    return text_encoder.float().requires_grad_(False), tokenizer


# --------------------------------------------------------------------------- batches and augmentation


class LatentPools:
    """Cached latents of a fixed pool of training scenes per category mix (``cache_size`` of them), built on
    first use and kept in ``work``: encoding a batch of renders with the frozen VAE was ~35 % of a step."""

    def __init__(self, vae, cfg: dict[str, Any], work: Path, vae_id: str):
        self.vae, self.cfg, self.work, self.vae_id = vae, cfg, work, vae_id
        self._pools: dict[str, tuple[list[Sample], torch.Tensor]] = {}

    def get(self, categories: dict[str, float] | None) -> tuple[list[Sample], torch.Tensor]:
        """(samples, their scaled latents in float16) of the pool of ``categories``."""
        key = mix_id(categories)
        if key not in self._pools:
            cfg = self.cfg
            samples, raw = latent_cache(self.vae, self.work, self.vae_id, cfg["cache_size"], cfg["seed"],
                                        cfg["image_size"], categories)  # fmt: skip
            self._pools[key] = samples, raw * self.vae.config.scaling_factor
        return self._pools[key]


def make_batch(
    step: int, cfg: dict[str, Any], pools: LatentPools | None = None
) -> tuple[torch.Tensor, list[str], list[str]]:
    """(real images in [-1, 1], or their scaled latents when ``pools`` are given; captions; mismatched captions)
    for ``step``: fresh scenes of the seeded stream, or rows of the pool drawn by a seeded permutation."""
    mix = at_step(cfg.get("categories"), step)
    if pools is None:
        samples = batch_samples(step, cfg["batch_size"], cfg["seed"], categories=mix)
    else:
        pool, latents = pools.get(mix)
        rows = cache_rows(step, len(pool), cfg["batch_size"], cfg["seed"])
        samples = [pool[r] for r in rows]
    rng = step_rng(cfg["seed"], step, "captions")
    captions, negatives = [], []
    for s in samples:
        spec = s.spec if rng.random() >= cfg["describe_prob"] else describe(s.scene, rng)
        phrasing = rng.randrange(1 << 30)
        captions.append(caption_for(spec, random.Random(phrasing)))
        neg = perturb(spec, rng) if rng.random() < cfg["hard_negative_prob"] else None
        negatives.append(caption_for(neg, random.Random(phrasing)) if neg is not None else None)
    # the rest mismatch with the next image's caption (DF-GAN's rolled batch)
    mismatched = [n if n is not None else captions[(i + 1) % len(captions)] for i, n in enumerate(negatives)]
    if pools is not None:
        return latents[rows].float(), captions, mismatched
    return images_to_tensor(render_batch(samples, cfg["image_size"])), captions, mismatched


def translate(x: torch.Tensor, gen: torch.Generator, ratio: float) -> torch.Tensor:
    """DiffAugment's translation by up to ``ratio`` of the side, edges replicated (zero padding
    would read as a gray background here). Differentiable in ``x``."""
    b, _, h, w = x.shape
    sx, sy = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), generator=gen)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), generator=gen)
    gb, gx, gy = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
    gx = (gx + tx).clamp(0, h - 1)
    gy = (gy + ty).clamp(0, w - 1)
    return x.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)


def augment(x: torch.Tensor, gen: torch.Generator, cfg: dict[str, Any]) -> torch.Tensor:
    ratio = cfg.get("translate", 0.0)
    return translate(x, gen, ratio) if ratio > 0 else x


# --------------------------------------------------------------------------- losses


def contrastive_loss(image_emb: torch.Tensor, sentence: torch.Tensor, captions: list[str], tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between unit image embeddings and the sentences; identical captions in a
    batch count as positives of each other (shapes-world batches repeat short captions)."""
    text = F.normalize(sentence, dim=-1)
    logits = image_emb @ text.T / tau
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=logits.dtype)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def ma_gradient_penalty(out: torch.Tensor, image: torch.Tensor, sentence: torch.Tensor, p: float) -> torch.Tensor:
    """DF-GAN's MA-GP: mean ``||d out / d (image, sentence)||^p`` on real/matched pairs."""
    gi, gs = torch.autograd.grad(out.sum(), (image, sentence), create_graph=True)
    norm = torch.cat([gi.flatten(1), gs.flatten(1)], dim=1).pow(2).sum(1).add(1e-12).sqrt()
    return norm.pow(p).mean()


# --------------------------------------------------------------------------- models and checkpoints


def load_latent_vae(cfg: dict[str, Any]):
    """The frozen ``AutoencoderKL`` a latent GAN (``latent_vae`` set) generates for, else None."""
    if not cfg.get("latent_vae"):
        return None
    from .vae import load_vae

    return load_vae(resolve(cfg["latent_vae"], "diffusion-vae")).requires_grad_(False).eval()


@torch.no_grad()
def to_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """Scaled posterior means: the space a latent generator draws in (as Stable Diffusion's UNet)."""
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


def build_models(
    cfg: dict[str, Any], cond_dim: int, vae=None, word_dim: int | None = None
) -> tuple[GANGenerator, GANDiscriminator, EMA]:
    """Generator, discriminator and the generator's EMA; with a ``vae`` both work on its latents, with
    ``word_attention`` in ``cfg`` both attend to the token states (of size ``word_dim``)."""
    torch.manual_seed(cfg["seed"])
    size, space = cfg["image_size"], {}
    words = {"word_dim": word_dim, "word_heads": cfg.get("word_heads", 4)} if cfg.get("word_attention") else {}
    if vae is not None:
        size //= 2 ** (len(vae.config.block_out_channels) - 1)
        space = {"out_channels": vae.config.latent_channels, "output": "latent"}
    g = GANGenerator(
        noise_dim=cfg["noise_dim"], cond_dim=cond_dim, channels=tuple(cfg["g_channels"]), image_size=size,
        **space, **words,
    )  # fmt: skip
    d = GANDiscriminator(
        cond_dim=cond_dim, channels=tuple(cfg["d_channels"]), image_size=size, in_channels=g.config.out_channels,
        **words,
    )  # fmt: skip
    return g, d, EMA(g, cfg["ema_decay"], warmup=True)


def export(ema: GANGenerator, text_encoder, tokenizer, out: Path, vae=None) -> GANPipeline:
    """``save_pretrained`` into a sibling folder, then swap it in: a crash never leaves half an export."""
    pipe = GANPipeline(generator=ema, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return pipe


# --------------------------------------------------------------------------- training


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    out, work = dirs("gan", out_dir, work_dir)
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise UserError(f"{out} exists and holds no GAN export; choose an empty or new folder with --out")
    text_encoder, tokenizer = load_text_encoder(cfg.get("text_encoder"))
    cond_dim = text_encoder.config.projection_dim
    vae = load_latent_vae(cfg)
    pools = None
    if cfg.get("cache_size"):
        if vae is None:
            raise UserError("cache_size caches VAE latents: set latent_vae too (or drop cache_size)")
        pools = LatentPools(vae, cfg, work, fingerprint(resolve(cfg["latent_vae"], "diffusion-vae")))
    g, d, ema = build_models(cfg, cond_dim, vae, word_dim=text_encoder.config.hidden_size)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg["lr_g"], betas=tuple(cfg["betas"]))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg["lr_d"], betas=tuple(cfg["betas"]))
    start, cpu = 0, 0.0
    ckpt = load_checkpoint(work) if resume else None
    if ckpt:
        g.load_state_dict(ckpt["generator"])
        d.load_state_dict(ckpt["discriminator"])
        ema.load_state_dict(ckpt["generator_ema"])
        opt_g.load_state_dict(ckpt["optimizer_g"])
        opt_d.load_state_dict(ckpt["optimizer_d"])
        start, cpu = ckpt["step"], ckpt["cpu_s"]
        print(f"resumed at step {start}")
    log = TrainLog(work, cpu)
    steps, tau, cw = cfg["steps"], cfg["contrastive_tau"], cfg["contrastive_weight"]
    gp_every = cfg["gp_every"]
    g.train()
    d.train()
    t_last, s_last, last_gp = time.perf_counter(), start, 0.0
    for step in progress(range(start, steps), desc="gan", total=steps - start):
        lr_g = cosine_lr(step, steps, cfg["lr_g"], cfg["warmup"], cfg["final_lr_frac"])
        lr_d = cosine_lr(step, steps, cfg["lr_d"], cfg["warmup"], cfg["final_lr_frac"])
        for group in opt_g.param_groups:
            group["lr"] = lr_g
        for group in opt_d.param_groups:
            group["lr"] = lr_d
        real, captions, mismatched = make_batch(step, cfg, pools)
        if vae is not None and pools is None:
            real = to_latents(vae, real)
        b = len(captions)
        with torch.no_grad():  # the text encoder is frozen
            sent_all, words_all, mask_all = encode_text(text_encoder, tokenizer, captions + mismatched)
        sent, sent_mis = sent_all[:b], sent_all[b:]
        words, words_mis = (words_all[:b], mask_all[:b]), (words_all[b:], mask_all[b:])
        gen = step_generator(cfg["seed"], step)
        noise = torch.randn(real.shape[0], cfg["noise_dim"], generator=gen)
        fake = g(noise, sent, *words)

        # discriminator: matching-aware hinge, MA-GP, contrastive on reals
        d.requires_grad_(True)
        do_gp = cfg["gp_weight"] > 0 and step % gp_every == 0
        real_in = augment(real, gen, cfg)
        sent_d = sent.clone().requires_grad_(do_gp)
        real_in.requires_grad_(do_gp)
        f_real = d(real_in)
        out_real = d.logits(f_real, sent_d, *words)
        out_mis = d.logits(f_real, sent_mis, *words_mis)
        out_fake = d.logits(d(augment(fake.detach(), gen, cfg)), sent, *words)
        loss_d = F.relu(1 - out_real).mean() + 0.5 * (F.relu(1 + out_fake).mean() + F.relu(1 + out_mis).mean())
        loss_dc = contrastive_loss(d.embed(f_real), sent, captions, tau) if cw > 0 else torch.zeros(())
        gp = ma_gradient_penalty(out_real, real_in, sent_d, cfg["gp_power"]) if do_gp else torch.zeros(())
        loss_d_total = loss_d + cw * loss_dc + cfg["gp_weight"] * gp_every * gp
        last_gp = gp.item() if do_gp else last_gp
        check_finite(loss_d_total, step)
        opt_d.zero_grad(set_to_none=True)
        loss_d_total.backward()
        opt_d.step()

        # generator: hinge + contrastive through the (now frozen) discriminator
        d.requires_grad_(False)
        f_fake = d(augment(fake, gen, cfg))
        loss_g = -d.logits(f_fake, sent, *words).mean()
        loss_gc = contrastive_loss(d.embed(f_fake), sent, captions, tau) if cw > 0 else torch.zeros(())
        loss_g_total = loss_g + cw * loss_gc
        check_finite(loss_g_total, step)
        opt_g.zero_grad(set_to_none=True)
        loss_g_total.backward()
        opt_g.step()
        ema.update(g, step)

        done = step + 1
        if done % cfg["log_every"] == 0:
            now = time.perf_counter()
            log.write(step=done, loss_d=round(loss_d.item(), 4), loss_g=round(loss_g.item(), 4),
                      d_real=round(out_real.mean().item(), 3), d_fake=round(out_fake.mean().item(), 3),
                      d_mis=round(out_mis.mean().item(), 3), gp=round(last_gp, 4), con_d=round(loss_dc.item(), 4),
                      con_g=round(loss_gc.item(), 4), lr_g=lr_g, it_s=round((done - s_last) / (now - t_last), 3))  # fmt: skip
            t_last, s_last = now, done
        if checkpoint_due(done, steps, cfg):
            save_checkpoint(work, {"generator": g.state_dict(), "discriminator": d.state_dict(),
                                   "generator_ema": ema.state_dict(), "optimizer_g": opt_g.state_dict(),
                                   "optimizer_d": opt_d.state_dict(), "step": done, "cpu_s": log.cpu_seconds(),
                                   "config": cfg})  # fmt: skip
            stop_if_asked(work, done)
        if cfg.get("eval_every") and done % cfg["eval_every"] == 0 and done < steps:
            pipe = GANPipeline(generator=ema.copy_of(g), text_encoder=text_encoder, tokenizer=tokenizer, vae=vae)
            pipe.set_progress_bar_config(disable=True)
            figs = oracle_figures(pipe, n=cfg["eval_n"], categories=("single_object",))
            save_grid(pipe, work / "samples" / f"step{done:06d}.png")
            log.write(step=done, eval=figs)
            print(f"step {done}: loss_d {loss_d.item():.3f} loss_g {loss_g.item():.3f} oracle {figs}", flush=True)
    pipe = export(ema.copy_of(g), text_encoder, tokenizer, out, vae)
    save_grid(pipe, out / "samples.png")
    figs = oracle_figures(pipe, n=cfg["final_eval_n"]) if cfg.get("final_eval_n") else {}
    write_meta(out, {"model": "GANPipeline", "generator_params": sum(p.numel() for p in g.parameters()),
                     "discriminator_params": sum(p.numel() for p in d.parameters()), "steps": steps,
                     "batch_size": cfg["batch_size"], "cpu_seconds": round(log.cpu_seconds()),
                     "nfe_per_image": 1, "oracle_test": figs, "config": cfg})  # fmt: skip
    log.write(step=steps, final_eval=figs)
    print(f"gan exported to {out}: oracle {json.dumps(figs)}")


# --------------------------------------------------------------------------- measurement


def generate_images(pipe: GANPipeline, prompts: list[str], seeds: list[int], batch_size: int = 100) -> list:
    """One image per (prompt, seed), each from its own ``torch.Generator``."""
    images = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch_size]]
        images += pipe(prompts[i : i + batch_size], generator=gens).images
    return images


def oracle_figures(
    pipe: GANPipeline, n: int = 500, categories: tuple[str, ...] = EVAL_CATEGORIES, seed: int = 12345
) -> dict[str, Any]:
    """Oracle accuracy per category on ``n`` held-out (test split) prompts each, and a shuffled-prompt
    baseline: the same images checked against another prompt of the category."""
    from ..shapes.oracle import detect, evaluate

    figs: dict[str, Any] = {}
    for category in categories:
        samples = sample(n, seed=seed, split="test", categories=[category])
        images = generate_images(pipe, [s.caption for s in samples], list(range(n)))
        detections = [detect(im) for im in images]
        acc = evaluate(zip(detections, [s.spec for s in samples]), desc=category).accuracy
        shuffled = [samples[(i + 1 + n // 2) % n].spec for i in range(n)]
        base = evaluate(zip(detections, shuffled), desc=f"{category} shuffled").accuracy
        figs[category] = {"accuracy": round(acc, 4), "shuffled": round(base, 4), "n": n}
    return figs


def save_grid(pipe: GANPipeline, path: Path, rows: int = 6, cols: int = 8) -> None:
    """Sample sheet: one test prompt per row (mixed categories), ``cols`` seeds each."""
    from PIL import Image

    prompts = [s.caption for s in sample(rows, seed=777, split="test")]
    images = generate_images(pipe, [p for p in prompts for _ in range(cols)], list(range(rows * cols)))
    size = images[0].size[0]
    sheet = Image.new("RGB", (cols * size, rows * size))
    for k, im in enumerate(images):
        sheet.paste(im, ((k % cols) * size, (k // cols) * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    (path.with_suffix(".txt")).write_text("\n".join(prompts) + "\n")


def evaluate_cli(args) -> None:
    model_dir = Path(args.model) if args.model else dirs("gan", None, None)[0]
    if not (model_dir / "model_index.json").is_file():
        raise UserError(f"no GAN pipeline in {model_dir}; train it first: python -m evalkit.zoo train gan")
    pipe = GANPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    figs = oracle_figures(pipe, n=args.n)
    print(json.dumps(figs, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2) + "\n")
