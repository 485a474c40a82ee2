"""Metric validity: the statistics against scipy / scikit-learn / torchmetrics, monotonicity on constructed
ladders, rank agreement from a results store, and ``validate`` end to end on a real (tiny) sweep run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import binary_auroc

from evalkit import cli
from evalkit import leaderboard as lbm
from evalkit import report as rpt
from evalkit.disturb import apply
from evalkit.errors import UserError
from evalkit.generators.to_folder import derive_seed
from evalkit.recipe import load_recipe
from evalkit.results import Result, ResultsDB, Validity
from evalkit.shapes import render, sample
from evalkit.validity import ValidityRecipe, load_validity_recipe
from evalkit.validity.blind_spots import foil, make_pairs, oracle_check
from evalkit.validity.per_image import probe_items
from evalkit.validity.rank_agreement import find_sweep_run, rank_agreement
from evalkit.validity.sets import renders
from evalkit.validity.stats import (
    auc_bootstrap_ci,
    kendall_tau,
    paired_bootstrap_ci,
    roc_auc,
    spearman_rho,
    trend,
    worsens_monotonically,
    wrong_steps,
)

ROOT = Path(__file__).resolve().parents[1]


# --- statistics against reference implementations ------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 7, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_and_spearman_equal_scipy_with_ties(n, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 5, n) + 0.1 * rng.normal(size=n)
    y[: n // 3] = y[0]  # a block of ties in y too
    for ours, ref in ((kendall_tau, kendalltau), (spearman_rho, spearmanr)):
        expected = ref(x, y)[0]
        assert ours(x, y) == pytest.approx(expected, abs=1e-12, nan_ok=True), (ours.__name__, x, y)


def test_rank_correlations_undefined_for_constant_input():
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3])) and np.isnan(spearman_rho([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2], [1, 2, 3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_sklearn_and_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounding makes many ties
    expected = roc_auc_score(labels, scores)
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    probs = (scores - scores.min()) / (scores.max() - scores.min())  # in [0, 1]: torchmetrics applies no sigmoid
    tm = binary_auroc(torch.tensor(probs), torch.tensor(labels.astype(int)))
    assert roc_auc(scores, labels) == pytest.approx(float(tm), abs=1e-6)
    lo, hi = auc_bootstrap_ci(scores, labels, n_boot=200, seed=seed)
    assert lo <= expected <= hi and auc_bootstrap_ci(scores, labels, n_boot=200, seed=seed) == (lo, hi)
    assert roc_auc([0.2, 0.3], [True, True]) is None  # one class: undefined


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 2.0, 3.0, 10.0], "increasing"),
        ([0.9, 0.7, 0.5, 0.1], "decreasing"),
        ([1.0, 3.0, 2.0, 4.0], "non-monotone"),
        ([1.0, 2.0, 2.0, 3.0], "non-decreasing"),
        ([3.0, 3.0, 1.0], "non-increasing"),
        ([2.0, 2.0, 2.0], "constant"),
        ([5.0], "constant"),
    ],
)
def test_trend_of_constructed_sequences(values, expected):
    assert trend(values) == expected


def test_ladder_must_worsen_strictly_in_the_metrics_direction():
    assert worsens_monotonically([1.0, 2.0, 4.0, 8.0, 9.0], higher_is_better=False)  # FID rising
    assert not worsens_monotonically([1.0, 2.0, 4.0, 8.0, 9.0], higher_is_better=True)  # precision rising: wrong way
    assert worsens_monotonically([0.9, 0.8, 0.5, 0.2, 0.0], higher_is_better=True)
    assert not worsens_monotonically([1.0, 2.0, 2.0, 3.0], higher_is_better=False)  # a tie misses a level
    assert not worsens_monotonically([1.0, 3.0, 2.0, 4.0], higher_is_better=False)
    assert worsens_monotonically([1.0, 1.05, 2.0], False) and not worsens_monotonically(
        [1.0, 1.05, 2.0], False, tol=0.1
    )
    assert wrong_steps([1.0, 3.0, 2.0, 2.0, 4.0], higher_is_better=False) == [2, 3]
    assert wrong_steps([0.9, 0.95, 0.5], higher_is_better=True) == [1]


def test_paired_bootstrap_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    lo, hi = paired_bootstrap_ci(x, y, kendall_tau, n_boot=300, seed=1)
    assert lo < kendall_tau(x, y) < hi and (lo, hi) == paired_bootstrap_ci(x, y, kendall_tau, n_boot=300, seed=1)
    assert paired_bootstrap_ci([1, 2], [1, 2], kendall_tau) is None  # too few pairs
    assert paired_bootstrap_ci([1, 1, 1, 2], [1, 2, 3, 4], kendall_tau, n_boot=100) is not None


# --- probes ------------------------------------------------------------------------------------------------------


def test_foils_differ_only_in_binding_or_relation_and_the_oracle_separates_them():
    pairs = make_pairs(renders(24, 0, "pairs", categories=["color_attr", "position"]))
    assert {p.kind for p in pairs} == {"binding", "relation"}
    for p in pairs:
        a, b = p.caption.split(), p.foil.split()
        assert len(a) == len(b) and a != b
        if p.kind == "binding":  # two colours trade places
            changed = {w for w, v in zip(a, b) if w != v} - {"a", "an"}  # articles follow the colour ("an orange")
            assert changed == {o.color for o in p.spec.objects}
        else:
            assert p.spec.relation[1] != p.foil_spec.relation[1] and p.spec.objects == p.foil_spec.objects
    checked = oracle_check(pairs, n_boot=20)
    assert checked["binding"]["accuracy"] == checked["relation"]["accuracy"] == 1.0
    single = sample(1, seed=0, categories=["single_object"])[0]
    assert foil(single, "binding") is None and foil(single, "relation") is None


def test_probe_has_accepted_and_rejected_images():
    items = probe_items(renders(40, 0, "probe"), seed=0)
    verdicts = [it.correct for it in items]
    assert 5 <= sum(verdicts) <= 35


# --- rank agreement, the results store and the leaderboard --------------------------------------------------------


def _sweep_db(path: Path, extractor: str = "ext-A") -> tuple[ResultsDB, str]:
    """A finished 'steps-sweep' run: oracle accuracy rises with i; FID (lower better) falls, with one swap."""
    db = ResultsDB(path)
    gens = [f"g{i}" for i in range(6)]
    rid = db.start_run("steps-sweep", "s" * 16, {"name": "steps-sweep", "generators": [{"spec": "zoo/x", "name": g}
                       for g in gens]}, [0]).run_id  # fmt: skip
    fid = [50.0, 40.0, 41.0, 20.0, 10.0, 5.0]
    clip = [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
    rows = []
    for i, g in enumerate(gens):
        rows += [Result(g, "d", "oracle", 0.1 * i + 0.05, 50, (0.0, 1.0)), Result(g, "d", "fid", fid[i], 50, None, "", extractor),
                 Result(g, "d", "clip", clip[i], 50, None, "", extractor),
                 Result(g, "d", "oracle", 0.1 * i, 10, None, "colors"), Result(g, "d", "clip", clip[::-1][i], 10, None, "colors", extractor),
                 Result(g, "d", "images_per_s", 1.0 + i, 50)]  # fmt: skip
    db.add_results(rid, rows)
    db.finish_run(rid)
    return db, rid


def test_rank_agreement_orients_metrics_and_matches_scipy(tmp_path):
    db, rid = _sweep_db(tmp_path / "r.db")
    with db:
        assert find_sweep_run(db, "steps-sweep") == rid and find_sweep_run(db, "other") is None
        ra = rank_agreement(db, rid, n_boot=200)
    figs = {f["metric"]: f for f in ra["metrics"]}
    assert set(figs) == {"fid", "clip"}  # speed and the oracle itself are not ranked
    oracle = [0.1 * i + 0.05 for i in range(6)]
    fid = figs["fid"]
    assert fid["kendall_tau"] == pytest.approx(kendalltau([-v for v in fid["values"].values()], oracle)[0])
    assert fid["spearman_rho"] == pytest.approx(spearmanr([-v for v in fid["values"].values()], oracle)[0])
    assert 0 < fid["kendall_tau"] < 1 and figs["clip"]["kendall_tau"] == pytest.approx(1.0)
    assert fid["tau_ci"][0] <= fid["kendall_tau"] <= fid["tau_ci"][1] and fid["n_generators"] == 6
    (colors,) = ra["by_category"]
    assert (
        colors["metric"] == "clip" and colors["category"] == "colors" and colors["kendall_tau"] == pytest.approx(-1.0)
    )


def test_leaderboard_and_report_show_validity_of_the_matching_extractor(tmp_path):
    db, rid = _sweep_db(tmp_path / "r.db")
    with db:
        db.put_validity([Validity("fid", "ext-A", 0.8, (0.5, 1.0), 0.9, (0.6, 1.0), 6, rid, {"ladders": {"monotone": 5, "of": 6}}),
                         Validity("clip", "ext-B", 0.3, None, 0.4, None, 6, rid)])  # fmt: skip
        db.put_validity([Validity("fid", "ext-A", extra={"validity_json": "x.json"})])  # no τ: keeps the stored one
        (fid,) = db.validity("fid")
        assert fid.kendall_tau == 0.8 and fid.extra == {"ladders": {"monotone": 5, "of": 6}, "validity_json": "x.json"}
        lb = lbm.build(db, "steps-sweep")
        page = rpt.render_report(db, rid, tmp_path / "rep")
    assert lb.validity == {"fid": 0.8}  # clip's τ was measured with another extractor: not shown
    md = lbm.to_markdown(lb)
    assert "fid ↓ (τ=0.80)" in md and "clip ↑ |" in md and "fid 0.80 [0.50, 1.00]" in md
    head, *body = lbm.to_csv(lb).splitlines()
    assert head.endswith(",validity_tau") and any(r.startswith("g0,fid,") and r.endswith(",0.8") for r in body)
    assert 'id="validity"' in page and "0.80 [0.50, 1.00]" in page and "5/6" in page


# --- the recipe and the command ------------------------------------------------------------------------------------


def test_validity_recipe_file_is_the_defaults_and_not_a_run_recipe():
    assert load_validity_recipe(ROOT / "recipes" / "validity.yaml") == ValidityRecipe()
    with pytest.raises(UserError, match="validity recipe: run `python -m evalkit validate"):
        load_recipe(ROOT / "recipes" / "validity.yaml")
    with pytest.raises(UserError, match="unknown part"):
        ValidityRecipe().with_overrides(parts=["ladders", "vibes"])
    with pytest.raises(UserError, match="fake set 'swirl:9'"):
        ValidityRecipe().with_overrides(efficiency={"fakes": ["swirl:9"]})
    with pytest.raises(UserError, match="seed"):
        ValidityRecipe().with_overrides(seed=-1)


def test_validate_without_a_sweep_says_so_and_creates_no_database(tmp_path, tiny_clip, capsys):
    code = cli.main(["validate", "--extractor", f"judge:{tiny_clip.dir}", "--parts", "rank_agreement",
                     "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "v"), "--no-cache"])  # fmt: skip
    assert code == 0 and not (tmp_path / "none.db").exists()
    assert "no results database at" in capsys.readouterr().out
    report = json.loads((tmp_path / "v" / "validity.json").read_text())
    assert report["results"] == {} and "--run-sweep" in report["notes"][0]


def _folder_generator(root: Path, prompts: list, disturb: tuple[str, int] | None) -> Path:
    """A 'generator' whose images are renders of the prompts, disturbed (worse oracle accuracy) or not."""
    root.mkdir(parents=True)
    images = [render(s.scene) for s in prompts]
    if disturb:
        images = apply(disturb[0], images, disturb[1], seed=1)
    rows = []
    for i, (s, im) in enumerate(zip(prompts, images)):
        im.save(root / f"{i}.png")
        rows.append({"prompt": s.caption, "seed": derive_seed(0, i, 0), "file": f"{i}.png"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_validate_end_to_end_on_a_tiny_sweep(tmp_path, tiny_clip, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the sweep's shapes reference renders under ./runs/_reference
    prompts = sample(8, seed=0, split="test")
    settings = {"clean": None, "speckled": ("salt_and_pepper", 2), "noisy": ("gaussian_noise", 4),
                "textures": ("contamination", 4)}  # fmt: skip
    gens = [{"spec": f"folder:{_folder_generator(tmp_path / 'gen' / name, prompts, d)}", "name": name}
            for name, d in settings.items()]  # fmt: skip
    ext = f"judge:{tiny_clip.dir}"
    sweep = {"name": "tiny-sweep", "prompts": "shapes:8:0:test", "reference": {"source": "shapes:16:1:test"},
             "generators": gens, "metrics": ["oracle", "clip", "fid", "cmmd"], "extractors": [ext], "batch_size": 8,
             "output_dir": str(tmp_path / "sweep"), "db": str(tmp_path / "results.db")}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    validity = {"kind": "validity", "n": 12, "kid_subsets": 2, "ladders": {"disturbances": ["gaussian_blur", "contamination"]},
                "rank_agreement": {"recipe": str(tmp_path / "sweep.yaml"), "n_boot": 50}, "per_image": {"n_boot": 20},
                "efficiency": {"sizes": [10, 16], "seeds": 2, "pool_factor": 1.0, "metrics": ["fid", "cmmd", "pr"]},
                "blind_spots": {"n_boot": 20}, "db": str(tmp_path / "results.db"), "out": str(tmp_path / "v")}  # fmt: skip
    (tmp_path / "validity.yaml").write_text(yaml.safe_dump(validity))
    code = cli.main(["validate", "--recipe", str(tmp_path / "validity.yaml"), "--extractor", ext, "--run-sweep",
                     "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert code == 0
    out = tmp_path / "v"
    report = json.loads((out / "validity.json").read_text())
    res = report["results"]
    assert list(res) == ["ladders", "rank_agreement", "per_image", "efficiency", "blind_spots"]
    # ladders: every result name of the asked metrics, one 5-level ladder per disturbance, with a verdict
    assert set(res["ladders"]["values"]) == {"fid", "kid", "cmmd", "precision", "recall", "density", "coverage", "clip"}
    assert all(len(v) == 5 for lad in res["ladders"]["values"].values() for v in lad.values())
    # rank agreement over the 4 folder generators, oracle accuracy from the real oracle
    ra = res["rank_agreement"]
    assert ra["generators"] == sorted(settings) and ra["oracle"]["clean"] == 1.0 > ra["oracle"]["textures"]
    fid = next(f for f in ra["metrics"] if f["metric"] == "fid")
    oracle = [ra["oracle"][g] for g in sorted(fid["values"])]
    assert fid["kendall_tau"] == pytest.approx(
        kendalltau([-fid["values"][g] for g in sorted(fid["values"])], oracle)[0]
    )
    # per-image: the sweep's 32 images and the probe, each with the tiny extractor
    assert set(res["per_image"]) == {"sweep", "probe"}
    (sweep_fig,) = res["per_image"]["sweep"].values()
    assert sweep_fig["overall"]["n"] == 32 and sweep_fig["overall"]["n_correct"] >= 8
    eff = res["efficiency"]["fakes"]
    assert set(eff) == {"renders", "gaussian_blur:1"} and len(eff["renders"]["fid"]["values"]) == 2
    assert res["blind_spots"]["oracle"]["binding"]["accuracy"] == 1.0
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"ladder_fid.png", "ladder_clip.png", "rank_agreement.png", "per_image_sweep.png", "per_image_probe.png",
            "efficiency_renders.png", "efficiency_gaussian_blur-1.png", "blind_spots.png"} <= plots  # fmt: skip
    summary = (out / "summary.md").read_text()
    for title in ("Disturbance ladders", "Rank agreement", "Per-image agreement", "Sample efficiency", "blind spots"):
        assert title in summary
    assert "stored in" in capsys.readouterr().out
    with ResultsDB(tmp_path / "results.db") as db:
        stored = {v.metric: v for v in db.validity()}
        assert stored["fid"].kendall_tau == pytest.approx(fid["kendall_tau"]) and "ladders" in stored["fid"].extra
        lb = lbm.build(db, "tiny-sweep")
    assert lb.validity["fid"] == pytest.approx(fid["kendall_tau"]) and "(τ=" in lbm.to_markdown(lb)
