"""Training on the tiny Stable Diffusion pipeline: every method's output loads in a fresh process with
diffusers' own loaders and reproduces the trained samples; a stopped run resumes to the same weights;
a NaN loss stops with a clear message and keeps the last good checkpoint; run folders are not clobbered."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from evalkit.errors import UserError
from evalkit.zoo.common import stop_on_signal
from personalize import training
from personalize.config import TrainConfig
from personalize.subjects import HOUSEMARK
from personalize.training import train

REPO = Path(__file__).resolve().parents[1]


def config(tiny_sd_dir, tmp_path, method: str, name: str | None = None, **kw) -> TrainConfig:
    base = dict(method=method, images=str(HOUSEMARK.folder), out=str(tmp_path / (name or method)),
                model=str(tiny_sd_dir), class_word="square", steps=4, batch_size=2, checkpoint_every=2,
                validation_every=2, num_validation_images=2, sample_steps=2, guidance=3.0,
                validation_prompts=["a photo of {token}", "{token} on a brown background"],
                class_cache=str(tmp_path / "class-cache"), num_class_images=2)  # fmt: skip
    return TrainConfig(**(base | kw))


def weights_of(run: Path, method: str) -> dict[str, torch.Tensor]:
    if method == "ti":
        return load_file(run / "learned_embeds.safetensors")
    if method == "lora":
        return load_file(run / "pytorch_lora_weights.safetensors")
    return load_file(run / "unet" / "diffusion_pytorch_model.safetensors")


# A fresh interpreter that knows nothing of personalize: diffusers' loaders only.
REPRODUCE = r"""
import json, sys, numpy as np, torch
from PIL import Image
from diffusers import StableDiffusionPipeline
jobs = json.loads(sys.argv[1])
out = {}
for job in jobs:
    run = job["run"]
    kw = dict(safety_checker=None, requires_safety_checker=False)
    pipe = StableDiffusionPipeline.from_pretrained(run if job["method"] == "dreambooth" else job["base"], **kw)
    base_pipe = StableDiffusionPipeline.from_pretrained(job["base"], **kw)
    if job["method"] == "ti":
        pipe.load_textual_inversion(run + "/learned_embeds.safetensors", token=job["token"])
    elif job["method"] == "lora":
        pipe.load_lora_weights(run)
    rows = json.load(open(run + "/samples/final/index.json"))
    call = dict(num_inference_steps=job["steps"], guidance_scale=job["guidance"], height=32, width=32)
    prompts = [r["prompt"] for r in rows]
    images = pipe(prompts, generator=[torch.Generator().manual_seed(r["seed"]) for r in rows], **call).images
    base = base_pipe(prompts, generator=[torch.Generator().manual_seed(r["seed"]) for r in rows], **call).images
    saved = [np.asarray(Image.open(run + "/samples/final/" + r["file"]), dtype=int) for r in rows]
    out[job["method"]] = {
        "max_diff": max(int(np.abs(np.asarray(a, dtype=int) - s).max()) for a, s in zip(images, saved)),
        "base_diff": max(int(np.abs(np.asarray(a, dtype=int) - s).max()) for a, s in zip(base, saved)),
    }
