"""The main job: run a recipe. generate → extract (cached) → score → results store.

Every stage resumes from what is on disk: generation from each folder's manifest, features from
the feature cache, figures from the results store (identical figures are not written twice). A run
killed at any point and started again ends with the same figures as one that never stopped.

Launched on several processes (``accelerate launch --multi_gpu --num_processes N -m evalkit run R`` or
``torchrun --nproc_per_node N -m evalkit run R``; CPU, gloo), each process generates a contiguous block of each
generator's batches and extracts the features of its images and of its block of the reference. Metrics merge
their states through torchmetrics' sync; per-image figures (oracle verdicts, CLIP scores, timings) are gathered
in rank order, which is the order a single process uses, so the figures are those of a one-process run (to
float64 rounding of the FID and CLIP sums). Rank 0 alone writes the results store and the report.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as dist
from .data.images import SkipCounter, try_load_image
from .data.laion import load_subset
from .data.prompts import load_prompts
from .errors import UserError
from .features import FeatureCache, FeatureExtractor, encode_texts, extract, get_extractor
from .generators import generate_to_folder
from .generators import load as load_generator
from .generators.to_folder import merge_shard_manifests
from .metric_names import FEATURE_METRICS
from .metrics import compute_metrics
from .metrics.bootstrap import bootstrap_ci
from .recipe import Recipe, load_recipe, slug
from .report import write_report
from .results import Result, ResultsDB
from .score import metric_keys, servable
from .shapes.oracle import detect
from .shapes.oracle import evaluate as oracle_evaluate
from .utils import progress

REFERENCE_DIR = Path("runs") / "_reference"


@dataclass
class RunReport:
    run_id: str
    db: str
    out_dir: Path
    generated: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    skipped: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None  # the run's HTML report


def _kill_point(point: str) -> None:
    """Fault injection for the kill-and-resume tests: ``EVALKIT_KILL_AT=<point>`` ends the process right
    here with SIGKILL, as a crash or ``kill -9`` would; ``EVALKIT_KILL_RANK=<r>`` only process ``r`` of a
    distributed run."""
    rank = str(dist.rank())
    if os.environ.get("EVALKIT_KILL_AT") == point and os.environ.get("EVALKIT_KILL_RANK", rank) == rank:
        os.kill(os.getpid(), signal.SIGKILL)


def reference_path(source: str, root: Path = REFERENCE_DIR) -> Path:
    """A LAION-format reference; ``shapes:N[:seed][:split]`` is rendered once into ``root`` and reused."""
    if not source.startswith("shapes:"):
        return Path(source)
    from .shapes.subset import PARQUET_NAME, make_subset

    parts = source.split(":")[1:]
    try:
        n = int(parts[0])
        seed = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UserError(f"reference {source!r}: expected shapes:N[:seed][:split]") from None
    split = parts[2] if len(parts) > 2 else "test"
    out = root / f"shapes-{n}-{seed}-{split}"
    if not (out / PARQUET_NAME).is_file():
        make_subset(n, seed, out, split=split)
    return out


def load_reference(source: str, n: int | None, seed: int) -> tuple[list, SkipCounter]:
    skipped = SkipCounter()
    subset = load_subset(reference_path(source), n=n, seed=seed)
    images = [img for _, img in subset.iter_images(skipped)]
    if len(images) < 2:
        raise UserError(f"reference {source!r} has {len(images)} usable images; need at least 2")
    return images, skipped


def _rows_images(out: Path, rows: list[dict[str, Any]], skipped: SkipCounter) -> tuple[list, list[dict[str, Any]]]:
    images, kept = [], []
    for row in rows:
        img = try_load_image(out / row["file"], skipped)
        if img is not None:
            images.append(img)
            kept.append(row)
    return images, kept


def _speed_results(label: str, dataset: str, rows: list[dict[str, Any]]) -> list[Result]:
    secs = np.array([r["seconds"] for r in rows if r.get("seconds")], dtype=float)
    out = []
    if len(secs):
        out.append(Result(label, dataset, "images_per_s", float(1.0 / secs.mean()), len(secs)))
        out.append(Result(label, dataset, "latency_p50_s", float(np.percentile(secs, 50)), len(secs)))
        out.append(Result(label, dataset, "latency_p95_s", float(np.percentile(secs, 95)), len(secs)))
    nfe = [r["nfe"] for r in rows if r.get("nfe") is not None]
    if nfe:
        out.append(Result(label, dataset, "nfe", float(np.mean(nfe)), len(nfe)))
    return out


def _oracle_detections(label: str, images: list, rows: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    """``(Detection, spec)`` per image with a spec: the costly half of the oracle, done where the image is."""
    pairs = [(img, r["spec"]) for img, r in zip(images, rows) if r.get("spec")]
    return [(detect(img), spec) for img, spec in progress(pairs, desc=f"oracle {label}", total=len(pairs))]


def _oracle_results(label: str, dataset: str, pairs: list[tuple[Any, dict[str, Any]]]) -> list[Result]:
    if not pairs:
        return []
    rep = oracle_evaluate(pairs, desc=f"oracle verdicts {label}")

    def res(d: dict[str, Any], category: str = "") -> Result:
        ci = tuple(d["ci95"]) if d.get("ci95") else None
        return Result(label, dataset, "oracle", d["accuracy"], d["n"], ci, category)

    return [res(rep.overall)] + [res(d, c) for c, d in sorted(rep.categories.items())]


def _clip_per_image(img: torch.Tensor, txt: torch.Tensor) -> list[float]:
    """CLIP score of each image with its prompt: 100·max(cos, 0)."""
    return (100 * torch.clamp(torch.nn.functional.cosine_similarity(img, txt, dim=-1), min=0)).tolist()


def _clip_by_category(label: str, dataset: str, ext_id: str, scores: list[float],
                      rows: list[dict[str, Any]]) -> list[Result]:  # fmt: skip
    """Per-category CLIP score with bootstrap CIs, from per-image scores."""
    per = np.asarray(scores, dtype=np.float32)
    cats: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("category"):
            cats.setdefault(str(r["category"]), []).append(i)
    out = []
    for c, idx in sorted(cats.items()):
        v = per[idx]
        ci = bootstrap_ci(v, seed=0) if len(v) >= 2 else None
        out.append(Result(label, dataset, "clip", float(v.mean()), len(v), ci, c, ext_id))
    return out


def run(
    recipe: Recipe | str | Path,
    *,
    new_version: bool = False,
    db_path: str | Path | None = None,
    cache: FeatureCache | None = None,
    on_stage: Callable[[str], None] | None = None,
    loaded_extractors: Mapping[str, FeatureExtractor] | None = None,
) -> RunReport:
    """Run a recipe end to end and store its figures; returns what was done.

    ``loaded_extractors`` maps extractor specs to extractors already loaded (a server keeps them across runs); specs
    not in it are loaded here.

    Under a multi-process launch every process calls this and returns the same counts and figures; rank 0
    alone writes them to the results store and writes the report (``report.report`` is None elsewhere).
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    dist.init_from_env()
    rank, world = dist.rank(), dist.world_size()
    main = rank == 0
    say = (on_stage or (lambda s: print(s, flush=True))) if main else (lambda s: None)
    prompts = load_prompts(recipe.prompts)
    if len(prompts) == 0:
        raise UserError(
            f"prompt set {recipe.prompts!r} is empty" + (f" ({prompts.skipped})" if prompts.skipped else "")
        )
    feature_metrics = [m for m in recipe.metrics if m in FEATURE_METRICS]
    need_reference = any(m != "clip" and m != "is" for m in feature_metrics)
    if need_reference and recipe.reference is None:
        raise UserError(f"metrics {', '.join(feature_metrics)} need a `reference:` set in the recipe")
    n_batches = -(-len(prompts) * recipe.images_per_prompt // recipe.batch_size)
    if n_batches < world:  # a process without images would have nothing to add to the metrics' states
        raise UserError(
            f"{n_batches} batches of images cannot be shared by {world} processes; lower batch_size or launch fewer"
        )
    # models load before anything is written, so a missing one stops the run with nothing half-done
    loaded = loaded_extractors or {}
    extractors = [loaded.get(spec) or get_extractor(spec) for spec in recipe.extractors] if feature_metrics else []
    served = {m for ext in extractors for m in servable(ext, feature_metrics)}
    if missing := [m for m in feature_metrics if m not in served]:
        raise UserError(
            f"no extractor in the recipe can compute {', '.join(missing)} (clip and cmmd need a CLIP-like "
            f"extractor, is an Inception one): extractors {', '.join(recipe.extractors)}"
        )
    extractors = [ext for ext in extractors if servable(ext, feature_metrics)]  # none runs for nothing
    for g in recipe.generators:  # and their params (a typo in the last generator must not wait for the first)
        load_generator(g.spec).resolve_params(**g.params)
    out_dir = recipe.out_dir
    db = ResultsDB(db_path or recipe.db) if main else None
    run_id = dist.broadcast(
        db.start_run(recipe.name, recipe.content_hash(), recipe.model_dump(), [recipe.seed], new_version).run_id
        if main
        else None
    )
    report = RunReport(run_id, db.path if db else str(db_path or recipe.db), out_dir)
    if prompts.skipped:
        report.skipped["prompts"] = prompts.skipped.as_dict()
    dataset = recipe.prompts
    cache = cache or FeatureCache()
    if world > 1:
        say(f"distributed: {world} processes")

    ref_feats: dict[str, dict[str, torch.Tensor]] = {}
    if need_reference:
        say(f"reference: {recipe.reference.source}")
        if main:  # a shapes reference is rendered once, before the other processes read it
            reference_path(recipe.reference.source)
        dist.barrier()
        ref_images, ref_skipped = load_reference(recipe.reference.source, recipe.reference.n, recipe.seed)
        report.skipped["reference"] = ref_skipped.as_dict()
        if len(ref_images) < world:
            raise UserError(f"reference {recipe.reference.source!r} has fewer images than the {world} processes")
        ref_images = ref_images[dist.shard_slice(len(ref_images), rank, world)]  # this process's block
        for ext in extractors:
            ref_feats[ext.id] = extract(ext, ref_images, cache=cache, desc=f"reference features ({ext.name})")
        del ref_images

    for g in recipe.generators:
        folder = out_dir / "images" / slug(g.label)
        say(f"generate: {g.label} -> {folder}")
        res = generate_to_folder(
            g.spec, prompts, folder, n=recipe.images_per_prompt, seed=recipe.seed, batch_size=recipe.batch_size,
            params=g.params, on_progress=lambda done, total, label=g.label: _kill_point(f"generate:{label}:{done}"),
            shard=(rank, world) if world > 1 else None,
        )  # fmt: skip
        if world > 1:
            dist.barrier()  # every shard is written
            if main:
                merge_shard_manifests(folder)
        counts = dist.gather((res.generated, res.reused))
        report.generated[g.label], report.reused[g.label] = (sum(c[i] for c in counts) for i in (0, 1))
        skipped, all_skipped = SkipCounter(), SkipCounter()
        images, rows = _rows_images(folder, res.rows, skipped)  # this process's images
        for part in dist.gather(skipped):
            all_skipped.update(part)
        report.skipped[g.label] = all_skipped.as_dict()
        parts = dist.gather(rows)
        all_rows = [r for part in parts for r in part]  # rank order is the one-process order
        start = sum(len(part) for part in parts[:rank])  # where this process's rows sit in it
        results: list[Result] = []
        if "speed" in recipe.metrics:
            results += _speed_results(g.label, dataset, all_rows)
        if "oracle" in recipe.metrics:
            results += _oracle_results(g.label, dataset, dist.gather_lists(_oracle_detections(g.label, images, rows)))
        for ext in extractors:
            names = servable(ext, feature_metrics)
            fake = extract(ext, images, cache=cache, desc=f"features {g.label} ({ext.name})")
            if "clip" in names:
                # every process encodes every prompt in the batches one process would use (batched CPU kernels
                # round by batch make-up), then keeps its own rows
                texts = encode_texts(ext, [r["prompt"] for r in all_rows], cache=cache)
                fake["text"] = texts[start : start + len(rows)]
            scored = compute_metrics(ref_feats.get(ext.id), fake, names, keys=metric_keys(ext), seed=recipe.seed,
                                     reference_as_state=world > 1)  # fmt: skip
            for name, m in scored.items():
                extra = {k: v for k, v in m.extra.items() if isinstance(v, (int, float, str, bool))}
                results.append(Result(g.label, dataset, name, m.value, m.n, m.ci, "", ext.id, extra))
            if "clip" in names:
                scores = dist.gather_lists(_clip_per_image(fake["image"], fake["text"]))
                results += _clip_by_category(g.label, dataset, ext.id, scores, all_rows)
        _kill_point(f"score:{g.label}")
        if main:
            db.add_results(run_id, results)
        report.results += results
        say(f"scored: {g.label} ({len(results)} figures)")
    if main:
        db.finish_run(run_id)
        # report: tables, image grids and plots of this run, next to its images
        report.report = write_report(db, run_id, out_dir=out_dir, skipped=report.skipped)
        say(f"report: {report.report}")
        db.close()
    dist.barrier()  # the other processes return once the results are stored
    return report
