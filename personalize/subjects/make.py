"""Write the embedded subjects' images and captions (deterministic: same bytes every run).

python -m personalize.subjects.make [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evalkit.shapes.render import png_bytes
from evalkit.utils import atomic_write_bytes, atomic_write_text

from . import SUBJECTS, Subject


def write_subject(subject: Subject, folder: Path) -> list[Path]:
    """``N.png`` and ``N.txt`` for each placement; returns the image paths."""
    paths = []
    for i, placement in enumerate(subject.placements):
        path = folder / f"{i}.png"
        atomic_write_bytes(path, png_bytes(subject.render(placement)))
        atomic_write_text(folder / f"{i}.txt", "\n".join(subject.captions(placement)) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m personalize.subjects.make", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="parent folder (default: personalize/subjects)")
    args = p.parse_args(argv)
    for subject in SUBJECTS.values():
        folder = Path(args.out) / subject.name if args.out else subject.folder
        for path in write_subject(subject, folder):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
