"""Shared, cheap fixtures: tiny models built and saved locally (nothing is downloaded)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EVALKIT_PROGRESS", "0")

TINY_CLIP_NAME = "evalkit-test-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random tiny open_clip model (32 px ViT, 2+2 layers, 32-token context) saved in the judge layout.

    Returns a namespace: ``dir`` (written by ``save_openclip_dir``), ``model`` (the in-memory original,
    eval mode), ``name`` and ``cfg`` (the open_clip model name and config).
    """
    import open_clip
    import torch

    from evalkit.features.openclip import save_openclip_dir

    build = tmp_path_factory.mktemp("tiny_clip_build")
    (build / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(build / f"{TINY_CLIP_NAME}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None).eval()
    directory = tmp_path_factory.mktemp("tiny_clip")
    save_openclip_dir(model, TINY_CLIP_CFG, TINY_CLIP_NAME, directory, meta={"purpose": "tests"})
    return SimpleNamespace(dir=directory, model=model, name=TINY_CLIP_NAME, cfg=TINY_CLIP_CFG)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A random tiny ``StableDiffusionPipeline`` (32 px, ~145k parameters) saved with ``save_pretrained``;
    load it with ``DiffusionPipeline.from_pretrained`` or ``evalkit.generators.load("dir:...")``."""
    from evalkit.generators.testing import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))
