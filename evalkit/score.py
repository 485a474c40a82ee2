"""Score a folder of generated images against a reference set: ``python -m evalkit score``.

One feature pass per image per extractor feeds every metric (torch-fidelity's ``calculate_metrics``
idea): generated and reference images are decoded once, encoded once (or found in the feature
cache by the digest of their file bytes, so a second scoring of the same images decodes nothing
and runs no network), and FID, KID, CMMD, precision/recall, density/coverage and CLIP score all
read those features. Images are read and decoded in a background thread while the network runs.

Generated images come from a folder with ``manifest.jsonl`` (rows with ``file``, ``prompt`` and,
for the shapes world, ``spec``: what ``python -m evalkit generate`` writes) or any layout
:func:`evalkit.data.laion.load_subset` reads (an image folder with a caption ``.txt`` beside each
image, a LAION-format subset, parquet, shards). The reference is any of those too. Images without
a prompt are left out of CLIP score only; images without a shapes ``spec`` are left out of the
oracle only; undecodable images are left out of everything. Each kind of skip is counted.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data.images import SkipCounter, try_load_image
from .errors import UserError
from .features import FeatureCache, FeatureExtractor, encode_texts, get_extractor
from .features.extract import EncodedImage, extract_images
from .features.resize import RESIZE_MODES
from .metric_names import IS_FEATURE
from .metrics import DEFAULTS as METRIC_DEFAULTS
from .metrics import RESULT_NAMES, MetricResult, compute_metrics
from .utils import atomic_write_text

DEFAULT_METRICS: tuple[str, ...] = ("clip", "fid", "kid", "cmmd", "pr")
SCORE_METRICS: tuple[str, ...] = ("clip", "fid", "kid", "cmmd", "pr", "dc", "is", "oracle")
"""Names ``score`` accepts: the feature metrics of ``evalkit.metrics`` plus ``oracle`` (shapes world)."""
REFERENCE_METRICS = frozenset({"fid", "kid", "cmmd", "pr", "dc"})
MANIFEST_NAME = "manifest.jsonl"
PROMPT_FIELDS: tuple[str, ...] = ("prompt", "caption", "text")


@dataclass
class ScoreReport:
    """What ``score`` measured.

    Attributes:
        metrics: ``{result name: MetricResult}`` (``pr`` gives ``precision`` and ``recall``; ``oracle``
            gives ``oracle`` with per-category and per-check figures in ``extra``).
        n_generated, n_reference: images that decoded and were encoded, per side.
        skipped: ``generated`` / ``reference`` SkipCounters (bad or missing images, bad manifest rows),
            ``no_prompt`` (generated images left out of CLIP score) and ``no_spec`` (left out of the oracle).
        extractor: the extractor id (network + preprocessing); ``weights_hash`` pins its weights.
        notes: metrics that could not be computed from these inputs, and why.
    """

    metrics: dict[str, MetricResult]
    n_generated: int
    n_reference: int
    skipped: dict[str, SkipCounter]
    extractor: str
    weights_hash: str
    generated: str = ""
    reference: str | None = None
    cache: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> MetricResult:
        return self.metrics[name]

    def skipped_json(self) -> dict[str, Any]:
        return {side: counter.to_json() for side, counter in self.skipped.items()}

    def to_json(self) -> dict[str, Any]:
        """``{metric: {value, n, ci, higher_is_better, extra}, ..., "skipped": {...}, "meta": {...}}``."""
        out: dict[str, Any] = {}
        for name, r in self.metrics.items():
            out[name] = {
                "value": _json_float(r.value),
                "n": r.n,
                "ci": [_json_float(c) for c in r.ci] if r.ci is not None else None,
                "higher_is_better": r.higher_is_better,
                "extra": _jsonable(r.extra),
            }
        out["skipped"] = self.skipped_json()
        out["meta"] = {
            "generated": self.generated,
            "reference": self.reference,
            "n_generated": self.n_generated,
            "n_reference": self.n_reference,
            "extractor": self.extractor,
            "weights_hash": self.weights_hash,
            "cache": self.cache,
            "notes": list(self.notes),
        }
        return out

    def table(self) -> str:
        """The metrics as a fixed-width table, then the inputs and skip counts."""
        rows = [("metric", "value", "95% CI", "n")]
        for name, r in self.metrics.items():
            ci = f"[{_fmt(r.ci[0])}, {_fmt(r.ci[1])}]" if r.ci is not None else "-"
            arrow = "" if r.higher_is_better is None else (" ↑" if r.higher_is_better else " ↓")
            rows.append((name + arrow, _fmt(r.value), ci, str(r.n)))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>{widths[3]}}"
            for row in rows
        ]
        lines.append("")
        lines.append(f"generated: {self.n_generated} images, {self.skipped['generated']}")
        if self.n_reference or self.skipped["reference"]:
            lines.append(f"reference: {self.n_reference} images, {self.skipped['reference']}")
        for key, what in (("no_prompt", "CLIP score"), ("no_spec", "oracle")):
            if self.skipped[key]:
                lines.append(f"left out of {what}: {self.skipped[key]}")
        lines.append(f"extractor: {self.extractor} (weights {self.weights_hash[:12]})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.6g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return _json_float(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


# ---------------------------------------------------------------------------- inputs


@dataclass
class _Side:
    """Rows of one side: prompts and specs recorded while its images stream to the extractor, then trimmed to
    the images that decoded (``keep``)."""

    skipped: SkipCounter = field(default_factory=SkipCounter)
    prompts: list[str | None] = field(default_factory=list)
    specs: list[Any] = field(default_factory=list)
    n: int = 0

    def keep(self, kept: list[int]) -> None:
        self.prompts = [self.prompts[i] for i in kept]
        self.specs = [self.specs[i] for i in kept]
        self.n = len(kept)


Record = tuple[EncodedImage, str | None, Any]
"""An image's file bytes, its prompt (or None) and its shapes spec (or None)."""


