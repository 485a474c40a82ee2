"""Subject metrics and the evaluate / benchmark commands on the tiny pipeline and the tiny judge: figures
before and after, printed and stored in the results database; DINO from a transformers folder; the
README table written between its markers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evalkit.errors import UserError
from evalkit.results import ResultsDB
from personalize.cli import main
from personalize.config import TrainConfig
from personalize.metrics import SubjectScorer, mean_cosine_to, paired_cosine
from personalize.prompts import DEFAULT_PROMPTS, PLAIN, read_prompts
from personalize.subjects import HOUSEMARK
from personalize.training import train


@pytest.fixture(scope="module")
def lora_run(tiny_sd_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "lora"
    train(TrainConfig(method="lora", images=str(HOUSEMARK.folder), out=str(out), model=str(tiny_sd_dir),
                      class_word="square", steps=2, batch_size=2, validation_every=0, num_validation_images=1,
                      sample_steps=2, lr=1e-2))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    """A random transformers ViT saved with its image processor: the layout of facebook/dino-vits16."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    d = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(d)  # fmt: skip
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def test_cosine_helpers():
    refs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(mean_cosine_to(refs, feats), [0.5, np.sqrt(0.5)])
    np.testing.assert_allclose(paired_cosine(feats, refs), [1.0, np.sqrt(0.5)])


def test_scorer_identical_images_score_one(tiny_clip, tiny_dino):
    images = [Image.open(p).convert("RGB") for p in HOUSEMARK.image_paths()]
    for dino in ("judge-tower", f"dir:{tiny_dino}"):
        scorer = SubjectScorer(images[:1], f"judge:{tiny_clip.dir}", dino)
        values = scorer.score(images[:1], ["a square"])
        assert values["clip_i"][0] == pytest.approx(1.0, abs=1e-5) and values["dino"][0] == pytest.approx(1.0, abs=1e-5)
        assert -1 <= values["clip_t"][0] <= 1
    assert "dino" not in SubjectScorer(images[:1], f"judge:{tiny_clip.dir}", "none").score(images[:1], ["x"])
    with pytest.raises(UserError, match="DINO model folder not found"):
        SubjectScorer(images[:1], f"judge:{tiny_clip.dir}", "dir:/nonexistent/dino")


def test_prompts_fill_token_and_class(tmp_path):
    assert PLAIN.personalized("<s*>") == "a photo of <s*>" and PLAIN.with_class("apple") == "a photo of an apple"
    bgs = [p for p in DEFAULT_PROMPTS if p.background]
    assert len(bgs) == 5 and bgs[0].personalized("<s*>") == "<s*> on a white background"
    assert {p.category for p in DEFAULT_PROMPTS} == {"plain", "recontextualization", "property", "companion"}
    f = tmp_path / "p.txt"
    f.write_text("# mine\n{token} in the snow\nproperty\ta red {noun}\n")
    ps = read_prompts(f)
    assert [(p.category, p.personalized("S")) for p in ps] == [("custom", "S in the snow"), ("property", "a red S")]
    f.write_text("no placeholder\n")
    with pytest.raises(UserError, match="placeholder"):
        read_prompts(f)
    for bad in ("{token} in {place}", "{token} with a } brace", "{token} {0}"):
        f.write_text(bad + "\n")
        with pytest.raises(UserError, match="literal brace"):
            read_prompts(f)
    f.write_text("{token} in {{braces}}\n")
    assert read_prompts(f)[0].personalized("S") == "S in {braces}"


def test_fingerprint_reads_a_model_under_a_hidden_folder_but_skips_hidden_files_inside(tmp_path):
    from personalize.base import model_fingerprint

    d = tmp_path / ".cache" / "model"
    (d / "unet").mkdir(parents=True)
    (d / "unet" / "config.json").write_text('{"a": 1}')
    before = model_fingerprint(d)
    (d / "unet" / "config.json").write_text('{"a": 2}')
    assert model_fingerprint(d) != before
    after = model_fingerprint(d)
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("x")
    (d / "meta.json").write_text("{}")
    assert model_fingerprint(d) == after


