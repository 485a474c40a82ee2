"""The embedded model zoo: small models trained here on the shapes world, saved in their
libraries' own layouts (open_clip, diffusers) under ``zoo/NAME``."""

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parents[2] / "zoo"
TRAIN_DIR = ZOO_DIR / "_train"  # checkpoints and logs; git-ignored
