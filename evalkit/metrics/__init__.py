"""Metrics computed from features (never images or networks): torchmetrics classes with functional twins.

Classes take ``update(features, real=...)`` (``CLIPScore``: ``update(image_embeds, text_embeds)``;
``InceptionScore``: ``update(logits)``) and merge across processes through torchmetrics' own sync.
``compute_metrics`` is the one-call entry point; ``evalkit.metrics.functional`` holds the plain functions.
"""

from .bootstrap import bootstrap_ci, bootstrap_set_ci
from .clip_score import CLIPScore
from .cmmd import CMMD
from .compute import DEFAULTS, HIGHER_IS_BETTER, METRICS, RESULT_NAMES, MetricResult, compute_metrics, per_sample_ci
from .feature_buffer import DEFAULT_MAX_SAMPLES, BufferedFeatureMetric, keep_bottom_k, row_keys
from .feature_stats import FeatureStats
from .fid import FrechetDistance
from .functional.inputs import MetricInputError
from .inception_score import InceptionScore
from .kid import KernelDistance
from .prdc import DensityCoverage, PrecisionRecall
from .sync import synced

__all__ = [
    "CMMD", "DEFAULTS", "DEFAULT_MAX_SAMPLES", "HIGHER_IS_BETTER", "METRICS", "RESULT_NAMES",
    "BufferedFeatureMetric", "CLIPScore", "DensityCoverage", "FeatureStats", "FrechetDistance", "InceptionScore",
    "KernelDistance", "MetricInputError", "MetricResult", "PrecisionRecall",
    "bootstrap_ci", "bootstrap_set_ci", "compute_metrics", "keep_bottom_k", "per_sample_ci", "row_keys", "synced",
]  # fmt: skip
