"""LAION-format subsets: reference image sets and caption sources, loaded with ``datasets``.

One loader for the layouts such data comes in, each normalized to a :class:`LaionRecord`:

- ``parquet``: LAION / img2dataset metadata (``URL``/``url``, ``TEXT``/``caption``,
  ``WIDTH``/``width``, ``HEIGHT``/``height``, ``similarity``, ``punsafe``, ``pwatermark``,
  ``AESTHETIC_SCORE``), image bytes optional in an ``image``/``jpg``/``png`` column (binary
  or an HF Image struct). A shapes-world subset folder (``shapes.parquet`` + ``shards/``) is one.
- ``webdataset``: img2dataset shards, ``*.tar`` holding ``KEY.jpg|png + KEY.txt + KEY.json``.
- ``manifest``: a folder with ``manifest.jsonl`` rows naming a ``file`` and its ``prompt``/``caption``
  (the ImageSet layout generators write).
- ``imagefolder``: a folder of images, captioned by a ``.txt`` beside each image, by an HF
  ``metadata.jsonl``/``.csv`` (``file_name`` + ``text``), or not at all.

A folder path is recognised by what it holds, in that order of preference. ``datasets`` does
the reading and keeps an Arrow copy under ``cache_dir`` (default :func:`default_cache_dir`),
so a second load of the same files is instant; it never touches the network here
(``evalkit`` sets ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import random
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import UserError, first_line
from ..utils import progress_enabled
from .images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageSkip, SkipCounter, load_image

LAYOUTS: tuple[str, ...] = ("parquet", "webdataset", "manifest", "imagefolder")
MANIFEST_NAME = "manifest.jsonl"

# Normalized field -> column names it is read from (case-insensitive, first match wins).
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "key": ("key", "__key__", "sample_id", "id"),
    "caption": ("caption", "text", "txt", "prompt"),
    "url": ("url",),
    "width": ("width",),
    "height": ("height",),
    "similarity": ("similarity",),
    "punsafe": ("punsafe",),
    "pwatermark": ("pwatermark",),
    "aesthetic": ("aesthetic_score", "aesthetic"),
}
IMAGE_COLUMNS: tuple[str, ...] = ("image", "jpg", "jpeg", "png", "webp", "img")
FILE_COLUMNS: tuple[str, ...] = ("file", "file_name", "filename", "path", "image")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Shapes-world columns stored as JSON text in parquet and as objects in shards: records hold dicts.
JSON_TEXT_COLUMNS: tuple[str, ...] = ("spec", "scene")
_INT_FIELDS = ("width", "height")
_FLOAT_FIELDS = ("similarity", "punsafe", "pwatermark", "aesthetic")


@dataclass(frozen=True)
class LaionRecord:
    """One row of a subset. ``image`` holds the encoded bytes when the layout has them (or
    after a folder image was read); ``path`` names the image file of folder layouts; ``extra``
    keeps every other column (the shapes world's ``spec``, ``scene``, ``category``, ...)."""

    key: str
    caption: str | None = None
    url: str | None = None
    width: int | None = None
    height: int | None = None
    similarity: float | None = None
    punsafe: float | None = None
    pwatermark: float | None = None
    aesthetic: float | None = None
    image: bytes | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    """Where ``datasets`` keeps Arrow copies of loaded files: ``$EVALKIT_CACHE/datasets``,
    else ``~/.cache/evalkit/datasets`` (one folder to delete, apart from HF's own cache)."""
    root = os.environ.get("EVALKIT_CACHE")
    return Path(root).expanduser() / "datasets" if root else Path.home() / ".cache" / "evalkit" / "datasets"


def sample_indices(total: int, n: int | None, seed: int = 0) -> list[int]:
    """``n`` of ``range(total)`` chosen by ``seed``, ascending. They are a prefix of one seeded
    permutation, so a smaller n gives a subset of a larger one. ``n=None`` or ``n >= total``: all.

    >>> sample_indices(10, 3, seed=0), sample_indices(10, 5, seed=0)
    ([1, 7, 8], [1, 3, 5, 7, 8])
    """
    if n is None or n >= total:
        return list(range(total))
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return sorted(order[:n])


# ---------------------------------------------------------------------------- layout detection


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def detect_layout(path: str | Path) -> tuple[str, list[Path]]:
    """(layout, data files) for a file, a folder or a glob pattern."""
    text = str(path)
    if any(c in text for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
        if not files:
            raise UserError(f"no files match {text}")
        kinds = {_file_layout(f) for f in files}
        if len(kinds) != 1:
            raise UserError(f"{text} matches files of several kinds; use a pattern for one kind (*.parquet or *.tar)")
        return kinds.pop(), files
    path = Path(path).expanduser()
    if path.is_file():
        return _file_layout(path), [path]
    if not path.is_dir():
        raise UserError(f"no such file or folder: {path}")
    if parquets := sorted(path.glob("*.parquet")):
        return "parquet", parquets
    if (path / MANIFEST_NAME).is_file():
        return "manifest", [path / MANIFEST_NAME]
    if tars := sorted(path.glob("*.tar")) or sorted(path.glob("shards/*.tar")):
        return "webdataset", tars
    if images := _images_under(path):
        return "imagefolder", images
    raise UserError(
        f"{path} holds no *.parquet, {MANIFEST_NAME}, *.tar shards or images; "
        "expected a LAION-format subset (parquet or img2dataset shards) or an image folder"
    )


def _file_layout(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".tar":
        return "webdataset"
    if suffix == ".jsonl":
        return "manifest"
    raise UserError(f"{path}: expected a .parquet file, a .tar shard, a {MANIFEST_NAME} or a folder")


# ---------------------------------------------------------------------------- loading with datasets


@contextlib.contextmanager
def _datasets_progress():
    """datasets' own bars follow EVALKIT_PROGRESS."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not progress_enabled():
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _load(builder: str, what: str, cache_dir: Path, **kw: Any):
    import datasets

    with _datasets_progress():
        try:
            return datasets.load_dataset(builder, split="train", cache_dir=str(cache_dir), **kw)
        except Exception as e:  # datasets wraps reader errors in several types; the cause names the file
            cause = e.__cause__ or e
            raise UserError(f"could not read {what} as {builder} data: {first_line(cause)}") from e


def _webdataset_features(tars: list[Path]):
    """Explicit features for img2dataset shards. datasets infers them from the first five
    samples otherwise, and a JSON field that is null there (img2dataset's ``error_message``, the
    shapes world's ``relation``) then fails every later row; ``Json()`` keeps each object as is."""
    import datasets
    from datasets.packaged_modules.webdataset.webdataset import DECODERS, IMAGE_EXTENSIONS, base_plus_ext

    fields: dict[str, None] = {}
    for tar_path in tars:
        try:
            with tarfile.open(tar_path) as tar:
                first_key = None
                for member in tar:
                    if not member.isfile():
                        continue
                    key, name = base_plus_ext(member.name)
                    if key is None:
                        continue
                    if first_key not in (None, key):
                        break
                    first_key = key
                    fields[name] = None
        except (tarfile.TarError, OSError) as e:
            raise UserError(f"{tar_path}: not a readable tar shard ({e})") from None
    if not fields:
        raise UserError(f"no samples in {tars[0]}{' ...' if len(tars) > 1 else ''}: the shards are empty")
    feats: dict[str, Any] = {"__key__": datasets.Value("string"), "__url__": datasets.Value("string")}
    for name in fields:
        ext = name.rsplit(".", 1)[-1].lower()
        if ext in IMAGE_EXTENSIONS:
            feats[name] = datasets.Image(decode=False)
        elif ext in ("txt", "text", "transcript"):
            feats[name] = datasets.Value("string")
        elif ext in ("cls", "cls2", "index", "inx", "id"):
            feats[name] = datasets.Value("int64")
        elif ext in DECODERS:
            feats[name] = datasets.Json()
        else:
            feats[name] = datasets.Value("binary")
    return datasets.Features(feats)


def json_objects(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of JSON Lines ``text`` read from ``path``. Splits on
    newlines only: ``str.splitlines`` would also split at U+2028, which JSON strings may hold."""
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line_no}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        yield line_no, row


def _manifest_features(files: list[Path]):
    """Explicit features for ``manifest.jsonl`` rows: arrow's JSON reader turns a mixed-type list such as
    the shapes world's ``relation: [0, "above", 1]`` into strings; ``Json()`` keeps nested values as they
    are. Scalar columns keep their one type; a column whose type varies across rows becomes ``Json()``."""
    import datasets

    scalar = {str: "string", bool: "bool", int: "int64", float: "float64"}
    kinds: dict[str, set[str]] = {}
    for f in files:
        for _, row in json_objects(f, f.read_text(encoding="utf-8-sig")):
            for k, v in row.items():
                kinds.setdefault(k, set()).add("null" if v is None else scalar.get(type(v), "json"))
    feats: dict[str, Any] = {}
    for k, seen in kinds.items():
        seen.discard("null")
        if seen == {"int64", "float64"}:
            seen = {"float64"}
        feats[k] = datasets.Value(seen.pop()) if len(seen) == 1 and "json" not in seen else datasets.Json()
    return datasets.Features(feats)


def _load_dataset(layout: str, path: Path, files: list[Path], cache_dir: Path):
    import datasets

    what = str(files[0]) + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")
    data_files = [str(f) for f in files]
    if layout == "parquet":
        ds = _load("parquet", what, cache_dir, data_files=data_files)
    elif layout == "webdataset":
        ds = _load(
            "webdataset", what, cache_dir, data_files={"train": data_files}, features=_webdataset_features(files)
        )
    elif layout == "manifest":
        if not files[0].read_text(encoding="utf-8").strip():
            raise UserError(f"{files[0]} is empty: no images listed")
        ds = _load("json", what, cache_dir, data_files=data_files, features=_manifest_features(files))
    else:
        # data_dir (not the file list) so an HF metadata.jsonl/csv beside the images is read too
        ds = _load("imagefolder", str(path), cache_dir, data_dir=str(path), drop_labels=True)
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))  # bytes reach load_image undecoded
    return ds


# ---------------------------------------------------------------------------- rows to records


def _lower_map(names) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        out.setdefault(name.lower(), name)
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _as_int(v: Any) -> int | None:
    try:
        return None if _missing(v) else int(v)
    except (TypeError, ValueError):
        return None


def _as_float(v: Any) -> float | None:
    try:
        f = None if v is None else float(v)
    except (TypeError, ValueError):
        return None
    return None if f is None or math.isnan(f) else f


def _image_value(v: Any) -> tuple[bytes | None, str | None]:
    """(bytes, path) from a binary cell, an HF Image struct ``{bytes, path}`` or a path string."""
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v), None
    if isinstance(v, dict):
        data = v.get("bytes")
        return (bytes(data), None) if data else (None, v.get("path") or None)
    if isinstance(v, str) and v:
        return None, v
    return None, None


def _normalize(flat: dict[str, Any], index: int) -> dict[str, Any]:
    """Pick the normalized fields out of a flat row; everything else (not ``__dunder__``) is extra."""
    lower = _lower_map(flat)
    out: dict[str, Any] = {}
    used: set[str] = set()
    for name, aliases in FIELD_ALIASES.items():
        for alias in aliases:
            col = lower.get(alias)
            if col is not None and not _missing(flat[col]):
                out[name] = flat[col]
                used.add(col)
                break
        else:
            used.update(lower[a] for a in aliases if a in lower)
    out["key"] = str(out["key"]) if "key" in out else f"{index:09d}"
    caption = out.get("caption")
    out["caption"] = caption if isinstance(caption, str) else None
    out["url"] = out["url"] if isinstance(out.get("url"), str) else None
    for name in _INT_FIELDS:
        out[name] = _as_int(out.get(name))
    for name in _FLOAT_FIELDS:
        out[name] = _as_float(out.get(name))
    extra = {}
    for col, value in flat.items():
        if col in used or col.startswith("__"):
            continue
        if col in JSON_TEXT_COLUMNS and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        extra[col] = value
    out["extra"] = extra
    return out


class LaionSubset:
    """A filtered, sampled view of a LAION-format data set; build it with :func:`load_subset`.

    ``len`` is the number of selected rows; iterating yields :class:`LaionRecord` with image
    bytes; :meth:`records` ``(with_images=False)`` skips reading them; :meth:`iter_images`
    decodes with :func:`~evalkit.data.images.load_image` and counts skips in ``self.skipped``.
    ``filtered`` counts rows each metadata filter removed; ``n_rows`` is the size before filtering.
    """

    def __init__(self, path: Path, layout: str, files: list[Path], ds, *, min_side=None, max_aspect=None):
        self.path, self.layout, self.files = path, layout, files
        self.root = path if layout == "imagefolder" else files[0].parent  # relative image paths start here
        self._ds = ds
        self.n_rows = len(ds)
        self.min_side, self.max_aspect = min_side, max_aspect
        self.filtered: Counter[str] = Counter()
        self.skipped = SkipCounter()
        import datasets

        self._json_cols = [c for c, f in ds.features.items() if isinstance(f, datasets.Json)]
        lower = _lower_map(ds.column_names)
        if layout == "manifest":
            file_cols = [lower[c] for c in FILE_COLUMNS if c in lower]
            self._image_cols = file_cols[:1]
        elif layout == "webdataset":
            self._image_cols = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
        else:
            self._image_cols = [lower[c] for c in IMAGE_COLUMNS if c in lower]
        self._indices: list[int] = list(range(self.n_rows))
        self._meta: list[LaionRecord] | None = None

    # -- introspection
    @property
    def columns(self) -> list[str]:
        return list(self._ds.column_names)

    @property
    def has_images(self) -> bool:
        return bool(self._image_cols)

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return f"LaionSubset({str(self.path)!r}, layout={self.layout!r}, n={len(self)} of {self.n_rows})"

    # -- rows
    def _flat(self, row: dict[str, Any]) -> tuple[dict[str, Any], bytes | None, str | None]:
        """Layout-specific row -> (flat metadata, image bytes, image path)."""
        data, path = None, None
        for col in self._image_cols:
            if col in row:
                data, path = _image_value(row.pop(col))
                if data or path:
                    break
        for col in self._image_cols:
            row.pop(col, None)
        if self.layout == "webdataset":
            meta = row.pop("json", None)
            flat = dict(meta) if isinstance(meta, dict) else {}
            flat.update({k: v for k, v in row.items() if k != "txt"})
            if isinstance(row.get("txt"), str):
                flat = {k: v for k, v in flat.items() if k.lower() not in FIELD_ALIASES["caption"]}
                flat["caption"] = row["txt"]
        else:
            flat = row
        if path is not None:
            path = str(Path(path) if os.path.isabs(path) else self.root / path)
        if self.layout == "imagefolder" and path:
            rel = Path(path).relative_to(self.root) if Path(path).is_relative_to(self.root) else Path(path)
            flat.setdefault("key", rel.with_suffix("").as_posix())
            txt = Path(path).with_suffix(".txt")
            if not any(k.lower() in FIELD_ALIASES["caption"] for k in flat) and txt.is_file():
                flat["caption"] = txt.read_text(encoding="utf-8", errors="replace").strip()
        elif self.layout == "manifest" and path:
            flat.setdefault("key", Path(path).with_suffix("").name)
        return flat, data, path

    def _iter_rows(self, indices: list[int], with_images: bool, batch_size: int = 256) -> Iterator[LaionRecord]:
        ds = self._ds
        if not with_images and self.layout != "imagefolder" and self._image_cols:
            keep = [c for c in ds.column_names if c not in self._image_cols or self.layout == "manifest"]
            ds = ds.select_columns(keep)
        if indices != list(range(self.n_rows)):
            ds = ds.select(indices, keep_in_memory=True)
        pos = 0
        # Arrow rows, not datasets' decoded ones: Json cells are parsed here with the stdlib
        # (datasets' ujson parse is off by an ulp: 0.3 -> 0.30000000000000004).
        for table in ds.with_format("arrow").iter(batch_size=batch_size):
            for row in table.to_pylist():
                for col in self._json_cols:
                    if isinstance(row.get(col), str):
                        row[col] = json.loads(row[col])
                flat, data, path = self._flat(row)
                if with_images and data is None and path is not None:
                    with contextlib.suppress(OSError):
                        data = Path(path).read_bytes()
                yield LaionRecord(**_normalize(flat, indices[pos]), image=data if with_images else None, path=path)
                pos += 1

    def _metadata(self) -> list[LaionRecord]:
        if self._meta is None:
            self._meta = list(self._iter_rows(self._indices, with_images=False))
        return self._meta

    def records(self, with_images: bool = True) -> Iterator[LaionRecord]:
        """Selected rows in order; ``with_images=False`` leaves ``image`` None and reads no bytes."""
        if not with_images:
            yield from self._metadata()
        else:
            yield from self._iter_rows(self._indices, with_images=True)

    def __iter__(self) -> Iterator[LaionRecord]:
        return self.records(with_images=True)

    def __getitem__(self, i: int) -> LaionRecord:
        return next(self._iter_rows([self._indices[i]], with_images=True))

    def captions(self) -> list[str]:
        """Non-empty captions of the selected rows, in order (empty ones are left out)."""
        return [r.caption.strip() for r in self._metadata() if r.caption and r.caption.strip()]

    def iter_images(
        self, skipped: SkipCounter | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Iterator[tuple[LaionRecord, Image.Image]]:
        """(record, RGB image) for each row whose image decodes; the rest are counted by reason in
        ``skipped`` (default: a fresh ``self.skipped``). Size filters apply to the decoded image
        when the row had no width/height metadata."""
        if not self.has_images:
            raise UserError(
                f"{self.path} has no images (columns: {', '.join(self.columns)}); download them with "
                "img2dataset, or use it as a prompt set (laion:PATH)"
            )
        if skipped is None:
            skipped = self.skipped = SkipCounter()
        min_side = self.min_side if self.min_side is not None else DEFAULT_MIN_SIDE
        for rec in self.records(with_images=True):
            name = rec.path or rec.key
            sized = rec.width is not None and rec.height is not None
            if rec.image is None:
                skipped.add("missing", name)
                continue
            try:
                # Rows with size metadata passed min_side on it; their stored image may be a resized copy.
                side = min(min_side, DEFAULT_MIN_SIDE) if sized else min_side
                im = load_image(rec.image, min_side=side, max_pixels=max_pixels, name=name)
            except ImageSkip as e:
                skipped.add(e)
                continue
            if not sized and self.max_aspect and max(im.size) / min(im.size) > self.max_aspect:
                skipped.add("bad_aspect", name)
                continue
            yield rec, im

    # -- filtering
    def _apply_filters(self, *, min_similarity=None, max_punsafe=None, n=None, seed=0) -> None:
        checks = {"min_side": self.min_side, "max_aspect": self.max_aspect}
        checks |= {"min_similarity": min_similarity, "max_punsafe": max_punsafe}
        if any(v is not None for v in checks.values()):
            meta = self._metadata()
            for name, column in (("min_similarity", "similarity"), ("max_punsafe", "punsafe")):
                if checks[name] is not None and all(getattr(r, column) is None for r in meta):
                    raise UserError(
                        f"{name} needs a {column} column, and {self.path} has none (columns: {', '.join(self.columns)})"
                    )
            kept = []
            for idx, rec in zip(self._indices, meta):
                reason = _rejects(rec, **checks)
                if reason:
                    self.filtered[reason] += 1
                else:
                    kept.append((idx, rec))
            self._indices = [i for i, _ in kept]
            self._meta = [r for _, r in kept]
        if n is not None:
            chosen = sample_indices(len(self._indices), n, seed)
            self._indices = [self._indices[j] for j in chosen]
            if self._meta is not None:
                self._meta = [self._meta[j] for j in chosen]


def _rejects(rec: LaionRecord, *, min_side, max_aspect, min_similarity, max_punsafe) -> str | None:
    """The first filter ``rec`` fails, or None. Missing width/height defer size checks to decoding;
    a missing similarity or punsafe value fails its filter (it cannot be vouched for)."""
    w, h = rec.width, rec.height
    if min_side is not None and w is not None and h is not None and min(w, h) < min_side:
        return "min_side"
    if max_aspect is not None and w is not None and h is not None:
        if min(w, h) <= 0 or max(w, h) / min(w, h) > max_aspect:
            return "max_aspect"
    if min_similarity is not None and (rec.similarity is None or rec.similarity < min_similarity):
        return "min_similarity"
    if max_punsafe is not None and (rec.punsafe is None or rec.punsafe > max_punsafe):
        return "max_punsafe"
    return None


def load_subset(
    path: str | Path,
    *,
    min_side: int | None = None,
    max_aspect: float | None = None,
    min_similarity: float | None = None,
    max_punsafe: float | None = None,
    n: int | None = None,
    seed: int = 0,
    layout: str | None = None,
    cache_dir: str | Path | None = None,
) -> LaionSubset:
    """Load a LAION-format subset, apply the metadata filters, then keep ``n`` rows chosen by ``seed``.

    Args:
        path: a ``.parquet`` file, a ``.tar`` shard, a ``manifest.jsonl``, a folder (its layout is
            detected) or a glob such as ``"shards/*.tar"``.
        min_side, max_aspect: on the ``width``/``height`` metadata (LAION's are the original
            size); rows without it are checked after decoding, in :meth:`LaionSubset.iter_images`.
        min_similarity, max_punsafe: on the ``similarity``/``punsafe`` columns; a row missing the
            value is dropped, a subset missing the column is an error.
        n, seed: a deterministic sample of the filtered rows, kept in file order; a smaller n is a
            subset of a larger one. Fewer rows than n: all are kept.
        layout: force one of :data:`LAYOUTS` instead of detecting it.
        cache_dir: where ``datasets`` keeps its Arrow copy (default :func:`default_cache_dir`).
    """
    for name, value, low in (("min_side", min_side, 1), ("max_aspect", max_aspect, 1), ("n", n, 0)):
        if value is not None and value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    detected, files = detect_layout(path)
    if layout is not None and layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    layout = layout or detected
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if layout == "imagefolder" and not Path(path).is_dir():
        raise UserError(f"layout imagefolder needs a folder, got {path}")
    ds = _load_dataset(layout, Path(path), files, cache)
    subset = LaionSubset(Path(path), layout, files, ds, min_side=min_side, max_aspect=max_aspect)
    subset._apply_filters(min_similarity=min_similarity, max_punsafe=max_punsafe, n=n, seed=seed)
    return subset
