"""Generators: one protocol (``generate(prompts, seeds, **params)``) over diffusers pipelines, the
embedded zoo and folders of precomputed images, plus resumable generation into a folder.

Names are imported on first use, so ``python -m evalkit`` does not pay for torch and diffusers
until a command needs them.

>>> from evalkit.generators import load, generate_to_folder      # doctest: +SKIP
>>> g = load("zoo:diffusion")                                      # doctest: +SKIP
>>> g.generate(["a red circle"], seeds=[0], steps=20).images[0]   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "base": ("FAMILIES", "GenerationOutput", "Generator", "count_parameters"),
    "folder": ("FolderGenerator",),
    "loading": ("SPEC_FORMS", "clear_cache", "load", "load_pipeline", "parse_spec", "register_pipeline_class"),
    "manifest": ("MANIFEST_NAME", "read_manifest"),
    "pipeline": ("PipelineGenerator", "infer_family"),
    "speed": ("SpeedReport", "measure_speed"),
    "to_folder": ("FolderResult", "derive_seed", "generate_to_folder", "image_file_name"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "FAMILIES", "GenerationOutput", "Generator", "count_parameters", "FolderGenerator", "SPEC_FORMS", "clear_cache",
    "load", "load_pipeline", "parse_spec", "register_pipeline_class", "MANIFEST_NAME", "read_manifest",
    "PipelineGenerator", "infer_family", "SpeedReport", "measure_speed", "FolderResult", "derive_seed",
    "generate_to_folder", "image_file_name",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .base import FAMILIES, GenerationOutput, Generator, count_parameters
    from .folder import FolderGenerator
    from .loading import SPEC_FORMS, clear_cache, load, load_pipeline, parse_spec, register_pipeline_class
    from .manifest import MANIFEST_NAME, read_manifest
    from .pipeline import PipelineGenerator, infer_family
    from .speed import SpeedReport, measure_speed
    from .to_folder import FolderResult, derive_seed, generate_to_folder, image_file_name
