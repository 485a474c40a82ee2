"""The shapes-world oracle: accuracy on renders (clean, noisy, blurred, other sizes, compositional),
near-chance on mismatched prompts, check semantics on hand-built scenes, and the ``oracle`` CLI."""

from __future__ import annotations

import doctest
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import ndimage

from evalkit.cli import main
from evalkit.shapes import oracle
from evalkit.shapes.oracle import Detection, check, detect, evaluate
from evalkit.shapes.render import png_bytes, render
from evalkit.shapes.subset import make_subset
from evalkit.shapes.world import (
    CATEGORIES,
    COLORS,
    HELD_OUT,
    SIZES,
    ObjectSpec,
    PlacedObject,
    PromptSpec,
    Scene,
    sample,
)

N = 600  # per condition; rendering + detection is a few ms per image


def noisy(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    """Gaussian pixel noise on the [0, 1] scale, clipped and re-quantized."""
    a = np.asarray(img, dtype=np.float64) / 255 + rng.normal(0, sigma, (img.height, img.width, 3))
    return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))


def blurred(img: Image.Image, sigma: float) -> Image.Image:
    a = ndimage.gaussian_filter(np.asarray(img, dtype=np.float64), sigma=(sigma, sigma, 0))
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def samples():
    return sample(N, seed=11)


@pytest.fixture(scope="module")
def clean_detections(samples):
    return [detect(render(s.scene)) for s in samples]


def test_clean_renders_all_categories(samples, clean_detections):
    report = evaluate(zip(clean_detections, (s.spec for s in samples)))
    assert report.overall["n"] == N
    assert report.accuracy >= 0.995, report.overall
    assert set(report.categories) == set(CATEGORIES)
    for cat, fig in report.categories.items():
        assert fig["accuracy"] >= 0.98, (cat, fig)
    assert set(report.checks) == {"background", "count", "shape", "color", "size", "relation"}


def test_noise_sigma_005(samples):
    rng = np.random.default_rng(0)
    report = evaluate((noisy(render(s.scene), 0.05, rng), s.spec) for s in samples)
    assert report.accuracy >= 0.98, report.overall  # the bar is 0.95


def test_blur_sigma_07(samples):
    report = evaluate((blurred(render(s.scene), 0.7), s.spec) for s in samples)
    assert report.accuracy >= 0.98, report.overall  # the bar is 0.95


def test_shuffled_prompts_near_chance(samples, clean_detections):
    perm = list(range(N))
    random.Random(0).shuffle(perm)
    perm = [p if p != i else (i + 1) % N for i, p in enumerate(perm)]  # never an image's own prompt
    report = evaluate((d, samples[j].spec) for d, j in zip(clean_detections, perm))
    assert report.accuracy <= 0.15, report.overall


def test_compositional_split_noisy_and_blurred():
    comp = sample(300, seed=3, split="compositional")
    assert all(any((o.color, o.shape) in HELD_OUT for o in s.spec.objects) for s in comp)
    rng = np.random.default_rng(1)
    report = evaluate((blurred(noisy(render(s.scene), 0.05, rng), 0.7), s.spec) for s in comp)
    assert report.accuracy >= 0.98, report.overall


@pytest.mark.parametrize("size", [32, 128])
def test_other_image_sizes(size):
    items = sample(200, seed=5)
    assert evaluate((render(s.scene, size), s.spec) for s in items).accuracy >= 0.99
    rng = np.random.default_rng(2)
    degraded = evaluate((blurred(noisy(render(s.scene, size), 0.05, rng), 0.7), s.spec) for s in items)
    assert degraded.accuracy >= 0.95, degraded.overall


def test_geometry_matches_scene():
    """Fitted centres and extents agree with the scene (positions within 1.5 % of the side)."""
    for s in sample(100, seed=9):
        got = sorted(detect(blurred(render(s.scene), 0.7)).objects, key=lambda o: (o.x, o.y))
        truth = sorted(s.scene.objects, key=lambda o: (o.x, o.y))
        assert len(got) == len(truth)
        for o, t in zip(got, truth):
            assert abs(o.x - t.x) < 0.015 and abs(o.y - t.y) < 0.015, (o, t)
            assert abs(o.extent - SIZES[t.size]) < 0.03, (o.extent, t.size)
            assert o.bbox[0] < o.centroid[0] < o.bbox[2] and o.bbox[1] < o.centroid[1] < o.bbox[3]
            assert max(o.shape_scores, key=o.shape_scores.get) == o.shape == t.shape


def test_speckles_and_color_shift_are_ignored():
    rng = np.random.default_rng(3)
    items = []
    for s in sample(200, seed=4):
        a = np.asarray(render(s.scene), dtype=np.float64) + rng.uniform(-12, 12, 3)  # global color cast
        for _ in range(5):  # 1-2 px speckles of random colors
            y, x = rng.integers(0, 62, 2)
            k = rng.integers(1, 3)
            a[y : y + k, x : x + k] = rng.integers(0, 256, 3)
        items.append((Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8)), s.spec))
    assert evaluate(items).accuracy >= 0.98


# --------------------------------------------------------------------------- check semantics


