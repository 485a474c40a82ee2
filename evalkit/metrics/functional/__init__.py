"""Functional twins of the metric classes: plain functions from feature tensors to values."""

from .clip import clip_cosines, clip_score, clip_score_per_sample
from .clip_mmd import cmmd
from .frechet import fid, fid_from_stats, frechet_distance, sqrtm_psd, trace_sqrt_product
from .inception import inception_score, inception_score_splits
from .inputs import MetricInputError
from .kernel_mmd import kid, kid_subset_values, mmd2_unbiased, poly_kernel, poly_mmd2
from .prdc import density_coverage, knn_radii, precision_recall

__all__ = [
    "MetricInputError",
    "clip_cosines",
    "clip_score",
    "clip_score_per_sample",
    "cmmd",
    "density_coverage",
    "fid",
    "fid_from_stats",
    "frechet_distance",
    "inception_score",
    "inception_score_splits",
    "kid",
    "kid_subset_values",
    "knn_radii",
    "mmd2_unbiased",
    "poly_kernel",
    "poly_mmd2",
    "precision_recall",
    "sqrtm_psd",
    "trace_sqrt_product",
]
