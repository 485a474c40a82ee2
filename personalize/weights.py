"""Apply a personalization result to its base model with diffusers' own loaders.

``WEIGHTS`` may be a run folder (its ``config.json`` names the method, token and base model), a folder
holding ``pytorch_lora_weights.safetensors`` or a saved pipeline, or a ``learned_embeds.safetensors``
file (which needs ``token``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import UserError
from evalkit.utils import sha256_bytes, sha256_file

from .base import BaseModel, load_base, quiet_diffusers
from .config import TrainConfig
from .run import WEIGHT_FILES


@dataclass
class Personalized:
    base: BaseModel  # the personalized pipeline (``base.pipe``) with the base model's sampling settings
    method: str
    token: str | None
    class_word: str | None
    model: str  # the base model spec
    weights: Path


def describe_weights(weights: str | Path) -> tuple[str, Path, TrainConfig | None]:
    """(method, weights path, run config if any) for a run folder, weights folder or weights file."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise UserError(f"weights not found: {path}")
    if path.is_file():
        if path.name == WEIGHT_FILES["lora"]:
            return "lora", path.parent, None
        if path.suffix in (".safetensors", ".bin", ".pt"):
            return "ti", path, None
        raise UserError(f"{path} is neither a textual-inversion embedding nor LoRA weights")
    cfg = TrainConfig.load(path / "config.json") if (path / "config.json").is_file() else None
    for method in ("ti", "lora", "dreambooth"):
        if (path / WEIGHT_FILES[method]).is_file():
            if cfg is not None and cfg.method != method:
                raise UserError(f"{path}: config.json says {cfg.method} but the folder holds {WEIGHT_FILES[method]}")
            return method, path if method != "ti" else path / WEIGHT_FILES["ti"], cfg
    if cfg is not None:
        raise UserError(f"{path} holds an unfinished {cfg.method} run (no weights yet); finish it with --resume")
    raise UserError(f"no personalization weights in {path} (expected one of {', '.join(WEIGHT_FILES.values())})")


def load_personalized(
    weights: str | Path,
    model: str | None = None,
    token: str | None = None,
    sample_steps: int | None = None,
    guidance: float | None = None,
) -> Personalized:
    """The base model with ``weights`` applied; ``model``/``token`` default to what the run recorded."""
    method, path, cfg = describe_weights(weights)
    recorded = cfg.to_dict() if cfg else _saved_pipeline_record(path) if method == "dreambooth" else {}
    model = model or recorded.get("model") or recorded.get("base_model")
    token = token or recorded.get("token")
    class_word = recorded.get("class_word")
    if not model:
        raise UserError(f"{weights} does not record its base model; pass --model")
    if method == "dreambooth":
        base = load_base(f"dir:{path}", sample_steps, guidance)
        return Personalized(base, method, token, class_word, model, path)
    base = load_base(model, sample_steps, guidance)
    with quiet_diffusers():  # a UNet-only LoRA has no text-encoder keys: expected, not worth a warning
        if method == "ti":
            if not token:
                raise UserError(f"{path} needs the token it was trained for; pass --token")
            base.pipe.load_textual_inversion(str(path), token=token)
        else:
            base.pipe.load_lora_weights(str(path))
    return Personalized(base, method, token, class_word, model, path)


def weights_fingerprint(p: Personalized) -> str:
    """sha256 over the weight files themselves (not the run folder, whose samples and evaluations change)."""
    if p.method == "ti":
        files = [p.weights]
    elif p.method == "lora":
        files = [p.weights / WEIGHT_FILES["lora"]]
    else:
        files = sorted(p.weights.glob("*/*.safetensors"))
    return sha256_bytes("".join(sha256_file(f) for f in files).encode())[:16]


def _saved_pipeline_record(path: Path) -> dict:
    """What a full DreamBooth pipeline folder says about itself in meta.json when its run config is gone."""
    try:
        return dict(json.loads((path / "meta.json").read_text()).get("personalized") or {})
    except (OSError, ValueError, AttributeError):
        return {}
