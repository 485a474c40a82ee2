"""compute_metrics, MetricResult, doctest examples, and a real 2-process torch.distributed (gloo) sync."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.utilities.data import dim_zero_cat

from evalkit.errors import UserError
from evalkit.metrics import (
    CMMD,
    HIGHER_IS_BETTER,
    CLIPScore,
    FeatureStats,
    FrechetDistance,
    KernelDistance,
    MetricInputError,
    MetricResult,
    PrecisionRecall,
    compute_metrics,
    per_sample_ci,
)
from evalkit.metrics.functional import clip_score, cmmd, density_coverage, fid, inception_score, kid, precision_recall


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def feature_sets(n_real: int = 80, n_fake: int = 70, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    real = {"image": torch.randn(n_real, d, generator=g)}
    img = torch.randn(n_fake, d, generator=g) * 1.2 + 0.3
    fake = {
        "image": img,
        "text": img + torch.randn(n_fake, d, generator=g),
        "logits_unbiased": torch.randn(n_fake, 5, generator=g) * 3,
    }
    return real, fake


def test_compute_metrics_equals_the_functional_twins():
    real, fake = feature_sets()
    res = compute_metrics(real, fake, kid_subsets=5, kid_subset_size=30, is_splits=5, n_boot=200)
    assert set(res) == {"fid", "kid", "cmmd", "precision", "recall", "density", "coverage", "is", "clip"}
    r, f = real["image"], fake["image"]
    assert res["fid"].value == pytest.approx(float(fid(r, f)), rel=1e-10)
    kid_mean, kid_std = kid(r, f, subsets=5, subset_size=30, seed=0)
    assert res["kid"].value == pytest.approx(float(kid_mean), rel=1e-6)
    assert res["kid"].extra["kid_std"] == pytest.approx(float(kid_std), rel=1e-5)
    assert res["cmmd"].value == pytest.approx(float(cmmd(r, f)), rel=1e-10)
    p, rc = precision_recall(r, f, k=3)
    dens, cov = density_coverage(r, f, k=5)
    assert (res["precision"].value, res["recall"].value) == (float(p), float(rc))
    assert (res["density"].value, res["coverage"].value) == (float(dens), float(cov))
    is_mean, is_std = inception_score(fake["logits_unbiased"], splits=5)
    assert res["is"].value == pytest.approx(float(is_mean), rel=1e-10)
    assert res["is"].extra["is_std"] == pytest.approx(float(is_std), rel=1e-8)
    assert res["clip"].value == pytest.approx(float(clip_score(f, fake["text"])), rel=1e-12)
    lo, hi = res["clip"].ci
    assert lo < res["clip"].value < hi
    for name, result in res.items():
        assert result.name == name and result.higher_is_better == HIGHER_IS_BETTER[name]
        assert result.n == 70
        assert isinstance(result.value, float) and np.isfinite(result.value)
    assert res["fid"].extra["n_real"] == 80 and res["precision"].extra == {"k": 3, "n_real": 80, "n_fake": 70}
    assert res["fid"].ci is None  # set-metric intervals only on request
    assert res["clip"].to_dict()["ci"] == [lo, hi]


def test_compute_metrics_options():
    real, fake = feature_sets()
    # KID subset size is lowered to the smaller set and recorded
    res = compute_metrics(real, fake, "kid", kid_subsets=3)
    assert list(res) == ["kid"] and res["kid"].extra["subset_size"] == 70
    # cap: a deterministic sample of max_samples rows per side, with the seen counts recorded
    res = compute_metrics(real, fake, ["pr", "cmmd"], max_samples=40)
    assert res["precision"].n == 40 and res["precision"].extra["n_fake_seen"] == 70
    assert res["cmmd"].extra["n_real"] == 40 and res["cmmd"].extra["n_real_seen"] == 80
    # cached reference statistics instead of real features
    stats = FeatureStats.from_features(real["image"])
    res = compute_metrics(None, fake, ["fid"], real_stats=stats)
    assert res["fid"].value == pytest.approx(float(fid(real["image"], fake["image"])), rel=1e-10)
    # other feature names
    renamed = {"clip_img": fake["image"], "clip_txt": fake["text"]}
    res = compute_metrics(None, renamed, ["clip"], keys={"clip": ("clip_img", "clip_txt")}, ci=False)
    assert res["clip"].ci is None
    # bootstrap intervals of set metrics on request
    res = compute_metrics(real, fake, ["fid", "pr"], set_ci=True, n_boot_set=20)
    for name in ("fid", "precision", "recall"):
        lo, hi = res[name].ci
        assert lo <= hi and lo - 0.1 <= res[name].value <= hi + 0.1


def test_compute_metrics_errors_are_one_line_user_errors():
    real, fake = feature_sets()
    with pytest.raises(UserError, match="unknown metric"):
        compute_metrics(real, fake, ["fid", "lpips"])
    with pytest.raises(UserError, match="unknown option"):
        compute_metrics(real, fake, ["fid"], kid_subset=10)
    with pytest.raises(UserError, match=r"fake\['logits_unbiased'\]"):
        compute_metrics(real, {"image": fake["image"]}, ["is"])
    with pytest.raises(UserError, match="no real feature set"):
        compute_metrics(None, fake, ["kid"])
    with pytest.raises(MetricInputError, match="at least 2 samples"):
        compute_metrics({"image": real["image"][:1]}, fake, ["fid"])
    for exc in (UserError, ValueError):
        with pytest.raises(exc):
            compute_metrics(real, {"image": fake["image"][:, :3]}, ["fid"])


def test_per_sample_ci():
    r = per_sample_ci(np.array([1, 0, 1, 1, 0, 1, 1, 1], dtype=float), n_boot=300)
    assert isinstance(r, MetricResult) and r.value == 0.75 and r.n == 8
    assert r.ci[0] < 0.75 < r.ci[1]
    assert per_sample_ci([1.0]).ci is None


MODULES = [
    "evalkit.metrics.feature_stats", "evalkit.metrics.feature_buffer", "evalkit.metrics.fid", "evalkit.metrics.kid",
    "evalkit.metrics.cmmd", "evalkit.metrics.prdc", "evalkit.metrics.inception_score", "evalkit.metrics.clip_score",
    "evalkit.metrics.bootstrap", "evalkit.metrics.compute", "evalkit.metrics.functional.frechet",
    "evalkit.metrics.functional.kernel_mmd", "evalkit.metrics.functional.clip_mmd", "evalkit.metrics.functional.prdc",
    "evalkit.metrics.functional.inception", "evalkit.metrics.functional.clip",
    "evalkit.metrics.functional.inputs",
]  # fmt: skip


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module, monkeypatch):
    monkeypatch.setenv("EVALKIT_PROGRESS", "0")
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


# -- torchmetrics' own sync code, in one process: each metric object plays one rank ---------------------------------
class SimulatedGather:
    """A ``dist_sync_fn`` for rank 0: the k-th gathered tensor of a sync round comes from the k-th state (in
    torchmetrics' order, list states pre-concatenated as ``_sync_dist`` does) of every simulated rank."""

    def __init__(self) -> None:
        self.ranks: list = []
        self.round: list[list[torch.Tensor]] = []

    @staticmethod
    def _flat(m) -> list[torch.Tensor]:
        out = []
        for attr, fx in m._reductions.items():
            v = getattr(m, attr)
            if isinstance(v, list):
                out.extend([dim_zero_cat(v)] if (fx is dim_zero_cat and len(v) > 1) else v)
            else:
                out.append(v)
        return out

    def __call__(self, tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        if not self.round:
            self.round = [list(reversed(self._flat(m))) for m in self.ranks]
        parts = [seq.pop() for seq in self.round]
        assert torch.equal(parts[0], tensor)  # rank 0's own state arrives in the same order
        if not self.round[0]:
            self.round = []
        return parts


def _simulated_ranks(make, n_ranks: int = 3):
    gather = SimulatedGather()
    ranks = [make(dist_sync_fn=gather, distributed_available_fn=lambda: True)] + [make() for _ in range(n_ranks - 1)]
    gather.ranks = ranks
    return ranks


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: FrechetDistance(DIM, **kw),
        lambda **kw: KernelDistance(subsets=4, subset_size=30, max_samples=CAP, seed=3, **kw),
        lambda **kw: CMMD(max_samples=CAP, **kw),
        lambda **kw: PrecisionRecall(max_samples=CAP, **kw),
    ],
    ids=["fid", "kid", "cmmd", "pr"],
)
def test_simulated_sync_equals_one_process(make):
    real, fake, _ = _ddp_data()
    ranks = _simulated_ranks(make)
    for m, r_part, f_part in zip(ranks, real.tensor_split(3), fake.tensor_split(3)):
        for batch in r_part.split(11):
            m.update(batch, real=True)
        m.update(f_part, real=False)
    single = make()
    single.update(real, real=True)
    single.update(fake, real=False)
    synced, expected = ranks[0].compute(), single.compute()
    synced = synced if isinstance(synced, tuple) else (synced,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert [float(v) for v in synced] == pytest.approx([float(v) for v in expected], rel=1e-10)
    assert ranks[0]._is_synced is False  # compute unsynced again: local states are back
    if isinstance(single, KernelDistance):  # accessors are synced too: the capped sample of all ranks
        assert torch.equal(ranks[0].features("real"), single.features("real"))
        assert ranks[0].seen("fake") == N_FAKE and ranks[0].real_seen == N_REAL // 3
    if isinstance(single, FrechetDistance):
        assert ranks[0].stats(real=True).allclose(single.stats(real=True), rtol=1e-12, atol=1e-12)


def test_simulated_sync_clip_score_keeps_every_per_sample_score():
    _, fake, text = _ddp_data()
    ranks = _simulated_ranks(CLIPScore)
    for m, f_part, t_part in zip(ranks, fake.tensor_split(3), text.tensor_split(3)):
        m.update(f_part, t_part)
    scores = ranks[0].per_sample()  # synced: all three ranks' scores, rank by rank
    assert float(ranks[0].compute()) == pytest.approx(float(clip_score(fake, text)), rel=1e-12)
    expected = 100 * torch.nn.functional.cosine_similarity(fake.double(), text.double()).clamp(min=0)
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)
    assert ranks[0].scores[0].shape[0] == fake.tensor_split(3)[0].shape[0]  # local state restored afterwards


