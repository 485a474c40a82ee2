"""Prompt sets: what generators are asked to draw, with categories for per-category scores.

Every source becomes a :class:`PromptSet` of :class:`Prompt` (stable id, text, category,
source metadata, and for the shapes world the ``spec`` the oracle checks against).
:func:`load_prompts` takes one spec string, the form recipes and the CLI use::

    shapes:N[:seed][:split][:cat1,cat2]    the shapes world (split train|test|compositional, default test)
    parti:PATH|default                     PartiPrompts TSV (Category, Challenge, Note kept)
    geneval:PATH|default                   GenEval evaluation_metadata.jsonl (tag -> category)
    compbench:PATH|DIR|default|cat1,cat2   T2I-CompBench *_val.txt (category from the file name)
    laion:PATH                             captions of a LAION-format subset (see evalkit.data.laion)
    txt:PATH  jsonl:PATH  tsv:PATH  csv:PATH, or a bare path (kind from the extension)

Empty prompts are skipped and counted in ``PromptSet.skipped``, never fatal.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .images import SkipCounter
from .laion import json_objects, load_subset, sample_indices

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "recipes" / "prompts"
PARTI_DEFAULT = PROMPTS_DIR / "partiprompts" / "PartiPrompts.tsv"
GENEVAL_DEFAULT = PROMPTS_DIR / "geneval" / "evaluation_metadata.jsonl"
COMPBENCH_DEFAULT = PROMPTS_DIR / "t2i_compbench"
COMPBENCH_CATEGORIES: tuple[str, ...] = (
    "color", "shape", "texture", "spatial", "non_spatial", "complex", "numeracy", "3d_spatial",
)  # fmt: skip
UNCATEGORIZED = "uncategorized"

SPEC_FORMS = (
    "shapes:N[:seed][:split][:cat1,cat2], parti:PATH|default, geneval:PATH|default, "
    "compbench:PATH|DIR|default|cat1,cat2, laion:PATH, txt:PATH, jsonl:PATH, tsv:PATH, csv:PATH, "
    "or a path to a .txt/.jsonl/.tsv/.csv/.parquet/.tar file or a folder"
)

_TEXT_KEYS = ("prompt", "prompts", "text", "caption")
_CATEGORY_KEYS = ("category", "tag")
_ID_KEYS = ("id", "prompt_id", "key")


@dataclass(frozen=True)
class Prompt:
    """One prompt. ``id`` is stable across loads (source + position in the file); ``meta`` keeps
    the source's other fields (Parti ``challenge``, GenEval ``include``/``exclude``, ...)."""

    id: str
    text: str
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prompt:
        return cls(d["id"], d["text"], d.get("category"), dict(d.get("meta") or {}), d.get("spec"))


@dataclass
class PromptSet:
    """A named, ordered list of prompts; ``skipped`` counts source rows that held no prompt."""

    name: str
    prompts: list[Prompt]
    skipped: SkipCounter = field(default_factory=SkipCounter)

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i]

    def __repr__(self) -> str:
        return f"PromptSet({self.name!r}, n={len(self)}, categories={len(self.categories())})"

    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    def categories(self) -> list[str]:
        return sorted({p.category for p in self.prompts if p.category})

    def by_category(self) -> dict[str, list[Prompt]]:
        """Prompts grouped by category (sorted; prompts without one under ``"uncategorized"``)."""
        groups: dict[str, list[Prompt]] = {}
        for p in self.prompts:
            groups.setdefault(p.category or UNCATEGORIZED, []).append(p)
        return dict(sorted(groups.items()))

    def sample(self, n: int, seed: int = 0) -> PromptSet:
        """``n`` prompts chosen by ``seed``, in their original order; a smaller n gives a subset of
        a larger one (:func:`~evalkit.data.laion.sample_indices`). ``n >= len``: all of them."""
        if n < 0:
            raise UserError(f"n must be at least 0, got {n}")
        return PromptSet(self.name, [self.prompts[i] for i in sample_indices(len(self), n, seed)], self.skipped)

    def filter(self, categories: Iterable[str]) -> PromptSet:
        wanted = set(categories)
        if unknown := wanted - set(self.categories()):
            raise UserError(
                f"{self.name} has no categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(sorted(unknown))}; "
                f"it has {', '.join(self.categories()) or 'none'}"
            )
        return PromptSet(self.name, [p for p in self.prompts if p.category in wanted], self.skipped)


