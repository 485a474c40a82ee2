"""Which generators the UI offers, and the models it keeps loaded between requests.

Loading is the slow part of every request, so generators (through ``evalkit.generators.load``'s own
cache) and feature extractors stay in memory for the server's life. A diffusers pipeline is not safe
to call from two threads at once (its scheduler holds the timesteps of the call in progress), so each
model has a lock that every job holds while it generates with it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import UserError
from ..features import FeatureExtractor, get_extractor
from ..generators import Generator, load, parse_spec
from ..generators.loading import zoo_dir

NO_ZOO_MESSAGE = (
    "No zoo generator is installed yet (train one with `python -m evalkit.zoo train NAME`); "
    "type a local pipeline folder (`dir:PATH`) or a hub id (`hf:ORG/NAME`) below."
)


def zoo_generators() -> list[str]:
    """``zoo/NAME`` for every pipeline folder of the embedded zoo present on disk (none before training)."""
    root = zoo_dir()
    if not root.is_dir():
        return []
    return sorted(f"zoo/{p.parent.name}" for p in root.glob("*/model_index.json") if p.parent.name != "judge")


def form_params(steps: float | None, size: float | None) -> dict[str, int]:
    """The forms' shared "steps" and "size" boxes as generic params (0 or empty: each model's own)."""
    return {k: int(v) for k, v in (("steps", steps), ("size", size)) if v and v > 0}


def split_specs(text: str | None) -> list[str]:
    """Specs typed in a box: one per line or comma-separated, blanks dropped.

    >>> split_specs(" dir:/a, hf:org/m\\n\\n")
    ['dir:/a', 'hf:org/m']
    """
    return [s.strip() for s in re.split(r"[\n,]", text or "") if s.strip()]


def chosen_specs(picked: Iterable[str] | None, typed: str | None) -> list[str]:
    """Ticked plus typed specs, each checked for its form (not loaded), duplicates dropped in order."""
    specs = list(dict.fromkeys([*(picked or []), *split_specs(typed)]))
    if not specs:
        raise UserError("choose at least one generator (tick one, or type dir:PATH or hf:ORG/NAME)")
    for spec in specs:
        parse_spec(spec)
    return specs


def short_label(spec: str, taken: set[str]) -> str:
    """A readable, unique leaderboard label: ``zoo/diffusion`` → ``diffusion``, ``dir:/x/tiny-sd`` → ``tiny-sd``."""
    kind, _, arg = spec.partition(":")
    base = spec.removeprefix("zoo/") if spec.startswith("zoo/") else Path(arg.rstrip("/")).name or arg or spec
    base = base.split("@")[0] if kind == "hf" else base
    label, i = base, 2
    while label in taken:
        label, i = f"{base}-{i}", i + 1
    taken.add(label)
    return label


class ModelCache:
    """Generators and extractors loaded once per server, with a lock per model."""

    def __init__(self) -> None:
        self._extractors: dict[str, FeatureExtractor] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def using(self, specs: Iterable[str]) -> Iterator[None]:
        """Hold the locks of several models for a job. A lock belongs to the loaded model, not to its spec
        (``dir:/m/sd`` and ``dir:/m/sd/`` are one pipeline), and locks are taken in one global order, so two
        jobs may wait for each other but never deadlock."""
        keys = sorted({id(self.generator(spec)) for spec in specs})
        with ExitStack() as stack:
            for key in keys:
                stack.enter_context(self.lock(f"generator:{key}"))
            yield

    def generator(self, spec: str) -> Generator:
        with self.lock(f"load:{spec}"):  # two requests for one model load it once
            return load(spec)

    def params_for(self, spec: str, params: dict[str, int]) -> dict[str, int]:
        """The form's shared settings that apply to ``spec`` (a GAN has no steps); loads it only if any are set."""
        return self.generator(spec).applicable(params)[0] if params else {}

    def extractor(self, spec: str) -> FeatureExtractor:
        with self.lock(f"extractor:{spec}"):
            if spec not in self._extractors:
                self._extractors[spec] = get_extractor(spec)
            return self._extractors[spec]

    def loaded_extractors(self) -> dict[str, FeatureExtractor]:
        return dict(self._extractors)