# -- a real torch.distributed run: 2 processes, gloo on loopback, torchmetrics' own sync ------------------------------
N_REAL, N_FAKE, DIM, CAP = 90, 84, 5, 60


def _ddp_data():
    g = torch.Generator().manual_seed(42)
    real = torch.randn(N_REAL, DIM, generator=g)
    fake = torch.randn(N_FAKE, DIM, generator=g) + 0.4
    text = fake + torch.randn(N_FAKE, DIM, generator=g)
    return real, fake, text


def _new_metrics():
    return {
        "fid": FrechetDistance(DIM),
        "kid": KernelDistance(subsets=4, subset_size=30, max_samples=CAP, seed=3),
        "cmmd": CMMD(max_samples=CAP),
        "pr": PrecisionRecall(max_samples=CAP),
    }


def _values(metrics: dict, clip: CLIPScore) -> dict[str, list[float]]:
    out = {}
    for name, m in metrics.items():
        v = m.compute()
        out[name] = [float(t) for t in v] if isinstance(v, tuple) else [float(v)]
    out["clip"] = [float(clip.compute()), float(clip.per_sample().sum()), float(clip.per_sample().shape[0])]
    out["seen"] = [float(metrics["kid"].seen("real")), float(metrics["kid"].seen("fake"))]  # synced accessor
    return out


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        real, fake, text = _ddp_data()
        # contiguous shards, so the gathered (rank-ordered) rows are in the original order
        r_part, f_part = real.tensor_split(world)[rank], fake.tensor_split(world)[rank]
        t_part = text.tensor_split(world)[rank]
        metrics, clip = _new_metrics(), CLIPScore()
        for m in metrics.values():
            for batch in r_part.split(7):
                m.update(batch, real=True)
            for batch in f_part.split(9):
                m.update(batch, real=False)
        clip.update(f_part, t_part)
        values = _values(metrics, clip)
        if rank == 0:
            torch.save(values, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two interpreters that import torch: 25-60 s on a loaded 2-core machine
def test_states_sync_across_two_processes(tmp_path):
    out_file = tmp_path / "values.pt"
    mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True, start_method="spawn"
    )
    synced = torch.load(out_file)
    real, fake, text = _ddp_data()
    metrics, clip = _new_metrics(), CLIPScore()
    for m in metrics.values():
        m.update(real, real=True)
        m.update(fake, real=False)
    clip.update(fake, text)
    single = _values(metrics, clip)
    assert single["seen"] == synced["seen"] == [N_REAL, N_FAKE]
    assert synced["fid"][0] == pytest.approx(single["fid"][0], rel=1e-10)
    for name in ("kid", "cmmd", "pr", "clip"):
        assert synced[name] == pytest.approx(single[name], rel=1e-6), name
