"""Any diffusers ``DiffusionPipeline`` as a :class:`~evalkit.generators.base.Generator`.

Stable Diffusion (1.x/2.x/XL/3), PixArt, aMUSEd and the project's own GAN and autoregressive pipelines
all go through :class:`PipelineGenerator`: generic params are mapped to the pipeline's ``__call__``
arguments, each image gets its own seeded ``torch.Generator``, and the denoising network's forward
passes are counted as NFE.

A custom pipeline class (a ``DiffusionPipeline`` subclass) can declare, as class attributes:

- ``evalkit_family``: one of ``FAMILIES`` (else the family is guessed from the class name);
- ``evalkit_networks``: component names whose forward passes are network evaluations
  (default: whichever of ``unet``, ``transformer``, ``generator``, ``model`` exist);
- ``evalkit_generator_list``: whether ``__call__`` accepts one ``torch.Generator`` per prompt (default:
  whether its ``generator`` annotation mentions ``list``, as diffusers' own pipelines do); if not, the
  adapter calls it once per image so seeds stay per-image;
- ``evalkit_default_params``: a dict of generic defaults (``steps``, ``guidance``, ``height``, ``width``);
- ``evalkit_nfe(params) -> float``: the predicted network evaluations per image.

Its ``__call__`` takes ``prompt: list[str]``, ``generator``, ``output_type="pil"`` and returns an object
with ``.images``, like every diffusers pipeline.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from typing import Any

import torch
from PIL import Image

from ..errors import UserError
from .base import FAMILIES, Generator, count_parameters, normalize_params

# generic param -> pipeline __call__ argument
PARAM_ARGS: dict[str, str] = {
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "height": "height",
    "width": "width",
}
# __call__ arguments the adapter sets itself; a user param may not override them
_RESERVED = {
    "self", "prompt", "prompt_2", "prompt_3", "generator", "output_type", "return_dict", "num_images_per_prompt",
    "latents", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "callback", "callback_steps",
    "callback_on_step_end", "callback_on_step_end_tensor_inputs",
}  # fmt: skip
_NETWORK_NAMES = ("unet", "transformer", "generator", "model")

_FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("Amused", "masked"),
    ("StableDiffusion", "diffusion"),
    ("PixArt", "diffusion"),
    ("LatentConsistencyModel", "diffusion"),
    ("Sana", "diffusion"),
    ("Flux", "diffusion"),
    ("Kandinsky", "diffusion"),
    ("AuraFlow", "diffusion"),
    ("Lumina", "diffusion"),
    ("DiT", "diffusion"),
    ("LDMText", "diffusion"),
    ("Wuerstchen", "diffusion"),
    ("StableCascade", "diffusion"),
)


def infer_family(pipe: Any) -> str:
    """``evalkit_family`` if the class declares it, else from the class name (SD/SDXL/PixArt → diffusion,
    Amused → masked), else ``unknown``."""
    declared = getattr(pipe, "evalkit_family", None)
    if declared is not None:
        if declared not in FAMILIES:
            raise ValueError(f"{type(pipe).__name__}.evalkit_family={declared!r} is not one of {FAMILIES}")
        return declared
    name = type(pipe).__name__
    for prefix, family in _FAMILY_PREFIXES:
        if name.startswith(prefix):
            return family
    return "unknown"


def _sample_size(pipe: Any) -> int | None:
    """The pipeline's default image side in pixels, computed the way its ``__call__`` does."""
    factor = getattr(pipe, "vae_scale_factor", None)
    size = getattr(pipe, "default_sample_size", None)
    if size is None:
        for name in ("unet", "transformer"):
            net = getattr(pipe, name, None)
            cfg = getattr(net, "config", None)
            if cfg is not None and getattr(cfg, "sample_size", None) is not None:
                size = cfg.sample_size
                break
    if isinstance(size, list | tuple):
        size = size[0]
    if isinstance(size, int) and isinstance(factor, int):
        return size * factor
    return None