def scene(bg: str, *objs: tuple[str, str, str, float, float]) -> Image.Image:
    return render(Scene(bg, tuple(PlacedObject(*o) for o in objs)))


RED_CIRCLE_LEFT = ("circle", "red", "small", 0.25, 0.5)
BLUE_SQUARE_RIGHT = ("square", "blue", "small", 0.75, 0.45)


def spec(*objs: ObjectSpec, bg: str | None = None, rel=None, category: str = "position") -> PromptSpec:
    return PromptSpec(category, tuple(objs), bg, rel)


def test_relations_use_positions():
    img = scene("white", RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT)
    circle, square = ObjectSpec("circle", "red"), ObjectSpec("square", "blue")
    assert check(img, spec(circle, square, rel=(0, "left of", 1))).correct
    assert check(img, spec(square, circle, rel=(1, "left of", 0))).correct
    assert check(img, spec(square, circle, rel=(0, "right of", 1))).correct
    wrong = check(img, spec(circle, square, rel=(0, "right of", 1)))
    assert not wrong.correct and wrong.failed == ["relation"]
    # the square sits 0.05 higher and 0.5 to the right: it is right of the circle, not above it
    assert not check(img, spec(square, circle, rel=(0, "above", 1))).correct
    assert not check(img, spec(square, circle, rel=(0, "below", 1))).correct
    stacked = scene("white", ("circle", "red", "small", 0.46, 0.25), ("square", "blue", "small", 0.50, 0.75))
    assert check(stacked, spec(circle, square, rel=(0, "above", 1))).correct
    assert not check(stacked, spec(circle, square, rel=(0, "left of", 1))).correct  # 0.04 left: a sliver
    diagonal = scene("white", ("circle", "red", "small", 0.25, 0.30), ("square", "blue", "small", 0.70, 0.65))
    assert check(diagonal, spec(circle, square, rel=(0, "left of", 1))).correct  # 38° off the axis
    assert not check(diagonal, spec(circle, square, rel=(0, "above", 1))).correct  # 52° off (GenEval would pass it)


def test_renders_hold_their_relation_and_not_the_perpendicular_one():
    perpendicular = {"left of": "above", "right of": "below", "above": "right of", "below": "left of"}
    held = crossed = 0
    for s in sample(60, seed=3, categories=["position"]):
        img = render(s.scene)
        held += check(img, s.spec).correct
        a, rel, b = s.spec.relation
        crossed += check(
            img, PromptSpec("position", s.spec.objects, s.spec.background, (a, perpendicular[rel], b))
        ).correct
    assert held == 60 and crossed == 0


def test_a_color_far_from_every_palette_color_is_no_color():
    purple = np.asarray(scene("white", ("triangle", "purple", "large", 0.5, 0.5))).copy()
    inside = np.abs(purple.astype(int) - COLORS["purple"]).sum(-1) < 10  # the solid interior
    triangle = ObjectSpec("triangle", "purple")
    assert check(Image.fromarray(purple), spec(triangle, category="single_object")).correct
    for off, name in (((0, 0, 0), "black"), ((128, 128, 128), "gray"), ((140, 80, 40), "brown")):
        repainted = purple.copy()
        repainted[ndimage.binary_dilation(inside, iterations=3) & (purple.min(-1) < 250)] = off
        verdict = check(Image.fromarray(repainted), spec(triangle, category="single_object"))
        assert verdict.failed == ["objects[0].color"], (name, verdict.failed)
    pink = np.full((64, 64, 3), (250, 0, 250), np.uint8)  # magenta: no background of the world
    assert not check(Image.fromarray(pink), spec(ObjectSpec("circle"), bg="white", category="background")).checks[
        "background"
    ]


def test_extra_or_missing_objects_fail_the_count():
    one = spec(ObjectSpec("circle", "red"), category="single_object")
    extra = check(scene("white", RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT), one)
    assert not extra.correct and not extra.checks["count"]
    assert extra.checks["objects[0].shape"] and extra.checks["objects[0].color"]  # the circle itself is right
    missing = check(scene("white", RED_CIRCLE_LEFT), spec(ObjectSpec("circle", "red", count=2), category="counting"))
    assert not missing.correct and not missing.checks["count"] and not missing.checks["objects[0].count"]
    assert not check(scene("gray"), one).correct  # an empty canvas


def test_unstated_attributes_are_not_checked():
    img = scene("beige", ("star", "green", "large", 0.5, 0.5))
    v = check(img, spec(ObjectSpec("star"), category="single_object"))
    assert v.correct and set(v.checks) == {"count", "objects[0].shape", "objects[0].count"}
    v = check(img, spec(ObjectSpec("star", "green", "small"), bg="white", category="background"))
    assert not v.correct and set(v.failed) == {"background", "objects[0].size"}
    assert v.kinds() == {"background": False, "count": True, "shape": True, "color": True, "size": False}