def test_evaluate_cli_prints_and_stores_figures(lora_run, tiny_clip, tmp_path, capsys):
    db = tmp_path / "results.db"
    args = ["evaluate", "--weights", str(lora_run), "--images", str(HOUSEMARK.folder), "--extractor",
            f"judge:{tiny_clip.dir}", "--n-per-prompt", "2", "--subject", "housemark", "--db", str(db),
            "--json", str(tmp_path / "figs.json")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    for metric in ("clip_i", "clip_t", "dino", "subject_presence"):
        assert f"| {metric} |" in out
    result = json.loads((tmp_path / "figs.json").read_text())
    figs = result["figures"]
    assert figs["after"]["clip_i"]["overall"]["n"] == 2 * len(DEFAULT_PROMPTS)
    assert set(figs["after"]["clip_i"]) == {"overall", "plain", "recontextualization", "property", "companion"}
    assert figs["after"]["subject_background"]["overall"]["n"] == 10
    assert result["protocol"]["class_word"] == "square" and result["protocol"]["token"] == "<s*>"
    before = sorted(Path(lora_run, "evaluation", "before").glob("*.png"))
    assert len(before) == 2 * len(DEFAULT_PROMPTS)
    with ResultsDB(db) as rdb:
        rows = rdb.results(result["run_id"])
        gens = {r.generator for r in rows}
        assert gens == {f"base:{TrainConfig.load(lora_run / 'config.json').model}", "lora:lora"}
        clip_i = [r for r in rows if r.metric == "clip_i" and r.category == "" and r.extra["side"] == "after"]
        assert len(clip_i) == 1 and clip_i[0].extractor.startswith("judge:") and clip_i[0].ci is not None
    assert main(args) == 0  # the same evaluation again resumes the same run: identical figures are no-ops
    assert json.loads((tmp_path / "figs.json").read_text())["run_id"] == result["run_id"]


def test_evaluate_needs_a_class_word_and_known_weights(lora_run, tiny_clip, tmp_path, capsys):
    from personalize.evaluation import evaluate

    with pytest.raises(UserError, match="weights not found"):
        evaluate(str(tmp_path / "none"), str(HOUSEMARK.folder), extractor=f"judge:{tiny_clip.dir}", db=None)
    emb = tmp_path / "learned_embeds.safetensors"
    from safetensors.torch import save_file

    save_file({"<x>": torch.zeros(1, 32)}, str(emb))
    with pytest.raises(UserError, match="pass --model"):
        evaluate(str(emb), str(HOUSEMARK.folder), extractor=f"judge:{tiny_clip.dir}", db=None)
    assert main(["evaluate", "--weights", str(lora_run), "--images", str(HOUSEMARK.folder), "--extractor",
                 str(tmp_path / "nojudge")]) == 2  # fmt: skip
    assert "unknown feature extractor" in capsys.readouterr().err


def test_benchmark_writes_the_readme_table(tiny_sd_dir, tiny_clip, tmp_path, monkeypatch):
    from personalize.benchmark import MARK_END, MARK_START, run_benchmark

    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))  # class images

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{MARK_START}\nto be measured\n{MARK_END}\n\nrest\n")
    results = run_benchmark(model=str(tiny_sd_dir), out=str(tmp_path / "bench"), methods=["lora"], n=2,
                            n_ordinary=3, readme=str(readme), steps=2, num_class_images=1, db=str(tmp_path / "r.db"),
                            extractor=f"judge:{tiny_clip.dir}", sample_steps=2)  # fmt: skip
    assert set(results["runs"]) == {"lora-prior", "lora"}
    r = results["runs"]["lora-prior"]
    assert r["presence"]["n"] == 2 and r["background"]["n"] == 5 and set(r["ordinary"]) == {"class_word", "others"}
    assert r["ordinary"]["others"]["n"] == 3 and len(r["ordinary"]["others"]["correct"]) == 3
    drop = r["ordinary_drop"]["class_word"]
    assert drop["n"] == 3 and drop["ci95"][0] <= drop["value"] <= drop["ci95"][1]
    assert set(r["subject_metrics"]["after"]) == {"clip_i", "clip_t", "dino"}
    text = readme.read_text()
    assert "to be measured" not in text and "DreamBooth LoRA, prior preservation (2 steps)" in text
    assert text.endswith("\n\nrest\n") and "base model, class word" in text
    assert json.loads((tmp_path / "bench" / "figures.json").read_text())["n"] == 2
    weights = tmp_path / "bench" / "lora" / "pytorch_lora_weights.safetensors"
    stamp = weights.stat().st_mtime_ns
    kw = dict(model=str(tiny_sd_dir), out=str(tmp_path / "bench"), methods=["lora"], n=2, db=None,
              extractor=f"judge:{tiny_clip.dir}", sample_steps=2)  # fmt: skip
    again = run_benchmark(steps=2, num_class_images=1, **kw)
    assert again["runs"]["lora"]["steps"] == 2 and weights.stat().st_mtime_ns == stamp  # reused, not retrained
    for other in ({"steps": 3, "num_class_images": 1}, {"steps": 2, "num_class_images": 2}):
        with pytest.raises(
            UserError, match=r"bench/lora-prior holds a finished run with other settings \((steps|num_cl)"
        ):
            run_benchmark(**other, **kw)
    assert len(list((tmp_path / "cache" / "class-images").glob("*/*.png"))) == 1


