"""open_clip extractors: the embedded judge (``judge``) and any open_clip model (``clip:...``).

Judge directory layout (written by ``save_openclip_dir``, read by ``load_openclip_dir``)::

    zoo/judge/
      <model_name>.json             open_clip model config {embed_dim, vision_cfg, text_cfg}
      open_clip_model.safetensors   state dict
      open_clip_config.json         {"model_cfg", "preprocess_cfg"}: open_clip's hub layout, so
                                    ``open_clip.create_model_and_transforms("local-dir:zoo/judge")`` works too
      meta.json                     optional: training recipe, data, scores

The config is registered with ``open_clip.add_model_config(<model_name>.json)`` and the weights load
through ``open_clip.create_model_and_transforms(model_name, pretrained=<safetensors file>)``; the
tokenizer is open_clip's own BPE tokenizer (it ships with the package, so it works offline).

``clip:`` spec grammar (one ``/`` separates the architecture from the weights)::

    clip:ViT-B-32/laion2b_s34b_b79k          open_clip name / pretrained tag (HF cache, offline-safe)
    clip:ViT-B-32//abs/path/weights.safetensors   open_clip name / local weight file (.safetensors/.bin/.pt)
    clip:ViT-B-32/~/weights/vit-b-32.pt      relative or ~ paths work too
    clip:hf-hub:timm/ViT-B-16-SigLIP         an open_clip model repo in the HF cache
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNotFoundError, UserError, first_line, unreadable_weights
from ..utils import atomic_write_bytes, atomic_write_text, hub_offline
from .base import FeatureExtractor, Preprocess, weights_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_JUDGE_DIR = REPO_ROOT / "zoo" / "judge"
WEIGHTS_FILE = "open_clip_model.safetensors"
HUB_CONFIG_FILE = "open_clip_config.json"
META_FILE = "meta.json"
_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _open_clip():
    import open_clip  # slow import (timm): only when an open_clip model is actually used

    return open_clip


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _is_model_config(cfg: Any) -> bool:
    return isinstance(cfg, dict) and all(k in cfg for k in _CONFIG_KEYS)


def _builtin_config_exists(model_name: str) -> bool:
    return (Path(_open_clip().__file__).parent / "model_configs" / f"{model_name}.json").is_file()


def save_openclip_dir(
    model: torch.nn.Module,
    model_cfg: dict,
    model_name: str,
    out_dir: str | Path,
    meta: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an open_clip model in the judge layout (see module docstring); returns ``out_dir``.

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors smaller; open_clip casts them back on load.

    Other model configs left in ``out_dir`` by an earlier save are removed, so the folder holds one model.
    """
    if not _MODEL_NAME_RE.match(model_name):
        raise ValueError(f"model_name {model_name!r} must be a plain file stem (letters, digits, _ . + -)")
    if not _is_model_config(model_cfg):
        raise ValueError(f"model_cfg needs keys {_CONFIG_KEYS}, got {sorted(model_cfg)}")
    if _builtin_config_exists(model_name):
        raise ValueError(f"model_name {model_name!r} is a built-in open_clip model; pick another name")
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        state[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().clone()
    atomic_write_bytes(out / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    cfg_text = json.dumps(_jsonable(model_cfg), indent=2) + "\n"
    atomic_write_text(out / f"{model_name}.json", cfg_text)
    preprocess_cfg = getattr(getattr(model, "visual", model), "preprocess_cfg", None) or {}
    hub_cfg = {"model_cfg": _jsonable(model_cfg), "preprocess_cfg": _jsonable(preprocess_cfg)}
    atomic_write_text(out / HUB_CONFIG_FILE, json.dumps(hub_cfg, indent=2) + "\n")
    for stale in out.glob("*.json"):
        if stale.name not in (f"{model_name}.json", HUB_CONFIG_FILE, META_FILE) and _read_model_config(stale):
            stale.unlink()
    if meta is not None:
        atomic_write_text(out / META_FILE, json.dumps(_jsonable(meta), indent=2, sort_keys=True) + "\n")
    return out


def _read_model_config(path: Path) -> dict | None:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cfg if _is_model_config(cfg) else None


def _judge_missing(directory: Path, what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"zoo judge model missing: {what} in {directory}; "
        "train it with `python -m evalkit.zoo train judge` or pass judge:<dir> holding a saved judge"
    )


def find_openclip_config(directory: str | Path) -> tuple[str, Path]:
    """The one ``<model_name>.json`` open_clip config in a judge-layout folder."""
    d = Path(directory)
    found = [
        p for p in sorted(d.glob("*.json")) if p.name not in (HUB_CONFIG_FILE, META_FILE) and _read_model_config(p)
    ]
    if not found:
        raise _judge_missing(d, "no <model_name>.json open_clip config")
    if len(found) > 1:
        raise UserError(f"{d} holds several open_clip configs ({', '.join(p.name for p in found)}); keep one")
    return found[0].stem, found[0]


def load_openclip_dir(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Callable, Callable, str]:
    """Load a judge-layout folder → ``(model, preprocess, tokenizer, model_name)``, model in eval mode.

    ``preprocess`` is open_clip's own eval transform (PIL → tensor); feature extraction uses the
    extractor's declared preprocessing instead (``Preprocess``), which matches it in size, crop and
    normalization.
    """
    d = Path(directory)
    if not d.is_dir():
        raise _judge_missing(d, "folder not found")
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise _judge_missing(d, f"no {WEIGHTS_FILE}")
    model_name, cfg_path = find_openclip_config(d)
    open_clip = _open_clip()
    cfg = _read_model_config(cfg_path)
    if open_clip.get_model_config(model_name) != cfg:
        open_clip.add_model_config(cfg_path)  # appended last, so this file wins over a same-named earlier one
    if open_clip.get_model_config(model_name) != cfg:
        raise UserError(f"open_clip already has a different config named {model_name!r}; rename {cfg_path}")
    pp: dict = {}
    hub_cfg_path = d / HUB_CONFIG_FILE
    if hub_cfg_path.is_file():
        pp = json.loads(hub_cfg_path.read_text()).get("preprocess_cfg", {}) or {}
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=str(weights),
            device=device,
            image_mean=tuple(pp["mean"]) if "mean" in pp else None,
            image_std=tuple(pp["std"]) if "std" in pp else None,
            image_interpolation=pp.get("interpolation"),
            image_resize_mode=pp.get("resize_mode"),
        )
    except Exception as e:  # truncated, corrupt or not this config's weights
        raise unreadable_weights(weights, e) from None
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, preprocess, tokenizer, model_name


class OpenCLIPExtractor(FeatureExtractor):
    """An open_clip model: ``{"image": embed_dim}`` image features and ``encode_text``.

    Features are the raw projected embeddings (not L2-normalized); metrics normalize as they need.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        name: str,
        weight_files: list[str | Path],
        embed_dim: int,
        resize: str = "clean",
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.module = self.model.visual
        self.tokenizer = tokenizer
        self.name = name
        self.weights_hash = weights_sha256(*weight_files)
        pp = self.module.preprocess_cfg
        size = pp["size"]
        if not isinstance(size, int):
            if len(set(size)) != 1:
                raise UserError(f"{name}: non-square input size {size} is not supported")
            size = int(size[0])
        crop = "none" if pp.get("resize_mode") == "squash" else "center"
        self.preprocess = Preprocess(size, resize, tuple(pp["mean"]), tuple(pp["std"]), crop)
        self.features = {"image": int(embed_dim)}
        self.text_dim = int(embed_dim)

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": self.model.encode_image(x)}

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        self.model.eval()
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


def load_judge(arg: str | None, resize: str = "clean", device: str | torch.device = "cpu") -> OpenCLIPExtractor:
    """``judge`` (the zoo's ``zoo/judge``) or ``judge:<dir>`` (any judge-layout folder)."""
    directory = Path(arg).expanduser() if arg else DEFAULT_JUDGE_DIR
    model, _, tokenizer, model_name = load_openclip_dir(directory, device=device)
    embed_dim = _read_model_config(directory / f"{model_name}.json")["embed_dim"]
    # the configs count as weights for the feature cache: they hold the architecture and the normalization
    pinned = [directory / name for name in (WEIGHTS_FILE, f"{model_name}.json", HUB_CONFIG_FILE)]
    return OpenCLIPExtractor(
        model, tokenizer, f"judge:{model_name}", [p for p in pinned if p.is_file()], embed_dim, resize, device
    )


def _looks_like_path(s: str) -> bool:
    return "/" in s or s.startswith(("~", ".")) or s.lower().endswith(_WEIGHT_SUFFIXES)


def _missing_clip_weights(arch: str, tag: str, pcfg: dict) -> ModelNotFoundError:
    from huggingface_hub import constants

    repo = pcfg.get("hf_hub", "").rstrip("/")
    where = (
        f"fetch {repo} (open_clip_model.safetensors) into the Hugging Face cache {constants.HF_HUB_CACHE} "
        f"on a connected machine (`hf download {repo} open_clip_model.safetensors`)"
        if repo
        else f"download {pcfg.get('url', '')} into ~/.cache/clip/"
    )
    return ModelNotFoundError(
        f"open_clip weights for {arch} (pretrained tag {tag!r}) are not cached and the hub is offline: {where}, "
        f"or pass a local file as clip:{arch}//path/to/open_clip_model.safetensors"
    )


def _offline_extras(arch: str, err: Exception, fetch: str) -> ModelNotFoundError:
    """Some models need more than their weights: a Hugging Face tokenizer (SigLIP) or text-tower config (XLM-R)."""
    detail = first_line(err)
    return ModelNotFoundError(
        f"open_clip {arch} needs files beyond its weights (a tokenizer or text-tower config) that could not be "
        f"loaded ({detail}): {fetch}"
    )


def _tokenizer(open_clip: Any, arch: str, fetch: str) -> Any:
    try:
        return open_clip.get_tokenizer(arch)
    except OSError as e:  # offline: a hub tokenizer that is not cached
        raise _offline_extras(arch, e, fetch) from None


def parse_clip_spec(arg: str) -> tuple[str, str | None]:
    """``clip:`` argument → (open_clip model name, pretrained tag or file; None for ``hf-hub:`` models)."""
    if arg.startswith("hf-hub:"):
        if len(arg) <= len("hf-hub:"):
            raise UserError("clip:hf-hub: needs a repo id, e.g. clip:hf-hub:timm/ViT-B-16-SigLIP")
        return arg, None
    arch, sep, pretrained = arg.partition("/")
    if not arch or not sep or not pretrained:
        raise UserError(
            f"clip spec {arg!r} needs weights: clip:ARCH/TAG (e.g. clip:ViT-B-32/laion2b_s34b_b79k) "
            "or clip:ARCH/PATH (e.g. clip:ViT-B-32//abs/path/open_clip_model.safetensors)"
        )
    return arch, pretrained


def load_clip(arg: str | None, resize: str = "clean", device: str | torch.device = "cpu") -> OpenCLIPExtractor:
    """``clip:<arch>/<tag or file>`` or ``clip:hf-hub:<repo>``; offline with nothing cached → ModelNotFoundError."""
    if not arg:
        raise UserError("clip needs a model: clip:ARCH/TAG, clip:ARCH/PATH or clip:hf-hub:REPO")
    arch, pretrained = parse_clip_spec(arg)
    open_clip = _open_clip()
    from open_clip.pretrained import download_pretrained, download_pretrained_from_hf

    if pretrained is None:  # hf-hub: repo holding open_clip_config.json + weights
        repo = arch[len("hf-hub:") :]
        try:
            weight_file = download_pretrained_from_hf(repo)
            model, _, _ = open_clip.create_model_and_transforms(arch, device=device)
        except Exception as e:  # offline/missing: hf_hub and open_clip raise several types
            detail = first_line(e)
            raise ModelNotFoundError(
                f"open_clip model {arch} could not be loaded from the Hugging Face cache ({detail}): fetch the repo "
                f"{repo} on a connected machine (`hf download {repo}`) or use clip:ARCH//path/to/weights"
            ) from None
        cfg = open_clip.factory._get_hf_config(repo)["model_cfg"]
        tokenizer = _tokenizer(open_clip, arch, f"fetch the whole repo on a connected machine (`hf download {repo}`)")
        return OpenCLIPExtractor(model, tokenizer, f"clip:{arch}", [weight_file], cfg["embed_dim"], resize, device)

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
        raise UserError(f"unknown open_clip model {arch!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    path = Path(pretrained).expanduser()
    if path.is_file():
        weight_file, label, source = str(path), path.name, str(path)
    elif _looks_like_path(pretrained):
        raise ModelNotFoundError(f"weight file for clip:{arch} not found: {path}")
    else:
        pcfg = open_clip.get_pretrained_cfg(arch, pretrained)
        if not pcfg:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise UserError(
                f"unknown pretrained tag {pretrained!r} for {arch}; known tags: {', '.join(tags) or 'none'}"
                f" (or give a local weight file: clip:{arch}//path/to/weights.safetensors)"
            )
        if hub_offline() and not pcfg.get("hf_hub"):
            cached = Path("~/.cache/clip").expanduser() / os.path.basename(pcfg.get("url", ""))
            if not cached.is_file():
                raise _missing_clip_weights(arch, pretrained, pcfg)
        try:
            weight_file = download_pretrained(pcfg)
        except Exception:  # hf_hub raises FileNotFoundError/LocalEntryNotFoundError/OSError when offline
            raise _missing_clip_weights(arch, pretrained, pcfg) from None
        if not weight_file:
            raise _missing_clip_weights(arch, pretrained, pcfg)
        weight_file, label, source = str(weight_file), pretrained, pretrained
    text_cfg = cfg.get("text_cfg", {})
    hub_parts = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    fetch = (
        f"fetch {hub_parts} on a connected machine (`hf download {hub_parts}`)"
        if hub_parts
        else "run once with network to fill the caches"
    )
    try:
        # a tag resolves again from the cache (and brings the tag's own mean/std); a file loads as is
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=source, device=device)
    except RuntimeError as e:
        raise UserError(f"weights {weight_file} don't load into open_clip {arch}: {first_line(e)}") from None
    except OSError as e:  # offline: a Hugging Face text tower's config that is not cached
        raise _offline_extras(arch, e, fetch) from None
    except Exception as e:  # a corrupt or foreign file: safetensors and pickle raise their own types
        raise unreadable_weights(weight_file, e) from None
    tokenizer = _tokenizer(open_clip, arch, fetch)
    return OpenCLIPExtractor(model, tokenizer, f"clip:{arch}/{label}", [weight_file], cfg["embed_dim"], resize, device)
