"""FID and FeatureStats: against scipy's sqrtm and torchmetrics, exact merging, degenerate covariances."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from evalkit.errors import UserError
from evalkit.metrics import FeatureStats, FrechetDistance, MetricInputError
from evalkit.metrics.functional import fid, fid_from_stats, frechet_distance


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matrices: torch's intra-op thread pool only adds contention on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyExtractor(nn.Module):
    """Deterministic stand-in for a feature network: flatten uint8 images, fixed random projection."""

    def __init__(self, dim: int = 12, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.proj = nn.Linear(3 * 8 * 8, dim, dtype=dtype)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 3 * 8 * 8, generator=g) / 8)
            self.proj.bias.copy_(torch.randn(dim, generator=g))
        self.num_features = dim

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.proj(imgs.flatten(1).to(self.proj.weight.dtype) / 255)


def images(n: int, seed: int, high: int = 256) -> torch.Tensor:
    return torch.randint(0, high, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def randn(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


def assert_stats_close(a: FeatureStats, b: FeatureStats, rtol: float = 1e-12) -> None:
    assert a.n == b.n
    torch.testing.assert_close(a.sum, b.sum, rtol=rtol, atol=rtol * float(b.sum.abs().max()))
    torch.testing.assert_close(a.outer, b.outer, rtol=rtol, atol=rtol * float(b.outer.abs().max()))


@pytest.mark.parametrize("d", [3, 16, 40])
def test_fid_matches_scipy_sqrtm(d):
    x = randn(300, d, seed=1)
    y = randn(250, d, seed=2, shift=0.3, scale=1.5) @ randn(d, d, seed=3) / np.sqrt(d)
    ours = float(fid(x, y))
    ref = scipy_fid(x.numpy(), y.numpy())
    assert ref > 0.1
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fid_matches_torchmetrics_with_same_extractor():
    net = TinyExtractor()
    real_imgs, fake_imgs = images(120, seed=1), images(100, seed=2, high=200)
    tm = FrechetInceptionDistance(feature=net)
    ours = FrechetDistance(num_features=net.num_features)
    for batch in real_imgs.split(32):
        tm.update(batch, real=True)
        ours.update(net(batch), real=True)
    for batch in fake_imgs.split(32):
        tm.update(batch, real=False)
        ours.update(net(batch), real=False)
    expected, value = float(tm.compute()), float(ours.compute())
    assert expected > 0.01
    assert value == pytest.approx(expected, rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero_and_never_negative():
    x = randn(200, 8, seed=4)
    assert 0.0 <= float(fid(x, x)) < 1e-6
    # D > N: singular covariances (rank 9 in 32 dimensions); eigenvalues near 0 must not give a negative FID
    few = randn(10, 32, seed=5)
    assert 0.0 <= float(fid(few, few)) < 1e-6
    other = randn(10, 32, seed=6)
    value = float(fid(few, other))
    assert np.isfinite(value) and value > 0
    # exactly collinear features (rank 1) on one side
    line = randn(50, 1, seed=7) @ torch.ones(1, 6, dtype=torch.float64)
    assert 0.0 <= float(fid(line, line)) < 1e-6
    assert float(fid(line, randn(50, 6, seed=8))) > 0


def test_frechet_distance_is_clamped_at_zero():
    # exact algebra gives 0; rounding in the trace term would otherwise be allowed to go below
    sigma = torch.diag(torch.tensor([1e8, 1.0, 1e-8], dtype=torch.float64))
    mu = torch.zeros(3, dtype=torch.float64)
    assert float(frechet_distance(mu, sigma, mu, sigma)) >= 0.0


def test_shards_merge_exactly():
    x = randn(301, 10, seed=9, shift=2.0)
    whole = FeatureStats.from_features(x)
    shards = [FeatureStats.from_features(part) for part in (x[:17], x[17:160], x[160:])]
    merged = shards[0].merge(shards[1], shards[2])
    assert_stats_close(merged, whole)
    assert_stats_close(shards[2] + shards[0] + shards[1], whole)
    assert_stats_close(FeatureStats.empty(10) + whole, whole)
    torch.testing.assert_close(merged.cov(), torch.from_numpy(np.cov(x.numpy(), rowvar=False)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(merged.mean(), x.mean(0), rtol=1e-12, atol=1e-12)


def test_metric_merge_state_equals_single_metric():
    real, fake = randn(150, 6, seed=10), randn(140, 6, seed=11, shift=0.5)
    whole = FrechetDistance(6)
    whole.update(real, real=True)
    whole.update(fake, real=False)
    parts = []
    for i in range(3):
        m = FrechetDistance(6)
        m.update(real[i::3], real=True)
        m.update(fake[i::3], real=False)
        parts.append(m)
    parts[0].merge_state(parts[1])
    parts[0].merge_state(parts[2].metric_state)
    for real_side in (True, False):
        assert_stats_close(parts[0].stats(real_side), whole.stats(real_side))
    assert float(parts[0].compute()) == pytest.approx(float(whole.compute()), rel=1e-10)
    assert float(whole.compute()) == pytest.approx(float(fid(real, fake)), rel=1e-10)


def test_fid_independent_of_update_batch_size():
    real, fake = randn(130, 5, seed=12), randn(128, 5, seed=13, scale=2.0)
    values = []
    for bs in (1, 64, 1000):
        m = FrechetDistance(5)
        for part in real.split(bs):
            m.update(part, real=True)
        for part in fake.split(bs):
            m.update(part, real=False)
        values.append(float(m.compute()))
    assert values[0] == pytest.approx(values[1], rel=1e-10)
    assert values[1] == pytest.approx(values[2], rel=1e-10)


def test_fewer_than_two_samples_is_a_clear_error():
    one = randn(1, 4, seed=14)
    many = randn(10, 4, seed=15)
    with pytest.raises(MetricInputError, match="at least 2 samples"):
        fid(one, many)
    with pytest.raises(ValueError, match="real side"):
        fid(one, many)
    with pytest.raises(UserError, match="fake side"):
        fid(many, one)
    m = FrechetDistance(4)
    m.update(many, real=True)
    with pytest.raises(MetricInputError, match="fake side"):
        m.compute()


def test_bad_inputs_are_clear_errors():
    m = FrechetDistance(4)
    with pytest.raises(MetricInputError, match="expected 4 features"):
        m.update(randn(3, 5, seed=0), real=True)
    with pytest.raises(MetricInputError, match="NaN"):
        m.update(torch.full((3, 4), float("nan")), real=True)
    with pytest.raises(MetricInputError, match="dimensions differ"):
        fid(randn(5, 3, seed=0), randn(5, 4, seed=0))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_stats_save_load_round_trip(tmp_path, suffix):
    stats = FeatureStats.from_features(randn(40, 7, seed=16), meta={"extractor": "tiny", "n_images": "40"})
    path = stats.save(tmp_path / f"ref{suffix}")
    loaded = FeatureStats.load(path)
    assert loaded.n == stats.n and loaded.meta == stats.meta
    assert torch.equal(loaded.sum, stats.sum) and torch.equal(loaded.outer, stats.outer)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_stats_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        FeatureStats.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read"):
        FeatureStats.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "foreign.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(UserError, match="cannot read|not an evalkit"):
        FeatureStats.load(tmp_path / "foreign.npz")
    with pytest.raises(UserError, match="must end in"):
        FeatureStats.empty(3).save(tmp_path / "stats.pt")


def test_from_mean_cov_rebuilds_sums():
    x = randn(60, 4, seed=17)
    stats = FeatureStats.from_features(x)
    rebuilt = FeatureStats.from_mean_cov(stats.mean(), stats.cov(), stats.n)
    assert_stats_close(rebuilt, stats, rtol=1e-10)


def test_reference_stats_and_reset_real_features():
    real, fake = randn(80, 5, seed=18), randn(70, 5, seed=19, shift=1.0)
    expected = float(fid(real, fake))
    ref = FeatureStats.from_features(real)
    m = FrechetDistance(5, reference=ref)
    m.update(fake, real=False)
    assert float(m.compute()) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(MetricInputError, match="fixed by `reference`"):
        m.update(real, real=True)
    m.reset()  # the reference is not a state: it survives reset
    m.update(fake, real=False)
    assert float(m.compute()) == pytest.approx(expected, rel=1e-10)

    kept = FrechetDistance(5, reset_real_features=False)
    kept.update(real, real=True)
    kept.update(fake[:10], real=False)
    kept.reset()
    assert kept.stats(real=True).n == 80 and kept.stats(real=False).n == 0
    kept.update(fake, real=False)
    assert float(kept.compute()) == pytest.approx(expected, rel=1e-10)

    fresh = FrechetDistance(5)
    fresh.update(real, real=True)
    fresh.reset()
    assert fresh.stats(real=True).n == 0


def test_update_stats_equals_update_features():
    real, fake = randn(50, 3, seed=20), randn(50, 3, seed=21, shift=0.2)
    m = FrechetDistance(3)
    m.update_stats(FeatureStats.from_features(real[:20]), real=True)
    m.update(real[20:], real=True)
    m.update_stats(FeatureStats.from_features(fake), real=False)
    assert float(m.compute()) == pytest.approx(
        float(fid_from_stats(FeatureStats.from_features(real), FeatureStats.from_features(fake))), rel=1e-10
    )
