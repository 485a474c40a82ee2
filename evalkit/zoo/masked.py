"""The masked generator: aMUSEd (a ``UVit2DModel`` over the zoo's VQ tokens) exported as a real
``AmusedPipeline``.

Training is MaskGIT's: each image's tokens are masked at a ratio ``cos(u * pi/2)`` with ``u ~ U(0, 1)``
and the transformer predicts the masked ones (cross-entropy on masked positions only). The text
encoder and the VQ model are frozen; a caption is replaced by the empty prompt with probability
``caption_dropout``, which is what the pipeline's classifier-free guidance uses as its negative.
Sampling is ``AmusedPipeline``'s own: ``num_inference_steps`` is the N-step knob (1..16).

The helpers for token data and text (``encode_text``, ``token_batch``) and the training loop
(``train_on_tokens``) are shared with the autoregressive generator, which is trained on the same tokens
and the same text encoder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import UserError
from ..shapes.world import sample
from ..utils import progress
from .common import (
    EMA,
    TrainLog,
    adamw,
    autocast,
    batch_samples,
    cache_rows,
    cached_tensors,
    check_finite,
    checkpoint_due,
    cosine_lr,
    dirs,
    fingerprint,
    foreground_mask,
    generate_params,
    load_checkpoint,
    load_config,
    mix_id,
    render_batch,
    resolve,
    save_checkpoint,
    set_lr,
    step_generator,
    step_rng,
    stop_if_asked,
    write_meta,
)
from .textenc import load_text_encoder
from .vq import encode_tokens, load_vq, to_unit

AESTHETIC_SCORE = 6  # AmusedPipeline's default micro-conditioning (with crop (0, 0) and the image size)

# ---------------------------------------------------------------------------------------------- shared data


def load_text(path: str | Path) -> tuple[CLIPTokenizer, CLIPTextModelWithProjection]:
    """The frozen tokenizer and text encoder exported by ``python -m evalkit.zoo train text-encoder``."""
    text_encoder, tokenizer = load_text_encoder(path)
    text_encoder.requires_grad_(False)
    return tokenizer, text_encoder


@torch.no_grad()
def encode_text(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModelWithProjection, prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled projected embedding [B, P], penultimate hidden states [B, L, H]), exactly as ``AmusedPipeline``."""
    ids = tokenizer(
        prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    out = text_encoder(ids, return_dict=True, output_hidden_states=True)
    return out.text_embeds, out.hidden_states[-2]


@dataclass
class TokenCache:
    """VQ tokens [N, h, w], object masks [N, h, w] and captions of training samples ``0 .. N-1``: encoding
    renders is ~40 % of a masked step, and the VQ model is frozen, so it is done once."""

    tokens: torch.Tensor
    on_object: torch.Tensor
    captions: list[str]


def token_cache(cfg: dict[str, Any], vq: VQModel, work: Path, vq_id: str) -> TokenCache:
    """Built once per (VQ model, seed, size, category mix) under ``work``; later runs load it."""
    n, mix = cfg["cache_size"], cfg.get("categories")
    samples = sample(n, seed=cfg["seed"], split="train", categories=mix)
    path = work / f"tokens-{vq_id}-{cfg['seed']}-{n}-{mix_id(mix)}.pt"

    def build() -> dict[str, torch.Tensor]:
        tokens, masks = [], []
        for start in progress(range(0, n, 256), desc="encoding tokens", total=(n + 255) // 256):
            t, m = _encode_samples(vq, samples[start : start + 256], cfg["image_size"])
            tokens.append(t.to(torch.int16))
            masks.append(m)
        return {"tokens": torch.cat(tokens), "on_object": torch.cat(masks)}

    data = cached_tensors(path, build)
    return TokenCache(data["tokens"], data["on_object"], [s.caption for s in samples])


def _encode_samples(vq: VQModel, samples: list, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B, h, w], bool [B, h, w]: the token's patch shows part of an object) of the renders."""
    x = to_unit(render_batch(samples, image_size))
    tokens = encode_tokens(vq, x)
    return tokens, foreground_mask(x, [s.scene.background for s in samples], tokens.shape[-2:]).squeeze(1)


def token_batch(
    step: int,
    cfg: dict[str, Any],
    vq: VQModel,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModelWithProjection,
    cache: TokenCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch ``step``: VQ tokens [B, h, w] of renders (from ``cache`` if given), the text conditioning of
    their captions (each replaced by the empty prompt with probability ``caption_dropout``) and per-token
    loss weights (``object_token_weight`` where the token's patch shows part of an object, else 1). A pure
    function of the step."""
    if cache is not None:
        rows = cache_rows(step, len(cache.captions), cfg["batch_size"], cfg["seed"])
        tokens, on_object = cache.tokens[rows].long(), cache.on_object[rows]
        texts = [cache.captions[r] for r in rows]
    else:
        samples = batch_samples(step, cfg["batch_size"], cfg["seed"], categories=cfg.get("categories"))
        tokens, on_object = _encode_samples(vq, samples, cfg["image_size"])
        texts = [s.caption for s in samples]
    weights = 1 + (cfg.get("object_token_weight", 1.0) - 1) * on_object.float()
    rng = step_rng(cfg["seed"], step, "caption-dropout")
    captions = ["" if rng.random() < cfg["caption_dropout"] else t for t in texts]
    pooled, hidden = encode_text(tokenizer, text_encoder, captions)
    return tokens, pooled, hidden, weights


def loss_sets(
    cfg: dict[str, Any], vq: VQModel, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModelWithProjection,
    cache: TokenCache | None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(tokens, pooled, hidden) of ``val_size`` test-split samples of the training mix ("held_out") and,
    with a cache, of its first ``val_size`` rows ("seen"): the gap between their losses is over-fitting."""
    n = cfg["val_size"]
    samples = sample(n, seed=cfg["seed"], split="test", categories=cfg.get("categories"))
    tokens, _ = _encode_samples(vq, samples, cfg["image_size"])
    sets = {"held_out": (tokens, *encode_text(tokenizer, text_encoder, [s.caption for s in samples]))}
    if cache is not None:
        sets["seen"] = (cache.tokens[:n].long(), *encode_text(tokenizer, text_encoder, cache.captions[:n]))
    return sets


@torch.no_grad()
def set_loss(kind: TokenTraining, transformer: torch.nn.Module, data: tuple, cfg: dict[str, Any]) -> float:
    """Unweighted loss on one of ``loss_sets`` (fixed masks for the masked model): the training loss is
    weighted and drawn from a finite cache, so it cannot show over-fitting."""
    tokens, pooled, hidden = data
    total, b = 0.0, cfg["batch_size"]
    for i in range(0, len(tokens), b):
        chunk = slice(i, i + b)
        loss = kind.loss(transformer, tokens[chunk], pooled[chunk], hidden[chunk], None, i, cfg)
        total += loss.item() * len(tokens[chunk])
    return round(total / len(tokens), 4)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- model


def build_transformer(model_cfg: dict[str, Any], vq: VQModel, text_encoder: CLIPTextModelWithProjection) -> UVit2DModel:
    """A ``UVit2DModel`` whose sizes agree with the VQ model and the text encoder (ENV.md's couplings)."""
    codebook = vq.config.num_vq_embeddings
    micro = model_cfg.get("micro_cond_encode_dim", 16)
    sample_size = vq.config.sample_size // 2 ** (len(vq.config.block_out_channels) - 1)
    return UVit2DModel(
        hidden_size=model_cfg["hidden_size"],
        use_bias=False,
        hidden_dropout=model_cfg.get("dropout", 0.0),
        attention_dropout=model_cfg.get("dropout", 0.0),
        cond_embed_dim=text_encoder.config.projection_dim,
        micro_cond_encode_dim=micro,
        micro_cond_embed_dim=5 * micro,
        encoder_hidden_size=text_encoder.config.hidden_size,
        vocab_size=codebook + 1,  # the last id is the mask token
        codebook_size=codebook,
        in_channels=model_cfg["in_channels"],
        block_out_channels=model_cfg["block_out_channels"],
        num_res_blocks=model_cfg["num_res_blocks"],
        downsample=model_cfg.get("downsample", False),
        upsample=model_cfg.get("downsample", False),
        block_num_heads=model_cfg["block_num_heads"],
        num_hidden_layers=model_cfg["num_hidden_layers"],
        num_attention_heads=model_cfg["num_attention_heads"],
        intermediate_size=model_cfg["intermediate_size"],
        sample_size=sample_size,
    )


def mask_tokens(tokens: torch.Tensor, mask_id: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT's training corruption: per image, mask ``round(L * cos(u pi/2))`` (at least one) random tokens.
    Returns (input ids, labels with -100 where nothing is to be predicted)."""
    b = tokens.shape[0]
    flat = tokens.reshape(b, -1)
    seq = flat.shape[1]
    ratio = torch.cos(torch.rand(b, generator=gen) * math.pi / 2)
    n_masked = (seq * ratio).round().clamp(min=1)
    ranks = torch.rand(b, seq, generator=gen).argsort(-1).argsort(-1)
    mask = ranks < n_masked[:, None]
    inputs = torch.where(mask, torch.full_like(flat, mask_id), flat).view_as(tokens)
    labels = torch.where(mask, flat, torch.full_like(flat, -100)).view_as(tokens)
    return inputs, labels


def micro_conds(batch: int, image_size: int) -> torch.Tensor:
    """What ``AmusedPipeline`` passes by default: (width, height, crop x, crop y, aesthetic score)."""
    values = (image_size, image_size, 0, 0, AESTHETIC_SCORE)
    return torch.tensor(values, dtype=torch.float32).expand(batch, -1)


def masked_loss(
    transformer: UVit2DModel, tokens: torch.Tensor, pooled: torch.Tensor, hidden: torch.Tensor, gen: torch.Generator,
    image_size: int, weights: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Cross-entropy of the transformer's predictions at the masked positions, weighted per token.

    Objects cover ~5 % of the tokens; unweighted, the model learned backgrounds and sampled empty images."""
    mask_id = transformer.config.vocab_size - 1
    inputs, labels = mask_tokens(tokens, mask_id, gen)
    conds = micro_conds(len(tokens), image_size)
    logits = transformer(inputs, encoder_hidden_states=hidden, pooled_text_emb=pooled, micro_conds=conds)
    ce = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")  # logits [B, K, h, w] -> [B, h, w]
    w = (labels != -100).to(ce.dtype) * (1.0 if weights is None else weights)
    return (ce * w).sum() / w.sum()


# ---------------------------------------------------------------------------------------------- training


def make_pipeline(vq, tokenizer, text_encoder, transformer) -> AmusedPipeline:
    scheduler = AmusedScheduler(mask_token_id=vq.config.num_vq_embeddings, masking_schedule="cosine")
    return AmusedPipeline(
        vqvae=vq, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler
    )


@dataclass(frozen=True)
class TokenTraining:
    """What differs between the two generators trained on the VQ tokens (masked and autoregressive);
    ``train_on_tokens`` runs the rest, the same loop for both."""

    name: str  # default folders, progress bar and messages
    build: Callable[[dict[str, Any], VQModel, CLIPTextModelWithProjection], torch.nn.Module]
    loss: Callable[..., torch.Tensor]  # (transformer, tokens, pooled, hidden, weights, step, cfg) -> loss
    pipeline: Callable[..., Any]  # (vq, tokenizer, text_encoder, transformer) -> the pipeline to save
    betas: tuple[float, float]
    no_decay: tuple[str, ...] = ("embed",)
    meta: dict[str, Any] = field(default_factory=dict)  # more meta.json entries (e.g. a custom loader)


def train_on_tokens(
    kind: TokenTraining, cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None,
    work_dir: str | None = None,
) -> None:  # fmt: skip
    out, work = dirs(kind.name, out_dir, work_dir)
    precision = autocast(cfg)  # a bad value stops the run before anything loads
    vq = load_vq(resolve(cfg.get("vq_dir"), "vq"))
    vq.requires_grad_(False)
    tokenizer, text_encoder = load_text(resolve(cfg.get("text_encoder_dir"), "text-encoder"))
    torch.manual_seed(cfg["seed"])
    transformer = kind.build(cfg["model"], vq, text_encoder)
    ema = EMA(transformer, cfg["ema_decay"])
    opt = adamw(transformer, cfg, betas=kind.betas, no_decay=kind.no_decay)
    start, cpu = 0, 0.0
    ckpt = load_checkpoint(work) if resume else None
    if ckpt:
        transformer.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        start, cpu = ckpt["step"], ckpt["cpu_s"]
        print(f"resumed at step {start}")
    log = TrainLog(work, cpu)
    cache = token_cache(cfg, vq, work, fingerprint(resolve(cfg.get("vq_dir"), "vq"))) if cfg.get("cache_size") else None
    sets = loss_sets(cfg, vq, tokenizer, text_encoder, cache) if cfg.get("val_size") else {}
    steps = cfg["steps"]
    sampling = cfg.get("eval_sampling", {})
    transformer.train()
    for step in progress(range(start, steps), desc=kind.name, total=steps - start):
        lr = cosine_lr(step, steps, cfg["lr"], cfg["warmup"])
        set_lr(opt, lr)
        torch.manual_seed(cfg["seed"] * 1_000_003 + step)  # dropout, if any, is a function of the step too
        tokens, pooled, hidden, weights = token_batch(step, cfg, vq, tokenizer, text_encoder, cache)
        with precision:
            loss = kind.loss(transformer, tokens, pooled, hidden, weights, step, cfg)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        ema.update(transformer, step)
        done = step + 1
        if done % cfg["log_every"] == 0:
            log.write(step=done, loss=round(loss.item(), 4), lr=lr)
        if checkpoint_due(done, steps, cfg):
            save_checkpoint(work, {"model": transformer.state_dict(), "ema": ema.state_dict(),
                                   "optimizer": opt.state_dict(), "step": done, "cpu_s": log.cpu_seconds(),
                                   "config": cfg})  # fmt: skip
            stop_if_asked(work, done)
        if cfg.get("eval_every") and done % cfg["eval_every"] == 0 and done < steps:
            averaged = ema.copy_of(transformer)
            pipe = kind.pipeline(vq, tokenizer, text_encoder, averaged)
            figs = generated_oracle_figures(pipe, n=cfg.get("eval_every_n", 100), **sampling)
            figs["losses"] = {name: set_loss(kind, averaged, data, cfg) for name, data in sets.items()}
            log.write(step=done, eval=figs)
            print(f"step {done}: loss {loss.item():.4f} oracle {figs['oracle']} {figs['checks']} {figs['losses']}",
                  flush=True)  # fmt: skip
    transformer.load_state_dict(ema.state_dict())
    transformer.eval()
    if cfg.get("transformer_dtype", "float32") == "float16":
        transformer.half()  # half the file size; from_pretrained without torch_dtype loads it as float32
    pipe = kind.pipeline(vq, tokenizer, text_encoder, transformer)
    pipe.save_pretrained(str(out))
    transformer.float()  # measure exactly the saved weights, in float32 as they load
    figs = generated_oracle_figures(pipe, n=cfg.get("eval_n", 200), **sampling)
    write_meta(out, {"model": type(pipe).__name__, **kind.meta, "transformer_params": count_params(transformer),
                     "params": count_params(transformer) + count_params(vq) + count_params(text_encoder),
                     "steps": steps, "batch_size": cfg["batch_size"], "cpu_seconds": round(log.cpu_seconds()),
                     "generate": generate_params(sampling), "oracle_test": figs, "config": cfg})  # fmt: skip
    log.write(step=steps, final_eval=figs)
    print(f"{kind.name} generator exported to {out}: {figs}")


def _masked_step_loss(transformer, tokens, pooled, hidden, weights, step: int, cfg: dict[str, Any]) -> torch.Tensor:
    return masked_loss(
        transformer, tokens, pooled, hidden, step_generator(cfg["seed"], step), cfg["image_size"], weights
    )


MASKED = TokenTraining(
    name="masked", build=build_transformer, loss=_masked_step_loss, pipeline=make_pipeline, betas=(0.9, 0.99),
)  # fmt: skip


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    train_on_tokens(MASKED, cfg, resume, out_dir, work_dir)


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def generated_oracle_figures(
    pipe, n: int = 200, split: str = "test", seed: int = 12345, batch: int = 25, **call_kwargs: Any
) -> dict[str, Any]:
    """Oracle accuracy of a pipeline's images for the split's captions (``call_kwargs`` go to the pipeline).
    Each chunk of ``batch`` prompts gets its own seeded generator, so the figure is reproducible."""
    from ..shapes.oracle import evaluate

    samples = sample(n, seed=seed, split=split)
    images = []
    pipe.set_progress_bar_config(disable=True)
    for i in range(0, n, batch):
        chunk = samples[i : i + batch]
        gen = torch.Generator().manual_seed(seed + i)
        images += pipe([s.caption for s in chunk], generator=gen, **call_kwargs).images
    report = evaluate(zip(images, [s.spec for s in samples]), desc="oracle")
    return {
        "oracle": round(report.accuracy, 4),
        "checks": {k: round(v["accuracy"], 4) for k, v in report.checks.items()},
        "categories": {k: round(v["accuracy"], 4) for k, v in report.categories.items()},
        "n": n,
        **call_kwargs,
    }


def evaluate_cli(args) -> None:
    """Oracle accuracy at 1, 4 and 12 sampling steps (the recipe's guidance scale)."""
    model_dir = Path(args.model) if args.model else dirs("masked", None, None)[0]
    if not (model_dir / "model_index.json").is_file():
        raise UserError(f"no AmusedPipeline in {model_dir}; train it first: python -m evalkit.zoo train masked")
    pipe = AmusedPipeline.from_pretrained(str(model_dir))
    sampling = dict(load_config("masked").get("eval_sampling", {}))
    figs = {}
    for steps in (1, 4, 12):
        sampling["num_inference_steps"] = steps
        figs[f"{steps} steps"] = generated_oracle_figures(pipe, n=args.n, **sampling)
    print(json.dumps(figs, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2))
