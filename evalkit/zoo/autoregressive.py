"""The autoregressive generator: an :class:`~evalkit.zoo.ar_pipeline.ARTransformer` trained by next-token
prediction on the masked generator's VQ tokens, with the same frozen text encoder and caption dropout,
exported as an :class:`~evalkit.zoo.ar_pipeline.ARPipeline` (load with ``ARPipeline.from_pretrained``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPTextModelWithProjection

from ..errors import UserError
from ..utils import progress
from .ar_pipeline import ARPipeline, ARTransformer
from .common import (
    EMA,
    TrainLog,
    adamw,
    autocast,
    check_finite,
    cosine_lr,
    dirs,
    fingerprint,
    generate_params,
    load_checkpoint,
    load_config,
    resolve,
    save_checkpoint,
    set_lr,
    write_meta,
)
from .masked import count_params, generated_oracle_figures, load_text, token_batch, token_cache
from .vq import VQModel, load_vq


def build_transformer(
    model_cfg: dict[str, Any], vq: VQModel, text_encoder: CLIPTextModelWithProjection
) -> ARTransformer:
    """An ``ARTransformer`` sized to the VQ token grid and the text encoder."""
    side = vq.config.sample_size // 2 ** (len(vq.config.block_out_channels) - 1)
    return ARTransformer(
        codebook_size=vq.config.num_vq_embeddings,
        sample_size=side,
        hidden_size=model_cfg["hidden_size"],
        num_layers=model_cfg["num_layers"],
        num_heads=model_cfg["num_heads"],
        intermediate_size=model_cfg["intermediate_size"],
        text_hidden_size=text_encoder.config.hidden_size,
        text_embed_dim=text_encoder.config.projection_dim,
        max_text_length=text_encoder.config.max_position_embeddings,
        dropout=model_cfg.get("dropout", 0.0),
    )


def next_token_loss(
    transformer: ARTransformer, tokens: torch.Tensor, pooled: torch.Tensor, hidden: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Teacher-forced cross-entropy over all raster positions (inputs are tokens 0..N-2, targets 0..N-1),
    weighted per token as the masked model's loss is."""
    flat = tokens.reshape(tokens.shape[0], -1)
    logits = transformer(flat[:, :-1], encoder_hidden_states=hidden, pooled_text_emb=pooled).logits
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat.reshape(-1), reduction="none")
    w = torch.ones_like(ce) if weights is None else weights.reshape(-1).to(ce.dtype)
    return (ce * w).sum() / w.sum()


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    out, work = dirs("autoregressive", out_dir, work_dir)
    precision = autocast(cfg)  # a bad value stops the run before anything loads
    vq = load_vq(resolve(cfg.get("vq_dir"), "vq"))
    vq.requires_grad_(False)
    tokenizer, text_encoder = load_text(resolve(cfg.get("text_encoder_dir"), "text-encoder"))
    torch.manual_seed(cfg["seed"])
    transformer = build_transformer(cfg["model"], vq, text_encoder)
    ema = EMA(transformer, cfg["ema_decay"])
    opt = adamw(transformer, cfg, betas=(0.9, 0.95), no_decay=("embed", "text_pos"))
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
    steps = cfg["steps"]
    transformer.train()
    for step in progress(range(start, steps), desc="autoregressive", total=steps - start):
        lr = cosine_lr(step, steps, cfg["lr"], cfg["warmup"])
        set_lr(opt, lr)
        torch.manual_seed(cfg["seed"] * 1_000_003 + step)  # dropout, if any, is a function of the step too
        tokens, pooled, hidden, weights = token_batch(step, cfg, vq, tokenizer, text_encoder, cache)
        with precision:
            loss = next_token_loss(transformer, tokens, pooled, hidden, weights)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        ema.update(transformer, step)
        done = step + 1
        if done % cfg["log_every"] == 0:
            log.write(step=done, loss=round(loss.item(), 4), lr=lr)
        if done % cfg["checkpoint_every"] == 0 or done == steps:
            save_checkpoint(work, {"model": transformer.state_dict(), "ema": ema.state_dict(),
                                   "optimizer": opt.state_dict(), "step": done, "cpu_s": log.cpu_seconds(),
                                   "config": cfg})  # fmt: skip
        if cfg.get("eval_every") and done % cfg["eval_every"] == 0 and done < steps:
            pipe = ARPipeline(vq, tokenizer, text_encoder, ema.copy_of(transformer))
            figs = generated_oracle_figures(pipe, n=cfg.get("eval_every_n", 100), **cfg.get("eval_sampling", {}))
            log.write(step=done, eval=figs)
            print(f"step {done}: loss {loss.item():.4f} oracle {figs['oracle']} {figs['checks']}", flush=True)
    transformer.load_state_dict(ema.state_dict())
    transformer.eval()
    pipe = ARPipeline(vqvae=vq, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer)
    pipe.save_pretrained(str(out))
    sampling = cfg.get("eval_sampling", {})
    figs = generated_oracle_figures(pipe, n=cfg.get("eval_n", 200), **sampling)
    write_meta(out, {"model": "ARPipeline", "loader": "evalkit.zoo.ar_pipeline.ARPipeline.from_pretrained",
                     "transformer_params": count_params(transformer),
                     "params": count_params(transformer) + count_params(vq) + count_params(text_encoder),
                     "steps": steps, "batch_size": cfg["batch_size"], "cpu_seconds": round(log.cpu_seconds()),
                     "generate": generate_params(cfg.get("eval_sampling", {})), "oracle_test": figs,
                     "config": cfg})  # fmt: skip
    log.write(step=steps, final_eval=figs)
    print(f"autoregressive generator exported to {out}: {figs}")


def evaluate_cli(args) -> None:
    """Oracle accuracy without and with classifier-free guidance (the recipe's temperature and top-k)."""
    model_dir = Path(args.model) if args.model else dirs("autoregressive", None, None)[0]
    if not (model_dir / "model_index.json").is_file():
        raise UserError(f"no ARPipeline in {model_dir}; train it first: python -m evalkit.zoo train autoregressive")
    pipe = ARPipeline.from_pretrained(str(model_dir))
    sampling = dict(load_config("autoregressive").get("eval_sampling", {}))
    figs = {}
    for guidance in (1.0, sampling.pop("guidance_scale", 3.0)):
        figs[f"guidance {guidance}"] = generated_oracle_figures(pipe, n=args.n, guidance_scale=guidance, **sampling)
    print(json.dumps(figs, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2))
