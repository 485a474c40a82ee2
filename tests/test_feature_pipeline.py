"""Extraction from file bytes: warm lookups by the bytes' digest (no decoding), skips, the prefetch thread."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from evalkit.data.images import ImageSkip, SkipCounter
from evalkit.errors import UserError
from evalkit.features import FeatureCache, extract, get_extractor
from evalkit.features.extract import EncodedImage, extract_images
from evalkit.score import score
from evalkit.shapes import render, sample
from evalkit.shapes.subset import make_subset

extract_module = sys.modules["evalkit.features.extract"]  # the package re-exports the function under that name


def png_bytes(n: int, size: int = 32, seed: int = 0, compress_level: int = 6) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            buf, format="PNG", compress_level=compress_level
        )
        out.append(buf.getvalue())
    return out


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def count_rows(module: torch.nn.Module) -> list[int]:
    seen = [0]
    module.register_forward_hook(lambda _m, args, _out: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    return seen


@pytest.fixture()
def judge(tiny_clip):
    return get_extractor(f"judge:{tiny_clip.dir}")


def refuse_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on any decode in ``extract_images`` fails the test (raised in the reader thread, re-raised here)."""
    monkeypatch.setattr(extract_module, "load_image", lambda *a, **k: pytest.fail("an image was decoded"))


def test_encoded_images_match_pil_images_and_warm_lookups_never_decode(judge, tmp_path, monkeypatch):
    blobs = png_bytes(10, seed=1)
    expected = extract(judge, [decoded(b) for b in blobs], batch_size=4)["image"]
    cold_cache = FeatureCache(tmp_path)
    cold = extract_images(judge, [EncodedImage(b) for b in blobs], batch_size=4, cache=cold_cache)
    assert cold.kept == list(range(10)) and (cold_cache.hits, cold_cache.misses) == (0, 10)
    torch.testing.assert_close(cold.features["image"], expected, atol=1e-5, rtol=0)

    rows = count_rows(judge.module)
    refuse_decoding(monkeypatch)
    warm_cache = FeatureCache(tmp_path)  # a fresh object reads the file index and the features from disk
    warm = extract_images(judge, [EncodedImage(b) for b in reversed(blobs)], batch_size=4, cache=warm_cache)
    assert rows[0] == 0 and warm_cache.decoded_hits == 10 and (warm_cache.hits, warm_cache.misses) == (10, 0)
    assert torch.equal(warm.features["image"], cold.features["image"].flip(0))


def test_other_bytes_with_the_same_pixels_hit_after_decoding(judge, tmp_path):
    cache = FeatureCache(tmp_path)
    first = extract_images(judge, [EncodedImage(b) for b in png_bytes(4, seed=2)], cache=cache).features
    rows = count_rows(judge.module)
    recompressed = png_bytes(4, seed=2, compress_level=1)  # same pixels, other file bytes
    assert recompressed != png_bytes(4, seed=2)
    again_cache = FeatureCache(tmp_path)
    again = extract_images(judge, [EncodedImage(b) for b in recompressed], cache=again_cache).features
    assert rows[0] == 0 and again_cache.hits == 4 and again_cache.decoded_hits == 0
    assert torch.equal(again["image"], first["image"])
    # now those bytes are indexed too
    third = FeatureCache(tmp_path)
    extract_images(judge, [EncodedImage(b) for b in recompressed], cache=third)
    assert third.decoded_hits == 4


def test_index_known_but_features_missing_decodes_for_that_extractor(tiny_clip, tmp_path):
    clean = get_extractor(f"judge:{tiny_clip.dir}")
    legacy = get_extractor(f"judge:{tiny_clip.dir}", resize="legacy")
    blobs = png_bytes(3, size=40, seed=3)  # 40 px: the two resize modes give different inputs
    cache = FeatureCache(tmp_path)
    extract_images(clean, [EncodedImage(b) for b in blobs], cache=cache)
    other = FeatureCache(tmp_path)
    got = extract_images(legacy, [EncodedImage(b) for b in blobs], cache=other).features["image"]
    assert (other.hits, other.misses, other.decoded_hits) == (0, 3, 0)
    torch.testing.assert_close(got, extract(legacy, [decoded(b) for b in blobs])["image"], atol=1e-5, rtol=0)


