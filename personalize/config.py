"""One training configuration for every method: defaults in one place, checked before any model loads.

The CLI's flags are generated from :class:`TrainConfig` (``add_train_args``), the UI builds the same
dataclass, and a run folder stores it as ``config.json``; ``--resume`` refuses a folder whose stored
config differs in anything but the step count and the reporting intervals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.errors import UserError

METHODS: tuple[str, ...] = ("ti", "dreambooth", "lora")
METHOD_NAMES = {"ti": "textual inversion", "dreambooth": "DreamBooth (full fine-tuning)", "lora": "DreamBooth LoRA"}

# Per-method defaults for the fields left as None: sized for the zoo's 64 px model on a 2-core CPU (batch 4 + 4
# class images: ~0.25 s per LoRA step, ~0.3 s full, ~0.15 s textual inversion); README lists SD 1.5 values.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "ti": {"steps": 1500, "lr": 5e-3, "weight_decay": 0.0, "train_text_encoder": False},
    # Full DreamBooth trains the text encoder by default: on the zoo model, with the UNet alone the subject
    # appeared in 0.66-0.76 of images (lr 1e-4 to 5e-4, 600-1,200 steps, n 50), with the text encoder in 0.92.
    "dreambooth": {"steps": 600, "lr": 2e-4, "weight_decay": 1e-2, "train_text_encoder": True},
    "lora": {"steps": 800, "lr": 1e-3, "weight_decay": 1e-2, "train_text_encoder": False},
}
DEFAULT_MODEL = "zoo/diffusion"
LORA_TARGETS = ("attention", "attention+conv")
PRIOR_TARGETS = ("base", "images")
# The default share of class rows that show the subject (``prior_subject_share``). On the zoo model (800 steps,
# n 200 per set) it cut LoRA's drift from 0.11 / 0.125 to 0.085 / 0.05; full DreamBooth found the subject in
# 0.44 of images with it, against 0.94 without, and drifted more (0.26 / 0.225 against 0.20 / 0.215).
SUBJECT_SHARE = {"lora": 0.5}
# Fields that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "validation_every", "resume", "class_cache"})


@dataclass
class TrainConfig:
    """Everything a personalization run depends on. ``None`` means "the method's or model's default"."""

    method: str = "lora"  # ti | dreambooth | lora
    images: str = ""  # folder of 1-20 subject images (any size/format; N.txt captions optional)
    out: str = ""  # run folder
    token: str = "<s*>"  # the new token (no spaces)
    class_word: str | None = None  # e.g. "dog"; needed for prior preservation
    model: str = DEFAULT_MODEL  # zoo/NAME, dir:PATH, hf:ORG/NAME or a pipeline folder
    steps: int | None = None
    lr: float | None = None
    lr_schedule: str = "constant"  # constant | cosine (evalkit.zoo.common.cosine_lr)
    warmup: int = 0
    weight_decay: float | None = None
    max_grad_norm: float = 1.0
    batch_size: int = 4  # subject images per step (class images add as many again)
    seed: int = 0
    resolution: int | None = None  # default: the model's native size
    flip_p: float = 0.0  # horizontal flips; off by default (they would mirror an asymmetric subject)
    instance_prompt: str | None = None  # used when the images have no captions; {token} and {class} fill in
    # textual inversion
    num_vectors: int = 1
    initializer: str | None = None  # default: the class word, else "object"
    learnable_property: str = "object"  # object | style (prompt templates when there are no captions)
    # DreamBooth
    prior_preservation: bool = False
    class_prompt: str | None = None  # default "a photo of a {class}"
    num_class_images: int = 100
    prior_prompts: str | None = None  # file: more prompts for class images, one per line
    prior_loss_weight: float = 1.0
    prior_target: str = "base"  # base | images: what the class rows learn (see _HELP)
    prior_subject_share: float | None = None  # default SUBJECT_SHARE[method] with prior_target "base", else 0
    train_text_encoder: bool | None = None  # default per method (METHOD_DEFAULTS)
    rank: int = 8  # LoRA
    lora_alpha: float | None = None  # default: rank
    lora_targets: str = "attention+conv"  # attention | attention+conv
    # reporting
    checkpoint_every: int = 100
    validation_every: int = 100  # 0: samples only at the end
    validation_prompts: list[str] = field(default_factory=lambda: ["a photo of {token}"])
    num_validation_images: int = 2
    sample_steps: int | None = None  # default: the model's recommendation, else 25
    guidance: float | None = None  # default: the model's recommendation, else 7.5
    class_cache: str | None = None  # default $EVALKIT_CACHE/class-images or ~/.cache/t2i-evalkit/class-images
    resume: bool = False

    # ------------------------------------------------------------------ derived

    def resolved(self) -> TrainConfig:
        """A copy with the method's defaults filled in and checked."""
        self.check()
        cfg = dataclasses.replace(self, validation_prompts=list(self.validation_prompts))
        for key, value in METHOD_DEFAULTS[cfg.method].items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.lora_alpha is None:
            cfg.lora_alpha = float(cfg.rank)
        if cfg.initializer is None:
            cfg.initializer = cfg.class_word or "object"
        if cfg.prior_subject_share is None:
            base_prior = cfg.prior_preservation and cfg.prior_target == "base"
            cfg.prior_subject_share = SUBJECT_SHARE.get(cfg.method, 0.0) if base_prior else 0.0
        if cfg.class_prompt is None and cfg.class_word:
            cfg.class_prompt = "a photo of " + article(cfg.class_word)
        return cfg

    def fill(self, template: str) -> str:
        """``{token}`` and ``{class}`` filled into a prompt template.

        >>> TrainConfig(token="<s*>", class_word="dog").fill("a photo of {token} {class}")
        'a photo of <s*> dog'
        """
        return template.replace("{token}", self.token).replace("{class}", self.class_word or "").strip()

    def check(self) -> None:
        """Raise ``UserError`` on the first field that cannot work, before anything heavy happens."""
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not self.images:
            raise UserError("no subject images given: pass --images DIR (a folder of 1-20 images)")
        if not self.out:
            raise UserError("no run folder given: pass --out DIR")
        check_token_text(self.token)
        if self.class_word is not None:
            if not self.class_word.strip():
                raise UserError("--class-word is empty")
            if self.class_word.strip() == self.token:
                raise UserError(f"the token {self.token!r} must differ from the class word")
        for key in ("batch_size", "num_vectors", "rank", "num_validation_images", "steps", "lr", "sample_steps",
                    "resolution"):  # fmt: skip
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):  # NaN compares false to all
                raise UserError(f"{key} must be a positive number, got {value}")
        for key in ("weight_decay", "max_grad_norm", "prior_loss_weight", "lora_alpha", "guidance", "flip_p"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise UserError(f"{key} must be a finite number, got {value}")
        if self.checkpoint_every < 1:
            raise UserError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.validation_every < 0 or self.warmup < 0 or self.prior_loss_weight < 0:
            raise UserError("validation_every, warmup and prior_loss_weight cannot be negative")
        if not 0.0 <= self.flip_p <= 1.0:
            raise UserError(f"flip_p must be in [0, 1], got {self.flip_p}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserError(f"lr_schedule must be constant or cosine, not {self.lr_schedule!r}")
        if self.prior_target not in PRIOR_TARGETS:
            raise UserError(f"prior_target must be one of {', '.join(PRIOR_TARGETS)}, not {self.prior_target!r}")
        if self.lora_targets not in LORA_TARGETS:
            raise UserError(f"lora_targets must be one of {', '.join(LORA_TARGETS)}, not {self.lora_targets!r}")
        if self.learnable_property not in ("object", "style"):
            raise UserError(f"learnable_property must be object or style, not {self.learnable_property!r}")
        if self.prior_preservation:
            if self.method == "ti":
                raise UserError("prior preservation applies to DreamBooth (dreambooth, lora), not textual inversion")
            if not (self.class_word or self.class_prompt):
                raise UserError("prior preservation needs a class: pass --class-word WORD (e.g. dog)")
            if self.num_class_images < 1:
                raise UserError("prior preservation needs --num-class-images of at least 1")
            if self.prior_prompts is not None:
                read_prior_prompts(self.prior_prompts)  # a missing or empty file fails here, before any model loads
            if self.prior_subject_share and self.prior_target != "base":
                raise UserError(
                    "--prior-subject-share needs --prior-target base: against the images' own target, "
                    "class prompts on the subject's images would teach the class to draw the subject"
                )
        elif self.prior_prompts is not None:
            raise UserError("--prior-prompts needs --prior-preservation")
        elif self.prior_subject_share:
            raise UserError("--prior-subject-share needs --prior-preservation")
        if self.prior_subject_share is not None and not 0.0 <= self.prior_subject_share <= 1.0:
            raise UserError(f"prior_subject_share must be in [0, 1], got {self.prior_subject_share}")
        if self.train_text_encoder and self.method == "ti":
            raise UserError("--train-text-encoder is for DreamBooth; textual inversion trains only the new embedding")
        if not self.validation_prompts:
            raise UserError("at least one validation prompt is needed")

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown config fields: {', '.join(unknown)}")
        # runs written before prior_target (which then learned the images) or prior_subject_share existed
        return cls(**({"prior_target": "images", "prior_subject_share": 0.0} | d))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read run config {path}: {e}") from None

    def differences(self, other: TrainConfig, may_change: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
        """Fields outside ``may_change`` whose values differ, as ``name: old -> new``; a cosine schedule
        spans the total steps, so with one ``steps`` may not change."""
        a, b = self.to_dict(), other.to_dict()
        cosine = a["lr_schedule"] == "cosine"
        if cosine:
            may_change = may_change - {"steps"}
        note = {"steps": " (a cosine schedule spans the total steps, so only a constant one can be extended)"}
        return [f"{k}: {b.get(k)!r} -> {a[k]!r}" + (note.get(k, "") if cosine else "")
                for k in a if k not in may_change and a[k] != b.get(k)]  # fmt: skip


def article(word: str) -> str:
    """The word with its indefinite article.

    >>> article("apple"), article("square")
    ('an apple', 'a square')
    """
    word = word.strip()
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def check_token_text(token: str) -> None:
    """A token is one word with no whitespace (the tokenizer must see it as one piece of text)."""
    if not token or not token.strip():
        raise UserError("the token is empty; pass --token like '<s*>'")
    if any(c.isspace() for c in token):
        raise UserError(f"the token {token!r} contains whitespace; use one word such as '<s*>' or 'sks'")
    if "{" in token or "}" in token:
        raise UserError(f"the token {token!r} may not contain braces (they mark prompt placeholders)")


# ---------------------------------------------------------------------------------------- CLI flags

_HELP = {
    "method": "ti (textual inversion), dreambooth (full fine-tuning) or lora (DreamBooth LoRA)",
    "images": "folder of 1-20 subject images; N.txt next to N.png holds captions, one per line, with {token}",
    "out": "run folder: config.json, checkpoints, samples, log.jsonl and the weights",
    "token": "the new token, one word without spaces",
    "class_word": "the subject's class, e.g. dog (prior preservation, initializer, evaluation)",
    "model": "base StableDiffusionPipeline: zoo/NAME, dir:PATH, hf:ORG/NAME or a pipeline folder",
    "resume": "continue the run in --out from its last checkpoint",
    "prior_preservation": "DreamBooth class-prior preservation with class images generated by the base model",
    "train_text_encoder": "DreamBooth: train the text encoder too (full, or LoRA adapters)",
    "validation_prompts": "prompts sampled every --validation-every steps ({token} and {class} fill in)",
    "lr_schedule": "constant after --warmup steps, or cosine decay to a tenth",
    "warmup": "linear learning-rate warm-up steps",
    "batch_size": "subject images per step; prior preservation adds as many class images",
    "seed": "seeds the adapters' init, the batches and the noise: same seed, same weights",
    "resolution": "training side in pixels (default: the model's native size)",
    "flip_p": "probability of a horizontal flip (mirrors asymmetric subjects: off by default)",
    "instance_prompt": "prompt for images without captions (default 'a photo of {token} {class}'; TI: templates)",
    "num_vectors": "textual inversion: vectors behind the token",
    "initializer": "textual inversion: word whose embedding starts the token (default: the class word); "
    "a phrase with as many pieces as --num-vectors starts one vector per piece",
    "learnable_property": "textual inversion templates: object or style",
    "class_prompt": "prior preservation prompt (default 'a photo of a {class}')",
    "num_class_images": "class images the base model generates (cached per model and prompt)",
    "prior_prompts": "file of further prompts for class images, one per line: the class images cycle through the "
    "class prompt and these, so the prior keeps what the model draws for them too (less drift)",
    "prior_loss_weight": "weight of the class-image loss",
    "prior_target": "what the class rows learn: 'base', the base model's own prediction on the same noisy class "
    "latents (a distillation prior: far less variance, so less drift for as much of the subject), or 'images', "
    "the class images' noise or velocity as in diffusers' train_dreambooth.py",
    "prior_subject_share": "share of the class rows that show the subject's own images, still with the class and "
    "prior prompts and the base model's prediction as target: the prior then also holds ordinary prompts where the "
    "subject's shapes are, which cuts drift (needs --prior-target base; default 0.5 with it for lora, else 0)",
    "rank": "LoRA rank",
    "lora_alpha": "LoRA alpha (default: the rank)",
    "lora_targets": "UNet layers with LoRA adapters: attention projections only (diffusers' example), or also the "
    "ResNet convolutions, which small UNets without attention at full resolution need",
    "checkpoint_every": "steps between checkpoints (the last good one is kept)",
    "validation_every": "steps between validation samples (0: only at the end)",
    "num_validation_images": "images per validation prompt (seeds 0..N-1)",
    "sample_steps": "sampling steps for class and validation images (default: the model's recommendation)",
    "guidance": "classifier-free guidance scale (default: the model's recommendation)",
    "class_cache": "class-image cache folder (default $EVALKIT_CACHE/class-images)",
}


def read_prior_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a prompt file (``#`` starts a comment line)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"prior prompts file not found: {file}")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UserError(f"prior prompts file {file} has no prompts")
    return prompts


def add_train_args(p: argparse.ArgumentParser, method: str | None = None) -> None:
    """One flag per ``TrainConfig`` field (``--class-word`` for ``class_word``); ``method`` fixes the method."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "method" and method is not None:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        help_text = _HELP.get(f.name, "")
        if default is None and f.name in METHOD_DEFAULTS["lora"]:
            per = ", ".join(f"{m} {METHOD_DEFAULTS[m][f.name]}" for m in METHODS)
            help_text = f"{help_text} (default per method: {per})".strip()
        elif default not in (None, "", False) and not isinstance(default, list):
            help_text = (help_text + f" (default {default})").strip()
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=help_text)
        elif kind.startswith("bool"):  # None: the method's default
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, list):
            p.add_argument(flag, nargs="+", default=default, metavar="PROMPT", help=help_text)
        else:
            conv = {"int": int, "float": float}.get(kind.replace(" | None", ""), str)
            required = f.name in ("images", "out")
            choices = {"method": METHODS, "lr_schedule": ("constant", "cosine"),
                       "learnable_property": ("object", "style"), "lora_targets": LORA_TARGETS,
                       "prior_target": PRIOR_TARGETS}.get(f.name)  # fmt: skip
            p.add_argument(flag, type=conv, default=default, required=required, choices=choices, help=help_text)


def config_from_args(args: argparse.Namespace, method: str | None = None) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if method is not None:
        values["method"] = method
    return TrainConfig(**values)
