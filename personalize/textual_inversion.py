"""Textual inversion (Gal et al. 2022): learn only the embedding of a new token; the model is untouched.

The token (and ``token_1 ... token_{n-1}`` for a multi-vector embedding, the names diffusers'
``load_textual_inversion`` gives them) is added to the tokenizer and initialized from the
initializer word. Instead of training the whole embedding table and restoring the other rows after
each step (diffusers' example), the new vectors are one small parameter spliced into the token
embedding's output by a forward hook: the optimizer state stays tiny and no other row can move.

Output: ``learned_embeds.safetensors`` = ``{token: tensor[num_vectors, dim]}``, loadable with
``pipe.load_textual_inversion(path, token=token)``.

    python -m personalize.textual_inversion --images DIR --token "<s*>" --initializer square --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from evalkit.errors import UserError

from .base import BaseModel
from .config import TrainConfig, add_train_args, config_from_args
from .inputs import check_new_tokens
from .training import Trainable, TrainResult, train

WEIGHTS_NAME = "learned_embeds.safetensors"


def check(cfg: TrainConfig, base: BaseModel) -> None:
    check_new_tokens(base.pipe.tokenizer, cfg.token, cfg.num_vectors)
    if not base.pipe.tokenizer.encode(cfg.initializer, add_special_tokens=False):
        raise UserError(f"the initializer {cfg.initializer!r} tokenizes to nothing; pass --initializer WORD")


def add_tokens(pipe, token: str, num_vectors: int, initializer: str) -> tuple[list[int], torch.Tensor]:
    """Add the new token(s); returns their ids and initial vectors [num_vectors, dim].

    Each vector starts at the mean embedding of the initializer's pieces, except when there are as many
    vectors as pieces: then vector i starts at piece i, so a phrase ("yellow triangle above purple
    square") can describe a subject no single word does, and the token starts as that phrase.
    """
    tok, text_encoder = pipe.tokenizer, pipe.text_encoder
    names = check_new_tokens(tok, token, num_vectors)
    init_ids = tok.encode(initializer, add_special_tokens=False)
    table = text_encoder.get_input_embeddings().weight.detach()
    if len(init_ids) == num_vectors > 1:
        init = table[init_ids].clone()
    else:
        init = table[init_ids].mean(0).repeat(num_vectors, 1)
    tok.add_tokens(names)
    ids = tok.convert_tokens_to_ids(names)
    text_encoder.resize_token_embeddings(len(tok), mean_resizing=False)  # the new rows are set just below
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[ids] = init
    return ids, init


def splice_hook(ids: list[int], vectors: torch.nn.Parameter):
    """Forward hook for the token embedding: rows of the new ids come from ``vectors`` (gradients flow there)."""
    id_tensor = torch.tensor(ids)

    def hook(module, inputs, output):
        input_ids = inputs[0]
        match = input_ids[..., None] == id_tensor.to(input_ids.device)
        if not match.any():
            return output
        which = match.float().argmax(-1)
        return torch.where(match.any(-1)[..., None], vectors[which].to(output.dtype), output)

    return hook


def setup(cfg: TrainConfig, base: BaseModel) -> Trainable:
    pipe = base.pipe
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    ids, init = add_tokens(pipe, cfg.token, cfg.num_vectors, cfg.initializer)
    vectors = torch.nn.Parameter(init.clone())
    embedding = pipe.text_encoder.get_input_embeddings()
    embedding.register_forward_hook(splice_hook(ids, vectors))

    def save_weights(out: Path) -> list[Path]:
        from safetensors.torch import save_file

        learned = vectors.detach().clone().contiguous()
        with torch.no_grad():
            embedding.weight[ids] = learned.to(embedding.weight.dtype)  # the table agrees with the hook from now on
        path = out / WEIGHTS_NAME
        save_file({cfg.token: learned}, str(path))
        return [path]

    return Trainable(params={"token_vectors": vectors}, save_weights=save_weights, no_decay=("token_vectors",))


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m personalize.textual_inversion", description=__doc__.splitlines()[0])
    add_train_args(p, method="ti")
    return config_from_args(p.parse_args(argv), method="ti")


def main(argv: list[str] | None = None) -> TrainResult:
    return train(parse_args(argv))


if __name__ == "__main__":
    from .cli import run_guarded

    raise SystemExit(run_guarded(main, training=True))