def _prompt_of(row: dict[str, Any]) -> str | None:
    for key in PROMPT_FIELDS:
        v = row.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _manifest_file(path: Path) -> Path | None:
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return path / MANIFEST_NAME
    if path.is_file() and path.suffix == ".jsonl":
        return path
    return None


def _manifest_records(manifest: Path, side: _Side) -> Iterator[Record]:
    """Rows of an ImageSet manifest, read as generators write it (a torn last line is dropped, counted)."""
    from .generators.manifest import read_manifest

    read = read_manifest(manifest)
    for reason, count in read.dropped.items():
        for _ in range(count):
            side.skipped.add("bad_manifest_row", f"{manifest} ({reason})")
    if not read.rows and not read.dropped:
        raise UserError(f"{manifest} lists no images")
    root = manifest.parent
    for i, row in enumerate(read.rows):
        file = row.get("file")
        if not isinstance(file, str) or not file:
            side.skipped.add("missing", f"{manifest.name} row {i + 1} has no 'file'")
            continue
        path = root / file
        try:
            data = path.read_bytes()
        except OSError:
            side.skipped.add("missing", str(path))
            continue
        yield EncodedImage(data, str(path)), _prompt_of(row), row.get("spec")


def _subset_records(path: str | Path, side: _Side) -> Iterator[Record]:
    """Rows of a LAION-format subset with their image bytes (decoded by ``extract_images`` only on a cache miss;
    the subset is unfiltered, so ``load_image``'s default checks are the ones ``LaionSubset.iter_images`` makes)."""
    from .data.laion import load_subset

    subset = load_subset(path)
    if not subset.has_images:
        raise UserError(f"{subset.path} has no images (columns: {', '.join(subset.columns)})")
    for rec in subset.records(with_images=True):
        name = rec.path or rec.key
        if rec.image is None:
            side.skipped.add("missing", name)
            continue
        caption = rec.caption.strip() if isinstance(rec.caption, str) and rec.caption.strip() else None
        yield EncodedImage(rec.image, name), caption, rec.extra.get("spec")


def _check_exists(path: str | Path, what: str) -> None:
    if not any(c in str(path) for c in "*?[") and not Path(path).expanduser().exists():
        raise UserError(f"{what} {path} does not exist")


def _records(path: str | Path, side: _Side) -> Iterator[Record]:
    manifest = _manifest_file(Path(path).expanduser())
    return _manifest_records(manifest, side) if manifest is not None else _subset_records(path, side)


def _stream(records: Iterator[Record], side: _Side, keep_spec: bool) -> Iterator[EncodedImage]:
    """Images for ``extract_images``, recording each one's prompt (and spec, or its oracle detection) on the way.

    The oracle looks at pixels, so images with a spec are decoded here when it is asked for; the rest are left
    to the extractor, which decodes only what its cache doesn't know.
    """
    if keep_spec:
        from .shapes.oracle import detect  # scipy + skimage: only when the oracle is asked for

    for item, prompt, spec in records:
        detection = None
        if keep_spec and spec not in (None, ""):
            image = try_load_image(item.data, side.skipped, name=item.name)
            if image is None:
                continue
            item = EncodedImage(item.data, item.name, image)
            detection = (detect(image), spec)
        side.prompts.append(prompt)
        side.specs.append(detection)
        yield item


def _extract_side(
    ext: FeatureExtractor,
    path: str | Path,
    side: _Side,
    keep_spec: bool,
    batch_size: int,
    cache: FeatureCache | None,
    desc: str,
) -> dict[str, torch.Tensor]:
    got = extract_images(ext, _stream(_records(path, side), side, keep_spec), batch_size, cache, desc, side.skipped)
    side.keep(got.kept)
    return got.features