def _build(name: str, rows: Iterable[tuple[str, Any, str | None, dict[str, Any], dict | None]]) -> PromptSet:
    """Rows of (id, text, category, meta, spec) to a set; empty texts are counted, ids must be unique."""
    prompts, skipped, seen = [], SkipCounter(), set()
    for pid, text, category, meta, spec in rows:
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            skipped.add("empty", pid)
            continue
        if pid in seen:
            raise UserError(f"{name}: prompt id {pid!r} appears twice; ids must be unique")
        seen.add(pid)
        category = (str(category).strip() or None) if category is not None else None
        prompts.append(Prompt(pid, text, category, {k: v for k, v in meta.items() if v not in (None, "")}, spec))
    return PromptSet(name, prompts, skipped)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"no such prompt file: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:  # universal newlines: CRLF files too
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _lines(path: Path) -> list[str]:
    """Lines split on newlines only (``str.splitlines`` would also split at U+2028 and friends,
    which JSON strings and prompts may hold); no empty last line for a final newline."""
    lines = _read_text(path).split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    lower = {k.lower(): k for k in row}
    for k in keys:
        if k in lower:
            return lower[k], row[lower[k]]
    return None, None


# ---------------------------------------------------------------------------- loaders, one per source


def shapes_prompts(
    n: int, seed: int = 0, split: str = "test", categories: list[str] | dict[str, float] | None = None
) -> PromptSet:
    """``n`` shapes-world captions with their oracle specs (``Prompt.spec`` is ``PromptSpec.to_dict()``).
    Default split ``test``: evaluation prompts are not the captions generators trained on."""
    from ..shapes.world import sample

    try:
        samples = sample(n, seed=seed, split=split, categories=categories)
    except ValueError as e:
        raise UserError(str(e)) from None
    rows = ((s.key, s.caption, s.spec.category, {"split": s.split}, s.spec.to_dict()) for s in samples)
    return _build(f"shapes-{split}-s{seed}", rows)


def text_prompts(path: str | Path, name: str | None = None, category: str | None = None) -> PromptSet:
    """One prompt per line (CRLF or LF); blank lines are counted as skipped."""
    path = Path(path)
    name = name or path.stem
    lines = _lines(path)
    return _build(name, ((f"{name}-{i:05d}", line, category, {}, None) for i, line in enumerate(lines)))


def table_prompts(path: str | Path, name: str | None = None, delimiter: str | None = None) -> PromptSet:
    """A TSV/CSV with a header: a ``Prompt``/``text`` column, optional ``Category``; the other columns
    go to ``meta`` under lower-case names (PartiPrompts' Challenge and Note, DrawBench-style CSVs)."""
    path = Path(path)
    name = name or path.stem
    delimiter = delimiter or ("," if path.suffix.lower() == ".csv" else "\t")
    # TSV has no quoting: Parti prompts contain literal quotes.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(io.StringIO(_read_text(path)), delimiter=delimiter, quoting=quoting)
    header = reader.fieldnames or []
    text_col, _ = _pick(dict.fromkeys(header), _TEXT_KEYS)
    if text_col is None:
        raise UserError(
            f"{path}: no prompt column; expected one of {', '.join(_TEXT_KEYS)} in the header, got {header}"
        )
    cat_col, _ = _pick(dict.fromkeys(header), _CATEGORY_KEYS)

    def rows():
        for i, row in enumerate(reader):
            meta = {k.lower(): v for k, v in row.items() if k not in (text_col, cat_col) and isinstance(k, str)}
            yield f"{name}-{i:05d}", row.get(text_col), row.get(cat_col) if cat_col else None, meta, None

    return _build(name, rows())


