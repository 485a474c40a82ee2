"""The generators' tokenizer: a transformers ``CLIPTokenizer`` over a reduced copy of open_clip's BPE.

CLIP's full vocabulary has 49,408 entries; a text encoder with that token table spends most of its
parameters (and every optimizer step) on rows no shapes-world prompt uses. This keeps the 512
byte-level base tokens (with and without ``</w>``), the two special tokens and only the merges needed
to spell :data:`WORDS`, in CLIP's rank order. Because BPE always applies the lowest-ranked merge
present, keeping every merge a word uses (and nothing else it could use first) spells each of those
words exactly as the full BPE does; any other text falls back to shorter pieces, down to single
bytes, so nothing is ever unknown. Ids differ from CLIP's (the table is re-numbered densely).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from ..errors import UserError
from ..shapes.world import BACKGROUNDS, COLORS, COUNT_WORDS, SHAPES, SIZES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 32  # must equal the text encoder's max_position_embeddings (CALIBRATION.md trap)

# Every word a shapes-world caption template can produce...
_WORLD_WORDS = (
    [*SHAPES, *(s + ("es" if s.endswith("s") else "s") for s in SHAPES)]
    + [*COLORS, *BACKGROUNDS, *SIZES, *COUNT_WORDS.values()]
    + "a an and of on with background to the left right above below under picture image drawing".split()
)
# ...and common prompt words (numbers, media, positions, other shapes and colors, subjects for
# personalization), so ordinary prompts still read as words rather than bytes.
_COMMON_WORDS = """
zero one two three four five six seven eight nine ten eleven twelve many several some few no single pair
first second third
photo photograph photos picture pictures image images drawing drawings painting sketch render rendering
illustration icon logo diagram cartoon clipart art artwork style scene view closeup close up
of a an the this that these those there here is are was be it its in on at by for from with without and or
not but as into onto over under above below beneath behind beside besides between near next to left right
top bottom middle center centre corner side front back inside outside around across along upper lower
background foreground backdrop surface floor table wall sky ground canvas paper
shape shapes object objects thing things item items figure figures symbol symbols sign
color colors colour colours colored coloured solid flat plain simple bright dark light pale deep vivid
grey violet magenta gold golden silver teal navy maroon olive lime indigo turquoise tan cream ivory
rectangle rectangles oval ovals ellipse hexagon hexagons pentagon octagon diamond diamonds heart hearts
moon sun arrow arrows line lines dot dots spot circle circular square triangular box cube sphere ball
big tiny little huge medium sized size tall short wide narrow thin thick round pointy sharp smooth
dog dogs cat cats toy toys person people man woman child car house tree flower flowers bird fish
bear teddy cup mug bottle chair book clock robot statue sculpture vase backpack shoe sks
high quality detailed realistic rendered digital drawn painted hand
made looking sitting standing lying floating placed shown showing centered
""".split()
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORLD_WORDS + _COMMON_WORDS))


def _full_bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _merges_used(word: str, ranks: dict[tuple[str, str], int], byte_encoder: dict[int, str]) -> set:
    """The merges the full BPE applies to spell ``word`` (open_clip's ``bpe`` loop, recording each merge)."""
    token = "".join(byte_encoder[b] for b in word.encode("utf-8"))
    parts = [*token[:-1], token[-1] + "</w>"]
    used = set()
    while len(parts) > 1:
        pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.add(best)
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return used


def reduced_bpe(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of CLIP's BPE restricted to ``words``: base bytes, their merges in rank order, specials."""
    full = _full_bpe()
    used: set[tuple[str, str]] = set()
    for word in words:
        for piece in full.pat.findall(word.lower()):
            used |= _merges_used(piece, full.bpe_ranks, full.byte_encoder)
    merges = sorted(used, key=full.bpe_ranks.__getitem__)
    base = list(full.byte_encoder.values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_tokenizer(words: tuple[str, ...] = WORDS, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over the reduced BPE; pads with end-of-text as SD 1.x does."""
    vocab, merges = reduced_bpe(words)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    if len(tok) != len(vocab):
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {len(vocab)}: special tokens were renamed?")
    return tok


def load_tokenizer(path: str | Path) -> CLIPTokenizer:
    """``CLIPTokenizer.from_pretrained`` that refuses the empty tokenizer it silently returns offline (ENV.md)."""
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file() and not (path / "vocab.json").is_file():
        raise UserError(
            f"no tokenizer files in {path}; train the text encoder first: python -m evalkit.zoo train text-encoder"
        )
    tok = CLIPTokenizer.from_pretrained(str(path))
    if len(tok) <= 3 or tok.convert_tokens_to_ids(EOS) == tok.convert_tokens_to_ids(BOS):
        raise UserError(f"tokenizer in {path} loaded empty ({len(tok)} tokens); its files are damaged")
    return tok


def vocab_summary(tok: CLIPTokenizer) -> str:
    return json.dumps({"tokens": len(tok), "model_max_length": tok.model_max_length})