print(json.dumps(out))
"""


def test_outputs_load_with_diffusers_in_a_fresh_process(tiny_sd_dir, tmp_path):
    jobs = []
    for method, extra in {"ti": {"num_vectors": 2}, "lora": {"rank": 4, "lora_alpha": 8.0, "lr": 2e-2,
                          "prior_preservation": True, "train_text_encoder": True},
                          "dreambooth": {"lr": 1e-3, "prior_preservation": True}}.items():  # fmt: skip
        cfg = config(tiny_sd_dir, tmp_path, method, **extra)
        result = train(cfg)
        run = Path(cfg.out)
        assert result.weights == [run / {"ti": "learned_embeds.safetensors", "lora": "pytorch_lora_weights.safetensors",
                                         "dreambooth": "model_index.json"}[method]]  # fmt: skip
        for f in ("config.json", "run.json", "log.jsonl", "checkpoints/ckpt.pt", "samples/step-000002/index.json"):
            assert (run / f).is_file(), f
        assert len(list((run / "samples" / "final").glob("*.png"))) == 4
        steps = [json.loads(line).get("step") for line in (run / "log.jsonl").read_text().splitlines()]
        assert steps[:4] == [1, 2, 3, 4]
        jobs.append({"run": str(run), "base": str(tiny_sd_dir), "method": method, "token": "<s*>", "steps": 2,
                     "guidance": 3.0})  # fmt: skip
    meta = json.loads((tmp_path / "dreambooth" / "meta.json").read_text())["personalized"]
    assert (meta["base_model"], meta["token"], meta["class_word"]) == (str(tiny_sd_dir), "<s*>", "square")
    emb = load_file(tmp_path / "ti" / "learned_embeds.safetensors")
    assert list(emb) == ["<s*>"] and emb["<s*>"].shape == (2, 32)
    lora = load_file(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("unet.") for k in lora) and any(k.startswith("text_encoder.") for k in lora)
    unet_keys = [k for k in lora if k.startswith("unet.")]  # attention and convolutions, all loaded below
    assert any(".resnets." in k and ".conv1." in k for k in unet_keys) and any(".to_q." in k for k in unet_keys)
    proc = subprocess.run([sys.executable, "-c", REPRODUCE, json.dumps(jobs)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                                          "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    for method, d in diffs.items():
        assert d["max_diff"] <= 1, (method, d)  # the same pixels (PNG rounding aside)
        assert d["base_diff"] > 3, (method, d)  # and the weights do change the images


@pytest.mark.parametrize("method", ["ti", "lora", "dreambooth"])
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny_sd_dir, tmp_path, method):
    extra = {"prior_preservation": True} if method != "ti" else {}
    straight = config(tiny_sd_dir, tmp_path, method, "straight", steps=5, **extra)
    train(straight)

    def stop_at_3(event):
        if event.get("step") == 3 and "loss" in event:
            raise KeyboardInterrupt

    stopped = config(tiny_sd_dir, tmp_path, method, "stopped", steps=5, **extra)
    with pytest.raises(KeyboardInterrupt):
        train(stopped, callback=stop_at_3)
    run = Path(stopped.out)
    ckpt = torch.load(run / "checkpoints" / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["train_s"] > 0
    assert not (run / "samples" / "final").exists()
    stopped.resume = True
    result = train(stopped)
    assert result.earlier_seconds == ckpt["train_s"] and result.seconds > ckpt["train_s"]  # times add up
    assert json.loads((run / "run.json").read_text())["train_seconds"] == round(result.seconds, 1)
    a, b = weights_of(Path(straight.out), method), weights_of(run, method)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    for f in ("000.png", "001.png"):
        assert np.array_equal(np.asarray(Image.open(Path(straight.out) / "samples/final" / f)),
                              np.asarray(Image.open(run / "samples/final" / f)))  # fmt: skip


def test_sigterm_checkpoints_the_step_under_way_and_resumes_to_the_same_weights(tiny_sd_dir, tmp_path):
    straight = config(tiny_sd_dir, tmp_path, "lora", "straight", steps=5, checkpoint_every=100)
    train(straight)

    def sigterm_in_step_3(event):
        if event.get("step") == 3 and "loss" in event:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the step's reporting; the step is done

    stopped = config(tiny_sd_dir, tmp_path, "lora", "stopped", steps=5, checkpoint_every=100)
    with stop_on_signal(), pytest.raises(UserError, match=r"stopped by SIGTERM after step 3, saved in .*checkpoints"):
        train(stopped, callback=sigterm_in_step_3)
    run = Path(stopped.out)
    assert torch.load(run / "checkpoints" / "ckpt.pt", weights_only=False)["step"] == 3  # not the step-0 one
    assert not (run / "pytorch_lora_weights.safetensors").exists()
    stopped.resume = True
    train(stopped)
    a, b = weights_of(Path(straight.out), "lora"), weights_of(run, "lora")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_the_train_command_stops_on_sigterm_with_a_one_line_message(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "personalize", "train", "--method", "ti", "--images", str(HOUSEMARK.folder),
           "--model", str(tiny_sd_dir), "--out", str(out), "--steps", "100000", "--batch-size", "1",
           "--validation-every", "0", "--sample-steps", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and '"step": 2' in log.read_text()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-2000:]
    message = err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: stopped by SIGTERM after step (\d+), saved in .*: continue with --resume", message)
    step = int(re.search(r"step (\d+)", message).group(1))
    assert torch.load(out / "checkpoints" / "ckpt.pt", weights_only=False)["step"] == step >= 2


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_sd_dir, tmp_path, monkeypatch):
    real = training.denoising_loss
    calls = []

    def nan_at_step_3(*args, **kw):
        loss, parts = real(*args, **kw)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 4 else loss), parts

    monkeypatch.setattr(training, "denoising_loss", nan_at_step_3)
    cfg = config(tiny_sd_dir, tmp_path, "lora", steps=6)
    with pytest.raises(
        UserError, match=r"loss became nan at step 3: training stopped; the last good checkpoint \(step 2\)"
    ):
        train(cfg)
    run = Path(cfg.out)
    ckpt = torch.load(run / "checkpoints" / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["params"].values())
    assert not (run / "pytorch_lora_weights.safetensors").exists()
    assert "non-finite loss" in (run / "log.jsonl").read_text()
    monkeypatch.setattr(training, "denoising_loss", real)
    cfg.resume = True
    assert train(cfg).weights[0].is_file()  # resumes from the good checkpoint


def test_exploding_learning_rate_is_caught(tiny_sd_dir, tmp_path):
    cfg = config(tiny_sd_dir, tmp_path, "ti", lr=1e30, checkpoint_every=100)
    with pytest.raises(UserError, match="no checkpoint was written yet; start again with a lower --lr"):
        train(cfg)


def test_run_folders_are_not_clobbered_and_resume_checks_the_config(tiny_sd_dir, tmp_path):
    cfg = config(tiny_sd_dir, tmp_path, "lora", steps=2, validation_every=0, prior_preservation=True)
    train(cfg)
    cache = Path(json.loads((Path(cfg.out) / "run.json").read_text())["class_images"][0])
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.png")}
    assert len(stamps) == 2
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(cfg)
    changed = config(tiny_sd_dir, tmp_path, "lora", steps=2, validation_every=0, prior_preservation=True,
                     resume=True, lr=0.5)  # fmt: skip
    with pytest.raises(UserError, match=r"config differs .*lr: 0.001 -> 0.5"):
        train(changed)
    longer = config(tiny_sd_dir, tmp_path, "lora", steps=3, validation_every=0, prior_preservation=True, resume=True)
    assert train(longer).steps == 3  # more steps is a valid resumption
    cosine = config(tiny_sd_dir, tmp_path, "lora", lr_schedule="cosine").resolved()  # unless its lr spans them
    assert any("cosine" in d for d in dataclasses.replace(cosine, steps=8).differences(cosine))
    assert not dataclasses.replace(cosine, validation_every=1).differences(cosine)
    other = config(tiny_sd_dir, tmp_path, "lora", "other", steps=1, validation_every=0, prior_preservation=True)
    train(other)  # another run of the same model and class prompt reuses the cached class images
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.png")} == stamps
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a run folder"):
        train(config(tiny_sd_dir, tmp_path, "lora", "junk"))


def test_a_resolution_the_model_cannot_halve_is_refused_before_the_run_folder(tiny_sd_dir, tmp_path):
    with pytest.raises(UserError, match=r"resolution 3 does not suit .*use a multiple of \d+ \(native 32\)"):
        train(config(tiny_sd_dir, tmp_path, "lora", resolution=3))
    assert not (tmp_path / "lora").exists()


def test_token_already_in_vocabulary_for_textual_inversion(tiny_sd_dir, tmp_path):
    with pytest.raises(UserError, match="already in the tokenizer's vocabulary"):
        train(config(tiny_sd_dir, tmp_path, "ti", token="s"))
    assert not (tmp_path / "ti").exists()  # refused before the run folder was written


def test_per_method_scripts_parse_their_own_arguments(tmp_path):
    from personalize import dreambooth, dreambooth_lora, textual_inversion

    argv = ["--images", "imgs", "--out", str(tmp_path / "r"), "--steps", "3", "--class-word", "dog"]
    assert textual_inversion.parse_args(argv + ["--num-vectors", "2"]).method == "ti"
    cfg = dreambooth.parse_args(argv + ["--prior-preservation", "--train-text-encoder"])
    assert (cfg.method, cfg.prior_preservation, cfg.train_text_encoder, cfg.steps) == ("dreambooth", True, True, 3)
    cfg = dreambooth_lora.parse_args(argv + ["--rank", "16", "--validation-prompts", "a {token}", "{token} swims"])
    assert (cfg.method, cfg.rank, cfg.validation_prompts) == ("lora", 16, ["a {token}", "{token} swims"])


@pytest.mark.parametrize("module", ["textual_inversion", "dreambooth", "dreambooth_lora"])
def test_each_method_script_runs_two_steps(tiny_sd_dir, tmp_path, module):
    import importlib

    script = importlib.import_module(f"personalize.{module}")
    argv = ["--images", str(HOUSEMARK.folder), "--out", str(tmp_path / "run"), "--model", str(tiny_sd_dir),
            "--steps", "2", "--batch-size", "1", "--sample-steps", "1", "--num-validation-images", "1"]  # fmt: skip
    result = script.main(argv)
    assert result.steps == 2 and all(w.is_file() for w in result.weights)


def test_prior_prompts_spread_the_class_images_over_more_prompts(tiny_sd_dir, tmp_path):
    from personalize.base import load_base
    from personalize.training import prior_images

    f = tmp_path / "prior.txt"
    f.write_text("# ordinary prompts\na red circle\n\na blue star on a black background\n")
    cfg = config(tiny_sd_dir, tmp_path, "lora", prior_preservation=True, num_class_images=4, prior_prompts=str(f))
    cfg = cfg.resolved()
    images, prompts, folders = prior_images(cfg, load_base(cfg.model, cfg.sample_steps, cfg.guidance), 32)
    assert prompts == [
        "a photo of a square",
        "a red circle",
        "a blue star on a black background",
        "a photo of a square",
    ]
    assert len(images) == 4 and len(folders) == 3 and len(list(Path(folders[0]).glob("*.png"))) == 2
    assert np.asarray(images[0]).tolist() != np.asarray(images[3]).tolist()  # seeds 0 and 1 of the class prompt
    for bad, match in [(tmp_path / "none.txt", "not found"), (tmp_path / "empty.txt", "has no prompts")]:
        (tmp_path / "empty.txt").write_text("# nothing\n")
        with pytest.raises(UserError, match=match):
            config(tiny_sd_dir, tmp_path, "lora", prior_preservation=True, prior_prompts=str(bad)).resolved()
    with pytest.raises(UserError, match="needs --prior-preservation"):
        config(tiny_sd_dir, tmp_path, "lora", prior_prompts=str(f)).resolved()


def test_ti_initializer_phrase_starts_one_vector_per_piece(tiny_sd_dir):
    from personalize.base import load_base
    from personalize.textual_inversion import add_tokens

    pipe = load_base(str(tiny_sd_dir), 2, 3.0).pipe
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    pieces = pipe.tokenizer.encode("red circle", add_special_tokens=False)
    assert len(pieces) > 1
    ids, init = add_tokens(pipe, "<a>", len(pieces), "red circle")  # as many vectors as pieces: one each
    torch.testing.assert_close(init, table[pieces])
    torch.testing.assert_close(pipe.text_encoder.get_input_embeddings().weight[ids], table[pieces])
    _, init = add_tokens(pipe, "<b>", 2, "red circle")  # otherwise: the pieces' mean in every vector
    torch.testing.assert_close(init, table[pieces].mean(0).repeat(2, 1))


@pytest.mark.parametrize("method", ["lora", "dreambooth"])
def test_base_prior_target_is_the_untrained_model_however_the_weights_move(tiny_sd_dir, tmp_path, method):
    from personalize import dreambooth, dreambooth_lora
    from personalize.base import load_base

    cfg = config(tiny_sd_dir, tmp_path, method, prior_preservation=True, train_text_encoder=True).resolved()
    base = load_base(cfg.model, cfg.sample_steps, cfg.guidance)
    trainable = {"lora": dreambooth_lora, "dreambooth": dreambooth}[method].setup(cfg, base)
    pipe, reference = base.pipe, load_base(cfg.model, cfg.sample_steps, cfg.guidance).pipe
    z, t, prompts = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500]), [
        "a photo of a square", "a red circle"]  # fmt: skip

    def predict(p):
        with torch.no_grad():
            return p.unet(z, t, encoder_hidden_states=training.encode_prompts(p, prompts)).sample

    want = predict(reference)
    with torch.no_grad():
        for p in trainable.params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    moved = predict(pipe)
    assert (moved - want).abs().max() > 1e-3  # the weights did move the model (UNet and text encoder)
    with trainable.as_base():
        torch.testing.assert_close(predict(pipe), want)
    torch.testing.assert_close(predict(pipe), moved)  # and the trained model is back afterwards
    assert all(p.requires_grad for p in trainable.params.values())


def test_prior_target_base_starts_at_zero_for_lora_and_images_does_not(tiny_sd_dir, tmp_path):
    first = {}
    for target in ("base", "images"):
        cfg = config(tiny_sd_dir, tmp_path, "lora", target, steps=1, validation_every=0, prior_preservation=True,
                     prior_target=target)  # fmt: skip
        train(cfg)
        rows = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
        first[target] = next(r for r in rows if r.get("step") == 1)
    assert first["base"]["prior"] == 0.0  # LoRA's B starts at zero: the model is still the base model
    assert first["images"]["prior"] > 0.01
    assert first["base"]["instance"] == first["images"]["instance"]
    with pytest.raises(UserError, match="prior_target must be one of base, images"):
        config(tiny_sd_dir, tmp_path, "lora", prior_target="teacher").resolved()


def test_prior_subject_share_puts_the_subjects_latents_under_class_prompts(tiny_sd_dir, tmp_path):
    from personalize.base import load_base
    from personalize.data import TrainingData
    from personalize.inputs import load_subject_images

    vae = load_base(str(tiny_sd_dir), 2, 3.0).pipe.vae
    subject = load_subject_images(HOUSEMARK.folder, "<s*>")
    prompts = [["<s*> on a gray background"]] * len(subject)
    classes = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green", "white")]
    args = (vae, subject, prompts, 32, 4, 0, 0.0, classes, ["a photo of a square"] * 4)
    plain, mixed = TrainingData(*args).batch(3), TrainingData(*args, subject_share=0.5).batch(3)
    subject_latents = TrainingData(*args).instance.mean * vae.config.scaling_factor
    assert mixed.prompts == plain.prompts and mixed.num_prior == plain.num_prior == 4
    torch.testing.assert_close(mixed.latents[:6], plain.latents[:6])  # the subject rows and two class rows
    for row in mixed.latents[6:]:  # the last two class rows: a draw from one of the subject's images
        nearest = (subject_latents - row).flatten(1).norm(dim=1).min()
        assert nearest < (plain.latents[6:] - row).flatten(1).norm(dim=1).min()
    torch.testing.assert_close(mixed.latents, TrainingData(*args, subject_share=0.5).batch(3).latents)  # per step


def test_prior_subject_share_defaults_with_the_base_target_and_is_checked(tiny_sd_dir, tmp_path):
    def share(method="lora", **kw):
        return config(tiny_sd_dir, tmp_path, method, **kw).resolved().prior_subject_share

    assert share(prior_preservation=True) == 0.5
    assert share(prior_preservation=True, method="dreambooth") == 0.0  # it cost full DreamBooth the subject
    assert share(prior_preservation=True, prior_target="images") == share() == 0.0
    assert share(prior_preservation=True, prior_subject_share=0.25) == 0.25
    for kw, match in [({"prior_preservation": True, "prior_target": "images", "prior_subject_share": 0.5},
                       "needs --prior-target base"),
                      ({"prior_subject_share": 0.5}, "prior-subject-share needs --prior-preservation"),
                      ({"prior_preservation": True, "prior_subject_share": 1.5}, r"must be in \[0, 1\]")]:  # fmt: skip
        with pytest.raises(UserError, match=match):
            share(**kw)
    old = TrainConfig.from_dict({k: v for k, v in config(tiny_sd_dir, tmp_path, "lora").to_dict().items()
                                 if k != "prior_subject_share"})  # fmt: skip
    assert old.prior_subject_share == 0.0  # a run written before the field existed resumes as it was trained
