"""The generators' shared text encoder: a transformers ``CLIPTextModelWithProjection``.

Trained contrastively on the shapes world against a small conv image tower that is thrown away
afterwards, with one hard negative per image that differs in a single attribute (``perturb``), as
the judge is; but it is a different model (transformers, reduced vocabulary) and never the judge.

Export layout (``zoo/text-encoder``)::

    text_encoder/   CLIPTextModelWithProjection (aMUSEd reads text_embeds and hidden_states[-2])
    tokenizer/      CLIPTokenizer over the reduced BPE (tokenizer.py)
    meta.json

Stable Diffusion reads ``text_encoder(ids)[0]`` as the token states, which for the projection class
is ``text_embeds``; :func:`load_text_encoder` with ``projection=False`` gives the plain
``CLIPTextModel`` (same weights) that the diffusion pipeline ships.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import UserError
from ..shapes.world import caption_for, describe, perturb
from ..utils import progress
from .common import (
    TrainLog,
    adamw,
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
    step_rng,
    stop_if_asked,
    write_meta,
)
from .tokenizer import build_tokenizer, load_tokenizer

NAME = "text-encoder"
MEAN = (0.48145466, 0.4578275, 0.40821073)  # the judge's normalization, so its zero-shot test applies
STD = (0.26862954, 0.26130258, 0.27577711)


def text_config(model_cfg: dict[str, Any], tok: CLIPTokenizer) -> CLIPTextConfig:
    """CLIP text config sized to the tokenizer; positions == ``tok.model_max_length`` (the pipeline pads to it)."""
    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=model_cfg["hidden_size"],
        intermediate_size=model_cfg.get("intermediate_size", 4 * model_cfg["hidden_size"]),
        num_hidden_layers=model_cfg["layers"],
        num_attention_heads=model_cfg["heads"],
        max_position_embeddings=tok.model_max_length,
        projection_dim=model_cfg["projection_dim"],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


class ImageTower(nn.Module):
    """Strided conv stages, then a linear map of the flattened grid (keeps where things are, for
    relations) to the shared embedding. Only used to train the text side."""

    def __init__(self, widths: list[int], embed_dim: int, image_size: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for w in widths:
            layers += [
                nn.Conv2d(c_in, w, 3, stride=2, padding=1),
                nn.GroupNorm(8, w),
                nn.GELU(),
                nn.Conv2d(w, w, 3, padding=1),
                nn.GroupNorm(8, w),
                nn.GELU(),
            ]
            c_in = w
        self.features = nn.Sequential(*layers)
        grid = image_size // 2 ** len(widths)
        self.proj = nn.Linear(c_in * grid * grid, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x).flatten(1))


class ContrastivePair(nn.Module):
    """Text and image towers with the ``encode_text`` / ``encode_image`` interface of open_clip,
    so the judge's zero-shot test measures this encoder the same way."""

    def __init__(self, text: CLIPTextModelWithProjection, image: ImageTower):
        super().__init__()
        self.text = text
        self.image = image
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))  # log(1 / 0.07), as CLIP

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = self.text(input_ids=ids).text_embeds
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = self.image(x)
        return F.normalize(emb, dim=-1) if normalize else emb


