"""``python -m evalkit oracle``: score images against their prompt specs with the shapes-world oracle.

Reads either a shapes subset (``shapes.parquet``: image bytes + spec JSON per row) or a folder of
generated images with a ``manifest.jsonl`` (rows with ``file`` and ``spec``). Rows that cannot be
scored (no spec, missing or undecodable image) are skipped and counted, never fatal.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import UserError
from ..utils import atomic_write_text
from .oracle import OracleReport, evaluate, to_rgb_array, validate_spec
from .subset import PARQUET_NAME
from .world import PromptSpec

MANIFEST_NAME = "manifest.jsonl"
_SHOW_SKIPPED = 10  # skipped rows named one by one on stderr; the rest only counted


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "oracle",
        help="check images against their prompts (shapes world)",
        description="Check each image against its prompt spec (background, objects, colors, shapes, sizes, "
        "counts, relations) and report GenEval-style accuracy per category.",
    )
    p.add_argument(
        "--images",
        required=True,
        metavar="DIR",
        help=f"a shapes subset (folder with {PARQUET_NAME}) or an image folder with {MANIFEST_NAME} "
        "(rows with 'file' and 'spec'); a .parquet or .jsonl file also works",
    )
    p.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON to OUT")
    p.set_defaults(func=run)


class _Skips:
    """Counts skipped rows by reason and names the first few."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def __call__(self, name: str, reason: str) -> None:
        if sum(self.reasons.values()) < _SHOW_SKIPPED:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        self.reasons[reason.split(":")[0]] += 1


def _decode(source: bytes | Path) -> np.ndarray:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.load()
        return to_rgb_array(im)


def _parse_spec(raw: Any, category: str | None) -> PromptSpec | None:
    d = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if d is None:
        return None
    d = dict(d)
    if category and not d.get("category"):
        d["category"] = category
    d.setdefault("category", "uncategorized")
    spec = PromptSpec.from_dict(d)
    validate_spec(spec)
    return spec


def _scorable(name: str, image_source: Any, raw_spec: Any, category: str | None, skip: _Skips):
    """(image array, spec), or None after recording why the row is skipped."""
    reason = None
    try:
        spec = _parse_spec(raw_spec, category) if raw_spec not in (None, "") else None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        spec, reason = None, f"bad spec: {e}"
    if spec is None:
        reason = reason or "no spec"
    elif image_source is None:
        reason = "no image"
    elif isinstance(image_source, Path) and not image_source.is_file():
        reason = f"missing file: {image_source}"
    else:
        try:
            return _decode(image_source), spec
        except Exception as e:  # any decoder failure means the same to the user
            reason = f"undecodable image: {type(e).__name__}: {e}"
    skip(name, reason)
    return None


def _parquet_items(path: Path, skip: _Skips) -> Iterator[tuple[np.ndarray, PromptSpec]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"cannot read {path}: {e}") from None
    names = set(pf.schema_arrow.names)
    missing = {"image", "spec"} - names
    if missing:
        raise UserError(
            f"{path} has no {' or '.join(sorted(missing))} column; the oracle needs image bytes and prompt specs "
            "(write a shapes subset with `python -m evalkit shapes make`)"
        )
    cols = ["image", "spec"] + [c for c in ("key", "category") if c in names]
    row = 0
    for batch in pf.iter_batches(batch_size=256, columns=cols):
        data = batch.to_pydict()
        keys = data.get("key") or [None] * batch.num_rows
        cats = data.get("category") or [None] * batch.num_rows
        for i in range(batch.num_rows):
            item = _scorable(keys[i] or f"row {row}", data["image"][i], data["spec"][i], cats[i], skip)
            row += 1
            if item is not None:
                yield item


def _manifest_items(path: Path, skip: _Skips) -> Iterator[tuple[np.ndarray, PromptSpec]]:
    root = path.parent
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                skip(f"{path.name} line {lineno}", f"bad manifest row: {e}")
                continue
            file = row.get("file")
            name = str(file) if file else f"{path.name} line {lineno}"
            item = _scorable(name, root / file if file else None, row.get("spec"), row.get("category"), skip)
            if item is not None:
                yield item


def resolve_source(images: str | Path) -> tuple[str, Path]:
    """("parquet" | "manifest", file) for a folder or file given as ``--images``."""
    path = Path(images)
    if not path.exists():
        raise UserError(f"--images {path} does not exist")
    if path.is_dir():
        for kind, name in (("parquet", PARQUET_NAME), ("manifest", MANIFEST_NAME)):
            if (path / name).is_file():
                return kind, path / name
        raise UserError(f"{path} has neither {PARQUET_NAME} (a shapes subset) nor {MANIFEST_NAME} (generated images)")
    if path.suffix == ".parquet":
        return "parquet", path
    if path.suffix == ".jsonl":
        return "manifest", path
    raise UserError(f"--images {path}: expected a folder, a .parquet file or a manifest .jsonl")


def score_images(images: str | Path) -> tuple[OracleReport, dict[str, int]]:
    """The CLI as a function: the report and the skipped-row counts by reason."""
    kind, path = resolve_source(images)
    skip = _Skips()
    items = _parquet_items(path, skip) if kind == "parquet" else _manifest_items(path, skip)
    report = evaluate(items)
    return report, dict(skip.reasons)


def _fmt(fig: dict[str, Any]) -> str:
    if not fig["n"]:
        return f"{0:>6}  {'-':>8}"
    lo, hi = fig["ci95"]
    return f"{fig['n']:>6}  {fig['accuracy']:>8.3f}  [{lo:.3f}, {hi:.3f}]"


def format_report(report: OracleReport, skipped: dict[str, int]) -> str:
    lines = [f"{'category':<16}{'n':>6}  {'accuracy':>8}  95% CI"]
    lines += [f"{c:<16}{_fmt(f)}" for c, f in report.categories.items()]
    lines.append(f"{'overall':<16}{_fmt(report.overall)}")
    lines += ["", f"{'check':<16}{'n':>6}  {'accuracy':>8}  95% CI"]
    lines += [f"{k:<16}{_fmt(f)}" for k, f in report.checks.items()]
    if skipped:
        lines += ["", f"skipped {sum(skipped.values())}: " + ", ".join(f"{r} {n}" for r, n in sorted(skipped.items()))]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report, skipped = score_images(args.images)
    print(format_report(report, skipped))
    if args.json:
        out = {**report.to_dict(), "skipped": skipped, "source": str(args.images)}
        atomic_write_text(args.json, json.dumps(out, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    if report.overall["n"] == 0:
        raise UserError(f"no image in {args.images} could be scored (skipped: {skipped or 'none found'})")
    return 0
