"""The judge: an open_clip model (custom config) trained contrastively on the shapes world.

Captions vary in detail (``describe``) and each image also meets a hard negative that
differs in one attribute (``perturb``: color, shape, background, relation, binding...),
so the judge learns what bag-of-words CLIP training would not: relations and bindings.
It is the default feature extractor offline and never a generator's text encoder.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..shapes.render import render
from ..shapes.world import (
    BACKGROUNDS,
    COLORS,
    OPPOSITE,
    RELATIONS,
    SHAPES,
    caption_for,
    describe,
    perturb,
    sample,
)
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
    step_generator,
    step_rng,
    stop_if_asked,
    write_meta,
)

MODEL_NAME = "shapes-judge"
WEIGHTS_NAME = "open_clip_model.safetensors"
MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's defaults, as its preprocess uses
STD = (0.26862954, 0.26130258, 0.27577711)


def build(model_cfg: dict[str, Any], work: Path) -> tuple[torch.nn.Module, Any]:
    cfg_path = work / f"{MODEL_NAME}.json"
    cfg_path.write_text(json.dumps(model_cfg, indent=2))
    open_clip.add_model_config(cfg_path)
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    return model, open_clip.get_tokenizer(MODEL_NAME)


def export(model: torch.nn.Module, model_cfg: dict[str, Any], out: Path) -> None:
    """Write the open_clip layout: ``<name>.json`` config + safetensors weights, stored in
    float16 to keep the file under the zoo's 20 MB limit (open_clip casts back on load)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{MODEL_NAME}.json").write_text(json.dumps(model_cfg, indent=2) + "\n")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))


def load(model_dir: str | Path) -> tuple[torch.nn.Module, Any, Any]:
    """(model, preprocess, tokenizer) through open_clip's own loader."""
    model_dir = Path(model_dir)
    open_clip.add_model_config(model_dir / f"{MODEL_NAME}.json")
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(model_dir / WEIGHTS_NAME))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur and noise on part of the batch, so the judge also reads generators' soft images."""
    b = x.shape[0]
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :]) / 256.0
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k.expand(3, 1, 5, 5).contiguous(), groups=3)
    pick = torch.rand(b, 1, 1, 1, generator=gen)
    x = torch.where(pick < 0.3, blurred, x)
    noise = torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.2
    return torch.where(torch.rand(b, 1, 1, 1, generator=gen) < 0.3, x + noise, x)


def make_batch(
    step: int, cfg: dict[str, Any]
) -> tuple[torch.Tensor, list[str], list[str], list[tuple[int, list[str], int]]]:
    """Images, captions, one hard negative each, and for captions stating a relation the caption under
    each of the four relations (row, captions, index of the true one)."""
    samples = batch_samples(step, cfg["batch_size"], cfg["seed"])
    rng = step_rng(cfg["seed"], step, "captions")
    texts, negs, relation_sets = [], [], []
    for s in samples:
        spec = s.spec if rng.random() < 0.5 else describe(s.scene, rng)
        # relations are what contrastive training learns last (bag-of-words captions); when a caption
        # states one, its negative is usually the same caption with the relation reversed
        if spec.relation and rng.random() < cfg.get("relation_negative_rate", 0.0):
            a, rel, b = spec.relation
            neg = replace(spec, relation=(a, OPPOSITE[rel], b))
        else:
            neg = perturb(spec, rng)
        phrasing = rng.randrange(1 << 30)
        texts.append(caption_for(spec, random.Random(phrasing)))
        negs.append(caption_for(neg, random.Random(phrasing)))
        if spec.relation:
            a, rel, b = spec.relation
            variants = [caption_for(replace(spec, relation=(a, r, b)), random.Random(phrasing)) for r in RELATIONS]
            relation_sets.append((len(texts) - 1, variants, RELATIONS.index(rel)))
    x = images_to_tensor(render_batch(samples, cfg["image_size"]), MEAN, STD)
    return augment(x, step_generator(cfg["seed"], step)), texts, negs, relation_sets


