"""An autoregressive text-to-image pipeline: a decoder-only transformer writes VQ tokens in raster order.

It shares the masked generator's VQ model and text encoder, so the two differ only in generation
strategy: here one network evaluation per token (256 for a 16x16 token grid), each reusing the keys
and values of everything before it (KV cache). Load it with the class's own loader, which resolves
the custom transformer class from this module::

    from evalkit.zoo.ar_pipeline import ARPipeline
    pipe = ARPipeline.from_pretrained("zoo/autoregressive")
    image = pipe("a red circle on a white background", generator=torch.Generator().manual_seed(0)).images[0]

(``DiffusionPipeline.from_pretrained`` cannot: ``model_index.json`` names ``ARPipeline``, which is not a
diffusers class.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput, VQModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

# ModelMixin is listed because diffusers' loader looks the base classes up in the component's module.
__all__ = ["ARPipeline", "ARTransformer", "ARTransformerOutput", "KVCache", "ModelMixin"]


@dataclass
class KVCache:
    """Per layer (keys, values) [B, heads, seen, head_dim]; the first ``prefix`` seen positions are the
    prompt (text and start slot), the rest image tokens."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    prefix: int

    @property
    def image_tokens(self) -> int:
        return self.layers[0][0].shape[2] - self.prefix


@dataclass
class ARTransformerOutput(BaseOutput):
    """``logits`` [B, T, codebook_size]: at each returned position, the next image token's logits;
    ``past_key_values``: the cache extended by this call, when asked for."""

    logits: torch.Tensor
    past_key_values: KVCache | None = None


