"""The VQ tokenizer, the masked (aMUSEd) and the autoregressive zoo generators: 3-step training smokes on
tiny configs (32 px renders, 8x8 tokens), exact resume after an interrupted run, a NaN loss stopping
with the last checkpoint kept, loading the exports with their libraries' loaders, and the KV cache."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open

from evalkit.errors import UserError
from evalkit.shapes.world import sample
from evalkit.zoo import autoregressive, masked, vq
from evalkit.zoo.common import cache_rows, load_checkpoint, load_config, stop_on_signal

TINY_VQ = {
    "block_out_channels": [16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "codebook_size": 32,
    "norm_num_groups": 8,
    "sample_size": 32,
    "mid_block_attention": False,
}
TINY_MASKED = {
    "hidden_size": 32,
    "in_channels": 16,
    "block_out_channels": 32,
    "num_res_blocks": 1,
    "block_num_heads": 2,
    "downsample": True,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "micro_cond_encode_dim": 8,
}
TINY_AR = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
RUN = {
    "steps": 3, "batch_size": 4, "image_size": 32, "warmup": 1, "log_every": 1, "checkpoint_every": 1,
    "eval_every": 2, "eval_every_n": 2, "eval_n": 4, "cache_size": 10, "val_size": 3,
}  # fmt: skip


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """A random tiny CLIPTextModelWithProjection with the zoo's reduced tokenizer, in the text-encoder layout."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from evalkit.zoo.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("text-encoder")
    tok = build_tokenizer()
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tok.model_max_length, projection_dim=24,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPTextModelWithProjection(cfg).save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")
    return root


def _cfg(name: str, model: dict, **extra) -> dict:
    cfg = load_config(name)
    cfg.update(RUN)
    cfg["model"] = dict(model)
    cfg.update(extra)
    return cfg


