"""What every tab shares: the server's settings, its loaded models, and how a problem becomes a message."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
    _jobs: dict[Path, int] = field(default_factory=dict, init=False, repr=False)  # running jobs per session
    _closed: set[Path] = field(default_factory=set, init=False, repr=False)  # closed while a job ran
    _jobs_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def feature_cache(self) -> FeatureCache:
        return FeatureCache(self.cache_dir) if self.cache_dir else FeatureCache()

    def session(self, request) -> Path:
        """This browser session's own folder (``request`` is the handler's ``gr.Request``)."""
        return session_dir(self.config.work_dir, getattr(request, "session_hash", None))

    @contextmanager
    def session_job(self, request) -> Iterator[Path]:
        """The session's folder for one job; a tab closed meanwhile has its folder removed when the job ends,
        not under a training that is still writing to it."""
        path = self.session(request)
        with self._jobs_lock:
            self._jobs[path] = self._jobs.get(path, 0) + 1
        try:
            yield path
        finally:
            with self._jobs_lock:
                self._jobs[path] -= 1
                remove = False
                if not self._jobs[path]:
                    del self._jobs[path]
                    remove = path in self._closed
                    self._closed.discard(path)
            if remove:
                shutil.rmtree(path, ignore_errors=True)

    def forget_session(self, request) -> None:
        """Delete a closed session's uploads and trainings (once its running jobs end)."""
        path = self.session(request)
        with self._jobs_lock:
            if self._jobs.get(path):
                self._closed.add(path)
                return
        shutil.rmtree(path, ignore_errors=True)


def problem(error: Exception) -> str:
    """A user-fixable error as the Markdown a tab shows instead of its result."""
    return f"**Cannot do that:** {error}"


def failure(error: Exception) -> str:
    """An unexpected error: logged with its traceback for the operator, shown to the user in one line."""
    log.error("job failed", exc_info=error)
    return f"**Failed:** {type(error).__name__}: {error} (the server log has the details)"
