"""Feature extractors, resize modes and the feature cache, on tiny locally built models."""

from __future__ import annotations

import io
import json
import shutil
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evalkit.errors import ModelNotFoundError, UserError
from evalkit.features import (
    FeatureCache,
    Preprocess,
    encode_texts,
    extract,
    get_extractor,
    image_digest,
    list_extractors,
    load_openclip_dir,
    parse_spec,
    register_extractor,
    resize,
    save_openclip_dir,
)
from evalkit.features import openclip as openclip_mod
from evalkit.features.inception import INCEPTION_WEIGHTS_FILE, FIDInceptionV3


def random_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def smooth_image(h: int = 37, w: int = 50) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 255 / (w + h - 2)], axis=-1)
    return Image.fromarray(arr.round().astype(np.uint8))


def count_forward(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture()
def judge(tiny_clip):
    return get_extractor(f"judge:{tiny_clip.dir}")


# --- registry -----------------------------------------------------------------------------------


def test_registry_parses_specs_and_rejects_bad_ones():
    assert {"judge", "clip", "inception"} <= set(list_extractors())
    assert parse_spec("judge") == ("judge", None)
    assert parse_spec("clip:ViT-B-32//abs/w.safetensors") == ("clip", "ViT-B-32//abs/w.safetensors")
    assert openclip_mod.parse_clip_spec("ViT-B-32//abs/w.safetensors") == ("ViT-B-32", "/abs/w.safetensors")
    assert openclip_mod.parse_clip_spec("ViT-B-32/openai") == ("ViT-B-32", "openai")
    assert openclip_mod.parse_clip_spec("hf-hub:timm/x") == ("hf-hub:timm/x", None)
    with pytest.raises(UserError, match="unknown feature extractor 'dino'.*clip, inception, judge"):
        get_extractor("dino:v2")
    with pytest.raises(UserError, match="empty argument"):
        parse_spec("clip:")
    with pytest.raises(UserError, match="needs weights"):
        get_extractor("clip:ViT-B-32")
    with pytest.raises(UserError, match="unknown open_clip model 'ViT-B-33'.*ViT-B-32"):
        get_extractor("clip:ViT-B-33/openai")
    with pytest.raises(UserError, match="unknown pretrained tag 'nope' for ViT-B-32; known tags: .*laion2b_s34b_b79k"):
        get_extractor("clip:ViT-B-32/nope")
    with pytest.raises(UserError, match="unknown resize mode 'bicubic'"):
        get_extractor("judge", resize="bicubic")
    with pytest.raises(ValueError, match="already registered"):
        register_extractor("clip", lambda *a: None)
    with pytest.raises(ValueError, match="must match"):
        register_extractor("Bad Name", lambda *a: None)


# --- judge layout -------------------------------------------------------------------------------


def test_judge_missing_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(openclip_mod, "DEFAULT_JUDGE_DIR", tmp_path / "zoo" / "judge")
    with pytest.raises(ModelNotFoundError, match=r"zoo judge model missing.*python -m evalkit\.zoo train judge"):
        get_extractor("judge")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "open_clip_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="no <model_name>.json open_clip config"):
        get_extractor(f"judge:{tmp_path / 'w'}")


@pytest.mark.parametrize("damage", ["truncated", "not_weights"])
def test_corrupt_clip_or_judge_weights_give_one_line(tiny_clip, tmp_path, damage):
    weights = tiny_clip.dir / "open_clip_model.safetensors"
    bad_dir = tmp_path / "judge"
    shutil.copytree(tiny_clip.dir, bad_dir)
    bad = bad_dir / "open_clip_model.safetensors"
    if damage == "truncated":
        bad.write_bytes(weights.read_bytes()[:5])
    else:
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, "PNG")
        bad.write_bytes(buf.getvalue())
    for spec in (f"judge:{bad_dir}", f"clip:{tiny_clip.name}/{bad}"):
        with pytest.raises(UserError) as err:
            get_extractor(spec)
        msg = str(err.value)
        assert str(bad) in msg and "does not load" in msg and "\n" not in msg, msg


