"""What a UI server is pointed at, and the command line that sets it (``python app.py --help``).

The defaults are the CLI's (``results.db``, the embedded judge, ``runs/``), so the app and the
commands read and write the same results database and folders.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

REPO_DIR = Path(__file__).resolve().parents[2]


@dataclass
class AppConfig:
    """One server's settings; tests build it directly to inject tiny models and a temporary database."""

    db: Path = Path("results.db")
    generators: list[str] = field(default_factory=list)  # specs offered besides the zoo's models
    extractor: str = "judge"  # CLIP-like feature extractor spec: CLIP scores and subject metrics
    runs_dir: Path = Path("runs")  # evaluation outputs (images, manifests, report), as `python -m evalkit run`
    work_dir: Path | None = None  # per-session uploads and personalization runs (default: a temp dir)
    recipes_dir: Path = REPO_DIR / "recipes"
    max_upload_mb: float = 10.0  # per uploaded image
    max_images: int = 20  # personalization takes 1 to 20 subject images
    concurrency: int = 2  # jobs running at once (evaluations, comparisons); trainings run one at a time
    max_queue: int = 32  # waiting jobs before new ones are turned away
    compare_prompts: str = "shapes:24:0:test"  # example prompts whose oracle spec is known

    def __post_init__(self) -> None:
        self.db, self.runs_dir = Path(self.db), Path(self.runs_dir)
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="evalkit-ui-"))
        self.work_dir = Path(self.work_dir)
        if self.concurrency < 1 or self.max_images < 1 or self.max_upload_mb <= 0:
            raise UserError("concurrency and max_images must be at least 1 and max_upload_mb positive")


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``user:pass`` → ``("user", "pass")``; the password may contain colons.

    >>> parse_auth("ann:s3:cret")
    ('ann', 's3:cret')
    """
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must be USER:PASSWORD with both parts non-empty")
    return user, password


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python app.py", description="Gradio UI: evaluate, leaderboard, compare, personalize."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--db", default="results.db", help="results database shared with the CLI")
    p.add_argument("--generator", action="append", default=[], metavar="SPEC",
                   help="offer this generator too (dir:PATH, hf:ORG/NAME, folder:PATH); repeatable")  # fmt: skip
    p.add_argument("--extractor", default="judge", help="CLIP extractor for scores (judge, judge:DIR, clip:ARCH/TAG)")
    p.add_argument("--runs-dir", default="runs", help="where evaluation images and reports go")
    p.add_argument("--work-dir", default=None, help="per-session uploads and trainings (default: a temp dir)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted image upload")
    p.add_argument("--concurrency", type=int, default=2, help="jobs at once (trainings: always one)")
    return p


def config_from_args(args: argparse.Namespace) -> AppConfig:
    return AppConfig(
        db=Path(args.db), generators=list(args.generator), extractor=args.extractor, runs_dir=Path(args.runs_dir),
        work_dir=Path(args.work_dir) if args.work_dir else None, max_upload_mb=args.max_upload_mb,
        concurrency=args.concurrency,
    )  # fmt: skip