class PipelineGenerator(Generator):
    """Adapter over a loaded ``DiffusionPipeline`` (``load`` builds these; module docstring for hooks).

    ``defaults`` override the pipeline's own defaults (e.g. a zoo model's recommended ``steps``).
    """

    def __init__(self, pipe: Any, name: str, family: str | None = None, defaults: dict[str, Any] | None = None):
        self.pipe = pipe
        self.name = name
        self.family = family or infer_family(pipe)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)  # ours counts batches instead
        sig = inspect.signature(pipe.__call__)
        # named arguments only: SD's **kwargs swallows anything (deprecated callbacks), so a typo would pass
        self._args = {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        self._sig_defaults = {
            n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty
        }
        modules = [m for m in getattr(pipe, "components", {}).values() if isinstance(m, torch.nn.Module)]
        self.num_parameters = count_parameters(modules)
        names = getattr(pipe, "evalkit_networks", None) or _NETWORK_NAMES
        self.networks = [m for n in names if isinstance(m := getattr(pipe, n, None), torch.nn.Module)]
        declared = getattr(pipe, "evalkit_generator_list", None)
        # diffusers pipelines that take one generator per image say so: ``generator: ... | list[torch.Generator]``
        annotation = sig.parameters["generator"].annotation if "generator" in sig.parameters else ""
        self.generator_list = declared if declared is not None else "list" in str(annotation)
        self._defaults = self._pipeline_defaults() | normalize_params(dict(defaults or {}))

    # ------------------------------------------------------------------ params

    def _takes(self, arg: str) -> bool:
        return arg in self._args

    def takes(self, param: str) -> bool:
        arg = PARAM_ARGS.get("height" if param == "size" else param, param)
        return arg not in _RESERVED and self._takes(arg)

    def _pipeline_defaults(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for generic in ("steps", "guidance"):
            arg = PARAM_ARGS[generic]
            if self._takes(arg) and isinstance(self._sig_defaults.get(arg), int | float):
                d[generic] = self._sig_defaults[arg]
        if self._takes("height") and (size := _sample_size(self.pipe)) is not None:
            d["height"] = d["width"] = size
        return d | normalize_params(dict(getattr(self.pipe, "evalkit_default_params", None) or {}))

    def default_params(self) -> dict[str, Any]:
        return dict(self._defaults)

    def resolve_params(self, **params: Any) -> dict[str, Any]:
        resolved = super().resolve_params(**params)
        for key in resolved:
            if not self.takes(key):
                takes = sorted(g for g, a in PARAM_ARGS.items() if self._takes(a))
                close = difflib.get_close_matches(key, takes, n=1)
                raise UserError(
                    f"generator {self.name} ({type(self.pipe).__name__}) does not take {key!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; it takes {', '.join(takes) or 'no generic params'}"
                )
        if "steps" in resolved and int(resolved["steps"]) < 1:
            raise UserError(f"steps must be at least 1, got {resolved['steps']}")
        return resolved

    def _uses_cfg(self, params: dict[str, Any]) -> bool:
        """Whether the pipeline will batch conditional and unconditional inputs (its own rule)."""
        if type(self.pipe).__name__.startswith("Flux"):  # guidance is an embedding there, not CFG
            return False
        unet = getattr(self.pipe, "unet", None)
        if unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None:
            return False  # LCM-style guidance embedding
        return float(params.get("guidance", 0.0)) > 1.0

    def nfe(self, **params: Any) -> float | None:
        resolved = self.resolve_params(**params)
        custom = getattr(self.pipe, "evalkit_nfe", None)
        if callable(custom):
            return custom(resolved)
        if self.family == "gan":
            return 1
        if "steps" not in resolved:
            return None
        steps = int(resolved["steps"])
        scheduler = getattr(self.pipe, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "set_timesteps") and self.family == "diffusion":
            # higher-order schedulers (Heun, DPM2) evaluate the network more than once per step
            try:
                probe = copy.deepcopy(scheduler)
                probe.set_timesteps(steps)
                steps = len(probe.timesteps)
            except Exception:  # a scheduler that needs more arguments: fall back to the step count
                pass
        return steps * (2 if self._uses_cfg(resolved) else 1)

    # ------------------------------------------------------------------ generation

    def _call_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        kw = {PARAM_ARGS.get(k, k): v for k, v in params.items()}
        if "num_inference_steps" in kw:
            kw["num_inference_steps"] = int(kw["num_inference_steps"])
        if self._takes("output_type"):
            kw["output_type"] = "pil"
        if self._takes("num_images_per_prompt"):
            kw["num_images_per_prompt"] = 1
        return kw

    def _run(self, prompts: list[str], generator: Any, kw: dict[str, Any]) -> list[Image.Image]:
        with torch.inference_mode():
            out = self.pipe(prompt=prompts, generator=generator, **kw)
        images = out.images if hasattr(out, "images") else out[0]
        return list(images)

    def _generate_batch(self, prompts: list[str], seeds: list[int], params: dict[str, Any]) -> list[Image.Image]:
        kw = self._call_kwargs(params)
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        if self.generator_list:
            return self._run(prompts, gens, kw)
        # the pipeline draws from one generator for the whole batch: one call per image keeps seeds per image
        return [im for p, g in zip(prompts, gens) for im in self._run([p], g, kw)]

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"pipeline": type(self.pipe).__name__}
