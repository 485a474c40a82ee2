"""DreamBooth (Ruiz et al. 2023), full fine-tuning: the UNet (and optionally the text encoder) learns the
subject under the token, with class-prior preservation against the base model's own class images.

The token is used as plain text (a rare string such as ``<s*>`` or ``sks``), as in the paper and
diffusers' ``train_dreambooth.py``. Output: the whole pipeline, ``save_pretrained`` into the run folder
(``model_index.json``, ``unet/``, ...), loadable with ``DiffusionPipeline.from_pretrained(run_folder)``
and as an evalkit generator (``dir:RUN``).

    python -m personalize.dreambooth --images DIR --token "<s*>" --class-word square --prior-preservation --out DIR
"""

from __future__ import annotations

import argparse
import copy
import json
from contextlib import contextmanager
from pathlib import Path

from evalkit.utils import atomic_write_text

from .base import BaseModel
from .config import TrainConfig, add_train_args, config_from_args
from .training import Trainable, TrainResult, train


def check(cfg: TrainConfig, base: BaseModel) -> None:
    """Nothing beyond the config: the token is text, so any rare string works."""


def setup(cfg: TrainConfig, base: BaseModel) -> Trainable:
    pipe = base.pipe
    pipe.vae.requires_grad_(False)
    pipe.unet.requires_grad_(True)
    pipe.text_encoder.requires_grad_(cfg.train_text_encoder)
    params = {f"unet.{n}": p for n, p in pipe.unet.named_parameters()}
    if cfg.train_text_encoder:
        params |= {f"text_encoder.{n}": p for n, p in pipe.text_encoder.named_parameters()}

    def save_weights(out: Path) -> list[Path]:
        pipe.save_pretrained(out, safe_serialization=True)
        meta = {"generate": {"steps": base.sample_steps, "guidance": base.guidance},
                "personalized": {"method": "dreambooth", "token": cfg.token, "class_word": cfg.class_word,
                                 "base_model": cfg.model}}  # fmt: skip
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
        return [out / "model_index.json"]

    as_base = None
    if cfg.prior_preservation and cfg.prior_target == "base":
        frozen = {name: copy.deepcopy(getattr(pipe, name)).requires_grad_(False).eval()
                  for name in ("unet", "text_encoder")[: 1 + bool(cfg.train_text_encoder)]}  # fmt: skip

        @contextmanager
        def as_base():
            """The pipeline with frozen copies of the base modules swapped in, for the prior's target."""
            trained = {name: getattr(pipe, name) for name in frozen}
            for name, module in frozen.items():
                setattr(pipe, name, module)
            try:
                yield
            finally:
                for name, module in trained.items():
                    setattr(pipe, name, module)

    return Trainable(params=params, save_weights=save_weights, no_decay=("embed",), as_base=as_base)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m personalize.dreambooth", description=__doc__.splitlines()[0])
    add_train_args(p, method="dreambooth")
    return config_from_args(p.parse_args(argv), method="dreambooth")


def main(argv: list[str] | None = None) -> TrainResult:
    return train(parse_args(argv))


if __name__ == "__main__":
    from .cli import run_guarded

    raise SystemExit(run_guarded(main, training=True))
