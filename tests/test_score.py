"""``python -m evalkit score`` and ``evalkit.disturb`` on a tiny random judge and small shapes sets (always run)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from evalkit.cli import main
from evalkit.disturb import DISTURBANCES, LEVELS, apply, noise_texture, strength
from evalkit.errors import UserError
from evalkit.features import FeatureCache, extract, get_extractor
from evalkit.metrics import compute_metrics
from evalkit.score import DEFAULT_METRICS, score
from evalkit.shapes import render, sample
from evalkit.shapes.subset import make_subset

N_GEN, N_REF = 24, 30


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    # datasets' Arrow copies and the default feature cache go to the test's own folder
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "evalkit_cache"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A shapes reference subset (parquet + shards), the same images as a plain folder, and a generated
    folder with manifest.jsonl: N_GEN renders with prompt and spec, one row without a prompt, one corrupt file."""
    root = tmp_path_factory.mktemp("score_data")
    ref = root / "ref"
    make_subset(N_REF, seed=1, out=ref)
    folder = root / "ref_folder"
    folder.mkdir()
    import pyarrow.parquet as pq

    table = pq.read_table(ref / "shapes.parquet").to_pydict()
    for key, data, caption in zip(table["key"], table["image"], table["caption"]):
        (folder / f"{key}.png").write_bytes(data)
        (folder / f"{key}.txt").write_text(caption)

    gen = root / "gen"
    gen.mkdir()
    rows = []
    for i, s in enumerate(sample(N_GEN, seed=2)):
        render(s.scene).save(gen / f"{i:03d}.png")
        row = {"file": f"{i:03d}.png", "prompt": s.caption, "spec": s.spec.to_dict(), "category": s.spec.category}
        if i == 5:
            del row["prompt"]
        rows.append(row)
    (gen / "broken.png").write_bytes(b"<html>404 not found</html>")
    rows.append({"file": "broken.png", "prompt": "a red circle", "spec": None})
    (gen / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "ref": ref, "ref_folder": folder, "gen": gen, "rows": rows}


@pytest.fixture(scope="module")
def judge(tiny_clip):
    return get_extractor(f"judge:{tiny_clip.dir}")


