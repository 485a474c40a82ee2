"""Metric behaviour on shapes-world renders with the zoo judge (after Heusel et al. 2017, appendix A1).

FID, KID and CMMD must rise at every one of the four levels of each disturbance in ``evalkit.disturb``,
starting from a real-vs-real baseline: reference renders against a disjoint set of renders, which is
then disturbed. CLIP score of images with their own captions must beat the same captions shuffled.

Needs the trained judge (``zoo/judge``); skipped until it exists. ``EVALKIT_TEST_JUDGE=DIR`` runs the
module against another judge-layout folder (e.g. a checkpoint exported while training).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evalkit.disturb import DISTURBANCES, apply
from evalkit.features import FeatureCache, encode_texts, extract, get_extractor
from evalkit.features.openclip import DEFAULT_JUDGE_DIR, WEIGHTS_FILE
from evalkit.metrics import compute_metrics
from evalkit.shapes import render, sample

N = 300  # images per set: level 1 of every disturbance clears the baseline by a wide margin at this size
METRICS = ("fid", "kid", "cmmd")
JUDGE_DIR = Path(os.environ.get("EVALKIT_TEST_JUDGE") or DEFAULT_JUDGE_DIR)

pytestmark = pytest.mark.skipif(
    not (JUDGE_DIR / WEIGHTS_FILE).is_file(),
    reason=f"no trained judge at {JUDGE_DIR} (train it with `python -m evalkit.zoo train judge`, "
    "or set EVALKIT_TEST_JUDGE=DIR to a judge-layout folder)",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The judge, one feature cache for the module, reference and test renders and their features."""
    ext = get_extractor(f"judge:{JUDGE_DIR}")
    cache = FeatureCache(tmp_path_factory.mktemp("behaviour_features"))
    ref_samples, test_samples = sample(N, seed=101), sample(N, seed=202)
    ref = [render(s.scene) for s in ref_samples]
    test = [render(s.scene) for s in test_samples]
    return {
        "ext": ext,
        "cache": cache,
        "test": test,
        "captions": [s.caption for s in test_samples],
        "ref_features": extract(ext, ref, batch_size=128, cache=cache),
        "test_features": extract(ext, test, batch_size=128, cache=cache),
    }


def _scores(world, features) -> dict[str, float]:
    res = compute_metrics(world["ref_features"], features, METRICS, kid_subsets=10, ci=False)
    return {m: res[m].value for m in METRICS}


@pytest.fixture(scope="module")
def curves(world) -> dict[str, dict[str, list[float]]]:
    """{disturbance: {metric: [baseline, level 1, ..., level 4]}}."""
    baseline = _scores(world, world["test_features"])
    out = {}
    for name in DISTURBANCES:
        per_level = [baseline]
        for level in range(1, 5):
            images = apply(name, world["test"], level, seed=7)
            per_level.append(_scores(world, extract(world["ext"], images, batch_size=128, cache=world["cache"])))
        out[name] = {m: [s[m] for s in per_level] for m in METRICS}
    return out


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("name", DISTURBANCES)
def test_metric_rises_with_every_level(curves, name, metric):
    values = curves[name][metric]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(step > 0 for step in steps), f"{metric} over baseline + 4 levels of {name}: {values}"


def test_clip_score_prefers_matched_captions(world):
    captions = world["captions"]
    text = encode_texts(world["ext"], captions, cache=world["cache"])
    image = world["test_features"]["image"]
    shuffled = [(i * 7 + 3) % N for i in range(N)]  # a fixed permutation with no fixed point (7 and N coprime)
    assert all(shuffled[i] != i for i in range(N))
    matched = compute_metrics(None, {"image": image, "text": text}, ["clip"])["clip"]
    other = compute_metrics(None, {"image": image, "text": text[shuffled]}, ["clip"])["clip"]
    assert matched.value > other.value
    assert matched.ci[0] > other.ci[1], (matched, other)  # separated, not just ahead