class _Block(nn.Module):
    """Pre-norm transformer block with causal self-attention that can extend a KV cache."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        seen = k.shape[2] - t
        if seen == 0:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:
            attn = F.scaled_dot_product_attention(q, k, v)  # one new position sees everything before it
        else:
            allowed = torch.ones(t, seen + t, dtype=torch.bool, device=x.device).tril(diagonal=seen)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.dropout(self.proj(attn.transpose(1, 2).reshape(b, t, d)))
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x, (k, v)


class ARTransformer(ModelMixin, ConfigMixin):
    """Decoder-only transformer over raster-ordered VQ tokens, prefixed by the prompt.

    The sequence is ``[text hidden states (L)] [start] [token 0] ... [token N-2]``: the projected
    penultimate text hidden states, then a start slot carrying the pooled text embedding, then the
    image tokens with row and column embeddings. The output at the start slot predicts token 0, the
    output at token i predicts token i+1.
    """

    @register_to_config
    def __init__(
        self,
        codebook_size: int = 512,
        sample_size: int = 16,
        hidden_size: int = 192,
        num_layers: int = 4,
        num_heads: int = 4,
        intermediate_size: int = 768,
        text_hidden_size: int = 128,
        text_embed_dim: int = 128,
        max_text_length: int = 32,
        dropout: float = 0.0,
    ):
        super().__init__()
        d = hidden_size
        self.token_embed = nn.Embedding(codebook_size, d)
        self.row_embed = nn.Embedding(sample_size, d)
        self.col_embed = nn.Embedding(sample_size, d)
        self.text_proj = nn.Linear(text_hidden_size, d)
        self.text_pos = nn.Parameter(torch.zeros(max_text_length, d))
        self.start_proj = nn.Linear(text_embed_dim, d)
        self.blocks = nn.ModuleList(_Block(d, num_heads, intermediate_size, dropout) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, codebook_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def _image_embeddings(self, tokens: torch.Tensor, first: int) -> torch.Tensor:
        """Embeddings of image tokens at raster positions ``first``, ``first + 1``, ..."""
        pos = torch.arange(first, first + tokens.shape[1], device=tokens.device)
        w = self.config.sample_size
        return self.token_embed(tokens) + self.row_embed(pos // w) + self.col_embed(pos % w)

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_text_emb: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        return_dict: bool = True,
    ) -> ARTransformerOutput | tuple:
        """Next-token logits.

        Args:
            input_ids: image tokens [B, n]. Without ``past_key_values`` these are tokens 0..n-1 and the text
                is required; the logits [B, n+1, K] predict tokens 0..n. With a cache (which holds the text,
                the start slot and m tokens) they are tokens m..m+n-1 and the logits [B, n, K] predict m+1..m+n.
            encoder_hidden_states: penultimate text hidden states [B, L, text_hidden_size].
            pooled_text_emb: projected pooled text embedding [B, text_embed_dim].
            past_key_values: the cache returned by an earlier call with ``use_cache=True``.
            use_cache: also return the cache extended by this call's positions.
        """
        if past_key_values is None:
            if encoder_hidden_states is None or pooled_text_emb is None:
                raise ValueError("the first call needs encoder_hidden_states and pooled_text_emb")
            text = self.text_proj(encoder_hidden_states) + self.text_pos[: encoder_hidden_states.shape[1]]
            start = self.start_proj(pooled_text_emb)[:, None]
            x = torch.cat([text, start, self._image_embeddings(input_ids, 0)], dim=1)
            keep = input_ids.shape[1] + 1  # outputs at the start slot and after each image token
            prefix, pasts = text.shape[1] + 1, [None] * len(self.blocks)
        else:
            x = self._image_embeddings(input_ids, past_key_values.image_tokens)
            keep = input_ids.shape[1]
            prefix, pasts = past_key_values.prefix, past_key_values.layers
        layers = []
        for block, past in zip(self.blocks, pasts):
            x, kv = block(x, past)
            layers.append(kv)
        logits = self.head(self.norm_out(x[:, -keep:]))
        cache_out = KVCache(layers, prefix) if use_cache else None
        if not return_dict:
            return (logits, cache_out)
        return ARTransformerOutput(logits=logits, past_key_values=cache_out)


class ARPipeline(DiffusionPipeline):
    """Text-to-image by raster-order sampling of VQ tokens (see the module docstring for loading).

    Args:
        vqvae: the ``VQModel`` whose codebook indices the transformer writes (``lookup_from_codebook=True``).
        tokenizer, text_encoder: the prompt encoder (``CLIPTextModelWithProjection``; penultimate hidden
            states and the projected pooled embedding, as ``AmusedPipeline`` uses them).
        transformer: an :class:`ARTransformer`.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vqvae"

    def __init__(
        self,
        vqvae: VQModel,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModelWithProjection,
        transformer: ARTransformer,
    ):
        super().__init__()
        self.register_modules(vqvae=vqvae, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer)
        self.vae_scale_factor = 2 ** (len(self.vqvae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False)

    def evalkit_nfe(self, params: dict) -> int:
        """Network evaluations per image that ``evalkit.generators`` predicts: one per token, twice with guidance."""
        tokens = self.transformer.config.sample_size**2
        return tokens * (2 if float(params.get("guidance", 3.0)) > 1.0 else 1)

    def check_inputs(self, prompt, num_images_per_prompt, guidance_scale, temperature, top_k, generator, output_type):
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))):
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt)}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt}")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}")
        if temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 is greedy), got {temperature}")
        if top_k is not None and not (1 <= top_k <= self.transformer.config.codebook_size):
            raise ValueError(f"`top_k` must be in 1..{self.transformer.config.codebook_size}, got {top_k}")
        n = (1 if isinstance(prompt, str) else len(prompt)) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for {n} images; pass one per image or a single one")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of pil, np, pt, latent; got {output_type!r}")

    @torch.no_grad()
    def encode_prompt(
        self, prompt: list[str], num_images_per_prompt: int, do_classifier_free_guidance: bool,
        negative_prompt: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(pooled [B', P], hidden [B', L, H]); with guidance the negatives come first, B' = 2B."""
        if do_classifier_free_guidance:
            prompt = (negative_prompt or [""] * len(prompt)) + prompt
        ids = self.tokenizer(
            prompt, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(self._execution_device)  # fmt: skip
        out = self.text_encoder(ids, return_dict=True, output_hidden_states=True)
        pooled = out.text_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        hidden = out.hidden_states[-2].repeat_interleave(num_images_per_prompt, dim=0)
        return pooled, hidden

    @staticmethod
    def sample_tokens(
        logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | list | None
    ) -> torch.Tensor:
        """One token per row of ``logits`` [B, K]: greedy at temperature 0, else top-k sampling; a list of
        generators samples row i with generator i (so an image does not depend on the rest of the batch)."""
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if isinstance(generator, list):
            return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator)])[:, 0]
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance_scale: float = 3.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_kv_cache: bool = True,
        negative_prompt: str | list[str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate images, one network evaluation per token.

        Args:
            prompt: the prompt or prompts.
            num_images_per_prompt: images per prompt.
            generator: a ``torch.Generator``, or one per image.
            guidance_scale: classifier-free guidance on the logits (``uncond + s * (cond - uncond)``); off at <= 1.
            temperature: sampling temperature; 0 is greedy.
            top_k: sample among the k most likely tokens (None: all).
            use_kv_cache: reuse keys and values of earlier positions; without it every step re-runs the
                whole sequence (same tokens, quadratic cost: for checking the cache).
            negative_prompt: replaces the empty prompt as guidance's unconditional side.
            output_type: "pil", "np", "pt", or "latent" (the token grid [B, h, w]).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
        """
        # 0. Check inputs
        self.check_inputs(prompt, num_images_per_prompt, guidance_scale, temperature, top_k, generator, output_type)

        # 1. Batch size
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * len(prompts)
        batch_size = len(prompts) * num_images_per_prompt
        do_cfg = guidance_scale > 1.0

        # 2. Encode the prompt
        pooled, hidden = self.encode_prompt(prompts, num_images_per_prompt, do_cfg, negative_prompt)

        # 3. Prepare the token grid
        side = self.transformer.config.sample_size
        num_tokens = side * side
        tokens = torch.zeros(batch_size, 0, dtype=torch.long, device=self._execution_device)

        # 4. Autoregressive loop: one network evaluation per token
        cache = None
        with self.progress_bar(total=num_tokens) as progress_bar:
            for _ in range(num_tokens):
                if use_kv_cache and cache is not None:
                    step_in = tokens[:, -1:]
                    out = self.transformer(torch.cat([step_in] * 2) if do_cfg else step_in,
                                           past_key_values=cache, use_cache=True)  # fmt: skip
                else:
                    model_in = torch.cat([tokens] * 2) if do_cfg else tokens
                    out = self.transformer(model_in, encoder_hidden_states=hidden, pooled_text_emb=pooled,
                                           use_cache=use_kv_cache)  # fmt: skip
                cache = out.past_key_values
                logits = out.logits[:, -1]
                if do_cfg:
                    uncond, cond = logits.chunk(2)
                    logits = uncond + guidance_scale * (cond - uncond)
                next_token = self.sample_tokens(logits, temperature, top_k, generator)
                tokens = torch.cat([tokens, next_token[:, None]], dim=1)
                progress_bar.update()

        # 5. Decode the tokens with the VQ model
        grid = tokens.view(batch_size, side, side)
        if output_type == "latent":
            images = grid
        else:
            shape = (batch_size, side, side, self.vqvae.config.latent_channels)
            decoded = self.vqvae.decode(grid.reshape(batch_size, -1), force_not_quantize=True, shape=shape)
            images = self.image_processor.postprocess(decoded.sample.clip(0, 1), output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
