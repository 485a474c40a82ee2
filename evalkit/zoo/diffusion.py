"""The diffusion generator: a real ``StableDiffusionPipeline`` (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel, CLIPTokenizer, DDIMScheduler) trained on the shapes world.

The VAE (``vae.py``) and the text encoder (``textenc.py``) are trained first and frozen here; only
the UNet learns. Choices, from CALIBRATION.md:

- latents of the frozen VAE are encoded once into a cache (``work/latents-*.pt``): the encoder would
  otherwise cost a seventh of every step; batches are still a pure function of the step;
- v-prediction on a cosine schedule (its last step has almost no signal left, so flat backgrounds
  of any brightness are reachable from pure noise), with the Min-SNR-γ clamp on low-noise steps
  (faster convergence; see ``min_snr_weights``);
- 10 % of captions dropped to "" for classifier-free guidance; a quarter re-described with other
  detail (``describe``) so partial prompts are conditioned on too;
- the UNet also adds an attention-pooled text embedding to its time embedding
  (``addition_embed_type="text"``): every block sees what the prompt asks for, a cheap global path
  beside cross-attention; the pipeline needs nothing extra for it;
- EMA weights are what is exported.

Export (``zoo/diffusion``): ``StableDiffusionPipeline.save_pretrained`` (safetensors) + meta.json, loadable
with ``DiffusionPipeline.from_pretrained(dir)``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DDPMScheduler, SchedulerMixin, StableDiffusionPipeline, UNet2DConditionModel

from ..errors import UserError
from ..shapes.oracle import evaluate as oracle_evaluate
from ..shapes.world import caption_for, describe, sample
from ..utils import progress
from . import ZOO_DIR
from .common import (
    EMA,
    TrainLog,
    at_step,
    cache_rows,
    cached_tensors,
    check_finite,
    checkpoint_due,
    cosine_lr,
    dirs,
    fingerprint,
    foreground_mask,
    images_to_tensor,
    latent_cache,
    load_checkpoint,
    render_batch,
    resolve,
    save_checkpoint,
    set_lr,
    step_generator,
    step_rng,
    stop_if_asked,
    write_meta,
)
from .textenc import load_text_encoder, token_ids
from .vae import load_vae

NAME = "diffusion"


def build_unet(
    model_cfg: dict[str, Any], latent_channels: int, sample_size: int, text_dim: int
) -> UNet2DConditionModel:
    """``model_cfg["blocks"]``: one entry per resolution, "cross" (cross-attention) or "plain"."""
    down = tuple("CrossAttnDownBlock2D" if b == "cross" else "DownBlock2D" for b in model_cfg["blocks"])
    up = tuple("CrossAttnUpBlock2D" if b == "cross" else "UpBlock2D" for b in reversed(model_cfg["blocks"]))
    extra = {}
    if model_cfg.get("text_time_embedding", False):
        extra = {"addition_embed_type": "text", "addition_embed_type_num_heads": model_cfg["heads"]}
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(model_cfg["block_out_channels"]),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=model_cfg["layers_per_block"],
        cross_attention_dim=text_dim,
        attention_head_dim=model_cfg["heads"],  # diffusers' name; it sets the number of heads (CALIBRATION.md)
        norm_num_groups=model_cfg["norm_num_groups"],
        **extra,
    )


def warm_start(unet: UNet2DConditionModel, source: str | Path) -> dict[str, Any]:
    """Seed ``unet`` from a trained UNet (a pipeline or UNet folder) wherever parameter names match.

    Blocks the source lacks (attention added at a finer resolution, say) start as the identity: their
    output projections are zeroed, so the new model first computes exactly what the source did and
    training only has to learn what the new blocks add. A name whose shape differs means another
    architecture, which is an error, not a partial copy.
    """
    src = Path(source)
    if (src / "unet").is_dir():
        src = src / "unet"
    if not (src / "config.json").is_file():
        raise UserError(f"init_from: no UNet in {source} (expected a pipeline folder or a UNet save_pretrained folder)")
    theirs = UNet2DConditionModel.from_pretrained(src, torch_dtype=torch.float32).state_dict()
    ours = unet.state_dict()
    clash = [k for k in ours if k in theirs and ours[k].shape != theirs[k].shape]
    if clash:
        raise UserError(f"init_from: {len(clash)} parameters of {source} have other shapes, e.g. {clash[0]} "
                        f"{tuple(theirs[clash[0]].shape)} vs {tuple(ours[clash[0]].shape)}")  # fmt: skip
    new = [k for k in ours if k not in theirs]
    with torch.no_grad():
        for k, v in ours.items():
            if k in theirs:
                v.copy_(theirs[k])
            elif ".attentions." in k and ".proj_out." in k:
                v.zero_()
    return {"copied": len(ours) - len(new), "new": len(new), "dropped": sum(k not in ours for k in theirs)}


def train_scheduler(cfg: dict[str, Any]) -> DDPMScheduler:
    s = cfg["schedule"]
    return DDPMScheduler(
        num_train_timesteps=s["timesteps"],
        beta_schedule=s["beta_schedule"],
        prediction_type=s["prediction_type"],
        clip_sample=False,
    )


def sampling_scheduler(train: DDPMScheduler, sampler: str = "DDIMScheduler") -> SchedulerMixin:
    """A diffusers sampler over the training betas; trailing spacing starts sampling at the last (pure-noise) step."""
    cls = getattr(diffusers, sampler, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise UserError(f"sampler {sampler!r} is not a diffusers scheduler class (e.g. DDIMScheduler)")
    return cls.from_config(
        train.config, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing", steps_offset=1
    )


# --------------------------------------------------------------------------- frozen parts and data


def frozen_parts(cfg: dict[str, Any]):
    """(vae, text encoder as CLIPTextModel, tokenizer, fingerprints) from the earlier stages' exports."""
    vae_dir = Path(cfg.get("vae_dir") or ZOO_DIR / "diffusion-vae")
    te_dir = Path(cfg.get("text_encoder_dir") or ZOO_DIR / "text-encoder")
    vae = load_vae(vae_dir)
    text_encoder, tok = load_text_encoder(te_dir, projection=False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    return vae, text_encoder, tok, {"vae": fingerprint(vae_dir), "text_encoder": fingerprint(te_dir)}


def foreground_cache(cfg: dict[str, Any], work: Path, latent_size: int) -> torch.Tensor:
    """[N, 1, h, w] bool: latent pixels whose image patch shows an object, for the cached samples.

    Objects cover ~5-15 % of a render, so a plain MSE is mostly about flat backgrounds and shape is
    learned last (CALIBRATION.md); ``foreground_weight`` moves the loss onto the objects.
    """
    n = cfg["cache_size"]

    def build() -> torch.Tensor:
        chunks = []
        for start in progress(range(0, n, 256), desc="foreground masks", total=(n + 255) // 256):
            samples = sample(min(256, n - start), seed=cfg["seed"], split="train", start=start)
            x = images_to_tensor(render_batch(samples, cfg["image_size"]), mean=(0, 0, 0), std=(1, 1, 1))
            chunks.append(foreground_mask(x, [s.scene.background for s in samples], latent_size))
        return torch.cat(chunks)

    return cached_tensors(work / f"foreground-{cfg['seed']}-{n}-{cfg['image_size']}-{latent_size}.pt", build)


def batch_indices(step: int, cfg: dict[str, Any], one_object_rows: torch.Tensor | None = None) -> list[int]:
    """Cache rows of batch ``step``: a fresh seeded permutation of the cache each epoch.

    With ``one_object_share`` each row is instead drawn (seeded by the step) from the scenes with a single
    object with that probability, else from the multi-object scenes: one object is what a model must draw
    first and best, and a mix with half multi-object scenes taught it to scatter several blobs. A mapping
    ``{from_step: share}`` changes the share during training (multi-object scenes once one object is drawn).
    """
    n, b = cfg["cache_size"], cfg["batch_size"]
    share = at_step(cfg.get("one_object_share"), step)
    multi_rows = _complement(one_object_rows, n) if share and one_object_rows is not None else []
    if len(multi_rows) and len(one_object_rows):
        g = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + step)
        pick_one = torch.rand(b, generator=g) < share
        multi_row = multi_rows[torch.randint(len(multi_rows), (b,), generator=g)]
        one_row = one_object_rows[torch.randint(len(one_object_rows), (b,), generator=g)]
        return torch.where(pick_one, one_row, multi_row).tolist()
    return cache_rows(step, n, b, cfg["seed"])


def _complement(rows: torch.Tensor, n: int) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[rows] = False
    return keep.nonzero().flatten()


def batch_captions(step: int, rows: list[int], specs_scenes: list, cfg: dict[str, Any]) -> list[str]:
    """The caption of each row: its own spec (re-phrased each time) or another true description; some dropped."""
    rng = step_rng(cfg["seed"], step, "captions")
    texts = []
    for r in rows:
        spec, scene = specs_scenes[r]
        if rng.random() < cfg["describe_prob"]:
            spec = describe(scene, rng)
        text = caption_for(spec, rng)
        texts.append("" if rng.random() < cfg["caption_dropout"] else text)
    return texts


# --------------------------------------------------------------------------- training


def diffusion_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, pixel_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample MSE (a weighted mean over latent pixels if ``pixel_weights`` [B, 1, h, w] are given),
    weighted per sample (Min-SNR), averaged."""
    err = (pred.float() - target.float()) ** 2
    if pixel_weights is None:
        per_sample = err.mean(dim=(1, 2, 3))
    else:
        per_sample = (err * pixel_weights).mean(dim=(1, 2, 3)) / pixel_weights.mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def min_snr_weights(sched: DDPMScheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Min-SNR-γ clamp (Hang et al. 2023): timesteps cleaner than SNR γ count less, by γ / SNR.

    For v-prediction the v-loss weight is ``min(1, γ / SNR)``: as plain v-prediction at high noise
    (where the layout and colors are decided; the paper's ``min(SNR, γ) / (SNR + 1)`` would nearly
    zero those steps on a cosine schedule), clamped at low noise. For ε-prediction, ``min(SNR, γ) / SNR``.
    Ones when ``gamma`` is falsy.
    """
    if not gamma:
        return torch.ones(t.shape[0])
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    return torch.clamp(gamma / snr, max=1.0)


def _pipeline(vae, text_encoder, tok, unet, sched: DDPMScheduler, cfg: dict[str, Any]) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=sampling_scheduler(sched, cfg.get("sampler", "DDIMScheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    out, work = dirs(NAME, out_dir, work_dir)
    vae, text_encoder, tok, ids = frozen_parts(cfg)
    scale = float(vae.config.scaling_factor)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    torch.manual_seed(cfg["seed"])
    unet = build_unet(
        cfg["model"], vae.config.latent_channels, cfg["image_size"] // down, text_encoder.config.hidden_size
    )
    ckpt = load_checkpoint(work) if resume else None
    init = resolve(cfg["init_from"], "") if cfg.get("init_from") else None
    if init and not ckpt:
        print(f"warm start from {init}: {warm_start(unet, init)}", flush=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), weight_decay=cfg["weight_decay"])
    ema = EMA(unet, cfg["ema_decay"], warmup=True)
    sched = train_scheduler(cfg)
    start, cpu = 0, 0.0
    if ckpt:
        if ckpt.get("frozen") != ids:
            raise UserError(
                f"the VAE or text encoder changed since checkpoint {work / 'ckpt.pt'} was written; "
                "train from scratch (without --resume) or restore them"
            )
        unet.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        ema.load_state_dict(ckpt["ema"])
        start, cpu = ckpt["step"], ckpt["cpu_s"]
        print(f"resumed at step {start}", flush=True)
    log = TrainLog(work, cpu)
    samples, latents = latent_cache(vae, work, ids["vae"], cfg["cache_size"], cfg["seed"], cfg["image_size"])
    pool = [(s.spec, s.scene) for s in samples]
    one_object_rows = torch.tensor([i for i, (_, scene) in enumerate(pool) if len(scene.objects) == 1])
    fg_weight = float(cfg.get("foreground_weight", 1.0))
    fg = foreground_cache(cfg, work, latents.shape[-1]) if fg_weight != 1.0 else None
    steps = cfg["steps"]
    unet.train()
    t_last = time.time()
    for step in progress(range(start, steps), desc=NAME, total=steps - start):
        lr = cosine_lr(step, steps, cfg["lr"], cfg["warmup"])
        set_lr(opt, lr)
        rows = batch_indices(step, cfg, one_object_rows)
        with torch.no_grad():
            ctx = text_encoder(token_ids(tok, batch_captions(step, rows, pool, cfg)))[0]
        z0 = latents[rows].float() * scale
        gen = step_generator(cfg["seed"], step)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (z0.shape[0],), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        target = sched.get_velocity(z0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
        pred = unet(zt, t, encoder_hidden_states=ctx).sample
        pixel_w = None if fg is None else 1 + (fg_weight - 1) * fg[rows].float()
        loss = diffusion_loss(pred, target, min_snr_weights(sched, t, cfg.get("min_snr_gamma")), pixel_w)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, step)
        done = step + 1
        if done % cfg["log_every"] == 0:
            now = time.time()
            log.write(
                step=done,
                loss=round(loss.item(), 5),
                lr=lr,
                wall_s_per_step=round((now - t_last) / cfg["log_every"], 3),
            )
            t_last = now
        if checkpoint_due(done, steps, cfg):
            save_checkpoint(work, {"model": unet.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                                   "step": done, "cpu_s": log.cpu_seconds(), "frozen": ids, "config": cfg})  # fmt: skip
            stop_if_asked(work, done)
        if cfg.get("eval_every") and done % cfg["eval_every"] == 0 and done < steps:
            ema_unet = ema.copy_of(unet)
            figs = oracle_figures(_pipeline(vae, text_encoder, tok, ema_unet, sched, cfg), n=cfg["eval_n_during"],
                                  steps=cfg["sample_steps"], guidance=cfg["guidance_scale"])  # fmt: skip
            log.write(step=done, eval=figs)
            print(f"step {done}: loss {loss.item():.4f} oracle {figs}", flush=True)
    unet.load_state_dict(ema.state_dict())
    unet.eval()
    if cfg.get("unet_dtype", "float32") == "float16":
        unet = unet.half()  # half the file size; from_pretrained without torch_dtype loads it as float32
    _pipeline(vae, text_encoder, tok, unet, sched, cfg).save_pretrained(out, safe_serialization=True)
    pipe = load_pipeline(out)  # measure exactly what was exported
    evals = {}
    for g in cfg["final_guidance_scales"]:
        evals[str(g)] = oracle_figures(pipe, n=cfg["eval_n"], steps=cfg["sample_steps"], guidance=g,
                                       category=cfg.get("final_eval_category", "single_object"))  # fmt: skip
        print(f"guidance {g}: {evals[str(g)]}", flush=True)
    best = choose_guidance(evals)
    parts = (pipe.unet, pipe.vae, pipe.text_encoder)
    meta = {"model": "StableDiffusionPipeline", "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
            "params": sum(p.numel() for m in parts for p in m.parameters()),
            "steps": steps, "batch_size": cfg["batch_size"], "cpu_seconds": round(log.cpu_seconds()),
            "frozen": ids, "generate": {"steps": cfg["sample_steps"], "guidance": float(best)},
            "oracle_test": evals, "config": cfg}  # fmt: skip
    if init:
        meta["init_from"] = _base_meta(init)
    write_meta(out, meta)
    log.write(step=steps, final_eval=evals)
    print(f"diffusion pipeline exported to {out}; best guidance {best}: {evals[best]}", flush=True)


def _base_meta(source: Path) -> dict[str, Any]:
    """What a warm-started model inherits: the source's steps and CPU time count toward its cost."""
    meta_path = source / "meta.json"
    base = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {"path": str(source), "steps": base.get("steps"), "cpu_seconds": base.get("cpu_seconds")}


# --------------------------------------------------------------------------- evaluation


def choose_guidance(evals: dict[str, dict[str, Any]], tolerance: float = 0.01) -> str:
    """The lowest guidance scale within ``tolerance`` of the best oracle accuracy: higher scales
    buy accuracy with less varied, over-saturated images (worse FID), so a tie goes to the lower one."""
    top = max(e["accuracy"] for e in evals.values())
    return min((g for g, e in evals.items() if e["accuracy"] >= top - tolerance), key=float)


def load_pipeline(model_dir: str | Path) -> StableDiffusionPipeline:
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise UserError(f"no pipeline in {model_dir}; train it first: python -m evalkit.zoo train diffusion")
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    if len(pipe.tokenizer) <= 3:
        raise UserError(f"the tokenizer in {model_dir / 'tokenizer'} loaded empty; its files are damaged")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.inference_mode()
def generate(
    pipe: StableDiffusionPipeline, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 16
):
    """One image per (prompt, seed); each image's noise comes from its own seed, so batching does not change it."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        images += pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens, height=size, width=size).images  # fmt: skip
    return images


def oracle_figures(
    pipe,
    n: int = 200,
    steps: int = 25,
    guidance: float = 5.0,
    category: str | None = "single_object",
    seed: int = 2024,
):
    """Oracle accuracy of one image per held-out ``category`` prompt (fixed seeds); ``None``: the test mix."""
    samples = sample(n, seed=seed, split="test", categories=[category] if category else None)
    images = generate(pipe, [s.caption for s in samples], list(range(n)), steps, guidance)
    report = oracle_evaluate(zip(images, [s.spec for s in samples]), desc="oracle")
    return {"category": category, "n": n, "accuracy": round(report.accuracy, 4),
            "checks": {k: round(v["accuracy"], 4) for k, v in report.checks.items()}}  # fmt: skip


def evaluate_cli(args) -> None:
    model_dir = Path(args.model) if args.model else dirs(NAME, None, None)[0]
    pipe = load_pipeline(model_dir)
    meta_path = model_dir / "meta.json"
    rec = json.loads(meta_path.read_text()).get("generate", {}) if meta_path.is_file() else {}
    steps, guidance = rec.get("steps", 25), rec.get("guidance", 5.0)
    figs = {c: oracle_figures(pipe, n=args.n, steps=steps, guidance=guidance, category=c)
            for c in ("single_object", "two_object", "counting", "position")}  # fmt: skip
    print(json.dumps(figs, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2))
