"""DreamBooth LoRA: low-rank adapters (peft) on the UNet's attention projections and ResNet convolutions,
optionally on the text encoder's attention too; the base weights stay frozen. Prior preservation as in full
DreamBooth. A small UNet draws shapes in its full-resolution blocks, which have no attention, so
attention-only adapters (diffusers' example) barely move it: on the zoo model they found the subject in
6 % of images after 800 steps, against 82 % with the convolutions.

Saved with ``StableDiffusionPipeline.save_lora_weights`` from ``get_peft_model_state_dict``, in peft's key
format, with the adapter config as metadata (so an alpha other than the rank loads right). Not through
``convert_state_dict_to_diffusers`` as diffusers' ``train_dreambooth_lora.py`` does: it renames only the
attention keys, and ``load_lora_weights`` then drops them from a file that also has convolution keys. Output:
``pytorch_lora_weights.safetensors``, loadable with ``pipe.load_lora_weights(run_folder)``.

    python -m personalize.dreambooth_lora --images DIR --token "<s*>" --class-word square --prior-preservation --out DIR
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import torch

from .base import BaseModel
from .config import TrainConfig, add_train_args, config_from_args
from .training import Trainable, TrainResult, train

UNET_TARGETS = {
    "attention": ["to_k", "to_q", "to_v", "to_out.0"],
    "attention+conv": ["to_k", "to_q", "to_v", "to_out.0", "conv1", "conv2"],  # + each ResNet's two convolutions
}
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def check(cfg: TrainConfig, base: BaseModel) -> None:
    """Nothing beyond the config: the token is text, so any rare string works."""


def lora_config(cfg: TrainConfig, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian", target_modules=targets)


def setup(cfg: TrainConfig, base: BaseModel) -> Trainable:
    pipe = base.pipe
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the adapters' gaussian init
    unet_cfg = lora_config(cfg, UNET_TARGETS[cfg.lora_targets])
    pipe.unet.add_adapter(unet_cfg)
    params = {f"unet.{n}": p for n, p in pipe.unet.named_parameters() if p.requires_grad}
    text_cfg = None
    if cfg.train_text_encoder:
        text_cfg = lora_config(cfg, TEXT_TARGETS)
        pipe.text_encoder.add_adapter(text_cfg)
        params |= {f"text_encoder.{n}": p for n, p in pipe.text_encoder.named_parameters() if p.requires_grad}

    def save_weights(out: Path) -> list[Path]:
        from diffusers import StableDiffusionPipeline
        from peft.utils import get_peft_model_state_dict

        text_layers = None
        if text_cfg is not None:
            text_layers = get_peft_model_state_dict(pipe.text_encoder)
        StableDiffusionPipeline.save_lora_weights(
            out,
            unet_lora_layers=get_peft_model_state_dict(pipe.unet),
            text_encoder_lora_layers=text_layers,
            safe_serialization=True,
            unet_lora_adapter_metadata=unet_cfg.to_dict(),
            text_encoder_lora_adapter_metadata=text_cfg.to_dict() if text_cfg is not None else None,
        )
        return [out / WEIGHTS_NAME]

    @contextmanager
    def as_base():
        """The adapters switched off: the frozen base model, for the prior's target."""
        adapted = [pipe.unet] + ([pipe.text_encoder] if text_cfg is not None else [])
        for module in adapted:
            module.disable_adapters()
        try:
            yield
        finally:
            for module in adapted:
                module.enable_adapters()  # also makes the adapters trainable again

    return Trainable(params=params, save_weights=save_weights, as_base=as_base)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m personalize.dreambooth_lora", description=__doc__.splitlines()[0])
    add_train_args(p, method="lora")
    return config_from_args(p.parse_args(argv), method="lora")


def main(argv: list[str] | None = None) -> TrainResult:
    return train(parse_args(argv))


if __name__ == "__main__":
    from .cli import run_guarded

    raise SystemExit(run_guarded(main, training=True))