def test_groups_sharing_attributes_are_matched_jointly():
    """'a circle and a red circle': a greedy assignment could give the red circle to the first group
    and leave the second unmatched; the joint matching must not."""
    img = scene("white", ("circle", "red", "small", 0.25, 0.5), ("circle", "blue", "small", 0.75, 0.5))
    v = check(img, spec(ObjectSpec("circle"), ObjectSpec("circle", "red"), category="two_object"))
    assert v.correct, v.checks
    assert v.checks["objects[0].count"] and v.checks["objects[1].count"]
    assert not check(img, spec(ObjectSpec("circle", "green"), ObjectSpec("circle", "red"))).correct


def test_spec_dict_and_detection_inputs_and_validation():
    s = sample(1, seed=0)[0]
    det = detect(render(s.scene))
    assert isinstance(det, Detection)
    assert check(det, s.spec.to_dict()).correct
    with pytest.raises(ValueError, match="hexagon"):
        check(det, spec(ObjectSpec("hexagon")))
    with pytest.raises(ValueError, match="relation"):
        check(det, spec(ObjectSpec("circle"), ObjectSpec("star"), rel=(0, "near", 1)))


def test_image_modes_and_arrays():
    s = sample(3, seed=0)[2]  # a small purple triangle on white
    img = render(s.scene)
    want = [(o.shape, o.color, o.size) for o in detect(img).objects]
    assert want == [(o.shape, o.color, o.size) for o in s.scene.objects]
    a = np.asarray(img)
    for variant in (img.convert("RGBA"), a, a.transpose(2, 0, 1), a / 255.0, a.astype(np.uint16) * 257):
        assert [(o.shape, o.color, o.size) for o in detect(variant).objects] == want
    for variant in (
        img.convert("L"),
        img.convert("LA"),
        img.convert("P"),
        img.convert("I"),
        a[..., 0],
        img.convert("1"),
    ):
        d = detect(variant)  # gray loses color, not the object
        assert d.background == "white" and len(d.objects) == 1
    clear = np.zeros((64, 64, 4), np.uint8)  # fully transparent: composited on white, nothing on it
    assert detect(clear) == Detection("white", 0.0, (), 64, 64)
    assert detect(np.zeros((1, 1, 3), np.uint8)).objects == ()
    with pytest.raises(ValueError, match="image array"):
        detect(np.zeros(3))


def test_report_is_json_ready_and_doctests_pass():
    items = sample(30, seed=2)
    report = evaluate(((render(s.scene), s.spec) for s in items), keep_verdicts=True)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["n"] == 30 and d["overall"]["correct"] == 30 and len(report.verdicts) == 30
    assert sum(f["n"] for f in d["categories"].values()) == 30
    assert evaluate([]).to_dict() == {
        "overall": {"accuracy": None, "correct": 0, "n": 0, "ci95": None},
        "categories": {},
        "checks": {},
        "n": 0,
    }
    assert doctest.testmod(oracle).failed == 0


# --------------------------------------------------------------------------- CLI


def test_cli_on_a_shapes_subset(tmp_path, capsys):
    make_subset(80, seed=1, out=tmp_path / "subset")
    out = tmp_path / "report.json"
    assert main(["oracle", "--images", str(tmp_path / "subset"), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "relation" in table
    d = json.loads(out.read_text())
    assert set(d) >= {"overall", "categories", "checks", "n", "skipped"}
    assert d["n"] == 80 and d["overall"]["accuracy"] == 1.0 and d["skipped"] == {}


def test_cli_on_a_manifest_folder_skips_bad_rows(tmp_path, capsys):
    items = sample(6, seed=8)
    rows = []
    for i, s in enumerate(items):
        img = render(s.scene, 96)
        name = f"img{i}.png"
        if i == 1:
            img = img.convert("RGBA")
        if i == 2:
            img = img.convert("L")
        if i == 3:
            name = f"img{i}.jpg"
            img.save(tmp_path / name, quality=95)
        else:
            (tmp_path / name).write_bytes(png_bytes(img))
        rows.append({"file": name, "spec": s.spec.to_dict(), "prompt": s.caption})
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows += [
        {"file": "broken.png", "spec": items[0].spec.to_dict()},
        {"file": "gone.png", "spec": items[0].spec.to_dict()},
        {"file": "img0.png"},
        {"file": "img0.png", "spec": {"category": "x", "objects": [{"shape": "hexagon"}]}},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.json"
    assert main(["oracle", "--images", str(tmp_path), "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "broken.png" in err
    d = json.loads(out.read_text())
    assert d["n"] == 6
    assert d["skipped"] == {
        "undecodable image": 1,
        "missing file": 1,
        "no spec": 1,
        "bad spec": 1,
        "bad manifest row": 1,
    }
    assert d["categories"][items[0].spec.category]["n"] >= 1
    assert d["overall"]["correct"] >= 5  # the gray image cannot show its colors


def test_cli_user_errors(tmp_path, capsys):
    assert main(["oracle", "--images", str(tmp_path / "nope")]) == 2
    assert main(["oracle", "--images", str(tmp_path)]) == 2
    pq.write_table(
        pa.table({"caption": ["a"], "image": [png_bytes(render(sample(1)[0].scene))]}), tmp_path / "shapes.parquet"
    )
    assert main(["oracle", "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "no spec column" in err and "Traceback" not in err