def token_ids(tok: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """Ids padded to ``model_max_length`` exactly as StableDiffusionPipeline pads prompts."""
    return tok(
        texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def build(cfg: dict[str, Any]) -> tuple[ContrastivePair, CLIPTokenizer]:
    m = cfg["model"]
    tok = build_tokenizer(max_length=m["max_length"])
    torch.manual_seed(cfg["seed"])
    text = CLIPTextModelWithProjection(text_config(m, tok))
    image = ImageTower(m["image_widths"], m["projection_dim"], cfg["image_size"])
    return ContrastivePair(text, image), tok


def make_batch(step: int, cfg: dict[str, Any]) -> tuple[torch.Tensor, list[str], list[str]]:
    """Renders of batch ``step``, a true caption of varied detail each, and its one-attribute-off twin."""
    samples = batch_samples(step, cfg["batch_size"], cfg["seed"])
    rng = step_rng(cfg["seed"], step, "captions")
    texts, negs = [], []
    for s in samples:
        spec = s.spec if rng.random() < 0.5 else describe(s.scene, rng)
        neg = perturb(spec, rng)
        phrasing = rng.randrange(1 << 30)
        texts.append(caption_for(spec, random.Random(phrasing)))
        negs.append(caption_for(neg, random.Random(phrasing)))
    x = images_to_tensor(render_batch(samples, cfg["image_size"]), MEAN, STD)
    return x, texts, negs


def _contrastive_loss(img: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor, w: float):
    """Symmetric InfoNCE over the batch (open_clip's ClipLoss on one process) plus each image
    preferring its caption to its hard negative."""
    labels = torch.arange(img.shape[0])
    logits = scale * img @ pos.T
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    hard = scale * torch.stack([(img * pos).sum(-1), (img * neg).sum(-1)], dim=1)
    hard_loss = F.cross_entropy(hard, torch.zeros(img.shape[0], dtype=torch.long))
    return clip + w * hard_loss, clip, hard_loss


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    out, work = dirs(NAME, out_dir, work_dir)
    pair, tok = build(cfg)
    opt = adamw(pair, cfg, betas=(0.9, 0.98), eps=1e-6, no_decay=("embedding",))
    start, cpu = 0, 0.0
    ckpt = load_checkpoint(work) if resume else None
    if ckpt:
        pair.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, cpu = ckpt["step"], ckpt["cpu_s"]
        print(f"resumed at step {start}", flush=True)
    log = TrainLog(work, cpu)
    steps = cfg["steps"]
    pair.train()
    for step in progress(range(start, steps), desc=NAME, total=steps - start):
        lr = cosine_lr(step, steps, cfg["lr"], cfg["warmup"])
        set_lr(opt, lr)
        x, texts, negs = make_batch(step, cfg)
        img = pair.encode_image(x, normalize=True)
        txt = pair.encode_text(token_ids(tok, texts + negs), normalize=True)
        scale = pair.logit_scale.exp()
        loss, clip, hard = _contrastive_loss(
            img, txt[: len(texts)], txt[len(texts) :], scale, cfg["hard_negative_weight"]
        )
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pair.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            pair.logit_scale.clamp_(0, 4.6052)
        done = step + 1
        if done % cfg["log_every"] == 0:
            log.write(step=done, loss=round(loss.item(), 4), clip=round(clip.item(), 4), hard=round(hard.item(), 4),
                      lr=lr, scale=round(scale.item(), 2))  # fmt: skip
        if checkpoint_due(done, steps, cfg):
            save_checkpoint(work, {"model": pair.state_dict(), "optimizer": opt.state_dict(), "step": done,
                                   "cpu_s": log.cpu_seconds(), "config": cfg})  # fmt: skip
            stop_if_asked(work, done)
        if cfg.get("eval_every") and done % cfg["eval_every"] == 0 and done < steps:
            figs = zero_shot(pair, tok, n=200, image_size=cfg["image_size"])
            log.write(step=done, eval=figs)
            print(f"step {done}: loss {loss.item():.3f} zero-shot {figs}", flush=True)
            pair.train()
    pair.eval()
    export(pair, tok, out)
    n = cfg.get("eval_n", 1000)
    figs = zero_shot(pair, tok, n=n, image_size=cfg["image_size"])
    comp = zero_shot(pair, tok, n=n, image_size=cfg["image_size"], split="compositional")
    params = sum(p.numel() for p in pair.text.parameters())
    write_meta(out, {"model": "CLIPTextModelWithProjection", "params": params, "vocab_size": len(tok),
                     "max_length": tok.model_max_length, "steps": steps, "batch_size": cfg["batch_size"],
                     "cpu_seconds": round(log.cpu_seconds()), "zero_shot_test": figs,
                     "zero_shot_compositional": comp, "config": cfg})  # fmt: skip
    log.write(step=steps, final_eval=figs, compositional=comp)
    print(f"text encoder exported to {out}: zero-shot test {figs}; compositional {comp}", flush=True)


def export(pair: ContrastivePair, tok: CLIPTokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pair.text.save_pretrained(out / "text_encoder", safe_serialization=True)
    tok.save_pretrained(out / "tokenizer")


def load_text_encoder(
    model_dir: str | Path, projection: bool = True
) -> tuple[CLIPTextModelWithProjection | CLIPTextModel, CLIPTokenizer]:
    """(text encoder, tokenizer) from an export; ``projection=False`` gives the plain ``CLIPTextModel``
    whose first output is the token states, as StableDiffusionPipeline expects."""
    model_dir = Path(model_dir)
    if not (model_dir / "text_encoder" / "config.json").is_file():
        raise UserError(f"no text encoder in {model_dir}; train it first: python -m evalkit.zoo train text-encoder")
    tok = load_tokenizer(model_dir / "tokenizer")
    full = CLIPTextModelWithProjection.from_pretrained(model_dir / "text_encoder")
    if full.config.max_position_embeddings != tok.model_max_length:
        raise UserError(
            f"{model_dir}: tokenizer pads to {tok.model_max_length} tokens but the text encoder has "
            f"{full.config.max_position_embeddings} positions; they must be equal"
        )
    model = full if projection else full.text_model
    return model.eval(), tok


@torch.inference_mode()
def zero_shot(pair: ContrastivePair, tok: CLIPTokenizer, n: int = 1000, image_size: int = 64, split: str = "test"):
    """The judge's zero-shot test (pick the full caption among one-attribute-off alternatives)."""
    from .judge import zero_shot as judge_zero_shot

    was_training = pair.training
    pair.eval()
    try:
        return judge_zero_shot(pair, lambda texts: token_ids(tok, texts), n=n, image_size=image_size, split=split)
    finally:
        pair.train(was_training)


def evaluate_cli(args) -> None:
    """Zero-shot figures of the trained pair (the image tower lives only in the training checkpoint);
    without that checkpoint, the figures recorded at export."""
    model_dir = Path(args.model) if args.model else dirs(NAME, None, None)[0]
    load_text_encoder(model_dir)  # fails clearly if the export is incomplete
    ckpt = load_checkpoint(dirs(NAME, None, None)[1])
    if ckpt:
        pair, tok = build(ckpt["config"])
        pair.load_state_dict(ckpt["model"])
        size = ckpt["config"]["image_size"]
        figs = {"test": zero_shot(pair, tok, n=args.n, image_size=size),
                "compositional": zero_shot(pair, tok, n=args.n, image_size=size, split="compositional")}  # fmt: skip
    else:
        meta_path = model_dir / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{meta_path} is missing; re-export with python -m evalkit.zoo train text-encoder --resume")
        meta = json.loads(meta_path.read_text())
        figs = {"test": meta.get("zero_shot_test"), "compositional": meta.get("zero_shot_compositional")}
    print(json.dumps(figs, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2))
