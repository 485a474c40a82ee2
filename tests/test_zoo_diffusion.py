"""The zoo's reduced CLIP tokenizer, shared text encoder, judge CLIP and diffusion generator (VAE + UNet):
tokenizer properties, 3-step training smokes of each stage with tiny configs, exact resume, a NaN
loss stopping with the last checkpoint kept, and the exported StableDiffusionPipeline and judge loading
in a fresh process (diffusers' and open_clip's own loaders)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.errors import UserError
from evalkit.shapes.world import SIZES, sample
from evalkit.zoo import diffusion, judge, textenc
from evalkit.zoo import vae as vae_stage
from evalkit.zoo.cli import MODELS
from evalkit.zoo.common import load_checkpoint, load_config, stop_on_signal
from evalkit.zoo.tokenizer import EOS, WORDS, build_tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]

TEXT_CFG = {
    "seed": 0, "image_size": 32, "steps": 3, "batch_size": 8, "lr": 1e-3, "warmup": 1, "weight_decay": 0.1,
    "hard_negative_weight": 1.0, "log_every": 1, "checkpoint_every": 1, "eval_every": 0, "eval_n": 4,
    "model": {"hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "projection_dim": 16,
              "max_length": 32, "image_widths": [8, 8]},
}  # fmt: skip
VAE_CFG = {
    "seed": 0, "image_size": 32, "steps": 3, "batch_size": 4, "lr": 1e-3, "warmup": 1, "edge_weight": 0.5,
    "kl_weight": 1e-4, "log_every": 1, "checkpoint_every": 1, "eval_every": 0, "eval_n": 4, "scale_n": 8,
    "oracle_target": 0.0, "model": {"block_out_channels": [8, 16], "layers_per_block": 1, "latent_channels": 4,
                                    "norm_num_groups": 4, "mid_block_attention": False},
}  # fmt: skip
JUDGE_CFG = {
    "seed": 0, "image_size": 32, "steps": 3, "batch_size": 8, "lr": 1e-3, "warmup": 1, "weight_decay": 0.1,
    "hard_negative_weight": 1.0, "relation_negative_rate": 0.5, "relation_loss_weight": 1.0,
    "relation_separation_weight": 10.0, "relation_separation_margin": 0.8, "log_every": 1, "checkpoint_every": 1,
    "eval_every": 1000, "eval_n": 4,
    "model": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
              "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
}  # fmt: skip
DIFF_CFG = {
    "seed": 0, "image_size": 32, "steps": 3, "batch_size": 4, "lr": 1e-3, "warmup": 1, "weight_decay": 0.0,
    "ema_decay": 0.9, "caption_dropout": 0.25, "describe_prob": 0.25, "min_snr_gamma": 5.0, "cache_size": 6,
    "foreground_weight": 5.0, "one_object_share": 0.7,
    "log_every": 1, "checkpoint_every": 1, "eval_every": 0, "eval_n": 2, "sample_steps": 2, "guidance_scale": 3.0,
    "final_guidance_scales": [3.0], "unet_dtype": "float16",
    "schedule": {"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
    "model": {"block_out_channels": [16, 32], "blocks": ["plain", "cross"], "layers_per_block": 1, "heads": 2,
              "norm_num_groups": 8, "text_time_embedding": True},
}  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


# --------------------------------------------------------------------------- tokenizer


def test_shapes_captions_tokenize_as_the_full_bpe(tok):
    from open_clip.tokenizer import SimpleTokenizer

    full = SimpleTokenizer()
    texts = [s.caption for s in sample(300, seed=5)] + [s.caption for s in sample(100, seed=5, split="compositional")]
    texts += list(WORDS)
    for text in texts:
        assert tok.tokenize(text) == [full.decoder[i] for i in full.encode(text)], text
    assert len(tok) < 2000  # the whole point: a token table of ~1.2k rows, not 49,408


def test_any_text_tokenizes_and_round_trips(tok):
    from open_clip.tokenizer import SimpleTokenizer

    text = "a photo of Zürich's quixotic xylophone 😀 at 12:30!"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.eos_token_id not in ids[1:-1]  # nothing fell back to the unknown (= end-of-text) token
    assert len(ids) > len(SimpleTokenizer().encode(text)) + 2  # smaller pieces than the full BPE...
    full = SimpleTokenizer()
    assert tok.decode(ids, skip_special_tokens=True) == full.decode(full.encode(text)).strip()  # ...same text


def test_length_matches_encoder_and_new_tokens_work(tok, tmp_path):
    assert tok.model_max_length == 32
    ids = textenc.token_ids(tok, ["a red star", ""])
    assert ids.shape == (2, 32) and (ids[1, 1:] == tok.eos_token_id).all()
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert len(loaded) == len(tok) and loaded.model_max_length == 32
    assert loaded.add_tokens("<s*>") == 1
    assert loaded.tokenize("a <s*> on a white background") == ["a</w>", "<s*>", "on</w>", "a</w>", "white</w>",
                                                              "background</w>"]  # fmt: skip
    assert loaded.convert_tokens_to_ids(EOS) == tok.eos_token_id


def test_missing_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no tokenizer"):
        load_tokenizer(tmp_path)


def test_registered_with_configs():
    for name in ("text-encoder", "diffusion-vae", "diffusion"):
        assert name in MODELS
        cfg = load_config(name)
        assert cfg["steps"] > 0
    assert load_config("text-encoder")["model"]["max_length"] == 32


# --------------------------------------------------------------------------- training stages


class _Killed(Exception):
    pass


def _killed_at(module, at_step: int, monkeypatch):
    """Make ``module``'s loop die (as if killed) when it reaches ``at_step``."""
    real = module.check_finite

    def fake(loss, step):
        if step == at_step:
            raise _Killed
        real(loss, step)

    monkeypatch.setattr(module, "check_finite", fake)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Each stage trained 3 steps into tmp dirs, in chain order; returns the folders."""
    root = tmp_path_factory.mktemp("zoo")
    textenc.train(dict(TEXT_CFG), out_dir=str(root / "te"), work_dir=str(root / "te_work"))
    vae_stage.train(dict(VAE_CFG), out_dir=str(root / "vae"), work_dir=str(root / "vae_work"))
    cfg = dict(DIFF_CFG, vae_dir=str(root / "vae"), text_encoder_dir=str(root / "te"))
    diffusion.train(cfg, out_dir=str(root / "sd"), work_dir=str(root / "sd_work"))
    return root


def test_text_encoder_export_serves_both_pipelines(stages):
    full, tok = textenc.load_text_encoder(stages / "te")
    plain, _ = textenc.load_text_encoder(stages / "te", projection=False)
    assert type(plain).__name__ == "CLIPTextModel" and full.config.max_position_embeddings == tok.model_max_length
    ids = textenc.token_ids(tok, ["two stars on a black background"])
    with torch.no_grad():
        out = full(ids, output_hidden_states=True)
        assert torch.equal(plain(ids)[0], out.last_hidden_state)  # what StableDiffusionPipeline reads
        assert out.text_embeds.shape == (1, 16) and len(out.hidden_states) == 2  # what aMUSEd reads
    meta = json.loads((stages / "te" / "meta.json").read_text())
    assert meta["steps"] == 3 and set(meta["zero_shot_test"]) >= {"color", "shape", "background"}


def test_vae_export_has_scaling_factor_and_oracle_figures(stages):
    vae = vae_stage.load_vae(stages / "vae")
    meta = json.loads((stages / "vae" / "meta.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(meta["scaling_factor"]) and vae.config.scaling_factor != 0.18215
    assert 0.0 <= meta["reconstruction"]["oracle_full"] <= 1.0 and meta["latent_shape"] == [4, 16, 16]


def _sigterm_at(module, at_step: int, monkeypatch):
    """Send the process SIGTERM while ``module``'s loop runs step ``at_step``."""
    real = module.check_finite

    def fake(loss, step):
        if step == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        real(loss, step)

    monkeypatch.setattr(module, "check_finite", fake)


