"""What every tab shares: the server's settings, its loaded models, and how a problem becomes a message."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..features import FeatureCache
from .config import AppConfig
from .models import ModelCache
from .uploads import session_dir

log = logging.getLogger("evalkit.ui")


@dataclass
class UiContext:
    config: AppConfig
    models: ModelCache = field(default_factory=ModelCache)
    cache_dir: Path | None = None  # feature cache root (default: the CLI's, $EVALKIT_CACHE)

    def feature_cache(self) -> FeatureCache:
        return FeatureCache(self.cache_dir) if self.cache_dir else FeatureCache()

    def session(self, request) -> Path:
        """This browser session's own folder (``request`` is the handler's ``gr.Request``)."""
        return session_dir(self.config.work_dir, getattr(request, "session_hash", None))

    def forget_session(self, request) -> None:
        """Delete a closed session's uploads and trainings."""
        path = session_dir(self.config.work_dir, getattr(request, "session_hash", None))
        shutil.rmtree(path, ignore_errors=True)


def problem(error: Exception) -> str:
    """A user-fixable error as the Markdown a tab shows instead of its result."""
    return f"**Cannot do that:** {error}"


def failure(error: Exception) -> str:
    """An unexpected error: logged with its traceback for the operator, shown to the user in one line."""
    log.error("job failed", exc_info=error)
    return f"**Failed:** {type(error).__name__}: {error} (the server log has the details)"
