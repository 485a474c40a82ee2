"""Precision/recall and density/coverage against a direct numpy/scipy transcription, plus the extreme cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from evalkit.metrics import DensityCoverage, MetricInputError, PrecisionRecall
from evalkit.metrics.functional import density_coverage, knn_radii, precision_recall


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def prdc_reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Kynkäänniemi et al. / Naeem et al. on full distance matrices (``<=`` ties, k-th neighbour excluding self)."""
    r_real = np.sort(cdist(real, real), axis=1)[:, k]
    r_fake = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(real, fake)  # [n_real, n_fake]
    return {
        "precision": (d <= r_real[:, None]).any(axis=0).mean(),
        "recall": (d <= r_fake[None, :]).any(axis=1).mean(),
        "density": (d <= r_real[:, None]).sum(axis=0).mean() / k,
        "coverage": (d.min(axis=1) <= r_real).mean(),
    }


def data(seed: int, n_real: int = 120, n_fake: int = 90, d: int = 5, shift: float = 0.7, scale: float = 1.3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_real, d)), rng.normal(size=(n_fake, d)) * scale + shift


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [3, 5])
def test_prdc_matches_reference(seed, k):
    real, fake = data(seed)
    ref = prdc_reference(real, fake, k)
    assert 0 < ref["precision"] < 1 and 0 < ref["recall"] <= 1 and 0 < ref["coverage"] < 1
    p, r = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k, chunk_size=16)
    dens, cov = density_coverage(real, fake, k=k, chunk_size=16)  # numpy arrays are accepted too
    assert float(p) == pytest.approx(ref["precision"], abs=1e-12)
    assert float(r) == pytest.approx(ref["recall"], abs=1e-12)
    assert float(dens) == pytest.approx(ref["density"], abs=1e-12)
    assert float(cov) == pytest.approx(ref["coverage"], abs=1e-12)


def test_knn_radii_match_sorted_distances():
    real, _ = data(3)
    expected = np.sort(cdist(real, real), axis=1)[:, 4]
    np.testing.assert_allclose(knn_radii(real, k=4, chunk_size=7).numpy(), expected, rtol=1e-12)


def test_perfect_and_disjoint_cases():
    real, _ = data(4)
    x = torch.from_numpy(real)
    p, r = precision_recall(x, x.clone())
    dens, cov = density_coverage(x, x.clone())
    assert float(p) == 1.0 and float(r) == 1.0 and float(cov) == 1.0
    assert float(dens) == pytest.approx(prdc_reference(real, real, 5)["density"], abs=1e-12)
    far = x + 1000.0
    assert [float(v) for v in precision_recall(x, far)] == [0.0, 0.0]
    assert [float(v) for v in density_coverage(x, far)] == [0.0, 0.0]
    # mode collapse: fake samples all near one real point -> high precision, low recall and coverage
    collapsed = x[:1] + 1e-3 * torch.randn(50, x.shape[1], generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    p, r = precision_recall(x, collapsed)
    _, cov = density_coverage(x, collapsed)
    assert float(p) == 1.0 and float(r) < 0.1 and float(cov) < 0.1


def test_metric_classes_match_functional_and_merge():
    real, fake = (torch.from_numpy(a).float() for a in data(5))
    pr, dc = PrecisionRecall(), DensityCoverage()
    parts = [PrecisionRecall(), PrecisionRecall()]
    for m in (pr, dc):
        m.update(real, real=True)
        m.update(fake, real=False)
    parts[0].update(real[:50], real=True)
    parts[0].update(fake[:40], real=False)
    parts[1].update(real[50:], real=True)
    parts[1].update(fake[40:], real=False)
    parts[1].merge_state(parts[0])
    assert [float(v) for v in pr.compute()] == [float(v) for v in precision_recall(real, fake, k=3)]
    assert [float(v) for v in parts[1].compute()] == [float(v) for v in pr.compute()]
    assert [float(v) for v in dc.compute()] == [float(v) for v in density_coverage(real, fake, k=5)]
    assert pr.k == 3 and dc.k == 5 and pr.higher_is_better and dc.higher_is_better


def test_too_few_samples_for_k_is_clear():
    real, fake = data(6, n_real=3, n_fake=20)
    with pytest.raises(MetricInputError, match="k=3 \\(real side\\)"):
        precision_recall(real, fake, k=3)
    with pytest.raises(MetricInputError, match="dimensions differ"):
        precision_recall(real, fake[:, :2], k=1)


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_exact_ties_resolve_like_the_full_matrix(chunk_size):
    # integer grid points: many distances tie exactly with radii; block shapes must not flip them
    rng = np.random.default_rng(7)
    real = rng.integers(0, 4, size=(80, 3)).astype(np.float64)
    fake = rng.integers(0, 5, size=(60, 3)).astype(np.float64)
    for k in (3, 5):
        ref = prdc_reference(real, fake, k)
        p, r = precision_recall(real, fake, k=k, chunk_size=chunk_size)
        dens, cov = density_coverage(real, fake, k=k, chunk_size=chunk_size)
        assert [float(p), float(r), float(dens), float(cov)] == pytest.approx(
            [ref["precision"], ref["recall"], ref["density"], ref["coverage"]], abs=1e-12
        )
    x = torch.from_numpy(data(8)[0])
    assert float(density_coverage(x, x.clone(), k=5, chunk_size=chunk_size)[0]) == pytest.approx(1.2, abs=1e-12)
