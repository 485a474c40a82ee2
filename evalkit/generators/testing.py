"""Tiny random pipelines built from configs, for tests and demos (nothing is downloaded).

Two are the real diffusers classes (``StableDiffusionPipeline``, ``AmusedPipeline``) with a few
hundred thousand parameters at most, so every loading, generation and personalization code path runs on them in
well under a second; their images are noise. The configs avoid the traps listed in ENV.md and
CALIBRATION.md: tokenizer ``model_max_length`` equals the text encoder's
``max_position_embeddings``, DDIM has ``clip_sample=False``, the VAE's ``scaling_factor`` is set,
and aMUSEd's vocabulary, mask token and codebook agree.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from PIL import Image

MAX_LENGTH = 16  # tokens: the tokenizer pads to this and the text encoder has as many positions


def byte_tokenizer(max_length: int = MAX_LENGTH):
    """A ``CLIPTokenizer`` whose vocabulary is the 256 byte symbols (plus their end-of-word forms) and
    no merges: any text tokenizes, one token per character, ids ``< 514``."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    assert len(tok) == len(vocab), "CLIPTokenizer added tokens: special token names differ"
    return tok


def _text_config(tokenizer, hidden: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    kw = {"projection_dim": projection_dim} if projection_dim else {}
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **kw,
    )  # fmt: skip


def tiny_sd_pipeline(seed: int = 0):
    """A random ``StableDiffusionPipeline``: 2-level VAE (32 px ↔ 16×16×4 latents), 2-level UNet, 2-layer CLIP
    text encoder, DDIM. Same seed, same weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, 32)).eval()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
    )  # fmt: skip
    vae.register_to_config(scaling_factor=0.5)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_amused_pipeline(seed: int = 0, codebook_size: int = 32):
    """A random ``AmusedPipeline`` (masked generation): 1-level VQ model (32 px ↔ 16×16 tokens), tiny UVit2D."""
    from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    hidden = 16
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, hidden, projection_dim=hidden)).eval()
    transformer = UVit2DModel(
        hidden_size=16, use_bias=False, hidden_dropout=0.0, cond_embed_dim=hidden, micro_cond_encode_dim=2,
        micro_cond_embed_dim=10, encoder_hidden_size=hidden, vocab_size=codebook_size + 1,
        codebook_size=codebook_size, in_channels=8, block_out_channels=16, num_res_blocks=1, downsample=True,
        upsample=True, block_num_heads=1, num_hidden_layers=1, num_attention_heads=1, attention_dropout=0.0,
        intermediate_size=16, layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=16,
    )  # fmt: skip
    vqvae = VQModel(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        num_vq_embeddings=codebook_size, lookup_from_codebook=True, mid_block_add_attention=False, act_fn="silu",
    )  # fmt: skip
    scheduler = AmusedScheduler(mask_token_id=codebook_size)
    pipe = AmusedPipeline(
        vqvae=vqvae, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd(path: str | Path, seed: int = 0) -> Path:
    """Build :func:`tiny_sd_pipeline` and ``save_pretrained`` it to ``path`` (safetensors)."""
    tiny_sd_pipeline(seed).save_pretrained(path, safe_serialization=True)
    return Path(path)


def save_tiny_amused(path: str | Path, seed: int = 0) -> Path:
    tiny_amused_pipeline(seed).save_pretrained(path, safe_serialization=True)
    return Path(path)


class ToyGANNet(ModelMixin, ConfigMixin):
    """A one-layer text-conditional generator: noise and the mean embedding of the prompt's bytes -> image."""

    @register_to_config
    def __init__(self, size: int = 16, dim: int = 8):
        super().__init__()
        self.embed = torch.nn.Embedding(256, dim)
        self.proj = torch.nn.Linear(2 * dim, 3 * size * size)

    def forward(self, noise: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        s = self.config.size
        return torch.tanh(self.proj(torch.cat([noise, text], dim=-1))).view(-1, 3, s, s)


class ToyGANPipeline(DiffusionPipeline):
    """The smallest pipeline keeping the custom-pipeline contract of :mod:`evalkit.generators.pipeline`:
    a ``DiffusionPipeline`` subclass with ``evalkit_*`` class attributes, saved and loaded by diffusers.
    Its ``model_index.json`` names this module for its component, so ``load("dir:...")`` finds the class
    without registration. One network evaluation per image."""

    evalkit_family = "gan"
    evalkit_generator_list = True

    def __init__(self, generator: ToyGANNet):
        super().__init__()
        self.register_modules(generator=generator)

    @torch.no_grad()
    def __call__(self, prompt: list[str], generator: list[torch.Generator] | None = None, output_type: str = "pil"):
        net = self.generator
        generator = generator or [torch.Generator().manual_seed(0) for _ in prompt]
        text = torch.stack([net.embed(torch.tensor(list(p.encode())[:32] or [0])).mean(0) for p in prompt])
        noise = torch.cat([torch.randn(1, net.config.dim, generator=g) for g in generator])
        x = ((net(noise, text) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return ImagePipelineOutput(images=[Image.fromarray(a) for a in x])


def save_toy_gan(path: str | Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    ToyGANPipeline(ToyGANNet()).save_pretrained(path)
    return Path(path)
