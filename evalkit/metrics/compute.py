"""One call from feature sets to every metric (torch-fidelity's ``calculate_metrics``, over features).

A *feature set* is a mapping from a feature name to a ``[N, D]`` tensor (or array), one row per image,
all rows in the same image order. Names used by default (change them with ``keys=``):

- ``"image"``: the image features/embeddings used by FID, KID, CMMD, precision/recall, density/coverage
  (for CMMD and CLIP score these should be CLIP image embeddings);
- ``"text"``: CLIP text embeddings of each image's prompt (``fake`` only; CLIP score);
- ``"logits_unbiased"`` (``IS_FEATURE``): classifier logits without the fc bias (``fake`` only; Inception
  Score), as torch-fidelity, torchmetrics and the original Inception Score code compute it.

``keys`` maps a metric to another name, e.g. ``keys={"fid": "inception", "kid": "inception"}`` when the
runner extracted two feature kinds, or ``keys={"clip": ("clip_image", "clip_text")}``.

Distributed (``torch.distributed`` initialized): every process calls ``compute_metrics`` with its own shard of
``real`` and ``fake`` and gets the figures of the union; the metrics' states are gathered by torchmetrics' own
sync (sums for FID and the CLIP mean, concatenation in rank order for the feature buffers and per-image CLIP
scores). Pass ``reference_as_state=True`` so FID counts the real shards as synced states rather than as fixed
reference statistics (which every process would hold whole). ``set_ci`` is not available there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..metric_names import FEATURE_METRICS, HIGHER_IS_BETTER, IS_FEATURE, RESULT_NAMES  # noqa: F401 (re-exported)
from .bootstrap import bootstrap_ci, bootstrap_set_ci
from .clip_score import CLIPScore
from .cmmd import CMMD
from .feature_buffer import DEFAULT_MAX_SAMPLES, BufferedFeatureMetric
from .feature_stats import FeatureStats
from .fid import FrechetDistance
from .functional.clip_mmd import cmmd
from .functional.frechet import fid_from_stats
from .functional.inputs import MetricInputError, as_features, require_samples
from .functional.kernel_mmd import kid
from .functional.prdc import density_coverage, precision_recall
from .inception_score import InceptionScore
from .kid import KernelDistance
from .prdc import DensityCoverage, PrecisionRecall

METRICS = FEATURE_METRICS
"""Metric names ``compute_metrics`` accepts (see ``evalkit.metric_names``)."""

DEFAULTS: dict[str, Any] = {
    "keys": {"fid": "image", "kid": "image", "cmmd": "image", "pr": "image", "dc": "image", "is": IS_FEATURE,
             "clip": ("image", "text")},
    "real_stats": None,  # FeatureStats of the reference: FID uses it instead of real[keys["fid"]]
    "reference_as_state": False,  # FID adds real[keys["fid"]] to its synced states (each process has a shard)
    "max_samples": DEFAULT_MAX_SAMPLES,  # per-side cap for KID, CMMD, PR, DC, IS (deterministic sample)
    "seed": 0,  # KID subsets, buffer sampling, bootstrap
    "kid_subsets": 100,
    "kid_subset_size": 1000,  # lowered to the smaller set's size when needed (as clean-fid); recorded in extra
    "kid_degree": 3,
    "pr_k": 3,
    "dc_k": 5,
    "is_splits": 10,
    "cmmd_normalize": True,
    "ci": True,  # bootstrap CI of per-image metrics (CLIP score)
    "n_boot": 1000,
    "alpha": 0.05,
    "set_ci": False,  # also bootstrap set metrics by resampling fake features: n_boot_set full evaluations each
    "n_boot_set": 100,
}  # fmt: skip


@dataclass(frozen=True)
class MetricResult:
    """One figure: value, the number of generated samples it used, an optional CI and metric-specific extras."""

    value: float
    n: int
    ci: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    higher_is_better: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return d


def _get(features: Mapping[str, Any] | None, key: str, side: str, metric: str) -> Tensor:
    if features is None:
        raise MetricInputError(f"{metric} needs {side} features under {key!r}; no {side} feature set was given")
    if key not in features:
        raise MetricInputError(
            f"{metric} needs {side}[{key!r}] features; the {side} feature set has {sorted(features)}"
            " (set keys={...} to use another name)"
        )
    return as_features(features[key], f"{side}[{key!r}]")


def _float(t: Any) -> float:
    return float(t.item()) if isinstance(t, Tensor) else float(t)


def _fill(metric: BufferedFeatureMetric, real: Tensor | None, fake: Tensor) -> BufferedFeatureMetric:
    if real is not None:
        metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric


def _sizes(metric: BufferedFeatureMetric) -> dict[str, int]:
    out = {}
    for side in metric.sides:
        out[f"n_{side}"] = int(metric.features(side).shape[0])
        if metric.seen(side) > out[f"n_{side}"]:
            out[f"n_{side}_seen"] = metric.seen(side)
    return out


def compute_metrics(
    real: Mapping[str, Any] | None,
    fake: Mapping[str, Any],
    metrics: Iterable[str] | str = METRICS,
    **options: Any,
) -> dict[str, MetricResult]:
    """Compute the requested metrics from features; returns ``{result name: MetricResult}``.

    Args:
        real: reference feature set (None when only ``is``/``clip`` are asked, or FID with ``real_stats``).
        fake: generated-image feature set.
        metrics: names from ``METRICS``.
        **options: overrides of ``DEFAULTS`` (unknown names are an error).

    ``MetricResult.n`` is the number of generated samples used; ``extra`` holds ``n_real``, ``kid_std``,
    ``is_std``, the k or subset sizes used, and ``n_*_seen`` when a side was capped at ``max_samples``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> real = {"image": torch.randn(60, 4, generator=g)}
        >>> fake = {"image": torch.randn(60, 4, generator=g) + 0.5}
        >>> res = compute_metrics(real, fake, ["fid", "kid", "pr"], kid_subsets=10)
        >>> sorted(res), res["kid"].extra["subset_size"], res["fid"].n
        (['fid', 'kid', 'precision', 'recall'], 60, 60)
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise MetricInputError(f"compute_metrics: unknown option(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    opt = {**DEFAULTS, **options, "keys": {**DEFAULTS["keys"], **(options.get("keys") or {})}}
    names = [metrics] if isinstance(metrics, str) else list(dict.fromkeys(metrics))
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise MetricInputError(f"compute_metrics: unknown metric(s) {bad}; choose from {list(METRICS)}")
    if opt["reference_as_state"] and (opt["real_stats"] is not None or opt["set_ci"]):
        raise MetricInputError("compute_metrics: reference_as_state takes the real features, not real_stats or set_ci")
    out: dict[str, MetricResult] = {}
    for name in names:
        out.update(_COMPUTE[name](real, fake, opt))
    return out


def _result(name: str, value: Any, n: int, ci: tuple[float, float] | None = None, **extra: Any) -> MetricResult:
    return MetricResult(_float(value), int(n), ci, extra, name, HIGHER_IS_BETTER[name])


def _set_ci(opt: dict[str, Any], fn: Any, real: Tensor | None, fake: Tensor) -> tuple[float, float] | None:
    if not opt["set_ci"]:
        return None
    return bootstrap_set_ci(fn, real, fake, n_boot=opt["n_boot_set"], alpha=opt["alpha"], seed=opt["seed"])


def _fid(real: Mapping[str, Any] | None, fake: Mapping[str, Any], opt: dict[str, Any]) -> dict[str, MetricResult]:
    key = opt["keys"]["fid"]
    fake_x = _get(fake, key, "fake", "FID")
    if opt["reference_as_state"]:  # the real shard joins the synced sums, like the fake one
        metric = FrechetDistance(fake_x.shape[1])
        metric.update(_get(real, key, "real", "FID"), real=True)
        metric.update(fake_x, real=False)
        value = metric.compute()
        n_real, n_fake = metric.stats(real=True).n, metric.stats(real=False).n
        return {"fid": _result("fid", value, n_fake, None, n_real=n_real)}
    ref: FeatureStats = opt["real_stats"] or FeatureStats.from_features(_get(real, key, "real", "FID"))
    metric = FrechetDistance(fake_x.shape[1], reference=ref)
    metric.update(fake_x, real=False)
    # resample fake rows only; the reference enters through its statistics
    ci = _set_ci(opt, lambda _r, f: fid_from_stats(ref, FeatureStats.from_features(f)), None, fake_x)
    return {"fid": _result("fid", metric.compute(), fake_x.shape[0], ci, n_real=ref.n)}


def _kid(real: Mapping[str, Any] | None, fake: Mapping[str, Any], opt: dict[str, Any]) -> dict[str, MetricResult]:
    key, cap = opt["keys"]["kid"], opt["max_samples"]
    r_x, f_x = _get(real, key, "real", "KID"), _get(fake, key, "fake", "KID")
    size = min(opt["kid_subset_size"], cap)
    metric = _fill(
        KernelDistance(opt["kid_subsets"], max(size, 2), opt["kid_degree"], max_samples=cap, seed=opt["seed"]), r_x, f_x
    )
    r_k, f_k = metric.features("real"), metric.features("fake")
    metric.subset_size = size = min(size, r_k.shape[0], f_k.shape[0])
    mean, std = metric.compute()
    params = dict(subsets=opt["kid_subsets"], subset_size=size, degree=opt["kid_degree"], seed=opt["seed"])
    ci = _set_ci(opt, lambda r, f: kid(r, f, **params)[0], r_k, f_k)
    return {"kid": _result("kid", mean, f_k.shape[0], ci, kid_std=_float(std), **params, **_sizes(metric))}


def _cmmd(real: Mapping[str, Any] | None, fake: Mapping[str, Any], opt: dict[str, Any]) -> dict[str, MetricResult]:
    key, norm = opt["keys"]["cmmd"], opt["cmmd_normalize"]
    r_x, f_x = _get(real, key, "real", "CMMD"), _get(fake, key, "fake", "CMMD")
    metric = _fill(CMMD(normalize=norm, max_samples=opt["max_samples"], seed=opt["seed"]), r_x, f_x)
    r_k, f_k = metric.features("real"), metric.features("fake")
    ci = _set_ci(opt, lambda r, f: cmmd(r, f, norm), r_k, f_k)
    return {"cmmd": _result("cmmd", metric.compute(), f_k.shape[0], ci, **_sizes(metric))}


def _knn(
    name: str, real: Mapping[str, Any] | None, fake: Mapping[str, Any], opt: dict[str, Any]
) -> dict[str, MetricResult]:
    key, k = opt["keys"][name], opt["pr_k" if name == "pr" else "dc_k"]
    r_x, f_x = _get(real, key, "real", name.upper()), _get(fake, key, "fake", name.upper())
    cls, fn = (PrecisionRecall, precision_recall) if name == "pr" else (DensityCoverage, density_coverage)
    metric = _fill(cls(k=k, max_samples=opt["max_samples"], seed=opt["seed"]), r_x, f_x)
    r_k, f_k = metric.features("real"), metric.features("fake")
    values = metric.compute()
    out = {}
    for i, res_name in enumerate(RESULT_NAMES[name]):
        ci = _set_ci(opt, lambda r, f, i=i: fn(r, f, k)[i], r_k, f_k)
        out[res_name] = _result(res_name, values[i], f_k.shape[0], ci, k=k, **_sizes(metric))
    return out


def _is(real: Mapping[str, Any] | None, fake: Mapping[str, Any], opt: dict[str, Any]) -> dict[str, MetricResult]:
    logits = _get(fake, opt["keys"]["is"], "fake", "Inception Score")
    metric = InceptionScore(splits=opt["is_splits"], max_samples=opt["max_samples"], seed=opt["seed"])
    metric.update(logits)
    mean, std = metric.compute()
    extra = {"is_std": _float(std), "splits": opt["is_splits"], **_sizes(metric)}
    return {"is": _result("is", mean, metric.features("fake").shape[0], None, **extra)}


def _clip(real: Mapping[str, Any] | None, fake: Mapping[str, Any], opt: dict[str, Any]) -> dict[str, MetricResult]:
    img_key, txt_key = opt["keys"]["clip"]
    metric = CLIPScore()
    metric.update(_get(fake, img_key, "fake", "CLIP score"), _get(fake, txt_key, "fake", "CLIP score"))
    scores = metric.per_sample()
    ci = None
    if opt["ci"] and scores.shape[0] >= 2:
        ci = bootstrap_ci(scores, n_boot=opt["n_boot"], alpha=opt["alpha"], seed=opt["seed"])
    std = float(scores.std()) if scores.shape[0] >= 2 else 0.0
    return {"clip": _result("clip", metric.compute(), scores.shape[0], ci, std=std)}


_COMPUTE = {
    "fid": _fid, "kid": _kid, "cmmd": _cmmd, "is": _is, "clip": _clip,
    "pr": lambda r, f, o: _knn("pr", r, f, o), "dc": lambda r, f, o: _knn("dc", r, f, o),
}  # fmt: skip


def per_sample_ci(values: Tensor | np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> MetricResult:
    """Mean of per-image values (e.g. oracle accuracy 0/1 per image) with a bootstrap CI, as a ``MetricResult``.

    >>> r = per_sample_ci(np.array([1.0, 0.0, 1.0, 1.0]))
    >>> r.value, r.n
    (0.75, 4)
    """
    v = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
    require_samples(v.shape[0], 1, "a per-sample mean")
    ci = bootstrap_ci(v, n_boot=n_boot, alpha=alpha, seed=seed) if v.shape[0] >= 2 else None
    return MetricResult(float(v.mean()), int(v.shape[0]), ci)
