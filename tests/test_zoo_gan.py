"""The zoo GAN: training smoke, exact resume, NaN stop, and the exported pipeline (fresh-process load,
per-seed determinism, one generator evaluation per image). Tiny random text encoder built here."""

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
from evalkit.zoo import gan
from evalkit.zoo.cli import MODELS
from evalkit.zoo.common import load_checkpoint, load_config, stop_on_signal
from evalkit.zoo.gan_pipeline import GANPipeline

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a small red circle", "two stars on a black background", "a ring above a blue square"]


def _byte_tokenizer():
    """A CLIPTokenizer over CLIP's byte alphabet with no merges: every text spells out in bytes."""
    from transformers import CLIPTokenizer

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    base = [chr(c) for c in cs]
    tokens = base + [b + "</w>" for b in base] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=32)


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory) -> Path:
    """The zoo/text-encoder layout (``text_encoder/``, ``tokenizer/``) with a random tiny model."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok = _byte_tokenizer()
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, projection_dim=16, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("text-encoder")
    CLIPTextModelWithProjection(cfg).save_pretrained(path / "text_encoder")
    tok.save_pretrained(path / "tokenizer")
    return path


def tiny_config(text_encoder_dir: Path, **over) -> dict:
    cfg = load_config("gan")
    cfg.update(
        text_encoder=str(text_encoder_dir), image_size=32, steps=3, batch_size=4, noise_dim=8,
        g_channels=[32, 16, 16, 8], d_channels=[8, 16, 16, 16], warmup=1, gp_every=2, log_every=1,
        checkpoint_every=1, eval_every=0, final_eval_n=0, latent_vae=None, categories=None, cache_size=None,
    )  # fmt: skip
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def trained(text_encoder_dir, tmp_path_factory):
    """Three uninterrupted steps, exported."""
    root = tmp_path_factory.mktemp("gan_run")
    gan.train(tiny_config(text_encoder_dir), out_dir=str(root / "out"), work_dir=str(root / "work"))
    return root


def _assert_same_state(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_registered_in_zoo_cli():
    assert MODELS["gan"] == "evalkit.zoo.gan"


def test_training_smoke_exports_a_self_contained_pipeline(trained):
    out, work = trained / "out", trained / "work"
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "GANPipeline"
    assert index["generator"] == ["evalkit.zoo.gan_pipeline", "GANGenerator"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModelWithProjection"]
    assert (out / "generator" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "text_encoder" / "model.safetensors").is_file() and (out / "tokenizer").is_dir()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 3 and meta["nfe_per_image"] == 1
    rows = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss_d" in r] == [1, 2, 3]
    assert all(np.isfinite(r["loss_d"]) and np.isfinite(r["loss_g"]) for r in rows if "loss_d" in r)
    assert load_checkpoint(work)["step"] == 3
    # the export is the EMA generator, not the raw one
    pipe = GANPipeline.from_pretrained(str(out))
    _assert_same_state(pipe.generator.state_dict(), load_checkpoint(work)["generator_ema"], "ema")


class _Interrupt(Exception):
    pass


def test_resume_repeats_the_uninterrupted_run(trained, text_encoder_dir, tmp_path, monkeypatch):
    real_make_batch = gan.make_batch

    def dies_at_step_2(step, cfg, *pools):
        if step == 2:
            raise _Interrupt
        return real_make_batch(step, cfg, *pools)

    cfg = tiny_config(text_encoder_dir)
    monkeypatch.setattr(gan, "make_batch", dies_at_step_2)
    with pytest.raises(_Interrupt):
        gan.train(cfg, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    assert load_checkpoint(tmp_path / "work")["step"] == 2
    monkeypatch.setattr(gan, "make_batch", real_make_batch)
    gan.train(cfg, resume=True, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    resumed, straight = load_checkpoint(tmp_path / "work"), load_checkpoint(trained / "work")
    for key in ("generator", "discriminator", "generator_ema", "optimizer_g", "optimizer_d", "step"):
        _assert_same_state(resumed[key], straight[key], key)


def test_sigterm_checkpoints_the_step_and_resume_repeats_the_uninterrupted_run(
    trained, text_encoder_dir, tmp_path, monkeypatch
):
    real_make_batch = gan.make_batch

    def sigterm_in_step_1(step, cfg, *pools):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_make_batch(step, cfg, *pools)

    cfg = tiny_config(text_encoder_dir, checkpoint_every=100)
    monkeypatch.setattr(gan, "make_batch", sigterm_in_step_1)
    with stop_on_signal(), pytest.raises(UserError, match="stopped by SIGTERM after step 2"):
        gan.train(cfg, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    assert load_checkpoint(tmp_path / "work")["step"] == 2 and not (tmp_path / "out").exists()
    monkeypatch.setattr(gan, "make_batch", real_make_batch)
    gan.train(cfg, resume=True, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    resumed, straight = load_checkpoint(tmp_path / "work"), load_checkpoint(trained / "work")
    for key in ("generator", "discriminator", "generator_ema", "optimizer_g", "optimizer_d", "step"):
        _assert_same_state(resumed[key], straight[key], key)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(text_encoder_dir, tmp_path, monkeypatch):
    real_make_batch = gan.make_batch

    def nan_at_step_2(step, cfg, *pools):
        x, captions, mismatched = real_make_batch(step, cfg, *pools)
        return (x * float("nan") if step == 2 else x), captions, mismatched

    monkeypatch.setattr(gan, "make_batch", nan_at_step_2)
    with pytest.raises(UserError, match="loss became nan at step 2; the last good checkpoint is kept"):
        gan.train(tiny_config(text_encoder_dir), out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    ckpt = load_checkpoint(tmp_path / "work")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["generator"].values())
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_folder_that_is_not_an_export(text_encoder_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="holds no GAN export"):
        gan.train(tiny_config(text_encoder_dir), out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_missing_text_encoder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train it first: python -m evalkit.zoo train text-encoder"):
        gan.load_text_encoder(tmp_path)


_FRESH = """
import sys, numpy as np, torch
from evalkit.zoo.gan_pipeline import GANPipeline
pipe = GANPipeline.from_pretrained(sys.argv[1])
prompts = {prompts!r}
gens = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
np.save(sys.argv[2], pipe(prompts, generator=gens, output_type="np").images)
"""


def test_exported_pipeline_loads_in_a_fresh_process_and_is_deterministic_per_seed(trained, tmp_path):
    out = trained / "out"
    script = _FRESH.format(prompts=PROMPTS)
    subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "a.npy")], check=True, cwd=ROOT, timeout=120)
    fresh = np.load(tmp_path / "a.npy")
    assert fresh.shape == (3, 32, 32, 3)

    pipe = GANPipeline.from_pretrained(str(out))
    batch = pipe(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in (0, 1, 2)], output_type="np").images
    np.testing.assert_array_equal(batch, fresh)
    # the same seed gives the same image alone or in a batch (up to CPU kernel rounding, < one 8-bit level)
    alone = pipe(PROMPTS[1], generator=torch.Generator().manual_seed(1), output_type="np").images
    assert np.abs(alone[0] - batch[1]).max() < 1 / 255
    other = pipe(PROMPTS[1], generator=torch.Generator().manual_seed(5), output_type="np").images
    assert np.abs(other[0] - batch[1]).max() > 1 / 255
    # PIL output and tuple return
    (images,) = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), return_dict=False)
    assert images[0].size == (32, 32) and images[0].mode == "RGB"


def test_one_generator_evaluation_per_image(trained):
    pipe = GANPipeline.from_pretrained(str(trained / "out"))
    seen = []
    handle = pipe.generator.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        images = pipe(PROMPTS, num_images_per_prompt=2, generator=torch.Generator().manual_seed(0)).images
    finally:
        handle.remove()
    assert len(images) == 6 and seen == [6]


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A random AutoencoderKL with two downsamplings (32 px -> 8x8x4), saved as the zoo saves its VAE."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    vae.register_to_config(scaling_factor=0.5)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def test_latent_gan_generates_vae_latents_and_decodes_them_in_the_same_pass(text_encoder_dir, tiny_vae_dir, tmp_path):
    cfg = tiny_config(text_encoder_dir, latent_vae=str(tiny_vae_dir), g_channels=[16, 8], d_channels=[8, 16],
                      categories={"single_object": 1.0}, word_attention=False)  # fmt: skip
    gan.train(cfg, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    pipe = GANPipeline.from_pretrained(str(tmp_path / "out"))
    assert pipe.generator.config.output == "latent" and pipe.generator.config.image_size == 8
    decoded = []
    real_decode = pipe.vae.decode
    pipe.vae.decode = lambda z, **kw: decoded.append(z.shape) or real_decode(z, **kw)
    images = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (3, 32, 32, 3) and decoded == [(3, 4, 8, 8)]
    with pytest.raises(ValueError, match="needs the VAE"):
        GANPipeline(generator=pipe.generator, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)


def test_check_inputs_rejects_bad_arguments(trained):
    pipe = GANPipeline.from_pretrained(str(trained / "out"))
    with pytest.raises(ValueError, match="generators for 2 images"):
        pipe(PROMPTS[:2], generator=[torch.Generator()])
    with pytest.raises(ValueError, match="truncation"):
        pipe("a circle", truncation=0.0)
    with pytest.raises(ValueError, match="output_type"):
        pipe("a circle", output_type="latent")


def test_batches_are_a_function_of_the_step(text_encoder_dir):
    cfg = tiny_config(text_encoder_dir, batch_size=8, hard_negative_prob=1.0)
    x1, caps1, neg1 = gan.make_batch(7, cfg)
    x2, caps2, neg2 = gan.make_batch(7, cfg)
    assert torch.equal(x1, x2) and caps1 == caps2 and neg1 == neg2
    assert caps1 != gan.make_batch(8, cfg)[1]
    # hard negatives change one stated attribute: never the caption itself
    assert all(c != n for c, n in zip(caps1, neg1))


def test_category_mix_may_change_at_a_step(text_encoder_dir):
    mix = {0: {"background": 1.0}, 5: {"counting": 1.0}}
    cfg = tiny_config(text_encoder_dir, batch_size=8, describe_prob=0.0, categories=mix)
    early, late = gan.make_batch(4, cfg)[1], gan.make_batch(5, cfg)[1]
    assert early == gan.make_batch(4, dict(cfg, categories=mix[0]))[1]
    assert late == gan.make_batch(5, dict(cfg, categories=mix[5]))[1] != early


def test_cached_latents_are_the_captioned_scenes(text_encoder_dir, tmp_path):
    """With ``cache_size`` a batch is pool rows: each latent must be the encoding of the scene its captions
    describe, built once and reloaded from ``work``."""
    from evalkit.zoo.common import cache_rows, images_to_tensor, render_batch

    mix = {0: {"background": 1.0}, 3: {"counting": 1.0}}
    cfg = tiny_config(text_encoder_dir, batch_size=6, cache_size=10, latent_vae="zoo/diffusion-vae", categories=mix,
                      describe_prob=0.0)  # fmt: skip
    vae = gan.load_latent_vae(cfg)
    pools = gan.LatentPools(vae, cfg, tmp_path, "vae")
    for step in (2, 3, 5):  # both mixes; step 5 wraps into the pool's second epoch
        x, captions, mismatched = gan.make_batch(step, cfg, pools)
        pool, _ = pools.get(mix[0] if step < 3 else mix[3])
        scenes = [pool[r] for r in cache_rows(step, 10, 6, cfg["seed"])]
        expected = gan.to_latents(vae, images_to_tensor(render_batch(scenes, cfg["image_size"])))
        assert x.shape == expected.shape and torch.allclose(x, expected, atol=2e-3 * expected.abs().max().item())
        # the captions are those scenes' own (background prompts name the background)
        assert len(captions) == len(mismatched) == 6
        if step < 3:
            assert all(f"{s.scene.background} background" in c for s, c in zip(scenes, captions))
    assert len(list(tmp_path.glob("latents-vae-*.pt"))) == 2  # one file per mix
    again = gan.LatentPools(vae, cfg, tmp_path, "vae")
    assert torch.equal(again.get(mix[3])[1], pools.get(mix[3])[1])


def test_cache_without_a_vae_is_refused(text_encoder_dir, tmp_path):
    with pytest.raises(UserError, match="cache_size caches VAE latents"):
        gan.train(
            tiny_config(text_encoder_dir, cache_size=8), out_dir=str(tmp_path / "o"), work_dir=str(tmp_path / "w")
        )


def test_translation_keeps_flat_backgrounds_and_moves_content():
    flat = torch.full((2, 3, 16, 16), 0.3)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(gan.translate(flat, gen, 0.25), flat)  # edges replicate: no padding color appears
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    moved = gan.translate(x, gen, 0.25)
    assert torch.equal(moved.sum((1, 2, 3)), x.sum((1, 2, 3)))  # the dot stays whole (4 px shift, 4+ px margin)
    assert (moved[:, 0, 8, 8] == 0).any()


def test_word_attention_reads_the_token_states_the_sentence_embedding_misses():
    from evalkit.zoo.gan_pipeline import GANDiscriminator, GANGenerator

    torch.manual_seed(0)
    g = GANGenerator(noise_dim=8, cond_dim=4, channels=(16, 8), image_size=8, word_dim=6)
    for block in g.word_attention:
        torch.nn.init.ones_(block.gate)  # trained gates are nonzero; at init they are 0 (identity)
    noise, sentence = torch.randn(1, 8).repeat(2, 1), torch.randn(1, 4).repeat(2, 1)  # same sentence
    words = torch.randn(2, 5, 6)  # ... but different token states ("left of" / "right of")
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    out = g(noise, sentence, words, mask)
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    padded = words.clone()
    padded[:, 3:] = torch.randn(2, 2, 6)  # masked positions do not matter
    assert torch.allclose(g(noise, sentence, padded, mask), out, atol=1e-6)
    with pytest.raises(ValueError, match="token states"):
        g(noise, sentence)
    d = GANDiscriminator(cond_dim=4, channels=(8, 16), image_size=8, word_dim=6)
    torch.nn.init.ones_(d.word_attention.gate)
    f = d(out.detach())
    assert not torch.allclose(d.logits(f, sentence, words, mask), d.logits(f, sentence, words.flip(0), mask))