# ---------------------------------------------------------------------------- scoring


def _as_cache(cache: FeatureCache | bool | None) -> FeatureCache | None:
    if cache is True:
        return FeatureCache()
    if cache is None or cache is False:
        return None
    if isinstance(cache, FeatureCache):
        return cache
    raise TypeError(f"cache must be a FeatureCache, True or None, not {type(cache).__name__}")


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"clip,fid"`` or a sequence → validated names in order, duplicates dropped."""
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = list(dict.fromkeys(m for m in names if m))
    if not names:
        raise UserError(f"no metrics given; choose from {', '.join(SCORE_METRICS)}")
    bad = [m for m in names if m not in SCORE_METRICS]
    if bad:
        raise UserError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(SCORE_METRICS)}")
    return names


def metric_keys(ext: FeatureExtractor) -> dict[str, str]:
    """Which of ``ext``'s features each set metric reads (``compute_metrics(keys=...)``): CLIP-like extractors give
    ``image``, Inception ``pool`` (and unbiased logits for the Inception Score)."""
    key = next((k for k in ("image", "pool") if k in ext.features), next(iter(ext.features)))
    return {m: key for m in ("fid", "kid", "cmmd", "pr", "dc")} | {"is": IS_FEATURE}


def servable(ext: FeatureExtractor, metrics: list[str]) -> list[str]:
    """The metrics ``ext`` can compute: CLIP score and CMMD (whose kernel width is set for CLIP embeddings) need a
    CLIP-like extractor, the Inception Score unbiased logits; every other metric any extractor."""
    clip_like = ext.text_dim is not None
    return [
        m for m in metrics if (m not in ("clip", "cmmd") or clip_like) and (m != "is" or IS_FEATURE in ext.features)
    ]


def _check_extractor(ext: FeatureExtractor, names: list[str]) -> str:
    """The feature name the set metrics read; errors for metrics this extractor can't serve."""
    for name in (m for m in names if not servable(ext, [m])):
        if name == "is":
            raise UserError(
                f"is (Inception Score) needs an extractor with unbiased logits (inception:...); {ext.name} has none"
            )
        raise UserError(f"{name} needs a CLIP-like extractor with a text encoder; {ext.name} has none")
    return metric_keys(ext)["fid"]


def _oracle_result(pairs: list[tuple[Any, Any]], skipped: SkipCounter) -> MetricResult | None:
    from .shapes.oracle import evaluate, validate_spec
    from .shapes.world import PromptSpec

    good = []
    for det, raw in pairs:
        try:
            d = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
            spec = PromptSpec.from_dict(d)
            validate_spec(spec)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            skipped.add("bad_spec")
            continue
        good.append((det, spec))
    if not good:
        return None
    report = evaluate(good)
    o = report.overall
    extra = {"correct": o["correct"], "categories": report.categories, "checks": report.checks}
    return MetricResult(float(o["accuracy"]), int(o["n"]), tuple(o["ci95"]), extra, "oracle", True)


