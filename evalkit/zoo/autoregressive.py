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
from .ar_pipeline import ARPipeline, ARTransformer
from .common import dirs, load_config
from .masked import TokenTraining, generated_oracle_figures, train_on_tokens
from .vq import VQModel


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


def _step_loss(transformer, tokens, pooled, hidden, weights, step: int, cfg: dict[str, Any]) -> torch.Tensor:
    return next_token_loss(transformer, tokens, pooled, hidden, weights)


AUTOREGRESSIVE = TokenTraining(
    name="autoregressive", build=build_transformer, loss=_step_loss, pipeline=ARPipeline,
    betas=(0.9, 0.95), no_decay=("embed", "text_pos"),
    meta={"loader": "evalkit.zoo.ar_pipeline.ARPipeline.from_pretrained"},
)  # fmt: skip


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    train_on_tokens(AUTOREGRESSIVE, cfg, resume, out_dir, work_dir)


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
