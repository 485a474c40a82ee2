"""Issue 4's generator acceptance figures, measured the same way for every generator.

``python -m evalkit.zoo bars diffusion gan [--n-single 500 --n-category 200 --n-fid 2000 --out runs/zoo-bars]``

Every generator goes through the generic interface (``evalkit.generators.load``, so ``zoo/NAME`` with its
``meta.json`` recommended params, or any ``dir:PATH`` pipeline) and gets the same prompts and seeds:

1. **single_object**: ``n_single`` test-split prompts (held-out scenes; the captions themselves also occur in
   training, as the world's vocabulary is small), one image each, seeds ``0..n-1``; oracle
   accuracy with its 95 % Wilson interval (the oracle's own ``evaluate``).
2. **categories** (two_object, counting, position; colors and background for information): ``n_category``
   prompts each; accuracy beside a *shuffled-prompt baseline*, the same detections checked against
   another prompt's spec of the category. The ratio says how much the prompt, not the category's base
   rate, explains.
3. **FID** (judge features) against ``n_fid`` held-out renders, beside its *floor* (a disjoint set of
   ``n_fid`` real renders) and a *degraded* baseline (that set under Gaussian blur, σ = 2 px). Generators
   draw the floor set's captions, so generator, floor and degraded differ only in where the images come
   from. The baselines do not depend on a generator and are computed once per run.
4. **speed**: images/s at batch 16 and network evaluations per image (``measure_speed``).

:func:`check_bars` turns the figures into issue 4's pass/fail verdicts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..utils import atomic_write_text, progress

if TYPE_CHECKING:
    from PIL import Image

    from ..features import FeatureCache, FeatureExtractor
    from ..generators import Generator
    from ..metrics import FeatureStats

GENERATORS: tuple[str, ...] = ("diffusion", "masked", "autoregressive", "gan")  # the zoo's generator models
CATEGORIES: tuple[str, ...] = ("two_object", "counting", "position", "colors", "background")
BARRED: tuple[str, ...] = ("two_object", "counting", "position")  # categories with the 3x-shuffled bar
SINGLE_BEST, SINGLE_EVERY = 0.90, 0.60
SHUFFLED_FACTOR = 3.0
FID_BEST_FACTOR = 0.5
BLUR_SIGMA = 2.0  # px of a 64 px render
RENDER_SIZE = 64
PROMPT_SEED = 2024  # world.sample seed of every prompt set (image seeds are 0..n-1)


# ---------------------------------------------------------------------------- specs and generation


def generator_spec(name: str) -> str:
    """``diffusion`` → ``zoo/diffusion``; full specs (``dir:PATH``, ``zoo/NAME``, ``hf:...``) pass through.

    A bare name that is not a zoo generator is a ``UserError`` (else ``load`` would suggest training a
    model that does not exist)."""
    if ":" in name or "/" in name:
        return name
    if name not in GENERATORS:
        raise UserError(
            f"unknown zoo generator {name!r}; zoo generators are {', '.join(GENERATORS)}, "
            "or give a spec such as dir:PATH"
        )
    return f"zoo/{name}"


def generate_images(
    generator: Generator,
    prompts: Sequence[str],
    seeds: Sequence[int],
    params: Mapping[str, Any],
    batch_size: int = 16,
    desc: str = "generate",
) -> list[Image.Image]:
    """One image per (prompt, seed), ``batch_size`` per call, with a progress bar over batches."""
    images: list[Image.Image] = []
    starts = range(0, len(prompts), batch_size)
    for s in progress(starts, desc=desc, total=len(starts)):
        out = generator.generate(prompts[s : s + batch_size], seeds[s : s + batch_size], **params)
        images += out.images
    return images


# ---------------------------------------------------------------------------- oracle figures


def shuffled_specs(specs: Sequence[Any]) -> list[Any]:
    """Each position gets another position's spec (a rotation by n//2, so never its own)."""
    n = len(specs)
    if n < 2:
        raise UserError("a shuffled-prompt baseline needs at least 2 prompts")
    return [specs[(i + n // 2) % n] for i in range(n)]


def oracle_figures(images: Sequence[Image.Image], specs: Sequence[Any], desc: str = "oracle") -> dict[str, Any]:
    """Accuracy (95 % Wilson interval) of images against their specs and against shuffled specs.

    Detection runs once per image; both scorings reuse it. ``ratio`` is accuracy / shuffled (None when
    the shuffled accuracy is 0)."""
    from ..shapes.oracle import detect, evaluate

    detections = [detect(im) for im in progress(images, desc=f"detect {desc}")]
    own = evaluate(zip(detections, specs), desc=desc).overall
    base = evaluate(zip(detections, shuffled_specs(specs)), desc=f"{desc} shuffled").overall
    acc, shuffled = own["accuracy"], base["accuracy"]
    return {
        "accuracy": acc,
        "ci95": own["ci95"],
        "correct": own["correct"],
        "n": own["n"],
        "shuffled": shuffled,
        "shuffled_ci95": base["ci95"],
        "ratio": acc / shuffled if shuffled else None,
    }


def category_figures(
    generator: Generator,
    category: str,
    n: int,
    params: Mapping[str, Any],
    seed: int = PROMPT_SEED,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Oracle figures of ``n`` held-out prompts of one category, one image each with seeds ``0..n-1``."""
    from ..shapes.world import sample

    samples = sample(n, seed=seed, split="test", categories=[category])
    images = generate_images(generator, [s.caption for s in samples], range(n), params, batch_size, category)
    return oracle_figures(images, [s.spec for s in samples], desc=category)


# ---------------------------------------------------------------------------- FID


def fid_key(extractor: FeatureExtractor) -> str:
    """The feature FID reads: the judge's/CLIP's ``image`` embedding, or Inception's ``pool``."""
    return next((k for k in ("image", "pool") if k in extractor.features), next(iter(extractor.features)))


@dataclass
class FidReference:
    """Judge statistics of ``n`` held-out renders (test samples ``0..n-1``) and the generator-independent
    baselines, measured on the disjoint samples ``n..2n-1`` whose captions the generators draw."""

    extractor: FeatureExtractor
    cache: FeatureCache | None
    stats: FeatureStats
    prompts: list[str]
    floor: float
    degraded: float

    @classmethod
    def build(
        cls, extractor: FeatureExtractor, n: int, seed: int = PROMPT_SEED, cache: FeatureCache | None = None
    ) -> FidReference:
        from ..disturb import gaussian_blur
        from ..shapes.render import render
        from ..shapes.world import sample

        if n < 2:
            raise UserError(f"FID needs at least 2 images per side, got n_fid={n}")
        both = sample(2 * n, seed=seed, split="test")
        reference = [render(s.scene, RENDER_SIZE) for s in progress(both[:n], desc="render reference")]
        others = [render(s.scene, RENDER_SIZE) for s in progress(both[n:], desc="render floor set")]
        blurred = [gaussian_blur(im, BLUR_SIGMA) for im in progress(others, desc="blur")]
        stats = _stats(extractor, reference, cache, "reference")
        floor = _fid(stats, _stats(extractor, others, cache, "floor set"))
        degraded = _fid(stats, _stats(extractor, blurred, cache, "blurred set"))
        return cls(extractor, cache, stats, [s.caption for s in both[n:]], floor, degraded)

    def fid(self, images: Sequence[Image.Image], desc: str = "generated") -> float:
        """FID of ``images`` against the reference renders (features cached by content)."""
        return _fid(self.stats, _stats(self.extractor, images, self.cache, desc))


def _stats(
    extractor: FeatureExtractor, images: Sequence[Image.Image], cache: FeatureCache | None, desc: str
) -> FeatureStats:
    from ..features import extract
    from ..metrics import FeatureStats

    feats = extract(extractor, list(images), cache=cache, desc=f"features {desc}")
    return FeatureStats.from_features(feats[fid_key(extractor)])


def _fid(real: FeatureStats, fake: FeatureStats) -> float:
    from ..metrics.functional import fid_from_stats

    return float(fid_from_stats(real, fake))


# ---------------------------------------------------------------------------- one generator


def measure_generator(
    generator: Generator,
    n_single: int = 500,
    n_category: int = 200,
    fid_reference: FidReference | None = None,
    categories: Sequence[str] = CATEGORIES,
    params: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    speed_repeats: int = 3,
    seed: int = PROMPT_SEED,
) -> dict[str, Any]:
    """Every figure of one generator (module docstring); a count of 0 (or no FID reference) skips a figure.

    ``params`` override the generator's recommended ones; the resolved params are recorded."""
    from ..generators import measure_speed
    from ..shapes.world import sample

    resolved = generator.resolve_params(**dict(params or {}))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    oracle = {}
    if n_single:
        oracle["single_object"] = category_figures(generator, "single_object", n_single, resolved, seed, batch_size)
    for category in categories if n_category else ():
        oracle[category] = category_figures(generator, category, n_category, resolved, seed, batch_size)
    fid = None
    if fid_reference is not None:
        prompts = fid_reference.prompts
        images = generate_images(generator, prompts, range(len(prompts)), resolved, batch_size, "generate fid set")
        value = fid_reference.fid(images, generator.name)
        fid = {"fid": value, "n": len(prompts), "ratio_to_degraded": value / fid_reference.degraded}
    speed = None
    if speed_repeats:
        prompts = [s.caption for s in sample(batch_size, seed=seed, split="test")]
        speed = measure_speed(generator, prompts, batch_size=batch_size, repeats=speed_repeats, **resolved).to_dict()
    return {
        "spec": generator.name,
        "family": generator.family,
        "num_parameters": generator.num_parameters,
        "params": resolved,
        "nfe": speed["nfe"] if speed else generator.nfe(**resolved),
        "oracle": oracle,
        "fid": fid,
        "speed": speed,
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "wall_seconds": round(time.perf_counter() - wall0, 1),
    }


# ---------------------------------------------------------------------------- bars


def _accuracy(fig: Mapping[str, Any], category: str) -> float | None:
    return (fig.get("oracle") or {}).get(category, {}).get("accuracy")


def _fid_value(fig: Mapping[str, Any]) -> float | None:
    return (fig.get("fid") or {}).get("fid")


def _all(verdicts: list[bool | None]) -> bool | None:
    """True if every verdict passed, False if any failed, None if nothing was measured."""
    if any(v is False for v in verdicts):
        return False
    return True if verdicts and all(v is True for v in verdicts) else None


def _baseline(figure: Mapping[str, Any]) -> float:
    """The shuffled-prompt accuracy, at least one image in ``n``: a baseline of 0 correct would let a
    single lucky image pass "3x shuffled". (Callers allow 1e-9, so k/n fractions compare as counts do.)"""
    n = figure.get("n")
    return max(figure["shuffled"], 1 / n) if n else figure["shuffled"]


def check_bars(figures: Mapping[str, Mapping[str, Any]], degraded_fid: float | None) -> dict[str, Any]:
    """Issue 4's bars over the generators' figures: ``{"per_generator": {name: {bar: bool | None}},
    "best": {bar: {...}}, "pass": bool | None}``; ``None`` where a figure was not measured."""
    per: dict[str, dict[str, bool | None]] = {}
    for name, fig in figures.items():
        single = _accuracy(fig, "single_object")
        verdicts: dict[str, bool | None] = {
            f"single_object >= {SINGLE_EVERY}": None if single is None else single >= SINGLE_EVERY
        }
        for c in BARRED:
            o = (fig.get("oracle") or {}).get(c)
            ok = None if o is None else o["accuracy"] > 0 and o["accuracy"] >= SHUFFLED_FACTOR * _baseline(o) - 1e-9
            verdicts[f"{c} >= {SHUFFLED_FACTOR:g}x shuffled"] = ok
        value = _fid_value(fig)
        verdicts["fid < degraded"] = None if value is None or degraded_fid is None else value < degraded_fid
        verdicts["pass"] = _all(list(verdicts.values()))
        per[name] = verdicts

    best: dict[str, dict[str, Any]] = {}
    singles = {n: a for n, f in figures.items() if (a := _accuracy(f, "single_object")) is not None}
    if singles:
        top = max(singles, key=singles.__getitem__)
        best[f"best single_object >= {SINGLE_BEST}"] = {
            "generator": top,
            "value": singles[top],
            "pass": singles[top] >= SINGLE_BEST,
        }
    fids = {n: v for n, f in figures.items() if (v := _fid_value(f)) is not None}
    if fids and degraded_fid is not None:
        top = min(fids, key=fids.__getitem__)
        best[f"best fid <= {FID_BEST_FACTOR:g}x degraded"] = {
            "generator": top,
            "value": fids[top],
            "pass": fids[top] <= FID_BEST_FACTOR * degraded_fid,
        }
    verdicts = [v["pass"] for v in per.values()] + [b["pass"] for b in best.values()]
    return {"per_generator": per, "best": best, "pass": _all(verdicts)}


# ---------------------------------------------------------------------------- report


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown_table(result: Mapping[str, Any]) -> str:
    """One row per generator, for zoo/README.md: accuracy (shuffled), FID (ratio to degraded), speed, bars."""
    base = result.get("baselines") or {}
    cats = ["single_object", *result["parameters"]["categories"]]
    fid_head = "FID"
    if base:
        fid_head = f"FID (floor {_fmt(base['fid_floor'], 2)}, blur {_fmt(base['fid_degraded'], 2)})"
    batch = result["parameters"]["batch_size"]
    head = ["generator", "family", "params", "NFE", f"img/s @{batch}", *cats, fid_head, "bars"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    per = result["bars"]["per_generator"]
    for name, fig in result["generators"].items():
        cells = [name, fig["family"], f"{(fig['num_parameters'] or 0) / 1e6:.2f}M", _fmt(fig["nfe"], 0)]
        cells.append(_fmt((fig["speed"] or {}).get("images_per_second"), 1))
        for c in cats:
            o = fig["oracle"].get(c)
            if o is None:
                cells.append("—")
            elif c == "single_object":
                cells.append(f"{_fmt(o['accuracy'])} [{_fmt(o['ci95'][0])}, {_fmt(o['ci95'][1])}]")
            else:
                cells.append(f"{_fmt(o['accuracy'])} ({_fmt(o['shuffled'])})")
        fid = fig["fid"]
        cells.append("—" if fid is None else f"{_fmt(fid['fid'], 2)} ({_fmt(fid['ratio_to_degraded'], 2)}×)")
        failed = [bar for bar, ok in per[name].items() if ok is False and bar != "pass"]
        cells.append({True: "pass", None: "—"}.get(per[name]["pass"], "fail: " + ", ".join(failed)))
        lines.append("| " + " | ".join(cells) + " |")
    for bar, b in result["bars"]["best"].items():
        lines.append(f"\n{bar}: {b['generator']} {_fmt(b['value'])} → {'pass' if b['pass'] else 'fail'}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- run


def run_bars(
    names: Sequence[str],
    out_dir: str | Path = "runs/zoo-bars",
    n_single: int = 500,
    n_category: int = 200,
    n_fid: int = 2000,
    extractor: str | FeatureExtractor = "judge",
    cache: FeatureCache | None = None,
    batch_size: int = 16,
    speed_repeats: int = 3,
    params: Mapping[str, Any] | None = None,
    seed: int = PROMPT_SEED,
) -> dict[str, Any]:
    """Measure every generator in ``names`` (zoo names or specs), check the bars, write ``bars.json`` and
    ``bars.md`` to ``out_dir``; returns what ``bars.json`` holds."""
    from ..features import FeatureExtractor, get_extractor
    from ..generators import load

    for flag, n in (("n_single", n_single), ("n_category", n_category), ("n_fid", n_fid)):
        if n < 0 or n == 1:
            raise UserError(f"{flag} must be 0 (skip) or at least 2, got {n}")
    generators = {name: load(generator_spec(name)) for name in names}  # a missing model fails before any work
    t0 = time.process_time()
    reference = None
    if n_fid:
        ext = extractor if isinstance(extractor, FeatureExtractor) else get_extractor(extractor)
        reference = FidReference.build(ext, n_fid, seed=seed, cache=cache)
    baselines = None
    if reference is not None:
        baselines = {"fid_floor": reference.floor, "fid_degraded": reference.degraded, "n": n_fid,
                     "extractor": reference.extractor.info(), "cpu_seconds": round(time.process_time() - t0, 1)}  # fmt: skip
    figures = {
        name: measure_generator(g, n_single, n_category, reference, CATEGORIES, params, batch_size, speed_repeats, seed)
        for name, g in generators.items()
    }
    result = {
        "parameters": {
            "n_single": n_single,
            "n_category": n_category,
            "n_fid": n_fid,
            "categories": list(CATEGORIES),
            "prompt_seed": seed,
            "split": "test",
            "image_seeds": "0..n-1 per prompt set",
            "batch_size": batch_size,
            "speed_repeats": speed_repeats,
            "render_size": RENDER_SIZE,
            "blur_sigma_px": BLUR_SIGMA,
            "param_overrides": dict(params or {}),
            "thresholds": {
                "single_best": SINGLE_BEST,
                "single_every": SINGLE_EVERY,
                "shuffled_factor": SHUFFLED_FACTOR,
                "fid_best_factor": FID_BEST_FACTOR,
            },
        },
        "baselines": baselines,
        "generators": figures,
        "bars": check_bars(figures, reference.degraded if reference else None),
        "cpu_seconds": round(time.process_time() - t0, 1),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bars.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "bars.md", markdown_table(result))
    return result
