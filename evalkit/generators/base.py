"""The one generator protocol: ``generate(prompts, seeds, **params) -> GenerationOutput`` plus metadata.

Conventions every adapter keeps:

- **Seeds.** Image ``i`` depends only on ``(prompts[i], seeds[i], params)``: each image gets its own
  ``torch.Generator`` seeded with ``seeds[i]``, never a shared stream, so neither batch size nor the other
  prompts in a batch change which image a seed gives. (On a CPU, batched matrix kernels round
  differently from unbatched ones: an image made in a batch of 4 and alone can differ by one
  8-bit level in a few pixels. Same batch composition, same bytes.)
- **Params.** Generic names, mapped by each adapter to its model's arguments: ``steps`` (sampling steps),
  ``guidance`` (classifier-free guidance scale), ``height``/``width`` (``size`` sets both), plus any extra
  keyword the underlying pipeline accepts. :meth:`Generator.resolve_params` fills in the defaults; that
  full dict is what manifests and results record.
- **NFE** (network evaluations per image) counts forward passes of the generative network, the UNet,
  transformer or GAN generator, per image. A batched classifier-free-guidance call evaluates the network
  on two inputs per image (conditional and unconditional), so it counts **2** per step: SD with CFG and
  K steps is ``2K``, without CFG ``K``, a GAN ``1``. Text encoders and VAE/VQ decoders run once per image
  whatever the settings and are not counted. :meth:`Generator.nfe` predicts the figure from params;
  :class:`GenerationOutput` carries the count measured with forward hooks during the call.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

FAMILIES: tuple[str, ...] = ("diffusion", "gan", "masked", "autoregressive", "folder", "unknown")


@dataclass
class GenerationOutput:
    """Images in the order of the prompts, with per-image cost.

    ``seconds[i]`` is the wall time of the batch image ``i`` was made in divided by that batch's size;
    ``nfe[i]`` the network evaluations counted for it (None when nothing was run, as for a folder).
    """

    images: list[Image.Image]
    seconds: list[float]
    nfe: list[float | None]

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class _NfeCounter:
    """Forward hooks summing the leading (batch) dimension of every input a network sees."""

    modules: Sequence[torch.nn.Module]
    total: int = 0
    _handles: list[Any] = field(default_factory=list)

    def _hook(self, module, args, kwargs) -> None:
        import torch

        for x in (*args, *kwargs.values()):
            if isinstance(x, torch.Tensor) and x.ndim >= 1:
                self.total += int(x.shape[0])
                return
        self.total += 1

    def __enter__(self) -> _NfeCounter:
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def count_parameters(modules: Sequence[torch.nn.Module]) -> int:
    """Distinct parameters over several modules (tied or shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def normalize_params(params: dict[str, Any]) -> dict[str, Any]:
    """``size`` → ``height`` and ``width``; drop Nones (meaning "the default")."""
    params = {k: v for k, v in params.items() if v is not None}
    if "size" in params:
        size = params.pop("size")
        params.setdefault("height", size)
        params.setdefault("width", size)
    return params


def check_prompts_seeds(prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[str], list[int]]:
    if isinstance(prompts, str):
        raise UserError("prompts must be a list of strings, not one string")
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise UserError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if not all(isinstance(p, str) for p in prompts):
        raise UserError("every prompt must be a string")
    return prompts, seeds


class Generator(abc.ABC):
    """A text-to-image generator behind one protocol (module docstring for the conventions).

    Subclasses set ``name``, ``family`` and ``num_parameters`` and implement :meth:`default_params`,
    :meth:`nfe` and :meth:`_generate_batch`; :meth:`generate` handles checking, batching, timing and NFE
    counting.
    """

    name: str = "generator"
    family: str = "unknown"
    num_parameters: int | None = None
    #: networks whose forward passes count as network evaluations (see module docstring)
    networks: Sequence[torch.nn.Module] = ()

    def default_params(self) -> dict[str, Any]:
        """The generic params (``steps``, ``guidance``, ``height``, ``width``, ...) used when none are given."""
        return {}

    @property
    def params(self) -> dict[str, Any]:
        return self.resolve_params()

    def resolve_params(self, **params: Any) -> dict[str, Any]:
        """Defaults overridden by ``params`` (``size`` expands to height and width); raises on unknown ones."""
        return {**self.default_params(), **normalize_params(params)}

    def takes(self, param: str) -> bool:
        """Whether the generic ``param`` (``steps``, ``size``, ...) applies to this generator at all."""
        return True

    def applicable(self, params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """(the params that apply here, the names of those that don't): one setting for many generators,
        as in the UI's "steps" box, means nothing to a one-shot GAN and must not fail it."""
        kept = {k: v for k, v in params.items() if self.takes(k)}
        return kept, [k for k in params if k not in kept]

    @abc.abstractmethod
    def nfe(self, **params: Any) -> float | None:
        """Predicted network evaluations per image for these params (None if unknown)."""

    @abc.abstractmethod
    def _generate_batch(self, prompts: list[str], seeds: list[int], params: dict[str, Any]) -> list[Image.Image]:
        """One batch with fully resolved params; image ``i`` must depend only on prompt ``i`` and seed ``i``."""

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], batch_size: int | None = None, **params: Any
    ) -> GenerationOutput:
        """Images for ``prompts`` with one seed each, ``batch_size`` at a time (default: all in one batch)."""
        prompts, seeds = check_prompts_seeds(prompts, seeds)
        resolved = self.resolve_params(**params)
        if batch_size is not None and batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        step = batch_size or max(1, len(prompts))
        images: list[Image.Image] = []
        seconds: list[float] = []
        nfe: list[float | None] = []
        for start in range(0, len(prompts), step):
            p, s = prompts[start : start + step], seeds[start : start + step]
            with _NfeCounter(self.networks) as counter:
                t0 = time.perf_counter()
                batch = self._generate_batch(p, s, resolved)
                dt = time.perf_counter() - t0
            if len(batch) != len(p):
                raise RuntimeError(f"{self.name} returned {len(batch)} images for {len(p)} prompts")
            images += [im if im.mode == "RGB" else im.convert("RGB") for im in batch]
            seconds += [dt / len(p)] * len(p)
            per_image = counter.total / len(p) if self.networks else None
            nfe += [int(per_image) if per_image is not None and per_image.is_integer() else per_image] * len(p)
        return GenerationOutput(images, seconds, nfe)

    def describe(self) -> dict[str, Any]:
        """Metadata for manifests, results rows and the UI."""
        return {
            "name": self.name,
            "family": self.family,
            "num_parameters": self.num_parameters,
            "params": self.params,
            "nfe": self.nfe(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, family={self.family!r}, params={self.params})"