def jsonl_prompts(path: str | Path, name: str | None = None) -> PromptSet:
    """JSON lines with ``prompt``/``text``/``caption``, optional ``category``/``tag``, ``id`` and ``spec``;
    other fields go to ``meta``. GenEval's ``evaluation_metadata.jsonl`` is this format."""
    path = Path(path)
    name = name or path.stem

    def rows():
        for line_no, row in json_objects(path, _read_text(path)):
            i = line_no - 1
            text_key, text = _pick(row, _TEXT_KEYS)
            cat_key, category = _pick(row, _CATEGORY_KEYS)
            id_key, pid = _pick(row, _ID_KEYS)
            spec = row.get("spec") if isinstance(row.get("spec"), dict) else None
            meta = {k: v for k, v in row.items() if k not in (text_key, cat_key, id_key, "spec")}
            yield (str(pid) if pid is not None else f"{name}-{i:05d}"), text, category, meta, spec

    return _build(name, rows())


def parti_prompts(path: str | Path | None = None) -> PromptSet:
    """PartiPrompts (1,632 prompts, 12 categories; ``meta['challenge']`` is one of 11 challenges)."""
    return table_prompts(path or PARTI_DEFAULT, name="parti", delimiter="\t")


def geneval_prompts(path: str | Path | None = None) -> PromptSet:
    """GenEval (553 prompts; category = tag, ``meta['include']``/``['exclude']`` = detector expectations)."""
    return jsonl_prompts(path or GENEVAL_DEFAULT, name="geneval")


def compbench_prompts(path: str | Path | None = None, categories: Iterable[str] | None = None) -> PromptSet:
    """T2I-CompBench validation prompts from one ``<category>_val.txt`` or a folder of them."""
    path = Path(path) if path is not None else COMPBENCH_DEFAULT
    if path.is_dir():
        files = {f.name.removesuffix("_val.txt"): f for f in sorted(path.glob("*_val.txt"))}
        if not files:
            raise UserError(f"{path} holds no T2I-CompBench *_val.txt files")
    else:
        files = {path.name.removesuffix("_val.txt").removesuffix(".txt"): path}
    if categories is not None:
        wanted = list(categories)
        if unknown := [c for c in wanted if c not in files]:
            raise UserError(f"no T2I-CompBench category {', '.join(unknown)} in {path}; have {', '.join(files)}")
        files = {c: files[c] for c in wanted}
    prompts, skipped = [], SkipCounter()
    for category, f in files.items():
        part = text_prompts(f, name=f"compbench-{category}", category=category)
        prompts += part.prompts
        skipped.update(part.skipped)
    return PromptSet("compbench" if len(files) > 1 else f"compbench-{next(iter(files))}", prompts, skipped)


def laion_prompts(path: str | Path, *, n: int | None = None, seed: int = 0, **filters: Any) -> PromptSet:
    """Captions of the rows ``load_subset(path, n=n, seed=seed, **filters)`` selects (the same rows as
    the reference images), minus empty ones. A shapes-world subset keeps its specs and categories."""
    subset = load_subset(path, n=n, seed=seed, **filters)

    def rows():
        for r in subset.records(with_images=False):
            spec = r.extra.get("spec") if isinstance(r.extra.get("spec"), dict) else None
            category = r.extra.get("category") if isinstance(r.extra.get("category"), str) else None
            meta = {"url": r.url, "similarity": r.similarity}
            meta |= {k: v for k, v in r.extra.items() if k not in ("spec", "scene", "category")}
            yield r.key, r.caption, category, {k: v for k, v in meta.items() if isinstance(v, str | int | float)}, spec

    return _build(f"laion-{Path(path).stem or Path(path).name}", rows())


# ---------------------------------------------------------------------------- one entry point