def score(
    generated: str | Path,
    reference: str | Path | None = None,
    metrics: str | Sequence[str] = DEFAULT_METRICS,
    extractor: str | FeatureExtractor = "judge",
    resize: str = "clean",
    batch_size: int = 64,
    cache: FeatureCache | bool | None = True,
    device: str | torch.device = "cpu",
    **metric_opts: Any,
) -> ScoreReport:
    """Score generated images against a reference set with one feature pass per image.

    Args:
        generated: folder with ``manifest.jsonl`` (rows ``file``, ``prompt``, optional ``spec``), or an image
            folder with caption ``.txt`` files, a LAION-format subset, a parquet file, shards.
        reference: image folder, LAION-format subset folder (e.g. a shapes subset), parquet file, ``*.tar``
            shards or glob; may be None when only ``clip`` / ``oracle`` are asked.
        metrics: names from :data:`SCORE_METRICS` (a list or ``"clip,fid"``); ``oracle`` needs shapes specs.
        extractor: a spec for :func:`evalkit.features.get_extractor` or a loaded extractor (then ``resize``
            and ``device`` are its own).
        resize: resize mode of the extractor's preprocessing (``clean``, ``legacy``, ``tf1``).
        batch_size: images per forward pass.
        cache: a ``FeatureCache``, True (the default cache folder) or None (no cache).
        **metric_opts: options of :func:`evalkit.metrics.compute_metrics` (``kid_subsets``, ``max_samples``, ...).

    Raises:
        UserError: missing or unreadable inputs, unknown metrics or options, an extractor that can't serve a
            metric, too few images for a metric.

    Example:
        >>> report = score("gen/", "shapes_ref/", ["clip", "fid"])  # doctest: +SKIP
        >>> report["fid"].value, report.skipped["generated"].total  # doctest: +SKIP
    """
    names = parse_metrics(metrics)
    _check_exists(generated, "generated")
    if reference is not None:
        _check_exists(reference, "reference")
    unknown = set(metric_opts) - set(METRIC_DEFAULTS)
    if unknown:
        raise UserError(f"unknown metric option(s) {sorted(unknown)}; valid: {', '.join(sorted(METRIC_DEFAULTS))}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    needs_ref = [m for m in names if m in REFERENCE_METRICS]
    if needs_ref and reference is None:
        raise UserError(f"{', '.join(needs_ref)} compare against a reference set: give a reference")
    ext = extractor if isinstance(extractor, FeatureExtractor) else get_extractor(extractor, resize, device)
    key = _check_extractor(ext, names)
    feature_cache = _as_cache(cache)

    gen = _Side()
    gen_feats = _extract_side(ext, generated, gen, "oracle" in names, batch_size, feature_cache, "generated")
    if gen.n == 0:
        raise UserError(f"no generated image could be read from {generated} ({gen.skipped})")
    ref = _Side()
    ref_feats: dict[str, torch.Tensor] | None = None
    if reference is not None and any(m in REFERENCE_METRICS for m in names):
        ref_feats = _extract_side(ext, reference, ref, False, batch_size, feature_cache, "reference")
        if ref.n == 0:
            raise UserError(f"no reference image could be read from {reference} ({ref.skipped})")

    results: dict[str, MetricResult] = {}
    notes: list[str] = []
    no_prompt, no_spec = SkipCounter(), SkipCounter()
    opts = {**metric_opts, "keys": {**metric_keys(ext), **(metric_opts.get("keys") or {})}}
    for name in names:
        if name == "clip":
            rows = [i for i, p in enumerate(gen.prompts) if p is not None]
            for _ in range(gen.n - len(rows)):
                no_prompt.add("no_prompt")
            if not rows:
                notes.append("clip: no generated image has a prompt (manifest 'prompt' field or a .txt caption)")
                continue
            text = encode_texts(ext, [gen.prompts[i] for i in rows], cache=feature_cache)
            fake = {"image": gen_feats[key][rows], "text": text}
            clip_opts = {k: v for k, v in metric_opts.items() if k != "keys"}
            results.update(compute_metrics(None, fake, ["clip"], **clip_opts))
        elif name == "oracle":
            pairs = [p for p in gen.specs if p is not None]
            for _ in range(gen.n - len(pairs)):
                no_spec.add("no_spec")
            result = _oracle_result(pairs, no_spec)
            if result is None:
                notes.append("oracle: no generated image has a valid shapes 'spec' in its manifest row")
                continue
            results["oracle"] = result
        else:
            results.update(compute_metrics(ref_feats, gen_feats, [name], **opts))
    if not results:
        raise UserError("nothing could be scored: " + "; ".join(notes))
    ordered = {r: results[r] for name in names for r in RESULT_NAMES.get(name, (name,)) if r in results}
    return ScoreReport(
        metrics=ordered,
        n_generated=gen.n,
        n_reference=ref.n,
        skipped={"generated": gen.skipped, "reference": ref.skipped, "no_prompt": no_prompt, "no_spec": no_spec},
        extractor=ext.id,
        weights_hash=ext.weights_hash,
        generated=str(generated),
        reference=None if reference is None else str(reference),
        cache=feature_cache.stats() if feature_cache is not None else None,
        notes=notes,
    )


# ---------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score generated images against a reference set (CLIP score, FID, KID, CMMD, ...)",
        description="Score a folder of generated images (manifest.jsonl or captioned image folder) against a "
        "reference set with one feature pass per image; features are cached on disk.",
    )
    p.add_argument("--generated", required=True, metavar="DIR", help="folder with manifest.jsonl, or captioned images")
    p.add_argument(
        "--reference",
        default=None,
        metavar="REF",
        help="image folder, LAION-format subset folder (e.g. a shapes subset), .parquet file or *.tar shards",
    )
    p.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated, from {','.join(SCORE_METRICS)} (default {','.join(DEFAULT_METRICS)})",
    )
    p.add_argument("--extractor", default="judge", help="judge, judge:DIR, clip:ARCH/TAG, inception:FILE")
    p.add_argument("--resize", default="clean", choices=RESIZE_MODES, help="resize mode (default clean)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--no-cache", action="store_true", help="don't read or write the feature cache")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="feature cache folder (default $EVALKIT_CACHE)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the scores as JSON to OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cache: FeatureCache | None = None if args.no_cache else FeatureCache(args.cache_dir)
    report = score(
        args.generated,
        args.reference,
        metrics=parse_metrics(args.metrics),
        extractor=args.extractor,
        resize=args.resize,
        batch_size=args.batch_size,
        cache=cache,
        device=args.device,
    )
    print(report.table())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
