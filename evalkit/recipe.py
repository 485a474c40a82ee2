"""Recipes: YAML files that say which generators, prompts, reference set and metrics to run.

Validated whole before anything runs (pydantic, unknown keys forbidden); every problem is one
line that names the field, and a misspelled key names the closest valid one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError
from .metric_names import RECIPE_METRICS as METRICS

GENERATOR_PREFIXES = ("zoo/", "zoo:", "dir:", "hf:", "folder:")


def slug(label: str) -> str:
    """A generator's folder name under the run's ``images/``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "generator"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneratorEntry(_Strict):
    spec: str = Field(description="zoo/NAME, dir:PATH, hf:REPO_ID or folder:PATH")
    name: str | None = Field(None, description="label on the leaderboard (default: the spec)")
    params: dict[str, Any] = Field(default_factory=dict, description="steps, guidance, size, ...")

    @field_validator("spec")
    @classmethod
    def _known_prefix(cls, v: str) -> str:
        if not v.startswith(GENERATOR_PREFIXES):
            raise ValueError(f"generator spec {v!r} must start with one of {', '.join(GENERATOR_PREFIXES)}")
        return v

    @property
    def label(self) -> str:
        return self.name or self.spec


class ReferenceEntry(_Strict):
    source: str = Field(description="shapes:N[:seed][:split], or a LAION subset (folder, parquet, shards)")
    n: int | None = Field(None, gt=1, description="use at most n images (seeded sample)")


class Recipe(_Strict):
    name: str
    prompts: str = Field(description="prompt set spec, e.g. shapes:200:0:test or parti:default")
    reference: ReferenceEntry | None = None
    generators: list[GeneratorEntry] = Field(min_length=1)
    metrics: list[str] = Field(default_factory=lambda: ["clip", "fid", "kid", "cmmd", "oracle", "speed"])
    extractors: list[str] = Field(default_factory=lambda: ["judge"])
    images_per_prompt: int = Field(1, ge=1)
    seed: int = 0
    batch_size: int = Field(16, ge=1)
    output_dir: str = "runs/{name}"
    db: str = "results.db"

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in METRICS:
                close = difflib.get_close_matches(m, METRICS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown metric {m!r}{hint}; valid: {', '.join(METRICS)}")
        return v

    @field_validator("generators")
    @classmethod
    def _unique_labels(cls, v: list[GeneratorEntry]) -> list[GeneratorEntry]:
        labels = [g.label for g in v]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"generator names must be unique; repeated: {', '.join(sorted(dup))} (set `name:`)")
        folders = [slug(x) for x in labels]
        if same := sorted({x for x, f in zip(labels, folders) if folders.count(f) > 1}):
            raise ValueError(
                f"generator names {', '.join(map(repr, same))} would share one images folder (set `name:`)"
            )
        return v

    @field_validator("output_dir")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        try:
            v.format(name="recipe")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"{v!r}: the only placeholder is {{name}} ({type(err).__name__}: {err})") from None
        return v

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    def content_hash(self) -> str:
        """Hash of what determines the figures (not where they are written)."""
        d = self.model_dump(exclude={"output_dir", "db"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at the location of an error (walks nested models)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        ann = model.model_fields[part].annotation
        inner = getattr(ann, "__args__", (ann,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), model)
    return list(model.model_fields)


def _one_line(err: ValidationError, path: Path) -> str:
    errors = err.errors()  # a misspelled required key is two errors: name the misspelling
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = tuple(e["loc"])
    where = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        valid = _fields(Recipe, loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
        return f"{path}: unknown key {where!r}{hint}"
    if e["type"] == "missing":
        return f"{path}: missing required key {where!r}"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{path}: {where}: {msg}"


def load_recipe(path: str | Path, check_files: bool = True) -> Recipe:
    """Parse and validate a recipe file; raises UserError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of recipe keys at the top level")
    if data.get("kind") == "validity":
        raise UserError(f"{path} is a validity recipe: run `python -m evalkit validate --recipe {path}`")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise UserError(_one_line(e, path)) from None
    if check_files:
        _check_paths(recipe, path)
    return recipe


def _check_paths(recipe: Recipe, path: Path) -> None:
    """Local files a recipe names must exist before anything runs."""
    for g in recipe.generators:
        for prefix in ("dir:", "folder:"):
            if g.spec.startswith(prefix) and not Path(g.spec[len(prefix) :]).exists():
                raise UserError(f"{path}: generator {g.label!r}: path not found: {g.spec[len(prefix) :]}")
    for key, spec in (("prompts", recipe.prompts), ("reference.source", recipe.reference and recipe.reference.source)):
        if not spec or spec.startswith("shapes:") or spec.endswith(":default"):
            continue
        local = spec.split(":", 1)[1] if ":" in spec and not Path(spec).exists() else spec
        if not Path(local).exists():
            raise UserError(f"{path}: {key} {spec!r}: file not found: {local}")
