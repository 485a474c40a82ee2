"""The shapes world: determinism, vocabulary, held-out combinations, LAION-format output."""

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.shapes import world
from evalkit.shapes.render import render
from evalkit.shapes.subset import PARQUET_NAME, SHARD_DIR, make_subset

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_vocabulary_meets_the_brief():
    assert len(world.COLORS) >= 8 and len(world.SHAPES) >= 5 and len(world.SIZES) >= 2
    assert len(world.BACKGROUNDS) >= 5
    assert set(world.RELATIONS) == {"left of", "right of", "above", "below"}
    assert not {"hexagon", "diamond"} & set(world.SHAPES)  # blur together (CALIBRATION.md)
    assert set(world.CATEGORIES) == {
        "single_object", "two_object", "counting", "colors", "position", "color_attr", "background"
    }  # fmt: skip
    assert not set(world.COLORS) & set(world.BACKGROUNDS)


def test_sampling_is_a_pure_function_of_index():
    a = world.sample(50, seed=3)
    b = world.sample(20, seed=3, start=30)
    assert [s.caption for s in a[30:]] == [s.caption for s in b]
    assert [s.scene for s in a] == [s.scene for s in world.sample(50, seed=3)]
    assert [s.caption for s in a] != [s.caption for s in world.sample(50, seed=4)]


def test_every_category_object_count_and_phrasing_occurs():
    samples = world.sample(2000, seed=0)
    cats = {s.spec.category for s in samples}
    assert cats == set(world.CATEGORIES)
    counts = {len(s.scene.objects) for s in samples}
    assert counts == {1, 2, 3}
    rels = {s.spec.relation[1] for s in samples if s.spec.relation}
    assert rels == set(world.RELATIONS)
    # several phrasings of the same kind of spec
    openers = {s.caption.split(" ")[0] + " " + s.caption.split(" ")[1] for s in samples}
    assert len(openers) > 10


def test_caption_states_every_attribute_of_its_spec():
    for s in world.sample(500, seed=1):
        for o in s.spec.objects:
            assert o.shape in s.caption
            if o.color:
                assert o.color in s.caption
            if o.size:
                assert o.size in s.caption
            if o.count > 1:
                assert world.COUNT_WORDS[o.count] in s.caption
        if s.spec.background:
            assert s.spec.background + " background" in s.caption


def test_scene_agrees_with_spec():
    for s in world.sample(1000, seed=2):
        objs = s.scene.objects
        assert len(objs) == sum(o.count for o in s.spec.objects)
        if s.spec.background:
            assert s.scene.background == s.spec.background
        if s.spec.relation:
            a, rel, b = s.spec.relation
            assert world.scene_relation(s.scene, a, b) == rel


def test_held_out_pairs_never_rendered_in_train_and_always_in_compositional():
    for s in world.sample(3000, seed=0, split="train") + world.sample(500, seed=0, split="test"):
        assert all((o.color, o.shape) not in world.HELD_OUT for o in s.scene.objects)
    for s in world.sample(500, seed=0, split="compositional"):
        assert any((o.color, o.shape) in world.HELD_OUT for o in s.spec.objects if o.color)


def test_perturb_gives_a_different_spec_and_spec_roundtrips():
    rng = random.Random(0)
    for s in world.sample(300, seed=5):
        assert world.PromptSpec.from_dict(json.loads(json.dumps(s.spec.to_dict()))) == s.spec
        assert world.Scene.from_dict(s.scene.to_dict()) == s.scene
        assert world.perturb(s.spec, rng) != s.spec


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_size_and_background(size):
    s = world.sample(1, seed=0)[0]
    img = render(s.scene, size)
    assert img.size == (size, size) and img.mode == "RGB"
    assert img.getpixel((0, 0)) == world.BACKGROUNDS[s.scene.background]


def test_unknown_category_and_split_are_clear_errors():
    with pytest.raises(ValueError, match="unknown category 'dogs'"):
        world.sample(1, categories=["dogs"])
    with pytest.raises(ValueError, match="unknown split"):
        world.sample(1, split="validation")


def test_make_twice_is_byte_identical_and_loads_with_datasets(tmp_path):
    import datasets

    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        cmd = [sys.executable, "-m", "evalkit", "shapes", "make", "--n", "2000", "--seed", "0", "--out", str(out)]
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    assert _digest(a) == _digest(b)
    assert len(list((a / SHARD_DIR).glob("*.tar"))) == 2

    pq = datasets.load_dataset("parquet", data_files=str(a / PARQUET_NAME), split="train")
    assert len(pq) == 2000
    assert {"key", "caption", "width", "height", "image", "spec"} <= set(pq.column_names)
    img = pq.cast_column("image", datasets.Image())[0]["image"]
    assert img.size == (64, 64)
    spec = world.PromptSpec.from_dict(json.loads(pq[0]["spec"]))
    assert spec == world.sample(1, seed=0)[0].spec

    wds = datasets.load_dataset("webdataset", data_files={"train": str(a / SHARD_DIR / "*.tar")}, split="train")
    assert len(wds) == 2000
    row = wds[0]
    assert row["txt"] == pq[0]["caption"] and row["json"]["key"] == pq[0]["key"]
    assert row["png"].size == (64, 64)


def test_make_cli_help_and_bad_args(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "evalkit", "shapes", "make", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0 and "--seed" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "evalkit", "shapes", "make", "--n", "0", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--n must be" in r.stderr
    small = make_subset(5, 1, tmp_path / "s", size=32, categories=["position"])
    assert small.is_file()
