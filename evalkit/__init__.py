"""t2i-evalkit: evaluation and personalization for text-to-image generators."""

import os as _os

# Offline-friendly defaults (ENV.md); a user's own setting wins.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
_os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