def _interrupted_then_resumed(module, loss_name: str, cfg: dict, tmp_path, monkeypatch) -> dict:
    """Run ``cfg`` with a NaN injected into the 3rd training loss, check the error and the kept checkpoint, then
    resume to the end; returns the final checkpoint."""
    work, out = tmp_path / "work-resumed", tmp_path / "out-resumed"
    original = getattr(module, loss_name)
    calls = []

    def poisoned(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(torch.is_grad_enabled())  # training losses only, not the eval's held-out losses
        if sum(calls) == 3 and calls[-1]:
            loss = result[0] if isinstance(result, tuple) else result
            nan = loss * float("nan")
            return (nan, *result[1:]) if isinstance(result, tuple) else nan
        return result

    monkeypatch.setattr(module, loss_name, poisoned)
    with pytest.raises(UserError, match="at step 2.*last good checkpoint is kept"):
        module.train(cfg, out_dir=str(out), work_dir=str(work))
    assert load_checkpoint(work)["step"] == 2
    assert not out.exists()
    monkeypatch.setattr(module, loss_name, original)
    module.train(cfg, resume=True, out_dir=str(out), work_dir=str(work))
    return load_checkpoint(work)


def _stopped_then_resumed(module, loss_name: str, cfg: dict, tmp_path, monkeypatch) -> dict:
    """Run ``cfg`` under ``stop_on_signal`` with a SIGTERM arriving during the 2nd training step, check that
    the step is checkpointed and the run stops, then resume to the end; returns the final checkpoint."""
    work, out = tmp_path / "work-stopped", tmp_path / "out-stopped"
    cfg = {**cfg, "checkpoint_every": 1000}  # only the stop saves before the end
    original = getattr(module, loss_name)
    calls = []

    def signalled(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        if sum(calls) == 2 and calls[-1]:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, loss_name, signalled)
    with stop_on_signal(), pytest.raises(UserError, match="stopped by SIGTERM after step 2.*--resume"):
        module.train(cfg, out_dir=str(out), work_dir=str(work))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the context
    assert load_checkpoint(work)["step"] == 2 and not out.exists()
    monkeypatch.setattr(module, loss_name, original)
    module.train(cfg, resume=True, out_dir=str(out), work_dir=str(work))
    return load_checkpoint(work)


INTERRUPTIONS = {"nan": _interrupted_then_resumed, "sigterm": _stopped_then_resumed}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    """A tiny VQ trained for 3 steps (uninterrupted), shared by the generator tests."""
    root = tmp_path_factory.mktemp("vq")
    cfg = _cfg("vq", TINY_VQ)
    vq.train(cfg, out_dir=str(root / "out"), work_dir=str(root / "work"))
    return root, cfg


def test_vq_exports_a_vqmodel_that_tokenizes_renders(vq_run):
    root, _ = vq_run
    model = vq.load_vq(root / "out")
    assert model.config.lookup_from_codebook and model.config.num_vq_embeddings == 32
    from evalkit.shapes import render, sample

    x = vq.to_unit([render(s.scene, 32) for s in sample(2, seed=1)])
    tokens = vq.encode_tokens(model, x)
    assert tokens.shape == (2, 8, 8) and tokens.dtype == torch.long and int(tokens.max()) < 32
    rec = vq.decode_tokens(model, tokens)
    assert rec.shape == x.shape and 0 <= float(rec.min()) and float(rec.max()) <= 1
    meta = json.loads((root / "out" / "meta.json").read_text())
    figs = meta["reconstruction_test"]
    assert figs["n"] == 4 and 0 <= figs["oracle_full_scene"] <= 1 and figs["codes_used"] >= 1


@pytest.mark.parametrize("interruption", ["nan", "sigterm"])
def test_vq_interrupted_then_resumed_equals_uninterrupted(interruption, vq_run, tmp_path, monkeypatch):
    root, cfg = vq_run
    resumed = INTERRUPTIONS[interruption](vq, "vq_loss", cfg, tmp_path, monkeypatch)
    straight = load_checkpoint(root / "work")
    _assert_same_state(resumed["model"], straight["model"])
    for key in ("cluster_size", "embed_sum"):
        assert torch.equal(resumed["codebook"][key], straight["codebook"][key])


def test_ema_codebook_restarts_dead_codes():
    emb = torch.nn.Embedding(4, 2)
    book = vq.EMACodebook(emb, decay=0.5)
    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    book.init_from(z[[0, 0, 0, 2]], torch.Generator().manual_seed(0))
    idx = book.nearest(z)
    assert idx[0] == idx[1] and idx[2] == idx[3] and idx[0] != idx[2]
    restarted = book.update(z, idx, torch.Generator().manual_seed(0), dead_threshold=0.75)
    assert restarted == 2  # two of the three identical codes were never nearest
    assert all(any(torch.equal(w, row) for row in z) for w in emb.weight[book.cluster_size == 1.0])


@pytest.fixture(scope="module")
def masked_run(vq_run, text_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    cfg = _cfg("masked", TINY_MASKED, vq_dir=str(vq_run[0] / "out"), text_encoder_dir=str(text_dir),
               eval_sampling={"num_inference_steps": 2, "guidance_scale": 2.0}, transformer_dtype="float16")  # fmt: skip
    masked.train(cfg, out_dir=str(root / "out"), work_dir=str(root / "work"))
    return root, cfg


@pytest.mark.parametrize("interruption", ["nan", "sigterm"])
def test_masked_interrupted_then_resumed_equals_uninterrupted(interruption, masked_run, tmp_path, monkeypatch):
    root, cfg = masked_run
    resumed = INTERRUPTIONS[interruption](masked, "masked_loss", cfg, tmp_path, monkeypatch)
    straight = load_checkpoint(root / "work")
    _assert_same_state(resumed["model"], straight["model"])
    _assert_same_state(resumed["ema"], straight["ema"])


def test_masked_export_is_an_amused_pipeline_loaded_in_a_fresh_process(masked_run):
    root, cfg = masked_run
    out = root / "out"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == "AmusedPipeline" and "loader" not in meta  # diffusers' own loader
    assert (meta["steps"], meta["config"]) == (cfg["steps"], cfg)
    assert meta["generate"] == {"steps": 2, "guidance": 2.0}  # the recipe's eval sampling, recommended
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "AmusedPipeline"
    assert index["transformer"] == ["diffusers", "UVit2DModel"]
    assert index["scheduler"] == ["diffusers", "AmusedScheduler"]
    script = textwrap.dedent(f"""
        import hashlib, numpy as np, torch
        from diffusers import AmusedPipeline, DiffusionPipeline
        pipe = AmusedPipeline.from_pretrained({str(out)!r})
        pipe.set_progress_bar_config(disable=True)
        assert type(DiffusionPipeline.from_pretrained({str(out)!r})).__name__ == "AmusedPipeline"
        def run():
            g = torch.Generator().manual_seed(7)
            return pipe(["a red circle", "two blue squares"], num_inference_steps=3, guidance_scale=2.0,
                        generator=g, output_type="np").images
        a, b = run(), run()
        assert a.shape == (2, 32, 32, 3), a.shape
        assert np.array_equal(a, b)
        print(hashlib.sha256(a.tobytes()).hexdigest())
    """)
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    # the same images in this process, from the same files
    from diffusers import AmusedPipeline

    pipe = AmusedPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    # transformer_dtype float16: half the file, loaded back as float32
    with safe_open(str(out / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert pipe.transformer.dtype == torch.float32
    images = pipe(["a red circle", "two blue squares"], num_inference_steps=3, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(7), output_type="np").images  # fmt: skip
    assert fresh.stdout.strip() == hashlib.sha256(images.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def ar_run(vq_run, text_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("autoregressive")
    cfg = _cfg("autoregressive", TINY_AR, vq_dir=str(vq_run[0] / "out"), text_encoder_dir=str(text_dir),
               eval_n=2, eval_sampling={"guidance_scale": 2.0, "top_k": 8})  # fmt: skip
    autoregressive.train(cfg, out_dir=str(root / "out"), work_dir=str(root / "work"))
    return root, cfg


@pytest.mark.parametrize("interruption", ["nan", "sigterm"])
def test_autoregressive_interrupted_then_resumed_equals_uninterrupted(interruption, ar_run, tmp_path, monkeypatch):
    root, cfg = ar_run
    resumed = INTERRUPTIONS[interruption](autoregressive, "next_token_loss", cfg, tmp_path, monkeypatch)
    straight = load_checkpoint(root / "work")
    _assert_same_state(resumed["model"], straight["model"])
    _assert_same_state(resumed["optimizer"]["state"][0], straight["optimizer"]["state"][0])


def test_zoo_train_cli_checkpoints_and_stops_on_sigterm(tmp_path):
    """A real SIGTERM from outside, as a session's end sends it, to ``python -m evalkit.zoo train``."""
    import yaml

    cfg = {
        **load_config("vq"),
        **RUN,
        "model": dict(TINY_VQ),
        "steps": 10**6,
        "checkpoint_every": 10**6,
        "eval_every": 0,
    }
    (tmp_path / "vq.yaml").write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "evalkit.zoo", "train", "vq", "--config", str(tmp_path / "vq.yaml"),
           "--work", str(work), "--out", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = work / "log.jsonl"
    for _ in range(600):  # until it logs its 5th step
        if log.is_file() and len(log.read_text().splitlines()) >= 5 or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    step = load_checkpoint(work)["step"]
    assert f"stopped by SIGTERM after step {step}, saved in {work}: continue with --resume" in err
    assert step >= 5 and json.loads(log.read_text().splitlines()[-1])["step"] <= step


def test_token_training_logs_unweighted_losses_on_held_out_and_seen_samples(ar_run, text_dir):
    """Each eval row carries the EMA model's plain likelihood on test-split and on cached samples."""
    from evalkit.zoo.ar_pipeline import ARPipeline
    from evalkit.zoo.masked import load_text, loss_sets, set_loss

    root, cfg = ar_run
    evals = [r for r in map(json.loads, (root / "work" / "log.jsonl").read_text().splitlines()) if "eval" in r]
    assert [r["step"] for r in evals] == [2]
    losses = evals[0]["eval"]["losses"]
    assert set(losses) == {"held_out", "seen"} and all(0 < v < 20 for v in losses.values())

    tokenizer, text_encoder = load_text(text_dir)
    sets = loss_sets(cfg, vq.load_vq(cfg["vq_dir"]), tokenizer, text_encoder, None)
    assert set(sets) == {"held_out"} and len(sets["held_out"][0]) == cfg["val_size"]
    transformer = ARPipeline.from_pretrained(str(root / "out")).transformer
    tokens, pooled, hidden = sets["held_out"]
    whole = autoregressive.next_token_loss(transformer, tokens, pooled, hidden).item()
    weighted = autoregressive.next_token_loss(transformer, tokens, pooled, hidden, 1 + 4 * (tokens % 2)).item()
    chunked = set_loss(autoregressive.AUTOREGRESSIVE, transformer, sets["held_out"], {**cfg, "batch_size": 2})
    assert chunked == pytest.approx(whole, abs=1e-4) and abs(whole - weighted) > 1e-4


def test_autoregressive_kv_cache_gives_the_same_images(ar_run):
    from evalkit.zoo.ar_pipeline import ARPipeline

    meta = json.loads((ar_run[0] / "out" / "meta.json").read_text())
    assert (meta["model"], meta["loader"]) == ("ARPipeline", "evalkit.zoo.ar_pipeline.ARPipeline.from_pretrained")
    assert meta["steps"] == ar_run[1]["steps"] and meta["oracle_test"]["n"] == 2
    pipe = ARPipeline.from_pretrained(str(ar_run[0] / "out"))
    pipe.set_progress_bar_config(disable=True)

    def run(use_kv_cache: bool, output_type: str):
        gens = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
        return pipe(["a red circle", "a star", "a green ring"], generator=gens, guidance_scale=2.0,
                    use_kv_cache=use_kv_cache, output_type=output_type).images  # fmt: skip

    cached, full = run(True, "latent"), run(False, "latent")
    assert cached.shape == (3, 8, 8)
    assert torch.equal(cached, full)
    assert len(set(map(tuple, cached.reshape(3, -1).tolist()))) == 3  # sampling, not a constant
    images = run(True, "pil")
    assert images[0].size == (32, 32)
    # image i depends on its own generator only
    gen = [torch.Generator().manual_seed(4)]
    alone = pipe(["a star"], generator=gen, guidance_scale=2.0, output_type="latent").images
    assert torch.equal(alone[0], cached[1])


def test_ar_transformer_cached_logits_match_full_pass():
    from evalkit.zoo.ar_pipeline import ARTransformer

    torch.manual_seed(0)
    model = ARTransformer(codebook_size=16, sample_size=4, hidden_size=32, num_layers=2, num_heads=2,
                          intermediate_size=64, text_hidden_size=8, text_embed_dim=6, max_text_length=5).eval()  # fmt: skip
    hidden, pooled = torch.randn(2, 5, 8), torch.randn(2, 6)
    tokens = torch.randint(0, 16, (2, 16))
    with torch.no_grad():
        full = model(tokens[:, :-1], encoder_hidden_states=hidden, pooled_text_emb=pooled).logits
        out = model(tokens[:, :0], encoder_hidden_states=hidden, pooled_text_emb=pooled, use_cache=True)
        steps = [out.logits]
        for i in range(4):  # then one token at a time
            out = model(tokens[:, i : i + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
        out = model(tokens[:, 4:15], past_key_values=out.past_key_values, use_cache=True)  # and a chunk
        steps.append(out.logits)
    assert full.shape == (2, 16, 16)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_generators_refuse_a_missing_text_encoder(vq_run, tmp_path):
    cfg = _cfg("masked", TINY_MASKED, vq_dir=str(vq_run[0] / "out"), text_encoder_dir=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="train it first"):
        masked.train(cfg, out_dir=str(tmp_path / "o"), work_dir=str(tmp_path / "w"))


def test_object_token_weights_and_weighted_losses(text_dir):
    """Tokens whose patch shows an object get ``object_token_weight``; weight 1 leaves both losses equal to
    the plain mean cross-entropy, and a larger weight moves them toward the object tokens' loss."""
    torch.manual_seed(0)
    vqm = vq.build_vq(TINY_VQ).eval()
    tok, te = masked.load_text(text_dir)
    cfg = _cfg("masked", TINY_MASKED, object_token_weight=5.0)
    tokens, pooled, hidden, weights = masked.token_batch(0, cfg, vqm, tok, te)
    assert weights.shape == tokens.shape and set(weights.unique().tolist()) == {1.0, 5.0}
    share = (weights > 1).float().mean().item()
    assert 0.0 < share < 0.5  # objects are the minority of every render's patches

    transformer = masked.build_transformer(TINY_MASKED, vqm, te)
    plain = masked.masked_loss(transformer, tokens, pooled, hidden, torch.Generator().manual_seed(1), 32)
    ones = masked.masked_loss(transformer, tokens, pooled, hidden, torch.Generator().manual_seed(1), 32,
                              torch.ones_like(weights))  # fmt: skip
    inputs, labels = masked.mask_tokens(tokens, transformer.config.vocab_size - 1, torch.Generator().manual_seed(1))
    logits = transformer(inputs, encoder_hidden_states=hidden, pooled_text_emb=pooled,
                         micro_conds=masked.micro_conds(len(tokens), 32))  # fmt: skip
    reference = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    torch.testing.assert_close(plain, reference)
    torch.testing.assert_close(ones, reference)

    ar = autoregressive.build_transformer(TINY_AR, vqm, te)
    ar_plain = autoregressive.next_token_loss(ar, tokens, pooled, hidden)
    flat = tokens.reshape(len(tokens), -1)
    ar_logits = ar(flat[:, :-1], encoder_hidden_states=hidden, pooled_text_emb=pooled).logits
    per_token = torch.nn.functional.cross_entropy(ar_logits.reshape(-1, ar_logits.shape[-1]), flat.reshape(-1),
                                                  reduction="none")  # fmt: skip
    torch.testing.assert_close(ar_plain, per_token.mean())
    w = weights.reshape(-1)
    torch.testing.assert_close(autoregressive.next_token_loss(ar, tokens, pooled, hidden, weights),
                               (per_token * w).sum() / w.sum())  # fmt: skip


def test_token_cache_holds_what_rendering_gives(text_dir, tmp_path):
    """Cached batches carry the same tokens, object weights and captions as encoding the renders anew."""
    torch.manual_seed(0)
    vqm = vq.build_vq(TINY_VQ).eval()
    tok, te = masked.load_text(text_dir)
    cfg = _cfg("masked", TINY_MASKED, object_token_weight=5.0, cache_size=6, batch_size=4)
    cache = masked.token_cache(cfg, vqm, tmp_path, "vq0")
    assert cache.tokens.shape == (6, 8, 8) and len(cache.captions) == 6
    samples = sample(6, seed=cfg["seed"], split="train", categories=cfg.get("categories"))
    fresh_tokens, fresh_mask = masked._encode_samples(vqm, samples, 32)
    assert torch.equal(cache.tokens.long(), fresh_tokens) and torch.equal(cache.on_object, fresh_mask)
    assert cache.captions == [s.caption for s in samples]
    assert torch.equal(masked.token_cache(cfg, vqm, tmp_path, "vq0").tokens, cache.tokens)  # loaded, not rebuilt
    tokens, _, _, weights = masked.token_batch(1, cfg, vqm, tok, te, cache)  # step 1 crosses into epoch 2
    rows = cache_rows(1, 6, 4, cfg["seed"])
    assert torch.equal(tokens, fresh_tokens[rows]) and torch.equal(weights, 1 + 4.0 * fresh_mask[rows].float())


def test_bf16_precision_runs_the_losses_in_bfloat16_close_to_fp32(text_dir, monkeypatch):
    """``precision: bf16`` (the recipes' setting) autocasts the matrix products: the losses move off their
    float32 values, but by less than bfloat16's rounding would allow to matter; a typo is refused; a CPU
    without native bfloat16 trains in float32 instead of emulating it."""
    from evalkit.zoo import common
    from evalkit.zoo.common import autocast, resolved_precision

    monkeypatch.setattr(common, "native_bf16", lambda: False)
    assert resolved_precision({"precision": "bf16"}) == "fp32"
    with autocast({"precision": "bf16"}):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(common, "native_bf16", lambda: True)
    assert resolved_precision({"precision": "bf16"}) == "bf16"
    torch.manual_seed(0)
    vqm = vq.build_vq(TINY_VQ).eval()
    tok, te = masked.load_text(text_dir)
    cfg = _cfg("masked", TINY_MASKED)
    tokens, pooled, hidden, weights = masked.token_batch(0, cfg, vqm, tok, te)
    ar = autoregressive.build_transformer(TINY_AR, vqm, te)
    uvit = masked.build_transformer(TINY_MASKED, vqm, te)
    for precision in ("fp32", "bf16"):
        with autocast({"precision": precision}):
            assert ar.head(hidden.new_zeros(1, 32)).dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    losses = {}
    for precision in ("fp32", "bf16"):
        with autocast({"precision": precision}):
            gen = torch.Generator().manual_seed(1)
            losses[precision] = (autoregressive.next_token_loss(ar, tokens, pooled, hidden, weights),
                                 masked.masked_loss(uvit, tokens, pooled, hidden, gen, 32, weights))  # fmt: skip
    for fp32, bf16 in zip(*losses.values()):
        assert fp32.dtype == bf16.dtype == torch.float32
        assert fp32 != bf16
        torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0)
    assert load_config("masked")["precision"] == load_config("autoregressive")["precision"] == "bf16"
    with pytest.raises(UserError, match="precision must be one of fp32, bf16, got 'fp16'"):
        autocast({"precision": "fp16"})


def test_autoregressive_nfe_is_predicted_and_measured_per_token(ar_run):
    from evalkit.generators import load

    gen = load(f"dir:{ar_run[0] / 'out'}")
    assert gen.family == "autoregressive"
    for guidance, expected in ((2.0, 2 * 64), (1.0, 64)):
        assert gen.nfe(guidance=guidance) == expected
        out = gen.generate(["a red circle", "a star"], [0, 1], guidance=guidance)
        assert out.nfe == [expected, expected]