def test_judge_roundtrip_same_outputs(tiny_clip, tmp_path):
    directory, original = tiny_clip.dir, tiny_clip.model
    assert sorted(p.name for p in directory.iterdir()) == [
        f"{tiny_clip.name}.json",
        "meta.json",
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    model, preprocess, tokenizer, name = load_openclip_dir(directory)
    assert name == tiny_clip.name and not model.training
    tokens = tokenizer(["a small red circle to the left of a blue square"])
    assert tokens.shape == (1, tiny_clip.cfg["text_cfg"]["context_length"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), original.encode_image(x))
        assert torch.equal(model.encode_text(tokens), original.encode_text(tokens))

    # the same folder loads with plain open_clip's local-dir schema too
    import open_clip

    plain, _, _ = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    with torch.no_grad():
        assert torch.equal(plain.eval().encode_image(x), original.encode_image(x))

    # the extractor: declared features, eval mode, matches the model on its own preprocessing
    ext = get_extractor(f"judge:{directory}")
    assert ext.features == {"image": 32} and ext.text_dim == 32
    assert ext.id == f"judge:{tiny_clip.name}|resize=clean|32px|center-crop"
    assert len(ext.weights_hash) == 64 and not ext.module.training
    image = smooth_image(40, 56)
    with torch.no_grad():
        ref = original.encode_image(ext.preprocess(image)[None])
        ref_text = original.encode_text(tokens)
    torch.testing.assert_close(ext.encode_images([image])["image"], ref)
    torch.testing.assert_close(ext.encode_text(["a small red circle to the left of a blue square"]), ref_text)
    # open_clip's own eval transform (uint8 bicubic resize + crop) gives nearly the same input
    assert (preprocess(image) - ext.preprocess(image)).abs().max() < 0.05

    # float16 storage (the zoo's size limit) loads back within half precision
    save_openclip_dir(original, tiny_clip.cfg, tiny_clip.name, tmp_path / "fp16", dtype=torch.float16)
    half = get_extractor(f"judge:{tmp_path / 'fp16'}")
    assert half.weights_hash != ext.weights_hash
    torch.testing.assert_close(half.encode_images([image])["image"], ref, atol=2e-2, rtol=2e-2)
    # the minimal layout (config + weights, no open_clip_config.json / meta.json) loads the same
    (tmp_path / "fp16" / "open_clip_config.json").unlink()
    minimal = get_extractor(f"judge:{tmp_path / 'fp16'}")
    assert minimal.preprocess == half.preprocess
    torch.testing.assert_close(minimal.encode_images([image])["image"], half.encode_images([image])["image"])


def test_save_openclip_dir_rejects_bad_names(tiny_clip, tmp_path):
    model = tiny_clip.model
    with pytest.raises(ValueError, match="built-in open_clip model"):
        save_openclip_dir(model, tiny_clip.cfg, "ViT-B-32", tmp_path)
    with pytest.raises(ValueError, match="plain file stem"):
        save_openclip_dir(model, tiny_clip.cfg, "a/b", tmp_path)
    with pytest.raises(ValueError, match="needs keys"):
        save_openclip_dir(model, {"embed_dim": 32}, "x", tmp_path)


# --- clip: --------------------------------------------------------------------------------------


def test_clip_offline_without_weights_names_what_to_fetch(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as err:
        get_extractor("clip:ViT-B-32/laion2b_s34b_b79k")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "ViT-B-32" in msg and "'laion2b_s34b_b79k'" in msg and "\n" not in msg
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg and str(tmp_path / "hub") in msg
    assert "clip:ViT-B-32//path/to/open_clip_model.safetensors" in msg
    with pytest.raises(ModelNotFoundError, match="hf download nobody/nothing"):
        get_extractor("clip:hf-hub:nobody/nothing")
    with pytest.raises(ModelNotFoundError, match="weight file for clip:ViT-B-32 not found"):
        get_extractor(f"clip:ViT-B-32/{tmp_path}/missing.safetensors")


def test_clip_from_local_weight_file(tiny_clip):
    directory, original = tiny_clip.dir, tiny_clip.model
    load_openclip_dir(directory)  # registers the tiny config as an open_clip name
    ext = get_extractor(f"clip:{tiny_clip.name}/{directory}/open_clip_model.safetensors", resize="legacy")
    assert ext.name == f"clip:{tiny_clip.name}/open_clip_model.safetensors"
    assert "resize=legacy" in ext.id
    image = random_images(1, 48)[0]
    with torch.no_grad():
        ref = original.encode_image(ext.preprocess(image)[None])
    torch.testing.assert_close(ext.encode_images([image])["image"], ref)


def test_clip_whose_hub_tokenizer_is_not_cached_is_a_one_line_error(tiny_clip, monkeypatch):
    import open_clip

    def offline(name, *a, **kw):  # what SigLIP's Hugging Face tokenizer does offline with an empty cache
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files for {name}.\nCheck ...")

    load_openclip_dir(tiny_clip.dir)
    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    with pytest.raises(ModelNotFoundError, match="needs files beyond its weights") as err:
        get_extractor(f"clip:{tiny_clip.name}/{tiny_clip.dir}/open_clip_model.safetensors")
    assert "\n" not in str(err.value) and "couldn't connect" in str(err.value)


# --- resize modes -------------------------------------------------------------------------------


def test_resize_clean_is_pil_bicubic_with_antialias():
    image = smooth_image()
    for size in (24, 80):  # down and up
        ours = resize(image, size, "clean")
        assert ours.shape == (3, size, size) and ours.dtype == torch.float32
        pil = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        # PIL's RGB path rounds to uint8 between its two passes; the float path does not
        assert np.abs(ours.permute(1, 2, 0).numpy() - pil).max() <= 1.0
    # antialiasing: 4x downsampling of noise averages it out; plain bilinear samples it (aliasing)
    noise = random_images(1, 64)[0]
    assert resize(noise, 16, "clean").std() < 0.5 * resize(noise, 16, "legacy").std()
    # same size is the identity in every mode
    for mode in ("clean", "legacy", "tf1"):
        torch.testing.assert_close(resize(noise, 64, mode), torch.from_numpy(np.array(noise)).permute(2, 0, 1).float())


def test_resize_legacy_and_tf1_match_their_references():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    image = random_images(1, 45)[0]
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float()
    for size in (20, 70):
        ref = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]
        assert torch.equal(resize(image, size, "legacy"), ref)
        ref_tf = interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False)[0]
        assert torch.equal(resize(image, size, "tf1"), ref_tf)
    assert not torch.equal(resize(image, 20, "legacy"), resize(image, 20, "tf1"))


