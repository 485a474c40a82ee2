"""A folder of precomputed images with a ``manifest.jsonl`` as a generator (``folder:<path>``).

Outputs of any system that cannot run in-process (a hosted API, another framework) are scored like
any other generator: write one PNG per (prompt, seed) and a manifest row each with at least
``prompt`` (or ``text``/``caption``), ``seed`` and ``file``; ``params``, ``seconds``, ``nfe`` and
``generator`` are used when present. ``python -m evalkit generate`` writes exactly this layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import UserError
from .base import GenerationOutput, Generator, check_prompts_seeds, normalize_params
from .manifest import MANIFEST_NAME, read_manifest

_PROMPT_KEYS = ("prompt", "text", "caption")
_SHOW_MISSING = 5


def _row_prompt(row: dict[str, Any]) -> str | None:
    for k in _PROMPT_KEYS:
        if isinstance(row.get(k), str):
            return row[k]
    return None


def _common(rows: list[dict[str, Any]], key: str) -> Any:
    """The value every row has for ``key``, or None when they differ or lack it."""
    values = [r.get(key) for r in rows]
    return values[0] if values and all(v == values[0] for v in values) else None


class FolderGenerator(Generator):
    """Serves the image whose manifest row matches each requested (prompt, seed)."""

    family = "folder"

    def __init__(self, path: str | Path, name: str | None = None):
        self.root = Path(path)
        manifest = self.root / MANIFEST_NAME
        if not manifest.is_file():
            raise UserError(
                f"folder generator {self.root}: no {MANIFEST_NAME}; write one JSON row per image with "
                "'prompt', 'seed' and 'file' (python -m evalkit generate writes this layout)"
            )
        read = read_manifest(manifest)
        self.rows = [r for r in read.rows if _row_prompt(r) is not None and isinstance(r.get("file"), str)]
        if not self.rows:
            raise UserError(f"{manifest} has no rows with a prompt and a file")
        self.name = name or f"folder:{self.root}"
        self.source_generator = _common(self.rows, "generator")
        self.source_family = _common(self.rows, "family")
        self._index: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        for r in self.rows:
            seed = r.get("seed")
            self._index.setdefault((_row_prompt(r), int(seed) if seed is not None else None), []).append(r)

    def default_params(self) -> dict[str, Any]:
        params = _common(self.rows, "params")
        return dict(params) if isinstance(params, dict) else {}

    def resolve_params(self, **params: Any) -> dict[str, Any]:
        return {**self.default_params(), **normalize_params(params)}

    def takes(self, param: str) -> bool:
        return False  # the images exist already: params only pick among them, a shared setting makes none

    def nfe(self, **params: Any) -> float | None:
        value = _common(self.rows, "nfe")
        return value if isinstance(value, int | float) else None

    def _find(self, prompt: str, seed: int, wanted: dict[str, Any]) -> dict[str, Any] | None:
        for row in reversed(self._index.get((prompt, seed), [])):  # the newest row wins
            have = row.get("params") if isinstance(row.get("params"), dict) else {}
            if all(have.get(k, v) == v for k, v in wanted.items()):
                return row
        return None

    def _generate_batch(self, prompts: list[str], seeds: list[int], params: dict[str, Any]) -> list[Image.Image]:
        return self.generate(prompts, seeds, **params).images

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], batch_size: int | None = None, **params: Any
    ) -> GenerationOutput:
        """The stored images; raises naming every (prompt, seed) the folder lacks. ``params`` given
        explicitly must match the rows' ``params``; ``batch_size`` is irrelevant here."""
        from ..data.images import ImageSkip, load_image

        prompts, seeds = check_prompts_seeds(prompts, seeds)
        wanted = normalize_params(params)
        rows = [self._find(p, s, wanted) for p, s in zip(prompts, seeds)]
        missing = [(p, s) for (p, s), r in zip(zip(prompts, seeds), rows) if r is None]
        if missing:
            shown = "; ".join(f"{p!r} seed {s}" for p, s in missing[:_SHOW_MISSING])
            more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
            with_params = f" with params {wanted}" if wanted else ""
            raise UserError(
                f"{self.name} has no image for {len(missing)} of {len(prompts)} requested (prompt, seed) "
                f"pairs{with_params}: {shown}{more}. Generate them into that folder, e.g. "
                f"`python -m evalkit generate --out {self.root} ...`"
            )
        images = []
        for row in rows:
            try:
                images.append(load_image(self.root / row["file"]))
            except ImageSkip as e:
                raise UserError(f"{self.name}: image of {_row_prompt(row)!r} seed {row.get('seed')}: {e}") from None
        seconds = [float(r["seconds"]) if isinstance(r.get("seconds"), int | float) else 0.0 for r in rows]
        nfe = [r["nfe"] if isinstance(r.get("nfe"), int | float) else None for r in rows]
        return GenerationOutput(images, seconds, nfe)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "path": str(self.root),
            "images": len(self.rows),
            "source_generator": self.source_generator,
            "source_family": self.source_family,
        }
