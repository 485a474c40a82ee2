"""The training loop every method shares, and ``train(cfg)``, the one entry point of the CLI and the UI.

A method (``textual_inversion``, ``dreambooth``, ``dreambooth_lora``) decides which tensors learn and
how the result is saved; everything else is here, written out as one loop: learning rate, batch,
noise, loss (with the class-prior term), finiteness check, checkpoint, update, log, samples.

Exact resume: batches, noise and timesteps are functions of (seed, step) alone, and a checkpoint
holds the trainable tensors and the optimizer state, so a run stopped anywhere and resumed ends
with the weights an uninterrupted run reaches. A checkpoint is written at the start of a step, once
the weights it holds have just produced a finite loss: a NaN or inf loss stops the run with a clear
message, and the checkpoint on disk is always a good one. Under ``evalkit.zoo.common.stop_on_signal`` (the
CLI), SIGTERM or Ctrl-C lets the step under way finish, checkpoints it and stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from evalkit.errors import UserError
from evalkit.utils import progress
from evalkit.zoo.common import TrainLog, check_finite, cosine_lr, set_lr, stop_if_asked, stop_requested

from .base import BaseModel, load_base, quiet_diffusers, sample, warn_long_prompts
from .config import METHOD_NAMES, TrainConfig, read_prior_prompts
from .data import Batch, TrainingData, hash_seed, instance_prompts
from .inputs import load_subject_images, subject_fingerprint
from .prior import class_images
from .run import RunFolder

Callback = Callable[[dict[str, Any]], None]


@dataclass
class Trainable:
    """What a method hands the loop: named tensors to learn, a saver of diffusers-format weights, and (for
    ``prior_target="base"``) a context in which the pipeline computes as the untrained base model."""

    params: dict[str, torch.nn.Parameter]
    save_weights: Callable[[Path], list[Path]]
    no_decay: tuple[str, ...] = ()  # name fragments kept out of weight decay (besides biases and norms)
    as_base: Callable[[], AbstractContextManager] | None = None  # methods without prior preservation have none


@dataclass
class TrainResult:
    run_dir: Path
    weights: list[Path]
    steps: int
    seconds: float  # wall time of the training steps, summed over the sessions of a resumed run
    final_loss: float | None
    samples: Path | None
    info: dict[str, Any] = field(default_factory=dict)
    earlier_seconds: float = 0.0  # the part of ``seconds`` spent in sessions before a resume


def make_optimizer(trainable: Trainable, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, decay on matrices only (as ``evalkit.zoo.common.adamw``), over named tensors from several modules."""
    named = list(trainable.params.items())
    decay = [p.ndim >= 2 and not any(s in n for s in trainable.no_decay) for n, p in named]
    groups = [
        {"params": [p for (_, p), d in zip(named, decay) if d], "weight_decay": weight_decay},
        {"params": [p for (_, p), d in zip(named, decay) if not d], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Constant (after a linear warm-up, if any) or cosine (``evalkit.zoo.common.cosine_lr``)."""
    if cfg.lr_schedule == "cosine":
        return cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Token states exactly as the pipeline computes them at inference (textual-inversion tokens expanded)."""
    return pipe.encode_prompt(prompts, pipe.device, 1, do_classifier_free_guidance=False)[0]


def denoising_loss(pipe, sched, batch: Batch, noise_seed: int, prior_weight: float,
                   as_base: Callable[[], AbstractContextManager] | None = None) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """MSE of the UNet's prediction (ε, v or x0 as the scheduler says); class rows weighted by ``prior_weight``.

    With ``as_base`` the class rows' target is what the base model predicts for the same noisy latents
    and prompts (computed inside that context): the prior then pins the function itself, not one noisy
    sample of it, so it holds the model in place with far less variance than the class images' own target.
    """
    z0 = batch.latents
    gen = torch.Generator().manual_seed(noise_seed)
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (z0.shape[0],), generator=gen)
    zt = sched.add_noise(z0, noise, t)
    kind = sched.config.prediction_type
    target = {"epsilon": noise, "sample": z0}.get(kind)
    if target is None:
        target = sched.get_velocity(z0, noise, t)
    pred = pipe.unet(zt, t, encoder_hidden_states=encode_prompts(pipe, batch.prompts)).sample
    k = z0.shape[0] - batch.num_prior
    if batch.num_prior and as_base is not None:
        with torch.no_grad(), as_base():
            states = encode_prompts(pipe, batch.prompts[k:])
            target = torch.cat([target[:k], pipe.unet(zt[k:], t[k:], encoder_hidden_states=states).sample])
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    instance = per_sample[:k].mean()
    parts = {"instance": instance.item()}
    if batch.num_prior == 0:
        return instance, parts
    prior = per_sample[k:].mean()
    parts["prior"] = prior.item()
    return instance + prior_weight * prior, parts


def validation_samples(run: RunFolder, tag: str, cfg: TrainConfig, base: BaseModel) -> Path:
    prompts = [cfg.fill(p) for p in cfg.validation_prompts for _ in range(cfg.num_validation_images)]
    seeds = [i for _ in cfg.validation_prompts for i in range(cfg.num_validation_images)]
    size = cfg.resolution or base.size
    images = sample(base.pipe, prompts, seeds, base.sample_steps, base.guidance, size)
    return run.write_samples(tag, images, prompts, seeds)


def _nan_message(err: UserError, run: RunFolder, good_step: int | None) -> str:
    kept = (
        f"the last good checkpoint (step {good_step}) is kept in {run.checkpoints}; continue with --resume "
        "(if it recurs, start a new run with a lower --lr)"
        if good_step
        else "no checkpoint was written yet; start again with a lower --lr"
    )
    return f"{str(err).split(';')[0]}: training stopped; {kept}"


def _check_weights(trainable: Trainable, run: RunFolder, good_step: int | None) -> None:
    bad = [n for n, p in trainable.params.items() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(_nan_message(UserError(f"weights became non-finite ({bad[0]})"), run, good_step))


def fit(cfg: TrainConfig, run: RunFolder, base: BaseModel, data: TrainingData, trainable: Trainable,
        callback: Callback | None = None) -> TrainResult:  # fmt: skip
    """Train ``trainable`` for ``cfg.steps`` steps (from the last checkpoint when resuming)."""
    from diffusers import DDPMScheduler

    pipe = base.pipe
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    opt = make_optimizer(trainable, cfg.lr, cfg.weight_decay)
    params = list(trainable.params.values())
    base_target = cfg.prior_preservation and cfg.prior_target == "base"
    as_base = trainable.as_base if base_target else None
    if base_target and as_base is None:
        raise ValueError(f"{cfg.method} offers no base-model context for prior_target='base'")
    start, cpu, wall, good_step = 0, 0.0, 0.0, None
    ckpt = run.load_checkpoint() if cfg.resume else None
    if ckpt:
        with torch.no_grad():
            for name, p in trainable.params.items():
                p.copy_(ckpt["params"][name])
        opt.load_state_dict(ckpt["optimizer"])
        start, cpu, wall, good_step = ckpt["step"], ckpt["cpu_s"], ckpt.get("train_s", 0.0), ckpt["step"]
        if start > cfg.steps:
            raise UserError(f"the checkpoint in {run.checkpoints} is at step {start}, past --steps {cfg.steps}")
        print(f"resumed {run.path} at step {start}", flush=True)
    log = TrainLog(run.path, cpu)
    if ckpt:
        log.write(event="resumed", step=start)

    def checkpoint(step: int) -> None:
        state = {"params": {n: p.detach().clone() for n, p in trainable.params.items()},
                 "optimizer": opt.state_dict(), "step": step, "cpu_s": log.cpu_seconds(),
                 "train_s": wall + time.time() - t0, "config": cfg.to_dict()}  # fmt: skip
        run.save_checkpoint(state)

    t0, loss_value = time.time(), None
    for step in progress(range(start, cfg.steps), desc=METHOD_NAMES[cfg.method], total=cfg.steps - start):
        lr = learning_rate(cfg, step)
        set_lr(opt, lr)
        batch = data.batch(step)
        noise_seed = hash_seed(cfg.seed, "noise", step)
        loss, parts = denoising_loss(pipe, sched, batch, noise_seed, cfg.prior_loss_weight, as_base)
        try:
            check_finite(loss, step)
        except UserError as e:
            log.write(event="non-finite loss", step=step, loss=str(loss.item()))
            raise UserError(_nan_message(e, run, good_step)) from None
        if step > start and step % cfg.checkpoint_every == 0:
            checkpoint(step)  # these weights just gave a finite loss
            good_step = step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        done, loss_value = step + 1, loss.item()
        log.write(step=done, loss=round(loss_value, 6), lr=lr, **{k: round(v, 6) for k, v in parts.items()})
        if callback:
            callback({"step": done, "total": cfg.steps, "loss": loss_value})
        if cfg.validation_every and done % cfg.validation_every == 0 and done < cfg.steps:
            folder = validation_samples(run, f"step-{done:06d}", cfg, base)
            if callback:
                callback({"step": done, "total": cfg.steps, "samples": str(folder)})
        if stop_requested() and done < cfg.steps:  # SIGTERM / Ctrl-C under stop_on_signal: keep this step
            _check_weights(trainable, run, good_step)
            checkpoint(done)
            stop_if_asked(run.checkpoints, done)
    seconds = wall + time.time() - t0
    _check_weights(trainable, run, good_step)
    if start < cfg.steps or not (run.checkpoints / "ckpt.pt").is_file():
        checkpoint(cfg.steps)
    weights = trainable.save_weights(run.path)
    final = validation_samples(run, "final", cfg, base)
    info = run.info() | {"steps": cfg.steps, "train_seconds": round(seconds, 1), "cpu_seconds": round(log.cpu_seconds(), 1),
                         "final_loss": loss_value, "weights": [str(w.relative_to(run.path)) for w in weights]}  # fmt: skip
    run.write_info(info)
    log.write(event="finished", step=cfg.steps, weights=info["weights"])
    if callback:
        callback({"step": cfg.steps, "total": cfg.steps, "samples": str(final), "done": True})
    return TrainResult(run.path, weights, cfg.steps, seconds, loss_value, final, info, wall)


def prior_images(cfg: TrainConfig, base, size: int) -> tuple[list[Image.Image], list[str], list[str]]:
    """The class images, their prompts and cache folders: image ``i`` is image ``i // P`` of prompt ``i % P``
    among the class prompt and the ``prior_prompts`` file's P - 1 prompts."""
    prompts = [cfg.fill(cfg.class_prompt)] + (read_prior_prompts(cfg.prior_prompts) if cfg.prior_prompts else [])
    n, k = cfg.num_class_images, len(prompts)
    per_prompt = [class_images(base, p, len(range(j, n, k)), size, cfg.class_cache) for j, p in enumerate(prompts)]
    images = [per_prompt[i % k][0][i // k] for i in range(n)]
    return images, [prompts[i % k] for i in range(n)], [str(folder) for ims, folder in per_prompt if ims]


def train(cfg: TrainConfig, callback: Callback | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.images``; inputs are checked before any model loads.

    ``callback`` gets ``{"step", "total", "loss"}`` after every step and ``{"samples": folder}`` when
    validation images are written (the UI's progress bar and gallery).
    """
    t_start = time.time()
    cfg = cfg.resolved()
    subject = load_subject_images(cfg.images, cfg.token)
    run = RunFolder(cfg.out)
    run.prepare(cfg)
    base = load_base(cfg.model, cfg.sample_steps, cfg.guidance)
    size = cfg.resolution or base.size
    setup = _method(cfg.method)
    base.check_resolution(size)
    setup.check(cfg, base)  # e.g. the new token must not be in the vocabulary yet
    run.start(cfg, {"method": cfg.method, "model": cfg.model, "model_fingerprint": base.fingerprint,
                    "images": str(Path(cfg.images).expanduser().resolve()),
                    "images_fingerprint": subject_fingerprint(subject), "num_images": len(subject),
                    "sample_steps": base.sample_steps, "guidance": base.guidance, "resolution": size})  # fmt: skip
    prior, prior_prompts = None, None
    if cfg.prior_preservation:
        prior, prior_prompts, folders = prior_images(cfg, base, size)
        run.write_info(run.info() | {"class_images": folders, "class_prompts": sorted(set(prior_prompts))})
    trainable = setup.setup(cfg, base)  # changes the pipeline: after class images are made
    prompts = instance_prompts(subject, cfg)
    warn_long_prompts(
        base.pipe.tokenizer, [p for ps in prompts for p in ps] + [cfg.fill(p) for p in cfg.validation_prompts]
    )
    data = TrainingData(base.pipe.vae, subject, prompts, size, cfg.batch_size, cfg.seed, cfg.flip_p, prior,
                        prior_prompts, subject_share=cfg.prior_subject_share)  # fmt: skip
    with quiet_diffusers():
        result = fit(cfg, run, base, data, trainable, callback)
    # loading, class images, training and saving, plus the training steps of earlier sessions if resumed
    result.info["total_seconds"] = round(time.time() - t_start + result.earlier_seconds, 1)
    run.write_info(result.info)
    return result


def _method(name: str):
    import importlib

    module = {"ti": "textual_inversion", "dreambooth": "dreambooth", "lora": "dreambooth_lora"}[name]
    return importlib.import_module(f"personalize.{module}")