def test_preprocess_crop_and_normalize():
    pp = Preprocess(16, "clean", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop="center")
    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (20, 0, 40, 20))  # blue centre square
    x = pp(wide)
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x[:, 8, 8], torch.tensor([-2.0, -2.0, 2.0]))  # (0-0.5)/0.25, (1-0.5)/0.25
    squash = Preprocess(16, "clean", crop="none")(wide)
    assert squash[0, 8, 0] > 0.98  # the red edge survives without the crop (default mean 0, std 1: x/255)


# --- extraction and cache -----------------------------------------------------------------------


def test_batch_size_invariance(judge):
    images = random_images(64, 40, seed=1)
    many = extract(judge, images, batch_size=64)["image"]
    assert many.shape == (64, 32)
    one = extract(judge, images[::6], batch_size=1)["image"]
    torch.testing.assert_close(one, many[::6], atol=1e-5, rtol=0)
    uneven = extract(judge, images, batch_size=7)["image"]  # last batch of 1
    torch.testing.assert_close(uneven, many, atol=1e-5, rtol=0)
    assert extract(judge, [], batch_size=8)["image"].shape == (0, 32)


def test_cache_hit_runs_no_forward(judge, tmp_path):
    images = random_images(20, 32, seed=2)
    calls = count_forward(judge.module)
    cache = FeatureCache(tmp_path)
    cold = extract(judge, images, batch_size=8, cache=cache)["image"]
    assert calls[0] == 3 and (cache.hits, cache.misses) == (0, 20)

    # a fresh cache object (another process) reads it back; the same pixels re-encoded as PNG hit too
    def png(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    warm_cache = FeatureCache(tmp_path)
    warm = extract(judge, [png(im) for im in images], batch_size=8, cache=warm_cache)["image"]
    assert calls[0] == 3 and (warm_cache.hits, warm_cache.misses) == (20, 0)
    assert torch.equal(cold, warm)

    # partial hit: only new images go through the network (each distinct one once), order is kept
    new = random_images(3, 32, seed=3)
    mixed = extract(judge, [new[0], images[5], new[1], new[0], new[2]], batch_size=8, cache=warm_cache)["image"]
    assert calls[0] == 4 and warm_cache.misses == 4
    assert torch.equal(mixed[1], cold[5]) and torch.equal(mixed[0], mixed[3])
    uncached = extract(judge, [new[0], images[5], new[1], new[0], new[2]], batch_size=8)["image"]
    torch.testing.assert_close(mixed, uncached, atol=1e-5, rtol=0)

    # compressed to JPEG the pixels change: a different key
    buf = io.BytesIO()
    images[0].save(buf, format="JPEG", quality=90)
    assert image_digest(Image.open(buf).convert("RGB")) != image_digest(images[0])


def test_cache_key_changes_with_resize_mode_and_weights(tiny_clip, tmp_path):
    directory, model = tiny_clip.dir, tiny_clip.model
    clean = get_extractor(f"judge:{directory}")
    legacy = get_extractor(f"judge:{directory}", resize="legacy")
    assert clean.weights_hash == legacy.weights_hash
    assert clean.id != legacy.id and FeatureCache.key(clean) != FeatureCache.key(legacy)

    state = {k: v + 1e-3 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    other_dir = tmp_path / "other"
    model2 = type(model)(**tiny_clip.cfg)
    model2.load_state_dict(state)
    save_openclip_dir(model2, tiny_clip.cfg, tiny_clip.name, other_dir)
    other = get_extractor(f"judge:{other_dir}")
    assert other.id == clean.id and other.weights_hash != clean.weights_hash
    assert FeatureCache.key(other) != FeatureCache.key(clean)

    renormed = tmp_path / "renormed"  # the same weights, another normalization in the config
    shutil.copytree(directory, renormed)
    hub = json.loads((renormed / "open_clip_config.json").read_text())
    hub["preprocess_cfg"]["mean"] = [0.5, 0.5, 0.5]
    (renormed / "open_clip_config.json").write_text(json.dumps(hub))
    assert FeatureCache.key(get_extractor(f"judge:{renormed}")) != FeatureCache.key(clean)

    images = random_images(4, 32, seed=4)
    cache = FeatureCache(tmp_path / "cache")
    extract(clean, images, cache=cache)
    extract(legacy, images, cache=cache)
    extract(other, images, cache=cache)
    assert (cache.hits, cache.misses) == (0, 12)
    extract(clean, images, cache=cache)
    assert cache.hits == 4


def test_cache_shards_merge_and_bad_shards_are_skipped(judge, tmp_path):
    cache = FeatureCache(tmp_path, max_shards=2)
    batches = [random_images(3, 32, seed=s) for s in (10, 11, 12)]
    for b in batches:
        extract(judge, b, cache=cache)
    shard_dir = tmp_path / FeatureCache.key(judge) / "image"
    assert len(list(shard_dir.glob("*.safetensors"))) == 1  # three shards merged into one
    (shard_dir / "0-broken.safetensors").write_bytes(b"not a shard")
    calls = count_forward(judge.module)
    fresh = FeatureCache(tmp_path)
    with pytest.warns(UserWarning, match="unreadable feature cache shard"):
        extract(judge, [im for b in batches for im in b], cache=fresh)
    assert calls[0] == 0 and fresh.hits == 9


def test_text_embeddings_cached(judge, tmp_path):
    texts = ["a red circle", "two blue squares", "a red circle", "a green star"]
    calls = count_forward(judge.model.transformer)
    cache = FeatureCache(tmp_path)
    first = encode_texts(judge, texts, batch_size=2, cache=cache)
    assert first.shape == (4, 32) and calls[0] == 2  # three distinct texts, two batches
    assert torch.equal(first[0], first[2])
    torch.testing.assert_close(first, judge.encode_text(texts))
    calls[0] = 0
    again = encode_texts(judge, texts, cache=FeatureCache(tmp_path))
    assert calls[0] == 0 and torch.equal(first, again)


def test_default_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path))
    assert FeatureCache().root == tmp_path / "features"
    monkeypatch.delenv("EVALKIT_CACHE")
    assert FeatureCache().root.parts[-3:] == (".cache", "t2i-evalkit", "features")