def _parse_shapes(rest: str) -> PromptSet:
    from ..shapes.world import CATEGORIES, SPLITS

    parts = [p for p in rest.split(":") if p]
    if not parts or not parts[0].isdigit():
        raise UserError(f"shapes prompt set needs a count: shapes:N[:seed][:split][:cat1,cat2], got shapes:{rest}")
    n, seed, split, categories = int(parts[0]), 0, "test", None
    for part in parts[1:]:
        if part.lstrip("-").isdigit():
            seed = int(part)
        elif part in SPLITS:
            split = part
        elif all(c in CATEGORIES for c in part.split(",")):
            categories = part.split(",")
        else:
            raise UserError(
                f"shapes:{rest}: {part!r} is not a seed, a split ({', '.join(SPLITS)}) "
                f"or categories ({', '.join(CATEGORIES)})"
            )
    return shapes_prompts(n, seed=seed, split=split, categories=categories)


def _compbench(rest: str) -> PromptSet:
    if rest in ("", "default"):
        return compbench_prompts()
    if Path(rest).exists():
        return compbench_prompts(rest)
    names = rest.split(",")
    if all(c in COMPBENCH_CATEGORIES for c in names):
        return compbench_prompts(categories=names)
    raise UserError(f"compbench:{rest}: no such file or folder, nor categories of {', '.join(COMPBENCH_CATEGORIES)}")


def _default_or(rest: str, default: Path) -> Path:
    return default if rest in ("", "default") else Path(rest)


_LOADERS = {
    "shapes": _parse_shapes,
    "parti": lambda rest: parti_prompts(_default_or(rest, PARTI_DEFAULT)),
    "geneval": lambda rest: geneval_prompts(_default_or(rest, GENEVAL_DEFAULT)),
    "compbench": _compbench,
    "txt": lambda rest: text_prompts(rest),
    "jsonl": lambda rest: jsonl_prompts(rest),
    "tsv": lambda rest: table_prompts(rest, delimiter="\t"),
    "csv": lambda rest: table_prompts(rest, delimiter=","),
}


_PATH_KINDS = {".txt": "txt", ".jsonl": "jsonl", ".tsv": "tsv", ".csv": "csv", ".parquet": "laion", ".tar": "laion"}


def _kind_of_path(spec: str) -> str:
    """The loader for a bare path: a folder of *_val.txt is T2I-CompBench, any other folder a LAION subset."""
    path = Path(spec).expanduser()
    if not path.exists() and not any(c in spec for c in "*?["):
        raise UserError(f"no prompt set {spec!r}: not a file or folder; expected {SPEC_FORMS}")
    if path.is_dir():
        return "compbench" if any(path.glob("*_val.txt")) else "laion"
    if kind := _PATH_KINDS.get(path.suffix.lower()):
        return kind
    raise UserError(f"{spec}: unknown prompt file type {path.suffix or '(none)'}; expected {SPEC_FORMS}")


def load_prompts(spec: str, *, n: int | None = None, seed: int = 0) -> PromptSet:
    """The prompt set a spec string names (module docstring); ``n``/``seed`` then sample it
    (for ``laion:`` they pick the subset rows, as :func:`~evalkit.data.laion.load_subset` does).

    >>> ps = load_prompts("shapes:20:0:test:counting")
    >>> len(ps), ps.categories(), ps[0].spec["category"]
    (20, ['counting'], 'counting')
    >>> len(load_prompts("parti:default")), len(load_prompts("compbench:color,shape"))
    (1632, 600)
    """
    spec = spec.strip()
    if not spec:
        raise UserError(f"empty prompt set; expected {SPEC_FORMS}")
    kind, sep, rest = spec.partition(":")
    kind = kind.lower()
    if not (sep and (kind in _LOADERS or kind == "laion")):
        if spec.lower() in ("parti", "geneval", "compbench"):
            kind, rest = spec.lower(), "default"
        else:
            kind, rest = _kind_of_path(spec), spec
    rest = rest.strip()
    if not rest and kind in ("laion", "txt", "jsonl", "tsv", "csv"):
        raise UserError(f"{kind}: needs a path, e.g. {kind}:data/prompts.{'parquet' if kind == 'laion' else kind}")
    if kind == "laion":
        return laion_prompts(rest, n=n, seed=seed)
    prompts = _LOADERS[kind](rest)
    return prompts.sample(n, seed) if n is not None else prompts
