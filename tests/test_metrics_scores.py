"""Inception Score and CLIP score against torchmetrics; bootstrap confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.image.inception import InceptionScore as TMInceptionScore
from torchmetrics.multimodal.clip_score import CLIPScore as TMCLIPScore

from evalkit.metrics import CLIPScore, InceptionScore, MetricInputError, bootstrap_ci, bootstrap_set_ci
from evalkit.metrics.functional import clip_cosines, clip_score, clip_score_per_sample, fid, inception_score


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyClassifier(nn.Module):
    """Fixed projection of uint8 images to 7 logits (float64 so torchmetrics' arithmetic is float64 too)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.proj = nn.Linear(3 * 4 * 4, 7, dtype=torch.float64)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(7, 3 * 4 * 4, generator=g, dtype=torch.float64))
            self.proj.bias.zero_()

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.proj(imgs.flatten(1).double() / 255 * 4)


@pytest.mark.filterwarnings("ignore:Metric `InceptionScore` will save")
def test_inception_score_matches_torchmetrics():
    net = TinyClassifier()
    imgs = torch.randint(0, 256, (60, 3, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    splits = 5
    tm = TMInceptionScore(feature=net, splits=splits)
    ours = InceptionScore(splits=splits, shuffle_seed=11)
    for batch in imgs.split(16):
        tm.update(batch)
        ours.update(net(batch))
    torch.manual_seed(11)  # torchmetrics shuffles with the global generator
    tm_mean, tm_std = tm.compute()
    mean, std = ours.compute()
    assert 1.0 < float(mean) < 7.0
    # torchmetrics keeps some float32 arithmetic: agreement to ~1e-8 relative
    assert float(mean) == pytest.approx(float(tm_mean), rel=1e-6)
    # ours: population std (original code, torch-fidelity); torchmetrics: sample std
    assert float(std) == pytest.approx(float(tm_std) * math.sqrt((splits - 1) / splits), rel=1e-5)


def test_inception_score_extremes():
    uniform = torch.zeros(30, 10)
    assert float(inception_score(uniform, splits=3)[0]) == pytest.approx(1.0, abs=1e-12)
    confident = torch.eye(6).repeat(4, 1) * 60  # each split of 6 rows covers all 6 classes once
    mean, std = inception_score(confident, splits=4)
    assert float(mean) == pytest.approx(6.0, rel=1e-6) and float(std) < 1e-6
    with pytest.raises(MetricInputError, match="at least 10 samples"):
        inception_score(torch.zeros(5, 3), splits=10)


class EmbeddingLookupCLIP(nn.Module):
    """Stands in for a CLIP model inside torchmetrics' real ``CLIPScore``: 'images' carry a row index in their
    first pixel and texts are that index as a string; features come from fixed embedding tables."""

    def __init__(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("image_table", image_embeds.clone())
        self.register_buffer("text_table", text_embeds.clone())
        self.config = object()  # no text_config: torchmetrics skips its truncation check

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_table[pixel_values[:, 0, 0, 0].long()]

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_table[input_ids[:, 0]]


class IndexProcessor:
    def __call__(self, images=None, text=None, return_tensors="pt", padding=True):
        if images is not None:
            return {"pixel_values": torch.stack(images)}
        ids = torch.tensor([[int(t)] for t in text])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def torchmetrics_clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    n = image_embeds.shape[0]
    model = EmbeddingLookupCLIP(image_embeds, text_embeds)
    metric = TMCLIPScore(model_name_or_path=lambda: (model, IndexProcessor()))
    carriers = torch.arange(n, dtype=torch.float64)[:, None, None, None].expand(n, 3, 2, 2).clone()
    metric.update(list(carriers), [str(i) for i in range(n)])
    return float(metric.compute())


def paired_embeddings(n: int, d: int, seed: int, alignment: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g, dtype=torch.float64)
    txt = alignment * img + torch.randn(n, d, generator=g, dtype=torch.float64)
    return img, txt


def test_clip_score_equals_torchmetrics_when_all_cosines_are_positive():
    img, txt = paired_embeddings(40, 8, seed=2, alignment=3.0)
    assert bool((clip_cosines(img, txt) > 0).all())
    expected = torchmetrics_clip_score(img, txt)
    assert float(clip_score(img, txt)) == pytest.approx(expected, rel=1e-6)  # torchmetrics' state is float32
    m = CLIPScore()
    for a, b in zip(img.split(7), txt.split(7)):
        m.update(a, b)
    assert float(m.compute()) == pytest.approx(expected, rel=1e-6)
    assert m.per_sample().shape == (40,)


def test_clip_score_differs_from_torchmetrics_exactly_as_documented():
    img, txt = paired_embeddings(50, 8, seed=3, alignment=0.3)
    cos = clip_cosines(img, txt)
    assert bool((cos < 0).any()) and float(cos.mean()) > 0
    ours, theirs = float(clip_score(img, txt)), torchmetrics_clip_score(img, txt)
    # torchmetrics: max(mean(100 cos), 0); ours: mean(100 max(cos, 0)); difference = 100 mean(max(-cos, 0))
    assert ours - theirs == pytest.approx(float(100 * (-cos).clamp(min=0).mean()), abs=1e-4)
    assert ours > theirs
    # every cosine negative: torchmetrics clamps the mean to 0, ours is 0 per sample
    assert float(clip_score(img, -img)) == 0.0 == torchmetrics_clip_score(img, -img)
    # mean cosine negative but some positive: torchmetrics says 0, ours counts the positive ones
    mixed_txt = torch.cat([img[:10], -img[10:]])
    assert torchmetrics_clip_score(img, mixed_txt) == 0.0
    assert float(clip_score(img, mixed_txt)) == pytest.approx(100 * 10 / 50, rel=1e-12)
    assert float(clip_score_per_sample(img, mixed_txt).min()) == 0.0


def test_clip_score_input_errors():
    with pytest.raises(MetricInputError, match="pair up"):
        clip_score(torch.ones(3, 4), torch.ones(2, 4))
    with pytest.raises(MetricInputError, match="all zeros"):
        clip_score(torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(MetricInputError, match="at least 1 samples"), pytest.warns(UserWarning, match="before the"):
        CLIPScore().compute()


def test_bootstrap_ci_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (30, 300, 3000):
        values = rng.normal(50.0, 10.0, size=n)
        lo, hi = bootstrap_ci(values, n_boot=500, seed=1)
        assert lo < values.mean() < hi
        widths.append(hi - lo)
        # about 2 · 1.96 · σ/√n
        assert hi - lo == pytest.approx(2 * 1.96 * values.std() / math.sqrt(n), rel=0.2)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]
    values = rng.normal(size=100)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(torch.from_numpy(values), seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    lo, hi = bootstrap_ci(values, stat=lambda v: float(np.percentile(v, 90)), n_boot=200)
    assert lo <= np.percentile(values, 90) <= hi
    lo95, hi95 = bootstrap_ci(values, alpha=0.05)
    lo50, hi50 = bootstrap_ci(values, alpha=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_bootstrap_needs_two_values():
    with pytest.raises(MetricInputError, match="at least 2 samples"):
        bootstrap_ci([1.0])
    with pytest.raises(MetricInputError, match="at least 2 samples"):
        bootstrap_ci([])
    with pytest.raises(MetricInputError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(MetricInputError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_bootstrap_set_ci_brackets_the_metric():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(300, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(300, 3, generator=g, dtype=torch.float64) + 1.0
    value = float(fid(real, fake))
    lo, hi = bootstrap_set_ci(fid, real, fake, n_boot=60, seed=0)
    assert lo < value < hi and hi - lo < value
    lo2, hi2 = bootstrap_set_ci(fid, real, fake, n_boot=60, seed=0, resample="both")
    assert hi2 - lo2 > 0
    # two sets from one distribution: resampled sets hold duplicate rows, so every raw bootstrap FID lies above
    # the set's own; the interval keeps the bootstrap's width, centred on the figure, and that width matches the
    # spread of FID over independent sets of the same size
    real, fake = (torch.randn(200, 8, generator=g, dtype=torch.float64) for _ in range(2))
    value = float(fid(real, fake))
    lo, hi = bootstrap_set_ci(fid, real, fake, n_boot=200, seed=0)
    assert lo < value < hi
    fresh = [float(fid(real, torch.randn(200, 8, generator=g, dtype=torch.float64))) for _ in range(200)]
    spread = np.quantile(fresh, 0.975) - np.quantile(fresh, 0.025)
    assert 0.5 * spread < hi - lo < 2 * spread
    with pytest.raises(MetricInputError, match="resample"):
        bootstrap_set_ci(fid, real, fake, resample="real")
