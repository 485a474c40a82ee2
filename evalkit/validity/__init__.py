"""Metric validity: how far each metric agrees with the ground truth of the shapes world.

``python -m evalkit validate`` (``evalkit.validity.run.validate``) measures, for one feature extractor:

1. disturbance ladders (``ladders``): FID, KID, CMMD, precision, recall, density, coverage and CLIP score
   over 6 disturbances × 4 levels; which ladders worsen monotonically;
2. rank agreement (``rank_agreement``): Kendall τ and Spearman ρ of each metric's ranking of the generators of
   a sweep run (``recipes/steps-sweep.yaml``) against oracle accuracy, bootstrap CIs over generators;
3. per-image agreement (``per_image``): ROC AUC of per-image CLIP score for the oracle's verdict, per category;
4. sample efficiency (``efficiency``): value and spread across subsets at n = 100 ... 2000;
5. compositional blind spots (``blind_spots``): CLIP score choosing a caption over its binding/relation foil.

Outputs: ``validity.json`` (everything), ``summary.md`` and ``plots/`` in the output folder. The figures shown
beside each metric on the leaderboard and in the HTML report (τ, ρ, ladders monotone) are stored in the results
database's ``validity`` table, one row per (metric, extractor), newest wins.
"""

from .config import PARTS, ValidityRecipe, load_validity_recipe
from .stats import kendall_tau, paired_bootstrap_ci, roc_auc, spearman_rho, trend, worsens_monotonically

__all__ = [
    "PARTS", "ValidityRecipe", "kendall_tau", "load_validity_recipe", "paired_bootstrap_ci", "roc_auc",
    "spearman_rho", "trend", "worsens_monotonically",
]  # fmt: skip
