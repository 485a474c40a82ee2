"""Generators on tiny pipelines built from configs: loading, seeds, batching, NFE, folders, resume."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from evalkit.cli import main
from evalkit.errors import ModelNotFoundError, UserError
from evalkit.generators import (
    FolderGenerator,
    clear_cache,
    derive_seed,
    generate_to_folder,
    image_file_name,
    load,
    measure_speed,
    read_manifest,
    register_pipeline_class,
)
from evalkit.generators.manifest import png_bytes
from evalkit.generators.testing import ToyGANNet, ToyGANPipeline, save_tiny_amused, save_toy_gan
from evalkit.utils import sha256_file

PROMPTS = ["a small red circle", "a blue square on a white background"]
FAST = {"steps": 2, "size": 32}


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine two threads run 5-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return load(f"dir:{tiny_sd_dir}")


# ---------------------------------------------------------------------------- loading and metadata


def test_dir_loads_stable_diffusion_with_metadata(sd, tiny_sd_dir):
    assert sd.family == "diffusion"
    assert type(sd.pipe).__name__ == "StableDiffusionPipeline"
    assert sd.pipe.safety_checker is None
    expected = sum(p.numel() for n in ("unet", "vae", "text_encoder") for p in getattr(sd.pipe, n).parameters())
    assert sd.num_parameters == expected
    assert sd.params == {"steps": 50, "guidance": 7.5, "height": 32, "width": 32}  # the pipeline's own defaults
    assert sd.resolve_params(steps=3, size=48) == {"steps": 3, "guidance": 7.5, "height": 48, "width": 48}
    assert load(f"dir:{tiny_sd_dir}") is sd  # cached: loading is the slow part
    with pytest.raises(UserError, match="does not take 'strength'"):
        sd.resolve_params(strength=0.5)
    assert sd.applicable({"steps": 3, "size": 48, "strength": 0.5}) == ({"steps": 3, "size": 48}, ["strength"])


def test_nfe_counts_cfg_as_two_passes_and_matches_the_measured_count(sd):
    with_cfg = sd.generate(PROMPTS, [0, 1], steps=3, size=32)
    without = sd.generate(PROMPTS, [0, 1], steps=3, size=32, guidance=1.0)
    assert with_cfg.nfe == [6, 6] and sd.nfe(steps=3) == 6
    assert without.nfe == [3, 3] and sd.nfe(steps=3, guidance=1.0) == 3
    assert len(with_cfg.seconds) == 2 and all(s > 0 for s in with_cfg.seconds)


def test_same_seed_same_bytes_and_seeds_matter(sd):
    prompts, seeds = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]], [0, 1, 0, 1]
    a = sd.generate(prompts, seeds, **FAST)
    b = sd.generate(prompts, seeds, **FAST)
    assert all(im.mode == "RGB" and im.size == (32, 32) for im in a.images)
    assert [png_bytes(x) for x in a.images] == [png_bytes(x) for x in b.images]
    # a different seed or prompt gives a clearly different image
    assert np.abs(pixels(a.images[0]) - pixels(a.images[1])).mean() > 5
    assert np.abs(pixels(a.images[0]) - pixels(a.images[2])).mean() > 0


def test_image_depends_on_its_own_seed_not_on_the_batch(sd):
    prompts, seeds = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[1]], [3, 4, 5, 6]
    batched = sd.generate(prompts, seeds, **FAST).images
    single = sd.generate(prompts, seeds, batch_size=1, **FAST).images
    shuffled = sd.generate(prompts[::-1], seeds[::-1], batch_size=2, **FAST).images[::-1]
    for a, b, c in zip(batched, single, shuffled):
        # batched CPU kernels round differently: at most one 8-bit level in rare pixels
        assert np.abs(pixels(a) - pixels(b)).max() <= 1 and np.abs(pixels(a) - pixels(c)).max() <= 1
        assert (pixels(a) != pixels(b)).mean() < 0.01


def test_masked_family_from_an_amused_pipeline(tmp_path):
    directory = save_tiny_amused(tmp_path / "amused")
    g = load(f"dir:{directory}", cache=False)
    assert g.family == "masked" and type(g.pipe).__name__ == "AmusedPipeline"
    assert g.params["steps"] == 12 and g.params["height"] == 32
    out = g.generate(PROMPTS, [7, 8], steps=2)
    assert out.nfe == [4, 4] == [g.nfe(steps=2)] * 2  # guidance 10 by default: two passes per step
    assert [im.size for im in out.images] == [(32, 32)] * 2
    # aMUSEd takes one torch.Generator per call, so the adapter runs it per image: exact across batch sizes
    alone = g.generate(PROMPTS[1:], [8], steps=2)
    assert png_bytes(alone.images[0]) == png_bytes(out.images[1])


# ---------------------------------------------------------------------------- custom pipeline classes


def test_custom_gan_pipeline_loads_from_its_component_module(tmp_path):
    directory = save_toy_gan(tmp_path / "gan")
    index = json.loads((directory / "model_index.json").read_text())
    assert index["_class_name"] == "ToyGANPipeline" and index["generator"][0] == "evalkit.generators.testing"
    g = load(f"dir:{directory}", cache=False)
    assert isinstance(g.pipe, ToyGANPipeline) and g.family == "gan"
    assert g.num_parameters == sum(p.numel() for p in g.pipe.generator.parameters())
    with pytest.raises(UserError, match="does not take 'steps'"):
        g.generate(PROMPTS, [0, 1], steps=4)
    assert not g.takes("steps") and not g.takes("size")  # one-shot, fixed size: a shared setting skips it
    assert g.applicable({"steps": 4, "size": 32}) == ({}, ["steps", "size"])
    out = g.generate(PROMPTS, [0, 1])
    assert out.nfe == [1, 1] and g.nfe() == 1
    assert png_bytes(g.generate(PROMPTS[1:], [1]).images[0]) == png_bytes(out.images[1])


class RenamedGANPipeline(ToyGANPipeline):
    """A pipeline class living outside evalkit: found only once registered."""

    evalkit_family = None  # family comes from the registration


def test_pipeline_class_outside_evalkit_needs_registration(tmp_path):
    torch.manual_seed(0)
    RenamedGANPipeline(ToyGANNet()).save_pretrained(tmp_path / "renamed")
    with pytest.raises(UserError, match="register_pipeline_class"):
        load(f"dir:{tmp_path / 'renamed'}", cache=False)
    register_pipeline_class("RenamedGANPipeline", f"{__name__}:RenamedGANPipeline", family="autoregressive")
    g = load(f"dir:{tmp_path / 'renamed'}", cache=False)
    assert type(g.pipe) is RenamedGANPipeline and g.family == "autoregressive"
    with pytest.raises(ValueError, match="family"):
        register_pipeline_class("X", "x", family="vae")


# ---------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize("imported_first", [False, True])
def test_hf_offline_missing_model_fails_at_once_with_what_to_fetch(monkeypatch, capsys, imported_first):
    from huggingface_hub import constants

    # imported_first: huggingface_hub was imported before HF_HUB_OFFLINE was set, so its constant says online
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", not imported_first)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as err:
        load("hf:evalkit-tests/no-such-model-4242")
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert "evalkit-tests/no-such-model-4242" in msg and "hf download" in msg and "dir:" in msg
    assert "HF_HUB_OFFLINE" in msg and "\n" not in msg
    code = main(["generate", "--generator", "hf:evalkit-tests/no-such-model-4242", "--prompts", "shapes:1",
                 "--out", "unused"])  # fmt: skip
    err_out = capsys.readouterr().err
    assert code == 2 and err_out.startswith("error: hf:evalkit-tests/no-such-model-4242") and "Traceback" not in err_out


def test_hf_offline_loads_a_cache_that_lacks_files_the_pipeline_never_needs(monkeypatch, tiny_sd_dir, tmp_path):
    """diffusers fetches only what a pipeline needs; huggingface_hub then calls the snapshot incomplete."""
    import shutil

    from huggingface_hub import constants
    from huggingface_hub.errors import IncompleteSnapshotError

    partial, broken = tmp_path / "partial", tmp_path / "broken"
    shutil.copytree(tiny_sd_dir, partial)
    shutil.copytree(tiny_sd_dir, broken)
    shutil.rmtree(broken / "unet")
    snapshots = {"org/partial": partial, "org/broken": broken}

    def snapshot_download(repo_id, revision=None, local_files_only=False):
        raise IncompleteSnapshotError(
            "unet/diffusion_pytorch_model.fp16.safetensors is missing", str(snapshots[repo_id])
        )

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    g = load("hf:org/partial", cache=False)
    assert g.name == "hf:org/partial" and len(g.generate(["a red circle"], seeds=[0], steps=1, size=32).images) == 1
    with pytest.raises(ModelNotFoundError, match="cached copy is incomplete"):
        load("hf:org/broken", cache=False)


def test_hf_online_reads_the_recommended_params_as_offline_does(monkeypatch, tiny_sd_dir, tmp_path):
    import shutil

    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError

    from evalkit.generators import loading

    repo = tmp_path / "snapshot"  # stands in for the hub: files come from here, never from the network
    shutil.copytree(tiny_sd_dir, repo)
    (repo / "meta.json").write_text(json.dumps({"generate": {"steps": 3, "size": 32}}))

    def hf_hub_download(repo_id, filename, revision=None):
        if not (repo / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(repo / filename)

    from_pretrained = loading._from_pretrained
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.hf_hub_download", hf_hub_download)
    monkeypatch.setattr(
        loading, "_from_pretrained", lambda cls, src, device, **kw: from_pretrained(cls, str(repo), device)
    )
    online = load("hf:org/tiny", cache=False)
    offline = load(f"dir:{repo}", cache=False)
    assert online.resolve_params() == offline.resolve_params() and online.resolve_params()["steps"] == 3
    (repo / "meta.json").unlink()
    assert load("hf:org/tiny", cache=False).resolve_params()["steps"] != 3  # no meta.json: the pipeline's own


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("zoo:no-such-model", ModelNotFoundError, "python -m evalkit.zoo train no-such-model"),
        ("zoo/no-such-model", ModelNotFoundError, "python -m evalkit.zoo train no-such-model"),
        ("dir:/no/such/folder", ModelNotFoundError, "no such folder"),
        ("hf:not a valid id!!", UserError, "not a valid hub id"),
        ("nonsense", UserError, "zoo:NAME, dir:PATH"),
        ("dir:", UserError, "nothing after"),
    ],
)
def test_bad_specs_raise_user_errors(spec, error, match):
    with pytest.raises(error, match=match):
        load(spec)


# ---------------------------------------------------------------------------- generate into a folder


def test_derived_seeds_and_file_names():
    seeds = {derive_seed(0, i, j) for i in range(20) for j in range(5)}
    assert len(seeds) == 100 and all(0 <= s < 2**32 for s in seeds)
    assert derive_seed(1, 0, 0) != derive_seed(0, 0, 0) == derive_seed(0, 0, 0)
    assert image_file_name("parti-00001", 2) == "parti-00001_002.png"
    a, b = image_file_name("a/b", 0), image_file_name("a b", 0)
    assert a != b and "/" not in a and " " not in b


def _manifest_rows(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_generate_cli_writes_a_resumable_folder(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    argv = ["generate", "--generator", f"dir:{tiny_sd_dir}", "--prompts", "shapes:2:0", "--n", "2", "--seed", "5",
            "--out", str(out), "--batch-size", "1", "--steps", "2", "--size", "32"]  # fmt: skip
    assert main(argv) == 0
    assert "generated 4, reused 0 of 4" in capsys.readouterr().out
    rows = _manifest_rows(out)
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    for r in rows:
        assert sha256_file(out / r["file"]) == r["sha256"]
        assert r["generator"] == f"dir:{tiny_sd_dir}" and r["family"] == "diffusion" and r["nfe"] == 4
        assert r["params"] == {"steps": 2, "guidance": 7.5, "height": 32, "width": 32}
        assert isinstance(r["spec"], dict) and r["category"] == r["spec"]["category"]
        assert r["seed"] == derive_seed(5, int(r["prompt_id"] != rows[0]["prompt_id"]), r["image_index"])
    original = {r["id"]: r["sha256"] for r in rows}

    # kill-like damage: one image deleted, the last manifest line torn in half
    (out / rows[0]["file"]).unlink()
    text = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").write_text(text[: len(text) - len(json.dumps(rows[-1])) // 2 - 1])
    assert main(argv) == 0
    assert "generated 2, reused 2 of 4" in capsys.readouterr().out
    rows2 = _manifest_rows(out)  # every line parses again
    assert {r["id"]: r["sha256"] for r in rows2} == original  # batch size 1 both times: identical bytes

    assert main(argv) == 0
    assert "generated 0, reused 4 of 4" in capsys.readouterr().out
    assert len(_manifest_rows(out)) == 4

    # the same folder with other settings is refused, not mixed
    assert main([*argv[:-4], "--steps", "3", "--size", "32"]) == 2
    assert "made differently" in capsys.readouterr().err


def test_generate_to_folder_grows_n_and_reports_progress(sd, tmp_path):
    calls = []
    first = generate_to_folder(sd, PROMPTS, tmp_path, n=1, params=FAST, batch_size=4)
    more = generate_to_folder(sd, PROMPTS, tmp_path, n=2, params=FAST, batch_size=4,
                              on_progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert (first.generated, more.generated, more.reused) == (2, 2, 2)
    assert calls[0] == (2, 4) and calls[-1] == (4, 4)
    assert [r["id"] for r in more.rows] == ["prompt-00000#0", "prompt-00000#1", "prompt-00001#0", "prompt-00001#1"]
    assert [r["sha256"] for r in more.rows[::2]] == [r["sha256"] for r in first.rows]


def test_folder_generator_serves_the_stored_images(sd, tmp_path):
    result = generate_to_folder(sd, PROMPTS, tmp_path / "imgs", n=2, seed=3, params=FAST)
    clear_cache()
    g = load(f"folder:{tmp_path / 'imgs'}")
    assert isinstance(g, FolderGenerator) and g.family == "folder" and g.source_family == "diffusion"
    assert g.params == result.rows[0]["params"] and g.nfe() == 4
    prompts, seeds = [r["prompt"] for r in result.rows], [r["seed"] for r in result.rows]
    out = g.generate(prompts[::-1], seeds[::-1])
    for im, row in zip(out.images[::-1], result.rows):
        assert png_bytes(im) == (tmp_path / "imgs" / row["file"]).read_bytes()
    assert out.nfe == [4] * 4
    with pytest.raises(UserError, match=r"no image for 2 of 3 .*'a green triangle' seed 1"):
        g.generate([prompts[0], "a green triangle", prompts[1]], [seeds[0], 1, 999])
    with pytest.raises(UserError, match="with params"):
        g.generate(prompts[:1], seeds[:1], steps=3)
    assert g.applicable({"steps": 3, "size": 48}) == ({}, ["steps", "size"])  # a shared setting makes no image
    # a bare folder path is recognized by its manifest
    assert load(str(tmp_path / "imgs")).family == "folder"


def test_read_manifest_drops_only_the_torn_line(tmp_path):
    p = tmp_path / "manifest.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "fi')
    read = read_manifest(p)
    assert [r["id"] for r in read.rows] == ["a", "b"] and read.dropped == {"torn last line": 1}


def test_folder_lock_refuses_a_second_writer(sd, tmp_path):
    import fcntl

    with open(tmp_path / ".generate.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another process"):
            generate_to_folder(sd, PROMPTS, tmp_path, params=FAST)


def test_measure_speed_reports_throughput_latency_nfe_and_memory(sd):
    r = measure_speed(sd, PROMPTS, batch_size=2, repeats=2, warmup=1, **FAST)
    assert r.images_per_second > 0 and 0 < r.latency_p50 <= r.latency_p95
    assert r.images_per_second == pytest.approx(4 / sum(r.batch_seconds))
    assert r.nfe == 4 and r.params["steps"] == 2 and len(r.batch_seconds) == 2
    assert r.peak_rss_mb > 0


def test_generated_folder_feeds_the_oracle_cli(sd, tmp_path):
    """The manifest is the layout other commands read: the oracle scores it (noise images, low accuracy)."""
    from evalkit.shapes.oracle_cli import score_images

    generate_to_folder(sd, "shapes:3:1", tmp_path, params=FAST)
    report, skipped = score_images(tmp_path)
    assert report.overall["n"] == 3 and not skipped
