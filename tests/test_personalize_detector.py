"""The embedded subject and its detector: the shipped images regenerate byte for byte, the detector finds
the subject through noise and blur on every background, and never in shapes-world renders."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from evalkit.shapes import render, sample
from evalkit.shapes.render import png_bytes
from evalkit.shapes.world import BACKGROUNDS, ObjectSpec, PlacedObject, Scene
from personalize import detector
from personalize.detector import check_subject, detect_subject
from personalize.subjects import HOUSEMARK, SUBJECTS, Placement
from personalize.subjects.make import write_subject


def degrade(im: Image.Image, blur: float, noise: float, seed: int) -> Image.Image:
    a = ndimage.gaussian_filter(np.asarray(im, dtype=np.float64) / 255, (blur, blur, 0))
    a += np.random.default_rng(seed).normal(0, noise, a.shape)
    return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))


def test_shipped_images_are_what_the_script_writes(tmp_path):
    for subject in SUBJECTS.values():
        written = write_subject(subject, tmp_path / subject.name)
        shipped = subject.image_paths()
        assert [p.name for p in written] == [p.name for p in shipped] and len(shipped) == 4
        for new, old in zip(written, shipped):
            assert new.read_bytes() == old.read_bytes()
            assert new.with_suffix(".txt").read_text() == old.with_suffix(".txt").read_text()
        backgrounds = {p.background for p in subject.placements}
        assert len(backgrounds) == 4  # varied backgrounds, and one left out to test generalization
        assert len({(p.x, p.y) for p in subject.placements}) == 4 and len({p.extent for p in subject.placements}) == 4


def test_doctests():
    from personalize import config, data, inputs, prompts

    for module in (detector, config, data, inputs, prompts):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_shipped_images_are_detected():
    for path, placement in zip(HOUSEMARK.image_paths(), HOUSEMARK.placements):
        d = detect_subject(Image.open(path))
        assert d.present and d.outline_ok and d.background == placement.background


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_detected_through_noise_and_blur_on_every_background(background):
    rng = np.random.default_rng(list(BACKGROUNDS).index(background))
    hits = outline = 0
    for k in range(12):
        placement = Placement(rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.5), background)
        im = degrade(HOUSEMARK.render(placement), blur=rng.uniform(0.3, 1.2), noise=0.05, seed=k)
        v = check_subject(im, background=background)
        hits += v["correct"]
        outline += v["outline"]
    assert hits == 12 and outline >= 11


def test_never_found_in_shapes_world_renders():
    found = [s.caption for s in sample(200, seed=21) if detect_subject(render(s.scene)).present]
    assert found == []


def test_wrong_pattern_or_outline_is_told_apart():
    p = HOUSEMARK.placements[0]
    swapped = HOUSEMARK.render(p, colors=((130, 40, 170), (245, 220, 30)))  # purple roof over a yellow body
    assert not detect_subject(swapped).present
    one_color = HOUSEMARK.render(p, colors=((130, 40, 170), (130, 40, 170)))
    assert not detect_subject(one_color).present
    # a yellow triangle above a purple square: the colors in order, but two objects apart, as the world draws them
    objects = (
        PlacedObject("triangle", "yellow", "small", 0.5, 0.36),
        PlacedObject("square", "purple", "small", 0.5, 0.6),
    )
    stacked = detect_subject(render(Scene("white", objects), 64))
    assert not stacked.present and sorted(o.shape for o in stacked.companions) == ["square", "triangle"]


def test_companions_and_sizes():
    big = Image.new("RGB", (256, 256), (0, 0, 0))
    big.paste(HOUSEMARK.render(Placement(0.3, 0.5, 0.4, "white"), size=128), (0, 64))
    assert detect_subject(big).present  # any size: large images are box-filtered down first
    scene = Scene("gray", (PlacedObject("circle", "red", "small", 0.8, 0.2),))
    im = render(scene, 64)
    arr = np.asarray(im).copy()
    arr[:, :40] = np.asarray(HOUSEMARK.render(Placement(0.3, 0.6, 0.4, "gray")))[:, :40]
    v = check_subject(Image.fromarray(arr), background="gray", companion=ObjectSpec("circle", "red"))
    assert v["correct"], v
    v = check_subject(Image.fromarray(arr), companion=ObjectSpec("star"))
    assert v["checks"] == {"present": True, "companion": False}
    assert png_bytes(im)  # the renderer's PNG writer serves the subject images too


def test_never_found_in_noise():
    """An untrained generator's output (pixel noise, smooth color blobs) must not count as the subject."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        blobs = ndimage.zoom(rng.integers(0, 256, (8, 8, 3)).astype(float), (8, 8, 1), order=1)
        assert not detect_subject(Image.fromarray(pixels)).present
        assert not detect_subject(Image.fromarray(np.clip(blobs, 0, 255).astype(np.uint8))).present