def relation_loss(
    model, tokenizer, img: torch.Tensor, relation_sets: list, scale: torch.Tensor, margin: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the four relations of each relation caption, and a hinge keeping those four
    captions' embeddings apart (cosine below ``margin``).

    Both towers start out ignoring relations, and then neither gets a gradient to learn them: with the
    four captions embedded alike, the image has nothing to align to (v2 sat at cosine .9998 between
    "left of" and "right of", relation accuracy at chance). The hinge breaks that symmetry on the text
    side; the cross-entropy then teaches the image tower where things are."""
    if not relation_sets:
        zero = img.new_zeros(())
        return zero, zero
    rows = torch.tensor([r for r, _, _ in relation_sets])
    txt = model.encode_text(tokenizer([c for _, caps, _ in relation_sets for c in caps]), normalize=True)
    txt = txt.view(len(relation_sets), len(RELATIONS), -1)
    logits = scale * torch.einsum("bd,brd->br", img[rows], txt)
    ce = F.cross_entropy(logits, torch.tensor([t for _, _, t in relation_sets]))
    cos = torch.einsum("brd,bsd->brs", txt, txt)
    off = ~torch.eye(len(RELATIONS), dtype=torch.bool)
    separation = F.relu(cos[:, off] - margin).mean()
    return ce, separation


def train(cfg: dict[str, Any], resume: bool = False, out_dir: str | None = None, work_dir: str | None = None) -> None:
    out, work = dirs("judge", out_dir, work_dir)
    torch.manual_seed(cfg["seed"])
    model, tokenizer = build(cfg["model"], work)
    opt = adamw(model, cfg, betas=(0.9, 0.98), eps=1e-6, no_decay=("embedding",))
    clip_loss = open_clip.ClipLoss()
    start, cpu = 0, 0.0
    ckpt = load_checkpoint(work) if resume else None
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, cpu = ckpt["step"], ckpt["cpu_s"]
        print(f"resumed at step {start}")
    log = TrainLog(work, cpu)
    steps = cfg["steps"]
    model.train()
    bar = progress(range(start, steps), desc="judge", total=steps - start)
    for step in bar:
        lr = cosine_lr(step, steps, cfg["lr"], cfg["warmup"])
        set_lr(opt, lr)
        x, texts, negs, relation_sets = make_batch(step, cfg)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokenizer(texts + negs), normalize=True)
        pos, neg = txt[: len(texts)], txt[len(texts) :]
        scale = model.logit_scale.exp()
        loss_clip = clip_loss(img, pos, scale)
        # hard negatives: each image must prefer its caption over its one-attribute-off twin
        hard = scale * torch.stack([(img * pos).sum(-1), (img * neg).sum(-1)], dim=1)
        loss_hard = F.cross_entropy(hard, torch.zeros(len(texts), dtype=torch.long))
        loss_rel, loss_sep = relation_loss(
            model, tokenizer, img, relation_sets, scale, cfg.get("relation_separation_margin", 1.0)
        )
        loss = (
            loss_clip
            + cfg["hard_negative_weight"] * loss_hard
            + cfg.get("relation_loss_weight", 0.0) * loss_rel
            + cfg.get("relation_separation_weight", 0.0) * loss_sep
        )
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        done = step + 1
        if done % cfg["log_every"] == 0:
            log.write(step=done, loss=round(loss.item(), 4), clip=round(loss_clip.item(), 4),
                      hard=round(loss_hard.item(), 4), rel=round(loss_rel.item(), 4), sep=round(loss_sep.item(), 4), lr=lr, scale=round(scale.item(), 2))  # fmt: skip
        if checkpoint_due(done, steps, cfg):
            save_checkpoint(work, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                                   "cpu_s": log.cpu_seconds(), "config": cfg})  # fmt: skip
            stop_if_asked(work, done)
        if done % cfg["eval_every"] == 0 and done < steps:
            model.eval()
            figs = zero_shot(model, tokenizer, n=200, image_size=cfg["image_size"])
            log.write(step=done, eval=figs)
            print(f"step {done}: loss {loss.item():.3f} zero-shot {figs}", flush=True)
            model.train()
    model.eval()
    export(model, cfg["model"], out)
    figs = zero_shot(model, tokenizer, n=cfg.get("eval_n", 1000), image_size=cfg["image_size"])
    comp = zero_shot(model, tokenizer, n=cfg.get("eval_n", 1000), image_size=cfg["image_size"], split="compositional")
    params = sum(p.numel() for p in model.parameters())
    write_meta(out, {"model": MODEL_NAME, "params": params, "steps": steps, "batch_size": cfg["batch_size"],
                     "cpu_seconds": round(log.cpu_seconds()), "zero_shot_test": figs,
                     "zero_shot_compositional": comp, "config": cfg})  # fmt: skip
    log.write(step=steps, final_eval=figs, compositional=comp)
    print(f"judge exported to {out}: zero-shot test {figs}; compositional {comp}")


def _alternatives(spec, attribute: str):
    """The true spec first, then every spec that differs from it in ``attribute`` only."""
    o = spec.objects[0]
    if attribute == "color":
        return [spec] + [
            replace(spec, objects=(replace(o, color=c), *spec.objects[1:])) for c in COLORS if c != o.color
        ]
    if attribute == "shape":
        return [spec] + [
            replace(spec, objects=(replace(o, shape=s), *spec.objects[1:])) for s in SHAPES if s != o.shape
        ]
    if attribute == "background":
        return [spec] + [replace(spec, background=b) for b in BACKGROUNDS if b != spec.background]
    a, rel, b = spec.relation
    return [spec] + [replace(spec, relation=(a, r, b)) for r in RELATIONS if r != rel]


@torch.inference_mode()
def zero_shot(model, tokenizer, n: int = 1000, image_size: int = 64, split: str = "test", seed: int = 12345) -> dict:
    """Accuracy of picking an image's full caption among captions that differ in one attribute."""
    samples = sample(n, seed=seed, split=split)
    hits: dict[str, list[bool]] = {"color": [], "shape": [], "background": [], "relation": []}
    for start in range(0, n, 100):
        chunk = samples[start : start + 100]
        x = images_to_tensor([render(s.scene, image_size) for s in chunk], MEAN, STD)
        img = model.encode_image(x, normalize=True)
        for k, s in enumerate(chunk):
            full = describe(s.scene, random.Random(0), p_keep=1.0)
            for attr in hits:
                if attr == "relation" and full.relation is None:
                    continue
                alts = _alternatives(full, attr)
                phrasing = random.Random(k)
                seed_k = phrasing.randrange(1 << 30)
                caps = [caption_for(a, random.Random(seed_k)) for a in alts]
                txt = model.encode_text(tokenizer(caps), normalize=True)
                hits[attr].append(bool((txt @ img[k]).argmax().item() == 0))
    return {k: round(sum(v) / len(v), 4) for k, v in hits.items() if v} | {f"n_{k}": len(v) for k, v in hits.items()}


def evaluate_cli(args) -> None:
    model_dir = Path(args.model) if args.model else dirs("judge", None, None)[0]
    model, _, tokenizer = load(model_dir)
    figs = {
        "test": zero_shot(model, tokenizer, n=args.n),
        "compositional": zero_shot(model, tokenizer, n=args.n, split="compositional"),
    }
    print(json.dumps(figs, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2))
