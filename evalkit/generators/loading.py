"""``load(spec)``: a generator from one spec string, the form recipes, the CLI and the UI use.

::

    zoo:NAME  or  zoo/NAME     a model of the embedded zoo (folder ``zoo/NAME`` of this repository)
    dir:PATH                   any diffusers pipeline saved with ``save_pretrained``
    hf:ORG/NAME[@REVISION]     a Hugging Face hub id (from the local cache when HF_HUB_OFFLINE=1)
    folder:PATH                precomputed images with a manifest.jsonl
    PATH                       a folder: a pipeline if it has model_index.json, else an image folder

Every model loads through ``DiffusionPipeline.from_pretrained`` semantics: the pipeline class named by
``model_index.json``'s ``_class_name`` is found in diffusers, else among classes registered with
:func:`register_pipeline_class`, else in the module of one of its own components when that module is
part of evalkit (so a zoo pipeline defined next to its networks in ``evalkit/zoo/<x>.py`` loads with no
registration). Loaded generators are cached by spec and options: loading is the slow part.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError, UserError
from ..utils import hub_offline
from .base import FAMILIES, Generator
from .folder import FolderGenerator
from .manifest import MANIFEST_NAME

SPEC_FORMS = "zoo:NAME, dir:PATH, hf:ORG/NAME[@REVISION], folder:PATH, or a path to a pipeline or image folder"
META_NAME = "meta.json"  # optional; its "generate" dict holds recommended params (steps, guidance, size)

# pipeline class name -> ("module" or "module:Attr", family or None)
_PIPELINE_CLASSES: dict[str, tuple[str, str | None]] = {}
_CACHE: dict[tuple, Generator] = {}


def register_pipeline_class(class_name: str, target: str, family: str | None = None) -> None:
    """Make ``model_index.json`` files whose ``_class_name`` is ``class_name`` load with the class at
    ``target`` (``"package.module"`` holding a class of that name, or ``"package.module:Attr"``)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
    _PIPELINE_CLASSES[class_name] = (target, family)


# the embedded zoo's own pipeline classes (imported only when a model names them)
register_pipeline_class("GANPipeline", "evalkit.zoo.gan_pipeline", family="gan")
register_pipeline_class("ARPipeline", "evalkit.zoo.ar_pipeline", family="autoregressive")


def clear_cache() -> None:
    """Forget loaded generators (frees their memory once no one else holds them)."""
    _CACHE.clear()


def zoo_dir() -> Path:
    from ..zoo import ZOO_DIR

    return ZOO_DIR


# ---------------------------------------------------------------------------- pipeline class resolution


def _import_target(target: str, default_attr: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr or default_attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import pipeline class {attr or default_attr} from {module}: {e}") from None


def resolve_pipeline_class(model_index: dict[str, Any], where: str) -> tuple[type, str | None]:
    """(pipeline class, family override) for a parsed ``model_index.json``."""
    import diffusers

    class_name = model_index.get("_class_name")
    if isinstance(class_name, list | tuple):  # diffusers' own form for a pipeline file shipped with the model
        return diffusers.DiffusionPipeline, None
    if not isinstance(class_name, str) or not class_name:
        raise UserError(f"{where}: model_index.json has no _class_name; is this a diffusers pipeline folder?")
    if class_name in _PIPELINE_CLASSES:
        target, family = _PIPELINE_CLASSES[class_name]
        return _import_target(target, class_name), family

    def is_pipeline(cls: Any) -> bool:
        return isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)

    if is_pipeline(cls := getattr(diffusers, class_name, None)):
        return cls, None
    for value in model_index.values():  # components are ["library or module", "ClassName"]
        if isinstance(value, list | tuple) and value and isinstance(value[0], str) and value[0].startswith("evalkit."):
            try:
                cls = getattr(importlib.import_module(value[0]), class_name, None)
            except ImportError:
                continue
            if is_pipeline(cls):
                return cls, None
    raise UserError(
        f"{where}: pipeline class {class_name} is neither in diffusers {diffusers.__version__} nor registered; "
        f"register it with evalkit.generators.register_pipeline_class({class_name!r}, 'package.module')"
    )