# --- inception ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Random FID Inception weights; He-initialized so activations keep their scale through 90 layers."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_from_local_weights_matches_torch_fidelity(inception_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    images = [random_images(1, 64, seed=5)[0], smooth_image(64, 64)]
    ext = get_extractor(f"inception:{inception_weights}", resize="tf1")
    assert ext.features == {"pool": 2048, "logits_unbiased": 1008, "logits": 1008}
    assert ext.id == "inception-v3-fid|resize=tf1|299px" and not ext.module.training
    ours = extract(ext, images, batch_size=2)
    ref = FeatureExtractorInceptionV3(
        "inception-v3-compat",
        ["2048", "logits_unbiased", "logits"],
        feature_extractor_weights_path=str(inception_weights),
    )
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        pool, unbiased, logits = ref(x)
    for name, want in (("pool", pool), ("logits_unbiased", unbiased), ("logits", logits)):
        assert ours[name].shape == want.shape
        assert (want[0] - want[1]).abs().max() > 0.1 * want.abs().max()  # the two images differ
        torch.testing.assert_close(ours[name], want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_inception_score_reads_the_logits_without_bias(inception_weights, tmp_path):
    from evalkit.metrics.functional import inception_score
    from evalkit.score import score

    state = torch.load(inception_weights)
    state["fc.weight"] = state["fc.weight"] * 200  # spread the class probabilities, so IS is well above 1
    state["fc.bias"] = torch.randn(state["fc.bias"].shape, generator=torch.Generator().manual_seed(0)) * 5
    torch.save(state, tmp_path / "inception.pth")
    smooth = smooth_image(64, 64)
    images = [*random_images(3, 64, seed=7), smooth, smooth.rotate(90), Image.new("RGB", (64, 64), (200, 30, 30))]
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
    ext = get_extractor(f"inception:{tmp_path / 'inception.pth'}", resize="tf1")
    feats = extract(ext, [Image.open(tmp_path / f"{i}.png").convert("RGB") for i in range(6)])
    report = score(tmp_path, None, ["is"], extractor=ext, cache=None, is_splits=2)
    want, _ = inception_score(feats["logits_unbiased"], splits=2)
    with_bias, _ = inception_score(feats["logits"], splits=2)
    assert report["is"].value == pytest.approx(float(want), rel=1e-6)
    assert abs(float(with_bias) - float(want)) > 0.05 * float(want)  # the bias matters here


def test_inception_missing_or_wrong_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as err:
        get_extractor("inception")
    msg = str(err.value)
    assert INCEPTION_WEIGHTS_FILE in msg and str(tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE) in msg
    assert "github.com/toshas/torch-fidelity/releases" in msg
    with pytest.raises(ModelNotFoundError, match=INCEPTION_WEIGHTS_FILE):
        get_extractor(f"inception:{tmp_path / 'nope.pth'}")
    # a file under pytorch-fid's name in the same folder is found (and this one is rejected as wrong)
    wrong = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    wrong.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match=f"{wrong} is not FID Inception-v3 weights"):
        get_extractor("inception")
    # files that are not checkpoints at all: one line naming the file, whatever the reader raised
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, "PNG")
    for name, data in (("png.pth", png.getvalue()), ("cut.safetensors", b"\x08\x00\x00")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserError) as err:
            get_extractor(f"inception:{path}")
        assert str(path) in str(err.value) and "\n" not in str(err.value), str(err.value)
