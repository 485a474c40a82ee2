"""Compare: one prompt and seed through every chosen generator, side by side, with each image's CLIP score,
generation time and, for a shapes-world prompt whose spec is known, the oracle's verdict.

The seed convention is the generators' own (image ``i`` depends only on its prompt, seed and params), so
the image a generator shows here is the one it makes for that prompt and seed in an evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import gradio as gr
from PIL import Image

from ..data.prompts import load_prompts
from ..errors import UserError
from ..metrics.functional.clip import clip_score_per_sample
from ..shapes.oracle import check
from .context import UiContext, failure, problem
from .models import NO_ZOO_MESSAGE, chosen_specs, form_params, short_label, zoo_generators

COMPARE_HEADERS = ["generator", "seconds", "CLIP score", "oracle verdict"]


@dataclass
class Comparison:
    label: str
    image: Image.Image | None
    seconds: float | None
    clip: float | None
    verdict: str
    error: str | None = None

    def row(self) -> list[Any]:
        if self.error:
            return [self.label, None, None, self.error]
        return [self.label, round(self.seconds, 3), None if self.clip is None else round(self.clip, 2), self.verdict]


@lru_cache(maxsize=4)
def shapes_examples(spec: str) -> dict[str, dict]:
    """Caption → oracle spec of a shapes-world prompt set (the prompts whose truth the oracle knows)."""
    return {p.text: p.spec for p in load_prompts(spec) if p.spec}


def oracle_verdict(image: Image.Image, spec: dict | None) -> str:
    """``correct``, or ``wrong: <failed checks>``; prompts outside the shapes world have none."""
    if spec is None:
        return "n/a (not a shapes-world example prompt)"
    v = check(image, spec)
    return "correct" if v.correct else "wrong: " + ", ".join(v.failed)


def compare(
    ctx: UiContext, prompt: str, seed: int, specs: list[str], params: dict[str, int]
) -> tuple[list[Comparison], str]:
    """Generate ``prompt`` with ``seed`` on each generator; (one result per generator, note on the scores)."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise UserError("type a prompt (or pick a shapes-world example)")
    spec = shapes_examples(ctx.config.compare_prompts).get(prompt)
    try:
        extractor = ctx.models.extractor(ctx.config.extractor)
        text = extractor.encode_text([prompt])
        note = f"CLIP score: 100·max(cos, 0) with `{ctx.config.extractor}`."
    except UserError as e:
        extractor, text, note = None, None, f"No CLIP score: {e}"
    taken: set[str] = set()
    out, unused = [], []
    for gen_spec in specs:
        label = short_label(gen_spec, taken)
        try:
            gen = ctx.models.generator(gen_spec)
            kept, ignored = gen.applicable(params)
            if ignored:
                unused.append(f"{label} takes no {', '.join(ignored)}")
            with ctx.models.using([gen_spec]):
                result = gen.generate([prompt], [int(seed)], **kept)
        except Exception as e:  # one generator failing (bad size, missing model) must not hide the others
            out.append(Comparison(label, None, None, None, "", error=f"error: {e}"))
            continue
        image = result.images[0]
        clip = None
        if extractor is not None:
            clip = float(clip_score_per_sample(extractor.encode_images([image])["image"], text)[0])
        out.append(Comparison(label, image, result.seconds[0], clip, oracle_verdict(image, spec)))
    if unused:
        note += " Settings left at the model's own: " + "; ".join(unused) + "."
    return out, note


def run_compare(ctx: UiContext, prompt: str, seed: float, picked: list[str] | None, typed: str, steps: float | None,
                size: float | None) -> tuple[list[tuple[Image.Image, str]], dict[str, Any], str]:  # fmt: skip
    """(gallery of captioned images, table, status Markdown) for the Compare tab and its API."""
    empty = {"headers": COMPARE_HEADERS, "data": []}
    try:
        specs = chosen_specs(picked, typed)
        params = form_params(steps, size)
        results, note = compare(ctx, prompt, int(seed or 0), specs, params)
    except UserError as e:
        return [], empty, problem(e)
    except Exception as e:
        return [], empty, failure(e)
    gallery = [(r.image, f"{r.label} · {r.seconds:.2f}s" + (f" · CLIP {r.clip:.1f}" if r.clip is not None else ""))
               for r in results if r.image is not None]  # fmt: skip
    return gallery, {"headers": COMPARE_HEADERS, "data": [r.row() for r in results]}, note


def build(ctx: UiContext) -> None:
    zoo = zoo_generators()
    if not zoo:
        gr.Markdown(NO_ZOO_MESSAGE)
    examples = list(shapes_examples(ctx.config.compare_prompts))
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(examples[0] if examples else "", label="Prompt", elem_id="compare-prompt")
            example = gr.Dropdown(examples, value=None, label="Shapes-world examples (the oracle checks these)")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            picked = gr.CheckboxGroup(zoo + ctx.config.generators, value=zoo + ctx.config.generators,
                                      label="Generators", elem_id="compare-generators")  # fmt: skip
            typed = gr.Textbox(label="More generators (dir:PATH, hf:ORG/NAME; one per line)", lines=2)
            with gr.Row():
                steps = gr.Number(0, label="Steps (0: the model's)", minimum=0, precision=0, elem_id="compare-steps")
                size = gr.Number(0, label="Size px (0: the model's)", minimum=0, precision=0, elem_id="compare-size")
            go = gr.Button("Compare", variant="primary", elem_id="compare-run")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="compare-status")
            gallery = gr.Gallery(
                label="Side by side", columns=4, height="auto", format="png", elem_id="compare-gallery"
            )
            table = gr.Dataframe(headers=COMPARE_HEADERS, label="Per image", interactive=False, wrap=True,
                                 elem_id="compare-table")  # fmt: skip

    example.input(lambda text: text, example, prompt, api_visibility="private")

    def handler(prompt_, seed_, picked_, typed_, steps_, size_, progress=gr.Progress(track_tqdm=True)):
        return run_compare(ctx, prompt_, seed_, picked_, typed_, steps_, size_)

    go.click(handler, [prompt, seed, picked, typed, steps, size], [gallery, table, status], api_name="compare",
             concurrency_id="generate", concurrency_limit=ctx.config.concurrency)  # fmt: skip
