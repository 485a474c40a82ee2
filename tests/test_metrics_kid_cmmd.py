"""KID against torchmetrics on identical subsets, CMMD against the google-research formula, bounded buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

from evalkit.metrics import CMMD, KernelDistance, MetricInputError, row_keys
from evalkit.metrics.feature_buffer import keep_bottom_k
from evalkit.metrics.functional import cmmd, kid, kid_subset_values, poly_mmd2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyExtractor(nn.Module):
    def __init__(self, dim: int = 10, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(99)
        self.proj = nn.Linear(3 * 8 * 8, dim, dtype=dtype)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 3 * 8 * 8, generator=g) / 8)
            self.proj.bias.zero_()
        self.num_features = dim

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.proj(imgs.flatten(1).to(self.proj.weight.dtype) / 255)


def images(n: int, seed: int, high: int = 256) -> torch.Tensor:
    return torch.randint(0, high, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def randn(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kid_matches_torchmetrics_on_the_same_subsets(dtype):
    net = TinyExtractor(dtype=dtype)
    real_imgs, fake_imgs = images(60, seed=1), images(70, seed=2, high=180)
    tm = KernelInceptionDistance(feature=net, subsets=7, subset_size=40)
    ours = KernelDistance(subsets=7, subset_size=40, seed=123, buffer_dtype=dtype)
    for batch in real_imgs.split(25):
        tm.update(batch, real=True)
        ours.update(net(batch), real=True)
    for batch in fake_imgs.split(25):
        tm.update(batch, real=False)
        ours.update(net(batch), real=False)
    torch.manual_seed(123)  # torchmetrics draws its subsets from the global generator
    tm_mean, tm_std = tm.compute()
    mean, std = ours.compute()
    rel = 1e-10 if dtype == torch.float64 else 1e-4
    assert float(tm_mean) > 1e-3
    assert float(mean) == pytest.approx(float(tm_mean), rel=rel)
    assert float(std) == pytest.approx(float(tm_std), rel=max(rel, 1e-3) if dtype == torch.float32 else rel)


def test_per_subset_mmd_matches_torchmetrics_on_identical_index_sets():
    x, y = randn(30, 6, seed=3).double(), randn(30, 6, seed=4, shift=0.4).double()
    for gamma, coef, degree in [(None, 1.0, 3), (0.5, 2.0, 2)]:
        assert float(poly_mmd2(x, y, degree, gamma, coef)) == pytest.approx(
            float(poly_mmd(x, y, degree, gamma, coef)), rel=1e-12
        )


def test_kid_is_seeded_and_near_zero_for_one_distribution():
    x, y = randn(200, 8, seed=5), randn(200, 8, seed=6)
    a = kid_subset_values(x, y, subsets=5, subset_size=50, seed=1)
    b = kid_subset_values(x, y, subsets=5, subset_size=50, seed=1)
    c = kid_subset_values(x, y, subsets=5, subset_size=50, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    same, _ = kid(x, y, subsets=20, subset_size=100)
    shifted, _ = kid(x, y + 1.0, subsets=20, subset_size=100)
    assert abs(float(same)) < 0.05 < float(shifted)


def test_kid_subset_size_errors_are_clear():
    with pytest.raises(MetricInputError, match="lower subset_size"):
        kid(randn(10, 4, seed=0), randn(50, 4, seed=1), subsets=2, subset_size=20)
    with pytest.raises(MetricInputError, match="subset_size"):
        KernelDistance(subset_size=20_000)


def cmmd_reference(x: np.ndarray, y: np.ndarray, normalize: bool = True) -> float:
    """Line-by-line numpy transcription of google-research cmmd/distance.py ``mmd`` (after L2 normalisation as
    cmmd/embedding.py's CLIP encoder does)."""
    if normalize:
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    sigma, scale = 10, 1000
    x_sqnorms = np.diag(np.matmul(x, x.T))
    y_sqnorms = np.diag(np.matmul(y, y.T))
    gamma = 1 / (2 * sigma**2)
    k_xx = np.mean(np.exp(-gamma * (-2 * np.matmul(x, x.T) + x_sqnorms[:, None] + x_sqnorms[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * np.matmul(x, y.T) + x_sqnorms[:, None] + y_sqnorms[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * np.matmul(y, y.T) + y_sqnorms[:, None] + y_sqnorms[None, :])))
    return scale * (k_xx + k_yy - 2 * k_xy)


@pytest.mark.parametrize("normalize", [True, False])
def test_cmmd_matches_google_research_formula(normalize):
    x = randn(90, 16, seed=7).double()
    y = (randn(70, 16, seed=8, shift=0.3) * 2).double()
    if not normalize:  # the unnormalised formula on raw vectors of moderate norm
        x, y = x * 3, y * 3
    ref = cmmd_reference(x.numpy(), y.numpy(), normalize)
    assert ref > 1e-3
    assert float(cmmd(x, y, normalize=normalize, chunk_size=7)) == pytest.approx(ref, rel=1e-10)
    assert float(cmmd(x, y, normalize=normalize)) == pytest.approx(ref, rel=1e-10)
    m = CMMD(normalize=normalize, buffer_dtype=torch.float64)
    for part in x.split(32):
        m.update(part, real=True)
    m.update(y, real=False)
    assert float(m.compute()) == pytest.approx(ref, rel=1e-10)


def test_cmmd_of_a_set_with_itself_is_zero():
    x = randn(50, 8, seed=9)
    assert abs(float(cmmd(x, x))) < 1e-9
    assert float(cmmd(x, x + 0.5)) > 0


def test_buffer_below_cap_keeps_everything_in_order():
    x = randn(57, 5, seed=10)
    m = CMMD(max_samples=100)
    for part in x.split(10):
        m.update(part, real=True)
    assert torch.equal(m.features("real"), x)
    assert m.seen("real") == 57 and m.features("fake").shape[0] == 0


def test_buffer_is_bounded_deterministic_and_mergeable():
    x = randn(2000, 6, seed=11)
    cap = 300
    expected, _ = keep_bottom_k(x, row_keys(x, seed=0), cap)

    def fill(parts, **kw):
        m = KernelDistance(subsets=2, subset_size=20, max_samples=cap, **kw)
        for part in parts:
            m.update(part, real=True)
            held = sum(f.shape[0] for f in m.real_features)
            assert held <= 2 * cap  # memory bound between trims
        return m

    for bs in (1, 64, 2000):
        m = fill(x.split(bs)) if bs != 1 else fill(x[:600].split(1) + x[600:].split(700))
        assert torch.equal(m.features("real"), expected)
        assert m.seen("real") == 2000

    # three "processes", each with a strided shard, merged through torchmetrics' merge_state
    shards = [fill(x[i::3].split(50)) for i in range(3)]
    shards[0].merge_state(shards[1])
    shards[0].merge_state(shards[2])
    merged = shards[0].features("real")
    assert merged.shape[0] == cap and shards[0].seen("real") == 2000
    as_rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731  (same set; merge order is shard order)
    assert as_rows(merged) == as_rows(expected)

    # a uniform sample of the stream: about cap/2 rows from each half
    first_half = set(map(tuple, x[:1000].tolist()))
    from_first = sum(tuple(r) in first_half for r in expected.tolist())
    assert 0.4 * cap < from_first < 0.6 * cap

    other_seed, _ = keep_bottom_k(x, row_keys(x, seed=1), cap)
    assert not torch.equal(other_seed, expected)


def test_kid_values_equal_after_merge_below_cap():
    real, fake = randn(80, 4, seed=12), randn(90, 4, seed=13, shift=0.5)
    whole = KernelDistance(subsets=4, subset_size=30, seed=5)
    whole.update(real, real=True)
    whole.update(fake, real=False)
    a, b = KernelDistance(subsets=4, subset_size=30, seed=5), KernelDistance(subsets=4, subset_size=30, seed=5)
    a.update(real[:30], real=True)
    a.update(fake[:45], real=False)
    b.update(real[30:], real=True)
    b.update(fake[45:], real=False)
    b.merge_state(a)  # incoming rows come first: a's then b's, i.e. the original order
    assert torch.equal(b.features("real"), real) and torch.equal(b.features("fake"), fake)
    assert [float(v) for v in b.compute()] == [float(v) for v in whole.compute()]


def test_reset_real_features_false_keeps_reference_buffer():
    real, fake = randn(40, 4, seed=14), randn(40, 4, seed=15)
    m = CMMD(reset_real_features=False)
    m.update(real, real=True)
    m.update(fake, real=False)
    m.reset()
    assert torch.equal(m.features("real"), real) and m.features("fake").shape[0] == 0
    m2 = CMMD()
    m2.update(real, real=True)
    m2.reset()
    assert m2.features("real").shape[0] == 0 and m2.seen("real") == 0


def test_buffer_rejects_changing_dimension():
    m = CMMD()
    m.update(randn(5, 4, seed=0), real=True)
    with pytest.raises(MetricInputError, match="dimension changed"):
        m.update(randn(5, 3, seed=0), real=True)