def test_dino_stand_in_reads_the_zoo_judges_resnet_tower():
    """The zoo judge's image tower is a ModifiedResNet: its stand-in features are the last stage averaged
    over space (before the attention pool that ends in the projection), wider than the embedding."""
    from evalkit.features import get_extractor
    from personalize.metrics import TowerFeatures

    ext = get_extractor("judge")
    tower = TowerFeatures(ext)
    images = [Image.open(p).convert("RGB") for p in HOUSEMARK.image_paths()]
    feats = tower.encode_images(images)
    width = ext.model.visual.layer4[-1].conv3.out_channels
    assert feats.shape == (4, width) and width > ext.model.visual.output_dim
    assert torch.isfinite(feats).all()
    cos = paired_cosine(feats[:1].repeat(4, 1), feats)
    assert cos[0] == pytest.approx(1.0) and (cos[1:] < 1 - 1e-4).all()
    assert SubjectScorer(images[:1], "judge", "judge-tower").score(images[:1], ["a square"])["dino"][
        0
    ] == pytest.approx(1.0, abs=1e-5)


def test_paired_drop_interval_matches_scipy():
    from scipy import stats

    from personalize.benchmark import paired_drop

    rng = np.random.default_rng(0)
    before = rng.random(200) < 0.7
    after = before & (rng.random(200) < 0.9)  # loses about 7 points, never gains
    d = paired_drop(before.astype(int).tolist(), after.astype(int).tolist())
    diff = before.astype(float) - after
    half = 1.96 * stats.sem(diff)
    assert d["value"] == pytest.approx(diff.mean(), abs=1e-4) and d["n"] == 200
    assert d["ci95"] == pytest.approx([diff.mean() - half, diff.mean() + half], abs=1e-4)
    with pytest.raises(ValueError):
        paired_drop([1, 0], [1])


def test_a_saved_dreambooth_pipeline_without_its_run_config_names_its_base_from_meta_json(tiny_sd_dir, tmp_path):
    """Otherwise ``evaluate`` would compare the fine-tuned model with itself."""
    import shutil

    from personalize.weights import load_personalized

    folder = tmp_path / "db"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "meta.json").unlink(missing_ok=True)
    with pytest.raises(UserError, match="does not record its base model; pass --model"):
        load_personalized(folder)
    assert load_personalized(folder, model=f"dir:{tiny_sd_dir}").model == f"dir:{tiny_sd_dir}"
    record = {"method": "dreambooth", "token": "<s*>", "class_word": "square", "base_model": f"dir:{tiny_sd_dir}"}
    (folder / "meta.json").write_text(json.dumps({"personalized": record}))
    p = load_personalized(folder)
    assert (p.model, p.token, p.class_word, p.weights) == (f"dir:{tiny_sd_dir}", "<s*>", "square", folder)