def count_rows(module: torch.nn.Module) -> list[int]:
    """Images through ``module`` (summed batch sizes), via a forward hook."""
    seen = [0]
    module.register_forward_hook(lambda _m, args, _out: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    return seen


# --- the CLI end to end -----------------------------------------------------------------------------------------


def test_score_cli_end_to_end_json_schema_and_skips(data, tiny_clip, tmp_path, capsys):
    out = tmp_path / "scores.json"
    argv = ["score", "--generated", str(data["gen"]), "--reference", str(data["ref"])]
    argv += ["--extractor", f"judge:{tiny_clip.dir}", "--metrics", "clip,fid,kid,cmmd,pr,oracle"]
    argv += ["--batch-size", "8", "--cache-dir", str(tmp_path / "fc"), "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("clip", "fid", "kid", "cmmd", "precision", "recall", "oracle"):
        assert name in printed
    assert "skipped 1 (not_image: 1)" in printed

    doc = json.loads(out.read_text())
    assert list(doc)[:7] == ["clip", "fid", "kid", "cmmd", "precision", "recall", "oracle"]
    for name in ("clip", "fid", "kid", "cmmd", "precision", "recall", "oracle"):
        entry = doc[name]
        assert {"value", "n", "ci"} <= set(entry)
        assert isinstance(entry["value"], float) and math.isfinite(entry["value"])
        assert entry["ci"] is None or (len(entry["ci"]) == 2 and entry["ci"][0] <= entry["ci"][1])
    # 25 rows: one corrupt file is skipped everywhere, one row without a prompt only for CLIP score
    assert doc["fid"]["n"] == doc["kid"]["n"] == N_GEN
    assert doc["clip"]["n"] == N_GEN - 1 and doc["clip"]["ci"] is not None
    assert doc["fid"]["extra"]["n_real"] == N_REF
    assert doc["oracle"]["value"] == 1.0 and doc["oracle"]["n"] == N_GEN  # clean renders pass their own specs
    skipped = doc["skipped"]
    assert skipped["generated"]["total"] == 1 and skipped["generated"]["reasons"] == {"not_image": 1}
    assert skipped["reference"]["total"] == 0
    assert skipped["no_prompt"]["total"] == 1
    meta = doc["meta"]
    assert meta["n_generated"] == N_GEN and meta["n_reference"] == N_REF
    assert meta["extractor"].startswith("judge:")


def test_reference_layouts_give_the_same_scores(data, judge):
    """Parquet file, subset folder, webdataset shards and a plain image folder hold the same pixels."""
    refs = [data["ref"], data["ref"] / "shapes.parquet", str(data["ref"] / "shards" / "*.tar"), data["ref_folder"]]
    fids, kids = [], []
    for ref in refs:
        report = score(data["gen"], ref, ["fid", "kid"], extractor=judge, cache=None, kid_subsets=5)
        assert report.n_reference == N_REF
        fids.append(report["fid"].value)
        kids.append(report["kid"].value)
    assert fids == pytest.approx([fids[0]] * len(refs), rel=1e-9)
    assert kids == pytest.approx([kids[0]] * len(refs), rel=1e-9)


def test_one_feature_pass_then_cache_hits_only(data, judge, tmp_path):
    cache = FeatureCache(tmp_path / "fc")
    rows = count_rows(judge.module)
    first = score(data["gen"], data["ref"], DEFAULT_METRICS, extractor=judge, batch_size=8, cache=cache)
    assert rows[0] == N_GEN + N_REF  # every image encoded exactly once for all five metrics
    second = score(data["gen"], data["ref"], DEFAULT_METRICS, extractor=judge, batch_size=8, cache=cache)
    assert rows[0] == N_GEN + N_REF  # warm cache: no image forward at all
    assert {k: r.value for k, r in first.metrics.items()} == {k: r.value for k, r in second.metrics.items()}
    assert second.cache["hits"] > 0


def test_metrics_equal_compute_metrics_on_the_same_features(data, judge):
    report = score(data["gen"], data["ref_folder"], ["fid", "cmmd", "clip"], extractor=judge, cache=None)
    gen_images = [Image.open(data["gen"] / r["file"]).convert("RGB") for r in data["rows"][:N_GEN]]
    ref_images = [Image.open(p).convert("RGB") for p in sorted(data["ref_folder"].glob("*.png"))]
    fake, real = extract(judge, gen_images), extract(judge, ref_images)
    expected = compute_metrics(real, fake, ["fid", "cmmd"])
    assert report["fid"].value == pytest.approx(expected["fid"].value, rel=1e-9)
    assert report["cmmd"].value == pytest.approx(expected["cmmd"].value, rel=1e-9)
    with_prompt = [i for i, r in enumerate(data["rows"][:N_GEN]) if "prompt" in r]
    text = judge.encode_text([data["rows"][i]["prompt"] for i in with_prompt])
    clip = compute_metrics(None, {"image": fake["image"][with_prompt], "text": text}, ["clip"])["clip"]
    assert report["clip"].value == pytest.approx(clip.value, rel=1e-6)


def test_caption_txt_folder_as_generated_and_clip_only(data, judge):
    report = score(data["ref_folder"], None, ["clip"], extractor=judge, cache=None)
    assert report["clip"].n == N_REF and report.skipped["no_prompt"].total == 0
    assert report.reference is None and "reference" not in report.table()


def test_torn_manifest_line_is_counted_not_fatal(data, judge, tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    for r in data["rows"][:4]:
        (gen / r["file"]).write_bytes((data["gen"] / r["file"]).read_bytes())
    lines = "".join(json.dumps(r) + "\n" for r in data["rows"][:4])
    (gen / "manifest.jsonl").write_text(lines + '{"file": "004.png", "pro')
    report = score(gen, data["ref"], ["fid"], extractor=judge, cache=None)
    assert report.n_generated == 4
    assert report.skipped["generated"].as_dict() == {"bad_manifest_row": 1}


def test_no_prompts_or_specs_are_notes_not_errors(data, judge, tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    for i, r in enumerate(data["rows"][:6]):
        (gen / f"{i}.png").write_bytes((data["gen"] / r["file"]).read_bytes())
    report = score(gen, data["ref"], ["clip", "fid", "oracle"], extractor=judge, cache=None)
    assert list(report.metrics) == ["fid"]
    assert report.skipped["no_prompt"].total == 6 and report.skipped["no_spec"].total == 6
    assert any(n.startswith("clip:") for n in report.notes) and any(n.startswith("oracle:") for n in report.notes)
    with pytest.raises(UserError, match="nothing could be scored"):
        score(gen, None, ["clip"], extractor=judge, cache=None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--generated", "{root}/nope"], "does not exist"),
        (["--generated", "{gen}", "--reference", "{root}/nope"], "does not exist"),
        (["--generated", "{gen}", "--metrics", "fid,bogus"], "unknown metric"),
        (["--generated", "{gen}", "--metrics", "fid"], "reference"),
        (["--generated", "{gen}", "--reference", "{ref}", "--batch-size", "0"], "batch_size"),
        (["--generated", "{empty}", "--reference", "{ref}"], "no images|lists no images|no generated image"),
        (["--generated", "{gen}", "--reference", "{ref}", "--extractor", "judge:{root}/nope"], "judge"),
        (["--generated", "{gen}", "--reference", "{ref}", "--extractor", "nonsense"], "unknown feature extractor"),
    ],
)
def test_bad_inputs_are_one_line_errors(data, tiny_clip, tmp_path, capsys, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("\n")
    fill = {"root": data["root"], "gen": data["gen"], "ref": data["ref"], "empty": empty}
    argv = [a.format(**fill) for a in argv]
    if "--extractor" not in argv:
        argv += ["--extractor", f"judge:{tiny_clip.dir}"]
    assert main(["score", *argv, "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err


# --- disturbances ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renders():
    return [render(s.scene) for s in sample(8, seed=4)]


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return (np.asarray(a) != np.asarray(b)).any(axis=-1)


@pytest.mark.parametrize("name", DISTURBANCES)
def test_disturbances_are_deterministic_and_grow_with_level(name, renders):
    assert len(LEVELS[name]) == 4 and list(LEVELS[name]) == sorted(LEVELS[name])
    assert [np.asarray(a).tobytes() for a in apply(name, renders, 0)] == [np.asarray(r).tobytes() for r in renders]
    dist = []
    for level in range(1, 5):
        out = apply(name, renders, level, seed=3)
        again = apply(name, renders, level, seed=3)
        assert [o.tobytes() for o in out] == [o.tobytes() for o in again]
        assert all(o.size == r.size and o.mode == "RGB" for o, r in zip(out, renders))
        diff = [np.abs(np.asarray(o, float) - np.asarray(r, float)).mean() for o, r in zip(out, renders)]
        dist.append(float(np.mean(diff)))
    assert dist[0] > 0
    if name != "swirl":  # a stronger swirl can turn a stroke back over where it was
        assert dist == sorted(dist), dist
    if name not in ("gaussian_blur", "swirl"):  # the random ones depend on the seed
        other = apply(name, renders, 2, seed=4)
        assert any(a.tobytes() != b.tobytes() for a, b in zip(other, apply(name, renders, 2, seed=3)))


def test_masks_are_nested_across_levels(renders):
    """Higher levels add damage where lower ones put it: rectangles and salt-and-pepper pixels only grow."""
    for name in ("black_rectangles", "salt_and_pepper"):
        previous = None
        for level in range(1, 5):
            masks = [_changed(o, r) for o, r in zip(apply(name, renders, level, seed=9), renders)]
            if previous is not None:
                assert all((p <= m).all() for p, m in zip(previous, masks)), name
            previous = masks


def test_contamination_replaces_a_nested_fraction(renders):
    replaced = []
    for level in range(1, 5):
        out = apply("contamination", renders, level, seed=5)
        idx = {i for i, (o, r) in enumerate(zip(out, renders)) if o.tobytes() != r.tobytes()}
        assert len(idx) == round(strength("contamination", level) * len(renders))
        replaced.append(idx)
    assert all(a <= b for a, b in zip(replaced, replaced[1:]))
    others = [Image.new("RGB", (64, 64), (10, 200, 30))]
    out = apply("contamination", renders, 4, seed=5, others=others)
    assert sum(o.tobytes() == others[0].tobytes() for o in out) == len(replaced[-1])
    tex = noise_texture((64, 64), seed=1)
    assert np.asarray(tex).std() > 10 and tex.tobytes() == noise_texture((64, 64), seed=1).tobytes()


def test_disturb_rejects_unknown_names_and_levels(renders):
    with pytest.raises(UserError, match="unknown disturbance"):
        apply("jpeg", renders, 1)
    with pytest.raises(UserError, match="level"):
        apply("swirl", renders, 5)
