"""The Gradio UI (``python app.py``): Evaluate, Leaderboard, Compare and Personalize tabs, one module each,
over the same functions as the CLIs. Nothing in the core imports this package.

>>> from evalkit.ui import build_app, launch            # doctest: +SKIP
>>> demo = build_app(db="results.db", generators=["dir:models/tiny-sd"], extractor="judge")  # doctest: +SKIP
>>> launch(demo, port=None, block=False)                # doctest: +SKIP
'http://127.0.0.1:7861/'
"""

from .app import build_app, launch, main
from .config import AppConfig

__all__ = ["AppConfig", "build_app", "launch", "main"]