@contextmanager
def _quiet_loading():
    """No 'Loading pipeline components' bars from diffusers/transformers; ours cover the work."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _recommended_params(directory: Path) -> dict[str, Any]:
    meta = directory / META_NAME
    if not meta.is_file():
        return {}
    params = _read_json(meta).get("generate")
    return dict(params) if isinstance(params, dict) else {}


def _from_pretrained(cls: type, source: str, device: str, **kw: Any) -> Any:
    """``cls.from_pretrained(source)`` in float32 without a safety checker, moved to ``device``."""
    import torch

    init = inspect.signature(cls.__init__).parameters
    if "safety_checker" in init:
        kw.setdefault("safety_checker", None)
    if "requires_safety_checker" in init:
        kw.setdefault("requires_safety_checker", False)
    if "torch_dtype" not in kw:  # diffusers 0.42 names it dtype; torch_dtype still works, with a warning
        kw.setdefault("dtype", torch.float32)
    with _quiet_loading():
        pipe = cls.from_pretrained(source, **kw)
    return pipe.to(device)


def load_pipeline(directory: str | Path, device: str = "cpu", **kw: Any) -> tuple[Any, str | None]:
    """``(pipeline, family override)`` from a local pipeline folder; ``kw`` go to ``from_pretrained``."""
    directory = Path(directory)
    index_file = directory / "model_index.json"
    if not index_file.is_file():
        raise ModelNotFoundError(f"{directory} has no model_index.json; save the pipeline with save_pretrained()")
    cls, family = resolve_pipeline_class(_read_json(index_file), str(directory))
    try:
        return _from_pretrained(cls, str(directory), device, **kw), family
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load the pipeline in {directory}: {e}") from None


# ---------------------------------------------------------------------------- spec kinds


def _pipeline_generator(directory: Path, name: str, device: str, **kw: Any) -> Generator:
    from .pipeline import PipelineGenerator

    pipe, family = load_pipeline(directory, device=device, **kw)
    return PipelineGenerator(pipe, name=name, family=family, defaults=_recommended_params(directory))


def _load_zoo(arg: str, device: str, **kw: Any) -> Generator:
    root = zoo_dir()
    directory = root / arg
    if not arg or "/" in arg.strip("/") or not (directory / "model_index.json").is_file():
        have = sorted(p.name for p in root.glob("*") if (p / "model_index.json").is_file()) if root.is_dir() else []
        raise ModelNotFoundError(
            f"no zoo model {arg!r} in {root} (have: {', '.join(have) or 'none'}); "
            f"train it with `python -m evalkit.zoo train {arg or 'NAME'}`"
        )
    return _pipeline_generator(directory, f"zoo:{arg}", device, **kw)


def _load_dir(arg: str, device: str, **kw: Any) -> Generator:
    directory = Path(arg).expanduser()
    if not directory.is_dir():
        raise ModelNotFoundError(f"dir:{arg}: no such folder")
    return _pipeline_generator(directory, f"dir:{arg}", device, **kw)


def _load_folder(arg: str, device: str, **kw: Any) -> Generator:
    directory = Path(arg).expanduser()
    if not directory.is_dir():
        raise UserError(f"folder:{arg}: no such folder")
    return FolderGenerator(directory, name=f"folder:{arg}")


def _load_hf(arg: str, device: str, **kw: Any) -> Generator:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from .pipeline import PipelineGenerator

    repo_id, _, revision = arg.partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"hf:{arg}: not a valid hub id ({e})") from None
    name, local = f"hf:{arg}", f"models/{repo_id.split('/')[-1]}"
    fetch = (
        f"fetch it where there is network with `hf download {repo_id}{' --revision ' + revision if revision else ''} "
        f"--local-dir {local}` (older: `huggingface-cli download ...`) and use dir:{local}, "
        "or run once with HF_HUB_OFFLINE=0 to fill the cache"
    )
    if hub_offline():
        from huggingface_hub.errors import IncompleteSnapshotError

        try:
            snapshot = snapshot_download(repo_id, revision=revision or None, local_files_only=True)
        except IncompleteSnapshotError as e:  # files the pipeline never needs (fp16 variants, .ckpt) were not fetched
            snapshot = e.snapshot_path  # the pipeline's own files are checked as it loads
        except OSError:  # LocalEntryNotFoundError: nothing cached for this id and revision
            raise ModelNotFoundError(
                f"{name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; {fetch}"
            ) from None
        try:
            return _pipeline_generator(Path(snapshot), name, device, **kw)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"{name}: the cached copy is incomplete ({e}); {fetch}") from None
    try:  # online: diffusers fetches only the files the pipeline needs
        index = _read_json(Path(hf_hub_download(repo_id, "model_index.json", revision=revision or None)))
        cls, family = resolve_pipeline_class(index, name)
        pipe = _from_pretrained(cls, repo_id, device, revision=revision or None, **kw)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load {name}: {e}; {fetch}") from None
    try:  # the recommended params, as offline reads them from the snapshot (most repos have no meta.json)
        meta_dir = Path(hf_hub_download(repo_id, META_NAME, revision=revision or None)).parent
    except Exception:  # EntryNotFoundError, or the network's own errors
        meta_dir = None
    defaults = _recommended_params(meta_dir) if meta_dir else {}
    return PipelineGenerator(pipe, name=name, family=family, defaults=defaults)


_KINDS = {"zoo": _load_zoo, "dir": _load_dir, "hf": _load_hf, "folder": _load_folder}


def parse_spec(spec: str) -> tuple[str, str]:
    """``(kind, argument)``; ``zoo/NAME`` and bare folders are normalized to their kind."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty generator spec; expected {SPEC_FORMS}")
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    if sep and kind in _KINDS:
        if not arg:
            raise UserError(f"generator spec {spec!r} has nothing after ':'; expected {SPEC_FORMS}")
        return kind, arg
    if spec.startswith("zoo/"):  # the repository's zoo, wherever the command runs
        return "zoo", spec.removeprefix("zoo/").strip("/")
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "dir", spec
        if (path / MANIFEST_NAME).is_file():
            return "folder", spec
        raise UserError(f"{spec} holds neither model_index.json (a pipeline) nor {MANIFEST_NAME} (an image folder)")
    raise UserError(f"unknown generator {spec!r}; expected {SPEC_FORMS}")


def load(spec: str, *, device: str = "cpu", cache: bool = True, **kw: Any) -> Generator:
    """The generator ``spec`` names (module docstring). ``kw`` go to ``from_pretrained`` (e.g. ``dtype``,
    ``variant``); loaded generators are cached per (spec, device, kw) unless ``cache=False``.

    Raises :class:`~evalkit.errors.ModelNotFoundError` at once, naming what to fetch, when a model is missing.
    """
    kind, arg = parse_spec(spec)
    key = (
        kind,
        str(Path(arg).expanduser().resolve()) if kind in ("dir", "folder") else arg,
        device,
        repr(sorted(kw.items())),
    )
    if kind in ("dir", "folder", "zoo"):  # a folder rewritten in place must not serve stale weights or rows
        target = {"zoo": zoo_dir() / arg, "dir": Path(arg).expanduser(), "folder": Path(arg).expanduser()}[kind]
        stamp = target / ("model_index.json" if kind != "folder" else MANIFEST_NAME)
        key += (os.stat(stamp).st_mtime_ns if stamp.is_file() else None,)
    if cache and key in _CACHE:
        return _CACHE[key]
    generator = _KINDS[kind](arg, device, **kw)
    if cache:
        _CACHE[key] = generator
    return generator
