"""The embedded model zoo: small models trained here on the shapes world, saved in their
libraries' own layouts (open_clip, diffusers) under ``zoo/NAME``."""

import os
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parents[2] / "zoo"
# checkpoints and logs (git-ignored); EVALKIT_ZOO_TRAIN keeps them outside a work tree that may be re-cloned
TRAIN_DIR = Path(os.environ.get("EVALKIT_ZOO_TRAIN", ZOO_DIR / "_train"))
