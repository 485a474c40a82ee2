"""The validity protocol as data (``recipes/validity.yaml``): what ``python -m evalkit validate`` measures.

Every default lives here; the YAML file repeats them so a user can see and edit them, and CLI flags
override single fields. Validated whole before anything runs (unknown keys are an error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..disturb import DISTURBANCES, LEVELS
from ..errors import UserError

PARTS: tuple[str, ...] = ("ladders", "rank_agreement", "per_image", "efficiency", "blind_spots")
DISTRIBUTION_METRICS: tuple[str, ...] = ("fid", "kid", "cmmd", "pr", "dc")
DEFAULT_RECIPE = Path("recipes") / "validity.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_metrics(v: list[str], allowed: tuple[str, ...]) -> list[str]:
    bad = [m for m in v if m not in allowed]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; valid: {', '.join(allowed)}")
    return v


def parse_fake(kind: str) -> tuple[str, int] | None:
    """``"renders"`` → None (undisturbed renders); ``"gaussian_blur:1"`` → ("gaussian_blur", 1)."""
    if kind == "renders":
        return None
    name, _, level = kind.partition(":")
    if name not in LEVELS or name == "contamination" or not level.isdigit() or not 1 <= int(level) <= len(LEVELS[name]):
        per_image = [d for d in DISTURBANCES if d != "contamination"]
        raise ValueError(
            f"fake set {kind!r}: expected 'renders' or DISTURBANCE:LEVEL with one of {per_image}, level 1-4"
        )
    return name, int(level)


class Ladders(_Strict):
    metrics: list[str] = Field(default_factory=lambda: [*DISTRIBUTION_METRICS, "clip"])
    disturbances: list[str] = Field(default_factory=lambda: list(DISTURBANCES))

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        return _check_metrics(v, (*DISTRIBUTION_METRICS, "clip"))

    @field_validator("disturbances")
    @classmethod
    def _disturbances(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in DISTURBANCES]
        if bad:
            raise ValueError(f"unknown disturbance(s) {bad}; valid: {', '.join(DISTURBANCES)}")
        return v


class RankAgreement(_Strict):
    recipe: str = Field("recipes/steps-sweep.yaml", description="the sweep recipe file, or its name")
    n_boot: int = Field(2000, ge=10)


class PerImage(_Strict):
    sources: list[Literal["sweep", "probe"]] = Field(default_factory=lambda: ["sweep", "probe"])
    n_boot: int = Field(1000, ge=10)


class Efficiency(_Strict):
    sizes: list[int] = Field(default_factory=lambda: [100, 250, 500, 1000, 2000], min_length=1)
    seeds: int = Field(5, ge=1)
    pool_factor: float = Field(2.0, ge=1.0, description="pool of renders per side = pool_factor × the largest size")
    metrics: list[str] = Field(default_factory=lambda: list(DISTRIBUTION_METRICS))
    fakes: list[str] = Field(default_factory=lambda: ["renders", "gaussian_blur:1"], min_length=1)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(n < 10 for n in v):
            raise ValueError(f"sizes must be at least 10 each, got {v}")
        return sorted(set(v))

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        return _check_metrics(v, DISTRIBUTION_METRICS)

    @field_validator("fakes")
    @classmethod
    def _fakes(cls, v: list[str]) -> list[str]:
        for kind in v:
            parse_fake(kind)
        return v


class BlindSpots(_Strict):
    split: Literal["test", "compositional"] = "test"
    n_boot: int = Field(1000, ge=10)


class ValidityRecipe(_Strict):
    """What ``validate`` measures; see ``recipes/validity.yaml`` for each field's meaning."""

    kind: Literal["validity"] = "validity"
    extractor: str = "judge"
    compare: list[str] = Field(default_factory=list, description="more extractors for per-image and blind spots")
    n: int = Field(1000, ge=8, description="images per set: ladders, per-image probe, blind-spot pairs")
    seed: int = Field(0, ge=0, description="seed -1 would draw the recipes' own shapes:N:1 reference stream")
    parts: list[str] = Field(default_factory=lambda: list(PARTS))
    batch_size: int = Field(128, ge=1)
    kid_subsets: int = Field(20, ge=1)
    ladders: Ladders = Field(default_factory=Ladders)
    rank_agreement: RankAgreement = Field(default_factory=RankAgreement)
    per_image: PerImage = Field(default_factory=PerImage)
    efficiency: Efficiency = Field(default_factory=Efficiency)
    blind_spots: BlindSpots = Field(default_factory=BlindSpots)
    db: str = "results.db"
    out: str = "runs/validity"

    @field_validator("parts")
    @classmethod
    def _parts(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if p not in PARTS]
        if bad:
            raise ValueError(f"unknown part(s) {bad}; valid: {', '.join(PARTS)}")
        return v

    def with_overrides(self, **fields: object) -> ValidityRecipe:
        """A copy with the given top-level fields replaced (``None`` values are ignored), validated again."""
        data = self.model_dump()
        data.update({k: v for k, v in fields.items() if v is not None})
        return _validate(data, "command-line options")


def _validate(data: dict, where: str) -> ValidityRecipe:
    try:
        return ValidityRecipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise UserError(f"{where}: unknown key {loc!r}") from None
        raise UserError(f"{where}: {loc}: {err['msg'].removeprefix('Value error, ')}") from None


def load_validity_recipe(path: str | Path | None = None) -> ValidityRecipe:
    """Read a validity recipe; ``None`` reads ``recipes/validity.yaml`` if present, else the built-in defaults."""
    if path is None:
        if not DEFAULT_RECIPE.is_file():
            return ValidityRecipe()
        path = DEFAULT_RECIPE
    path = Path(path)
    if not path.is_file():
        raise UserError(f"validity recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    return _validate(data, str(path))
