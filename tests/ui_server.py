"""A UI server on tiny local models for the UI tests: one per test module, on a free port, always closed."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from evalkit.generators.testing import save_tiny_amused

GEN_PARAMS = {"steps": 2, "size": 32}  # keeps every generation call well under a second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_generators(root: Path, tiny_sd_dir: Path) -> list[str]:
    """Two real diffusers pipelines of two families: the shared tiny SD and a tiny aMUSEd (masked)."""
    return [f"dir:{tiny_sd_dir}", f"dir:{save_tiny_amused(root / 'tiny-amused')}"]


@contextmanager
def running_app(tmp: Path, generators: list[str], extractor: str, auth: tuple[str, str] | None = None, **settings):
    """Build and launch the app on 127.0.0.1 with its own database, runs, sessions and feature cache."""
    from evalkit.ui import build_app, launch

    demo = build_app(db=tmp / "results.db", generators=generators, extractor=extractor, runs_dir=tmp / "runs",
                     work_dir=tmp / "work", cache_dir=tmp / "cache", **settings)  # fmt: skip
    url = launch(demo, "127.0.0.1", free_port(), auth=auth, block=False)
    try:
        yield SimpleNamespace(url=url, demo=demo, ctx=demo.evalkit, tmp=tmp, generators=generators)
    finally:
        demo.close()
