"""The run folder: what a personalization run writes, and the rules for starting over or resuming.

::

    OUT/
      config.json            the resolved TrainConfig (what --resume must match)
      run.json               fingerprints of the base model and the subject images, final figures
      log.jsonl              one line per step (loss, lr, CPU seconds) plus events
      checkpoints/ckpt.pt    the last good checkpoint (trainable tensors + optimizer state), atomic
      samples/step-NNNNNN/   validation images every N steps, index.json names prompt and seed
      samples/final/         the same prompts and seeds with the final weights
      learned_embeds.safetensors | pytorch_lora_weights.safetensors | model_index.json + unet/ ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from evalkit.errors import UserError
from evalkit.shapes.render import png_bytes
from evalkit.utils import atomic_write_bytes, atomic_write_text
from evalkit.zoo.common import load_checkpoint, save_checkpoint

from .config import TrainConfig

WEIGHT_FILES = {"ti": "learned_embeds.safetensors", "lora": "pytorch_lora_weights.safetensors",
                "dreambooth": "model_index.json"}  # fmt: skip


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.checkpoints = self.path / "checkpoints"

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    def weights_file(self, method: str) -> Path:
        return self.path / WEIGHT_FILES[method]

    # ------------------------------------------------------------------ start / resume

    def prepare(self, cfg: TrainConfig) -> bool:
        """Check the folder against ``cfg`` before any model loads; True when a checkpoint will be resumed."""
        if self.config_file.is_file():
            if not cfg.resume:
                raise UserError(
                    f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
                )
            stored = TrainConfig.load(self.config_file)
            diffs = cfg.differences(stored)
            if diffs:
                raise UserError(
                    f"cannot resume {self.path}: the config differs from the stored one ({'; '.join(diffs)}); "
                    "start a new run with another --out"
                )
            return (self.checkpoints / "ckpt.pt").is_file()
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise UserError(f"{self.path} exists and is not a run folder; choose an empty or new --out")
        if cfg.resume:
            print(f"nothing to resume in {self.path}; starting a new run", flush=True)
        return False

    def start(self, cfg: TrainConfig, info: dict[str, Any]) -> None:
        """Write config.json and run.json; on resume, refuse a changed model or changed images."""
        self.path.mkdir(parents=True, exist_ok=True)
        run_file = self.path / "run.json"
        if cfg.resume and run_file.is_file():
            stored = json.loads(run_file.read_text())
            for key in ("model_fingerprint", "images_fingerprint"):
                if stored.get(key) != info.get(key):
                    what = "base model" if key.startswith("model") else "subject images"
                    raise UserError(f"cannot resume {self.path}: the {what} changed since the run started")
            info = stored | info
        atomic_write_text(self.config_file, json.dumps(cfg.to_dict(), indent=2) + "\n")
        self.write_info(info)

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write_text(self.path / "run.json", json.dumps(info, indent=2, sort_keys=True) + "\n")

    def info(self) -> dict[str, Any]:
        f = self.path / "run.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.checkpoints, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        return load_checkpoint(self.checkpoints)

    # ------------------------------------------------------------------ samples

    def write_samples(self, tag: str, images: list[Image.Image], prompts: list[str], seeds: list[int]) -> Path:
        folder = self.path / "samples" / tag
        rows = []
        for i, (im, prompt, seed) in enumerate(zip(images, prompts, seeds)):
            name = f"{i:03d}.png"
            atomic_write_bytes(folder / name, png_bytes(im))
            rows.append({"file": name, "prompt": prompt, "seed": seed})
        atomic_write_text(folder / "index.json", json.dumps(rows, indent=2) + "\n")
        return folder