def test_undecodable_bytes_are_counted_and_left_out(judge, tmp_path):
    good = png_bytes(3, seed=4)
    items = [EncodedImage(good[0]), EncodedImage(b"<html>404</html>", "bad.png"), EncodedImage(good[1]),
             EncodedImage(b""), EncodedImage(good[2])]  # fmt: skip
    for cache in (None, FeatureCache(tmp_path)):
        skipped = SkipCounter()
        got = extract_images(judge, items, batch_size=2, cache=cache, skipped=skipped)
        assert got.kept == [0, 2, 4] and got.features["image"].shape == (3, 32)
        assert skipped.as_dict() == {"empty": 1, "not_image": 1} and skipped.examples["not_image"] == ["bad.png"]
    with pytest.raises(ImageSkip, match="not_image"):
        extract_images(judge, items, batch_size=2)


def test_repeats_within_a_call_are_encoded_once_and_counted_as_misses(judge, tmp_path):
    blobs = png_bytes(2, seed=5)
    items = [EncodedImage(blobs[0]), EncodedImage(blobs[1]), EncodedImage(blobs[0]), decoded(blobs[1])]
    rows = count_rows(judge.module)
    cache = FeatureCache(tmp_path)
    got = extract_images(judge, items, batch_size=8, cache=cache).features["image"]
    assert rows[0] == 2 and (cache.hits, cache.misses) == (0, 4)
    assert torch.equal(got[0], got[2]) and torch.equal(got[1], got[3])


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_prefetch_depth_does_not_change_features(judge, prefetch):
    images = [decoded(b) for b in png_bytes(9, seed=6)]
    base = extract_images(judge, images, batch_size=4, prefetch=0).features["image"]
    got = extract_images(judge, images, batch_size=4, prefetch=prefetch).features["image"]
    assert torch.equal(got, base)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_errors_of_the_input_stream_reach_the_caller(judge, prefetch):
    images = [decoded(b) for b in png_bytes(5, seed=7)]

    def stream():
        yield from images[:3]
        raise UserError("manifest row 4 is broken")

    with pytest.raises(UserError, match="manifest row 4"):
        extract_images(judge, stream(), batch_size=2, prefetch=prefetch)
    with pytest.raises(TypeError, match="PIL images or EncodedImage"):
        extract_images(judge, [images[0], "not an image"], prefetch=prefetch)


def test_network_errors_stop_the_reader_thread(judge, monkeypatch):
    images = [decoded(b) for b in png_bytes(40, seed=8)]
    pulled = [0]

    def stream():
        for im in images:
            pulled[0] += 1
            yield im

    def broken(_x):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(judge, "encode", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        extract_images(judge, stream(), batch_size=2, prefetch=1)
    assert pulled[0] < len(images)  # the reader stopped instead of decoding everything


def test_a_new_decode_rule_starts_a_fresh_index(judge, tmp_path, monkeypatch):
    blobs = png_bytes(2, seed=9)
    extract_images(judge, [EncodedImage(b) for b in blobs], cache=FeatureCache(tmp_path))
    monkeypatch.setattr(sys.modules["evalkit.features.cache"], "DECODE_FORMAT", 999)
    fresh = FeatureCache(tmp_path)
    extract_images(judge, [EncodedImage(b) for b in blobs], cache=fresh)
    assert fresh.decoded_hits == 0 and fresh.hits == 2  # decoded again; features still found by pixels
    assert (tmp_path / FeatureCache.decoded_key()).is_dir() and "v999" in FeatureCache.decoded_key()


def test_warm_score_decodes_nothing(judge, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    make_subset(12, seed=1, out=ref)
    gen = tmp_path / "gen"
    gen.mkdir()
    lines = []
    for i, s in enumerate(sample(10, seed=2)):
        render(s.scene).save(gen / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "prompt": s.caption}) + "\n")
    (gen / "manifest.jsonl").write_text("".join(lines))
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "evalkit_cache"))
    metrics = ["clip", "fid", "kid", "cmmd"]
    cold = score(gen, ref, metrics, extractor=judge, cache=FeatureCache(tmp_path / "fc"), kid_subsets=5)
    refuse_decoding(monkeypatch)
    warm_cache = FeatureCache(tmp_path / "fc")
    warm = score(gen, ref, metrics, extractor=judge, cache=warm_cache, kid_subsets=5)
    assert warm.cache["misses"] == 0 and warm.cache["decoded_hits"] == 22
    assert {k: r.value for k, r in warm.metrics.items()} == {k: r.value for k, r in cold.metrics.items()}
