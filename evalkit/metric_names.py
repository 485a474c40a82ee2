"""Names and directions of every figure the suite stores. No heavy imports, so the leaderboard,
report and recipe validation start fast."""

FEATURE_METRICS: tuple[str, ...] = ("fid", "kid", "cmmd", "pr", "dc", "is", "clip")
"""Metrics computed from features. ``"pr"`` yields results ``precision`` and ``recall``; ``"dc"`` yields
``density`` and ``coverage``; every other name yields one result under its own name."""

IS_FEATURE = "logits_unbiased"
"""The feature Inception Score reads: Inception's logits without the fc bias (torch-fidelity's name; torchmetrics
and the original code use the same), so scores compare with published ones."""

RESULT_NAMES: dict[str, tuple[str, ...]] = {
    "fid": ("fid",), "kid": ("kid",), "cmmd": ("cmmd",), "pr": ("precision", "recall"),
    "dc": ("density", "coverage"), "is": ("is",), "clip": ("clip",),
}  # fmt: skip

HIGHER_IS_BETTER: dict[str, bool] = {
    "fid": False, "kid": False, "cmmd": False, "precision": True, "recall": True,
    "density": True, "coverage": True, "is": True, "clip": True,
}  # fmt: skip

RECIPE_METRICS: tuple[str, ...] = (*FEATURE_METRICS, "oracle", "speed")
"""What a recipe may ask for: the feature metrics, the shapes-world oracle and generation speed."""

QUALITY_DIRECTIONS: dict[str, bool] = {**HIGHER_IS_BETTER, "oracle": True}
SPEED_DIRECTIONS: dict[str, bool] = {
    "images_per_s": True, "latency_p50_s": False, "latency_p95_s": False, "nfe": False, "peak_mem_mb": False,
}  # fmt: skip
