"""The zoo's text-conditional GAN (DF-GAN style) as a diffusers pipeline.

- :class:`GANGenerator`: noise ``z`` and a sentence embedding -> 4x4 features -> upsampling residual blocks
  whose every activation is modulated by channel-wise affine transforms predicted from ``[z, sentence]``
  (DF-GAN's deep fusion block) -> RGB in [-1, 1]. With ``word_dim`` set, each block's output also
  attends to the prompt's token states (:class:`WordAttention`): the pooled sentence embedding of a
  contrastively trained text tower barely separates "left of" from "right of" or which color goes with
  which shape, the token states do (what Stable Diffusion's cross-attention reads). A
  ``ModelMixin``/``ConfigMixin``, so ``save_pretrained``/``from_pretrained`` write and read ``config.json`` + safetensors.
- :class:`GANDiscriminator`: downsampling residual conv stack; a matching-aware head judges an image
  together with a sentence embedding (DF-GAN's joint conv), and a contrastive head maps the image to the
  text-embedding space (XMC-GAN's image-sentence contrastive term). Only training needs it.
- :class:`GANPipeline`: ``DiffusionPipeline`` with ``generator``, ``text_encoder``
  (``CLIPTextModelWithProjection``), ``tokenizer`` (``CLIPTokenizer``) and, for a generator of VAE latents
  (``output="latent"``), the ``vae`` (``AutoencoderKL``) that decodes them; one generator evaluation per image.

Loading: ``save_pretrained`` records ``model_index.json`` with ``"_class_name": "GANPipeline"`` and
``"generator": ["evalkit.zoo.gan_pipeline", "GANGenerator"]``. Diffusers' generic
``DiffusionPipeline.from_pretrained`` looks ``GANPipeline`` up in diffusers itself and fails, so a loader
maps that ``_class_name`` to this class and calls ``GANPipeline.from_pretrained(folder)``; diffusers then
imports ``evalkit.zoo.gan_pipeline`` for the generator and transformers for the text parts.

>>> import torch
>>> g = GANGenerator(noise_dim=8, cond_dim=4, channels=(16, 16, 8), image_size=16)
>>> g(torch.zeros(2, 8), torch.zeros(2, 4)).shape
torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

# --------------------------------------------------------------------------- generator


class Affine(nn.Module):
    """Channel-wise ``gamma(c) * x + beta(c)``; starts as the identity (DF-GAN's init)."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
        self.beta = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
        nn.init.zeros_(self.gamma[2].weight)
        nn.init.ones_(self.gamma[2].bias)
        nn.init.zeros_(self.beta[2].weight)
        nn.init.zeros_(self.beta[2].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta(cond)[:, :, None, None], self.gamma(cond)[:, :, None, None], x)


class FusionBlock(nn.Module):
    """DF-GAN's DFBlock: affine, LeakyReLU, affine, LeakyReLU (text fused twice per conv)."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.affine0 = Affine(cond_dim, channels)
        self.affine1 = Affine(cond_dim, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.affine0(x, cond), 0.2)
        return F.leaky_relu(self.affine1(x, cond), 0.2)


class UpBlock(nn.Module):
    """2x nearest upsampling, then fuse -> conv -> fuse -> conv with a (1x1 when widths differ) shortcut."""

    def __init__(self, cond_dim: int, in_ch: int, out_ch: int):
        super().__init__()
        self.fuse1 = FusionBlock(cond_dim, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.fuse2 = FusionBlock(cond_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv2(self.fuse2(self.conv1(self.fuse1(x, cond)), cond))
        return self.shortcut(x) + h


class WordAttention(nn.Module):
    """Every spatial position attends to the prompt's token states; the result is added through a gate
    that starts at 0, so the block starts as the identity. Written out (not ``scaled_dot_product_attention``)
    because the discriminator's gradient penalty differentiates through it twice."""

    def __init__(self, channels: int, word_dim: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_kv = nn.Linear(word_dim, 2 * channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.to_q(self.norm(x.flatten(2).transpose(1, 2))))
        k, v = (split(t) for t in self.to_kv(words).chunk(2, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(c // self.heads)
        if word_mask is not None:
            scores = scores.masked_fill(~word_mask.bool()[:, None, None, :], float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.gate * self.to_out(out).transpose(1, 2).reshape(b, c, h, w)


class GANGenerator(ModelMixin, ConfigMixin):
    """DF-GAN generator: ``(z, sentence) -> image`` in one forward pass.

    Args:
        noise_dim: size of ``z``.
        cond_dim: size of the sentence embedding (the text encoder's ``projection_dim``).
        channels: widths at 4x4, then after each 2x upsampling block; ``image_size = 4 * 2**(len-1)``.
        image_size: output side in pixels (checked against ``channels``).
        word_dim: size of the text encoder's token states; set, every upsampling block attends to them.
    """

    @register_to_config
    def __init__(
        self,
        noise_dim: int = 64,
        cond_dim: int = 128,
        channels: tuple[int, ...] = (256, 256, 128, 64, 32),
        image_size: int = 64,
        out_channels: int = 3,
        output: str = "image",
        word_dim: int | None = None,
        word_heads: int = 4,
    ):
        super().__init__()
        channels = tuple(channels)
        if 4 * 2 ** (len(channels) - 1) != image_size:
            raise ValueError(f"channels {channels} give {4 * 2 ** (len(channels) - 1)} px outputs, not {image_size}")
        if output not in ("image", "latent"):
            raise ValueError(f"output must be 'image' or 'latent', got {output!r}")
        self.fc = nn.Linear(noise_dim, channels[0] * 16)
        c = noise_dim + cond_dim
        self.blocks = nn.ModuleList(UpBlock(c, a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.word_attention = (
            nn.ModuleList(WordAttention(b, word_dim, word_heads) for b in channels[1:]) if word_dim else None
        )
        self.to_rgb = nn.Conv2d(channels[-1], out_channels, 3, 1, 1)

    def forward(
        self,
        noise: torch.Tensor,
        sentence: torch.Tensor,
        words: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """An image in [-1, 1], or (``output="latent"``) scaled VAE latents, unbounded. ``words`` (token
        states) and ``word_mask`` (1 for real tokens) are required with ``word_dim``, ignored without."""
        if self.word_attention is not None and words is None:
            raise ValueError("this generator attends to the prompt's token states: pass `words`")
        cond = torch.cat([noise, sentence], dim=1)
        h = self.fc(noise).view(noise.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, cond)
            if self.word_attention is not None:
                h = self.word_attention[i](h, words, word_mask)
        h = self.to_rgb(F.leaky_relu(h, 0.2))
        return torch.tanh(h) if self.config.output == "image" else h


# --------------------------------------------------------------------------- discriminator


class DownBlock(nn.Module):
    """DF-GAN's D block: ``avgpool(shortcut(x)) + gamma * (4x4 stride-2 conv, 3x3 conv)``; gamma starts at 0,
    so D grows from nearly linear (starting at 1 let D overpower G within 200 steps in a 32 px trial)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.shortcut(x), 2) + self.gamma * self.residual(x)


class GANDiscriminator(nn.Module):
    """Image -> 4x4 features; ``logits(features, sentence)`` is the matching-aware score and
    ``embed(features)`` the unit-norm image embedding for the contrastive term."""

    def __init__(
        self,
        cond_dim: int = 128,
        channels: tuple[int, ...] = (32, 64, 128, 256, 256),
        image_size: int = 64,
        in_channels: int = 3,
        word_dim: int | None = None,
        word_heads: int = 4,
    ):
        super().__init__()
        channels = tuple(channels)
        if image_size // 2 ** (len(channels) - 1) != 4:
            raise ValueError(
                f"channels {channels} reduce {image_size} px images to {image_size // 2 ** (len(channels) - 1)}, not 4"
            )
        self.cond_dim = cond_dim
        self.conv_img = nn.Conv2d(in_channels, channels[0], 3, 1, 1)
        self.blocks = nn.Sequential(*(DownBlock(a, b) for a, b in zip(channels[:-1], channels[1:])))
        top = channels[-1]
        self.joint = nn.Sequential(
            nn.Conv2d(top + cond_dim, top // 2, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(top // 2, 1, 4, 1, 0, bias=False),
        )
        self.embed_head = nn.Linear(top * 16, cond_dim)
        self.word_attention = WordAttention(top, word_dim, word_heads) if word_dim else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv_img(image))

    def logits(
        self,
        features: torch.Tensor,
        sentence: torch.Tensor,
        words: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.word_attention is not None:  # the matching head then sees which word went where
            if words is None:
                raise ValueError("this discriminator attends to the prompt's token states: pass `words`")
            features = self.word_attention(features, words, word_mask)
        s = sentence.view(-1, self.cond_dim, 1, 1).expand(-1, -1, features.shape[2], features.shape[3])
        return self.joint(torch.cat([features, s], dim=1)).view(-1)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed_head(F.leaky_relu(features, 0.2).flatten(1)), dim=-1)


# --------------------------------------------------------------------------- pipeline


def encode_text(
    text_encoder, tokenizer, prompts: list[str], device: torch.device | str = "cpu", repeat: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sentence, words, word_mask)`` of ``prompts``: one path for training and generation."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    out = text_encoder(tokens.input_ids.to(device))
    mask = tokens.attention_mask.to(device)
    parts = (sentence_embedding(out.text_embeds), out.last_hidden_state, mask)
    return tuple(t.repeat_interleave(repeat, dim=0) for t in parts)


def sentence_embedding(text_embeds: torch.Tensor) -> torch.Tensor:
    """The text encoder's projected embedding on the sphere of radius sqrt(dim): every component is
    then of the order of the noise's, and CLIP-style embeddings carry their meaning in the direction."""
    return F.normalize(text_embeds, dim=-1) * math.sqrt(text_embeds.shape[-1])


class GANPipeline(DiffusionPipeline):
    """Text-to-image with the zoo's GAN: ``pipe(prompt).images[0]``; one generator pass per image.

    Args:
        generator: the :class:`GANGenerator`.
        text_encoder: a frozen ``CLIPTextModelWithProjection``; its ``text_embeds`` (and, with
            ``word_dim``, its token states) condition the generator.
        tokenizer: the matching ``CLIPTokenizer``.
        vae: an ``AutoencoderKL`` whose decoder turns a latent generator's output into pixels (its
            ``scaling_factor`` undone first, as in Stable Diffusion); ``None`` for a pixel generator.
    """

    model_cpu_offload_seq = "text_encoder->generator->vae"
    _optional_components: list[str] = ["vae"]

    def __init__(self, generator: GANGenerator, text_encoder, tokenizer, vae=None):
        super().__init__()
        if generator.config.output == "latent" and vae is None:
            raise ValueError("a generator with output='latent' needs the VAE that decodes its latents")
        self.register_modules(generator=generator, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae)
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    def check_inputs(self, prompt, num_images_per_prompt, generator, truncation, output_type) -> None:
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}")
        if isinstance(prompt, list) and not prompt:
            raise ValueError("`prompt` is an empty list")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
        total = (1 if isinstance(prompt, str) else len(prompt)) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"got {len(generator)} generators for {total} images; pass one per image or a single one")
        if not (0.0 < float(truncation) <= 1.0):
            raise ValueError(f"`truncation` must be in (0, 1], got {truncation}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")

    def encode_prompt(
        self, prompt: list[str], device: torch.device, num_images_per_prompt: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sentence, words, word_mask)``, each repeated ``num_images_per_prompt`` times: sentence
        embeddings ``[n, cond_dim]`` (:func:`sentence_embedding`), token states ``[n, length, hidden]``
        and their attention mask ``[n, length]``."""
        return encode_text(self.text_encoder, self.tokenizer, prompt, device, num_images_per_prompt)

    def prepare_noise(self, batch_size: int, dtype, device, generator, truncation: float) -> torch.Tensor:
        """``z = truncation * eps``, ``eps ~ N(0, I)``: 1.0 is the training distribution, smaller trades
        variety for fidelity. With a list of generators, image ``i`` draws from ``generator[i]`` alone."""
        shape = (batch_size, self.generator.config.noise_dim)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype) * truncation

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        truncation: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``num_images_per_prompt`` images per prompt.

        Args:
            prompt: one prompt or a list.
            num_images_per_prompt: images per prompt (prompt-major order).
            generator: a ``torch.Generator`` for the whole batch, or one per image (then image ``i``
                depends only on its own generator's seed, whatever the batch).
            truncation: noise scale in (0, 1].
            output_type: ``"pil"``, ``"np"`` (float in [0, 1], NHWC) or ``"pt"`` (float in [0, 1], NCHW).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
        """
        # 1. check inputs
        self.check_inputs(prompt, num_images_per_prompt, generator, truncation, output_type)
        # 2. batch size and device
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch_size = len(prompts) * num_images_per_prompt
        device = self._execution_device
        # 3. encode the prompt
        sentence, words, word_mask = self.encode_prompt(prompts, device, num_images_per_prompt)
        # 4. prepare the noise
        noise = self.prepare_noise(batch_size, sentence.dtype, device, generator, truncation)
        # 5. one generator evaluation
        dtype = self.generator.dtype
        image = self.generator(noise.to(dtype), sentence.to(dtype), words.to(dtype), word_mask)
        if self.generator.config.output == "latent":  # the VAE decoder is part of the one pass
            latents = image.to(self.vae.dtype) / self.vae.config.scaling_factor
            image = self.vae.decode(latents).sample.clamp(-1, 1)
        # 6. postprocess
        image = self.image_processor.postprocess(image.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