@pytest.mark.parametrize("stop", ["killed", "sigterm"])
@pytest.mark.parametrize("stage", ["text-encoder", "judge", "diffusion-vae", "diffusion"])
def test_resume_is_exact(stage, stop, stages, tmp_path, monkeypatch):
    """Killed after its step-2 checkpoint, or sent SIGTERM during step 2 with no checkpoint due (the stop
    saves one), a run resumes to the uninterrupted run's weights."""
    module, cfg = {
        "text-encoder": (textenc, TEXT_CFG),
        "judge": (judge, JUDGE_CFG),
        "diffusion-vae": (vae_stage, VAE_CFG),
        "diffusion": (diffusion, dict(DIFF_CFG, vae_dir=str(stages / "vae"), text_encoder_dir=str(stages / "te"))),
    }[stage]
    cfg = dict(cfg, eval_n=1, final_guidance_scales=[1.0], checkpoint_every=1 if stop == "killed" else 100)
    whole = tmp_path / "whole"
    module.train(dict(cfg), out_dir=str(tmp_path / "out1"), work_dir=str(whole))
    parts = tmp_path / "parts"
    with monkeypatch.context() as m:
        if stop == "killed":
            _killed_at(module, 2, m)
            with pytest.raises(_Killed):
                module.train(dict(cfg), out_dir=str(tmp_path / "out2"), work_dir=str(parts))
        else:
            _sigterm_at(module, 1, m)
            with stop_on_signal(), pytest.raises(UserError, match="stopped by SIGTERM after step 2"):
                module.train(dict(cfg), out_dir=str(tmp_path / "out2"), work_dir=str(parts))
    assert load_checkpoint(parts)["step"] == 2
    module.train(dict(cfg), resume=True, out_dir=str(tmp_path / "out2"), work_dir=str(parts))
    a, b = load_checkpoint(whole), load_checkpoint(parts)
    assert b["step"] == 3 and _same_state(a["model"], b["model"])
    if stage == "diffusion":
        assert _same_state(a["ema"], b["ema"])
    rows = [json.loads(line) for line in (parts / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]


def test_nan_loss_stops_and_keeps_last_checkpoint(stages, tmp_path, monkeypatch):
    calls = []
    real = diffusion.diffusion_loss

    def poisoned(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(diffusion, "diffusion_loss", poisoned)
    cfg = dict(DIFF_CFG, vae_dir=str(stages / "vae"), text_encoder_dir=str(stages / "te"))
    with pytest.raises(UserError, match="loss became nan at step 1; the last good checkpoint is kept"):
        diffusion.train(cfg, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    ckpt = load_checkpoint(tmp_path / "work")
    assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (tmp_path / "out").exists()


def test_resume_refuses_changed_frozen_parts(stages, tmp_path):
    cfg = dict(DIFF_CFG, steps=1, vae_dir=str(stages / "vae"), text_encoder_dir=str(stages / "te"))
    ckpt = {"model": {}, "frozen": {"vae": "other", "text_encoder": "other"}, "step": 1}
    (tmp_path / "work").mkdir()
    torch.save(ckpt, tmp_path / "work" / "ckpt.pt")
    with pytest.raises(UserError, match="changed since checkpoint"):
        diffusion.train(cfg, resume=True, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))


# --------------------------------------------------------------------------- exported pipeline

_FRESH = """
import hashlib, json, sys
import numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None, requires_safety_checker=False)
assert type(pipe).__name__ == "StableDiffusionPipeline", type(pipe)
assert next(pipe.unet.parameters()).dtype == torch.float32
pipe.set_progress_bar_config(disable=True)
def run():
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = pipe(["a red star", "two rings on a white background"], num_inference_steps=2, guidance_scale=3.0,
               generator=gens, output_type="np").images
    return out
a, b = run(), run()
assert np.array_equal(a, b)
print(json.dumps({"shape": list(a.shape), "sha": hashlib.sha256(a.tobytes()).hexdigest(),
                  "scaling_factor": pipe.vae.config.scaling_factor, "tokens": len(pipe.tokenizer),
                  "max_length": pipe.tokenizer.model_max_length,
                  "positions": pipe.text_encoder.config.max_position_embeddings,
                  "text_encoder": type(pipe.text_encoder).__name__}))
"""


def test_pipeline_loads_in_fresh_process_and_is_deterministic(stages):
    import hashlib

    out = stages / "sd"
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {"vae", "unet", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert all(f.suffix != ".bin" for f in out.rglob("*"))  # safetensors only
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["shape"] == [2, 32, 32, 3] and fresh["text_encoder"] == "CLIPTextModel"
    assert fresh["max_length"] == fresh["positions"] == 32
    assert fresh["scaling_factor"] == pytest.approx(vae_stage.load_vae(stages / "vae").config.scaling_factor)
    # the same images in this process: bit-identical across processes
    pipe = diffusion.load_pipeline(out)
    prompts = ["a red star", "two rings on a white background"]
    kw = {"num_inference_steps": 2, "guidance_scale": 3.0, "output_type": "np"}
    both = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).images
    assert hashlib.sha256(both.tobytes()).hexdigest() == fresh["sha"]
    # per-image seeds: the second image does not depend on what it was batched with
    alone = pipe(prompts[1:], generator=[torch.Generator().manual_seed(1)], **kw).images[0]
    np.testing.assert_allclose(alone, both[1], atol=1e-4)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generate"] == {"steps": 2, "guidance": 3.0} and "3.0" in meta["oracle_test"]
    # the generic loader reads those as the export's recommended settings
    from evalkit.generators import load

    params = load(f"dir:{out}", cache=False).resolve_params()
    assert params["steps"] == 2 and params["guidance"] == 3.0


_FRESH_JUDGE = r"""
import json, sys, open_clip, torch
d = sys.argv[1]
open_clip.add_model_config(d + "/shapes-judge.json")
model, _, preprocess = open_clip.create_model_and_transforms("shapes-judge", pretrained=d + "/open_clip_model.safetensors")
model.eval()
with torch.no_grad():
    text = model.encode_text(open_clip.get_tokenizer("shapes-judge")(["two rings on a white background"]))
print(json.dumps({"text": text[0].tolist(), "image_size": model.visual.image_size, "dtype": str(text.dtype)}))
"""


def test_judge_export_loads_with_open_clip_in_a_fresh_process(tmp_path):
    out = tmp_path / "judge"
    judge.train(dict(JUDGE_CFG), out_dir=str(out), work_dir=str(tmp_path / "work"))
    assert {f.name for f in out.iterdir()} >= {"shapes-judge.json", "open_clip_model.safetensors", "meta.json"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 3 and set(meta["zero_shot_test"]) >= {"color", "shape", "background"}
    proc = subprocess.run([sys.executable, "-c", _FRESH_JUDGE, str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["image_size"] == 32 and fresh["dtype"] == "torch.float32"
    model, _, tokenizer = judge.load(out)
    with torch.no_grad():
        here = model.encode_text(tokenizer(["two rings on a white background"]))[0]
    torch.testing.assert_close(torch.tensor(fresh["text"]), here, rtol=0, atol=1e-6)


def test_loss_weights_keep_high_noise_and_clamp_low_noise():
    sched = diffusion.train_scheduler(DIFF_CFG)
    t = torch.tensor([0, 100, 500, 900, 999])
    w = diffusion.min_snr_weights(sched, t, 5.0)
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    assert torch.allclose(w, torch.where(snr > 5.0, 5.0 / snr, torch.ones(5)))
    assert w[-2:].tolist() == [1.0, 1.0] and w[0] < 0.01  # pure-noise steps keep full weight
    assert diffusion.min_snr_weights(sched, t, None).tolist() == [1.0] * 5


def test_foreground_weights_move_the_loss_onto_objects(tmp_path):
    pred, target = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    pred[:, :, :2, :2] = 1.0  # error only on a 2x2 "object"
    ones = torch.ones(2)
    plain = diffusion.diffusion_loss(pred, target, ones)
    assert torch.allclose(plain, diffusion.diffusion_loss(pred, target, ones, torch.ones(2, 1, 8, 8)))
    w = torch.ones(2, 1, 8, 8)
    w[:, :, :2, :2] = 5.0
    weighted = diffusion.diffusion_loss(pred, target, ones, w)
    assert torch.allclose(weighted, torch.tensor(4 * 5.0 / (60 + 4 * 5.0)))  # weighted mean over pixels
    assert weighted > plain

    cfg = {"cache_size": 6, "seed": 3, "image_size": 64}
    masks = diffusion.foreground_cache(cfg, tmp_path, 32)
    assert masks.shape == (6, 1, 32, 32) and masks.dtype == torch.bool
    for s, m in zip(sample(6, seed=3, split="train"), masks):
        box = sum(SIZES[o.size] ** 2 for o in s.scene.objects)  # bounding boxes' share of the canvas
        assert 0.3 * box < m.float().mean() < 2 * box  # the objects, slightly dilated by the pooling
    assert torch.equal(masks, diffusion.foreground_cache(cfg, tmp_path, 32))  # cached


def test_one_object_share_draws_single_objects_and_is_a_function_of_the_step():
    cfg = {"cache_size": 100, "batch_size": 64, "seed": 0, "one_object_share": 0.75}
    ones = torch.arange(0, 100, 4)  # pretend every fourth cached scene has one object
    rows = diffusion.batch_indices(7, cfg, ones)
    assert rows == diffusion.batch_indices(7, cfg, ones) != diffusion.batch_indices(8, cfg, ones)
    share = sum(r % 4 == 0 for r in rows) / len(rows)
    assert 0.6 < share < 0.9  # 0.75 expected; the other rows are multi-object scenes
    low = diffusion.batch_indices(7, dict(cfg, one_object_share=0.05), ones)
    assert sum(r % 4 == 0 for r in low) < 10  # not the plain mix (a quarter one-object)
    plain = diffusion.batch_indices(0, dict(cfg, one_object_share=None), ones)
    assert sorted(plain) == sorted(set(plain))  # without it: a permutation of the cache


def test_one_object_share_may_change_at_a_step():
    ones = torch.arange(10)
    cfg = {"cache_size": 1000, "batch_size": 256, "seed": 0, "one_object_share": {0: 1.0, 50: 0.0}}
    assert all(r < 10 for r in diffusion.batch_indices(49, cfg, ones))
    assert diffusion.batch_indices(50, cfg, ones) == diffusion.batch_indices(50, dict(cfg, one_object_share=None), ones)


def test_choose_guidance_prefers_the_lowest_scale_among_near_ties():
    evals = {"3.0": {"accuracy": 0.95}, "5.0": {"accuracy": 0.94}, "7.5": {"accuracy": 0.955}}
    assert diffusion.choose_guidance(evals) == "3.0"
    assert diffusion.choose_guidance(dict(evals, **{"3.0": {"accuracy": 0.90}})) == "7.5"


def test_sampler_names_the_exported_scheduler_and_a_typo_is_a_clear_error():
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    train = diffusion.train_scheduler(DIFF_CFG)
    assert type(diffusion.sampling_scheduler(train)) is DDIMScheduler
    euler = diffusion.sampling_scheduler(train, "EulerAncestralDiscreteScheduler")
    assert type(euler) is EulerAncestralDiscreteScheduler
    assert euler.config.prediction_type == "v_prediction" and euler.config.timestep_spacing == "trailing"
    euler.set_timesteps(4)
    assert int(euler.timesteps[0]) == 999  # sampling starts at pure noise
    for bad in ("EulerAncestral", "StableDiffusionPipeline"):
        with pytest.raises(UserError, match="not a diffusers scheduler"):
            diffusion.sampling_scheduler(train, bad)


def test_warm_start_adds_attention_as_identity_and_trains_on(stages, tmp_path):
    src = diffusion.load_pipeline(stages / "sd").unet
    wider = dict(DIFF_CFG["model"], blocks=["cross", "cross"])
    unet = diffusion.build_unet(wider, 4, src.config.sample_size, src.config.cross_attention_dim)
    report = diffusion.warm_start(unet, stages / "sd")
    assert report["new"] > 0 and report["dropped"] == 0 and report["copied"] == len(src.state_dict())
    torch.manual_seed(0)
    z, t = torch.randn(2, 4, src.config.sample_size, src.config.sample_size), torch.tensor([10, 900])
    ctx = torch.randn(2, 5, src.config.cross_attention_dim)
    with torch.no_grad():
        torch.testing.assert_close(unet(z, t, ctx).sample, src(z, t, ctx).sample, atol=1e-5, rtol=1e-4)
    # the whole loop: a warm-started run exports and records where it started
    cfg = dict(DIFF_CFG, model=wider, init_from=str(stages / "sd"), vae_dir=str(stages / "vae"),
               text_encoder_dir=str(stages / "te"), eval_n=1)  # fmt: skip
    diffusion.train(cfg, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["init_from"]["steps"] == 3 and meta["init_from"]["cpu_seconds"] >= 0
    out = diffusion.load_pipeline(tmp_path / "out").unet
    assert out.config.down_block_types[0] == "CrossAttnDownBlock2D"


def test_warm_start_refuses_another_architecture(stages, tmp_path):
    src = diffusion.load_pipeline(stages / "sd").unet
    other = dict(DIFF_CFG["model"], block_out_channels=[16, 48])
    unet = diffusion.build_unet(other, 4, src.config.sample_size, src.config.cross_attention_dim)
    with pytest.raises(UserError, match="other shapes"):
        diffusion.warm_start(unet, stages / "sd")
    with pytest.raises(UserError, match="no UNet in"):
        diffusion.warm_start(unet, tmp_path)
