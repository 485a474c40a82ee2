"""Evaluate: generators × a recipe or prompt set × metrics, run by ``evalkit.runner.run`` as the CLI runs it.

The form becomes a :class:`~evalkit.recipe.Recipe` (validated exactly like a YAML file), so an
evaluation started here lands in the same results database, folders and report as
``python -m evalkit run``, and shows up on the Leaderboard tab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import yaml
from pydantic import ValidationError

from ..errors import UserError
from ..generators import MANIFEST_NAME, read_manifest
from ..metric_names import FEATURE_METRICS, RECIPE_METRICS
from ..recipe import Recipe, _one_line, load_recipe, slug
from ..runner import run
from .context import UiContext, failure, problem
from .models import NO_ZOO_MESSAGE, chosen_specs, form_params, short_label, zoo_generators

FORM = "prompt set"  # what the recipe file field means on this tab
DEFAULT_METRICS = ["clip", "oracle", "speed"]  # none of them needs a reference set
REFERENCE_METRICS = [m for m in FEATURE_METRICS if m not in ("clip", "is")]
GALLERY_PER_GENERATOR = 8
SCORE_HEADERS = ["generator", "metric", "value", "ci95 low", "ci95 high", "n"]


def recipe_files(recipes_dir: Path) -> list[str]:
    """Runnable recipe files (validity protocols are not ``run`` recipes)."""
    out = []
    for path in sorted(Path(recipes_dir).glob("*.yaml")):
        try:
            kind = (yaml.safe_load(path.read_text()) or {}).get("kind")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if kind != "validity":
            out.append(path.name)
    return out


def _generator_entries(ctx: UiContext, specs: list[str], params: dict[str, int]) -> list[dict]:
    taken: set[str] = set()
    return [{"spec": s, "name": short_label(s, taken), "params": ctx.models.params_for(s, params)} for s in specs]


def build_recipe(
    ctx: UiContext,
    specs: list[str],
    recipe_file: str | None,
    prompts: str,
    images_per_prompt: int,
    metrics: list[str],
    steps: float | None = None,
    size: float | None = None,
    reference: str = "",
    name: str = "ui",
) -> Recipe:
    """The recipe the form describes; its output folder is keyed by its content hash (two forms never share one)."""
    cfg = ctx.config
    params = form_params(steps, size)
    if recipe_file and recipe_file != FORM:
        path = Path(cfg.recipes_dir) / recipe_file
        if path.parent.resolve() != Path(cfg.recipes_dir).resolve():
            raise UserError(f"unknown recipe {recipe_file!r}")
        data = load_recipe(path).model_dump()
        if specs:
            data["generators"] = _generator_entries(ctx, specs, params)
        data["extractors"] = [cfg.extractor if e == "judge" else e for e in data["extractors"]]
    else:
        if not specs:
            raise UserError("choose at least one generator")
        data = {
            "name": name.strip() or "ui",
            "prompts": prompts.strip(),
            "generators": _generator_entries(ctx, specs, params),
            "metrics": list(metrics or []),
            "extractors": [cfg.extractor],
            "images_per_prompt": int(images_per_prompt or 1),
            "batch_size": 8,
        }
        if set(data["metrics"]) & set(REFERENCE_METRICS):
            if not reference.strip():
                raise UserError(f"metrics {', '.join(REFERENCE_METRICS)} need a reference set (e.g. shapes:200:1:test)")
            data["reference"] = {"source": reference.strip()}
    try:
        draft = Recipe.model_validate(data | {"db": str(cfg.db)})
    except ValidationError as e:
        raise UserError(_one_line(e, "the form")) from None
    out = Path(cfg.runs_dir) / f"{draft.name}-{draft.content_hash()[:10]}"
    return draft.model_copy(update={"output_dir": str(out)})


def gallery_items(recipe: Recipe, per_generator: int = GALLERY_PER_GENERATOR) -> list[tuple[str, str]]:
    """(image file, caption) for the first images of each generator, from the manifests the run wrote."""
    items = []
    for g in recipe.generators:
        folder = recipe.out_dir / "images" / slug(g.label)
        for row in read_manifest(folder / MANIFEST_NAME).rows[:per_generator]:
            items.append((str(folder / row["file"]), f"{g.label}: {row.get('prompt', '')}"))
    return items


def score_rows(results) -> list[list[Any]]:
    """Overall figures (no per-category rows) with their CIs, for the scores table."""
    rows = []
    for r in results:
        if r.category:
            continue
        lo, hi = r.ci or (None, None)
        rows.append([r.generator, r.metric, _round(r.value), _round(lo), _round(hi), r.n])
    return rows


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def run_evaluation(
    ctx: UiContext,
    picked: list[str] | None,
    typed: str,
    recipe_file: str | None,
    prompts: str,
    images_per_prompt: float,
    metrics: list[str],
    steps: float | None,
    size: float | None,
    reference: str,
    name: str,
) -> tuple[str, list[tuple[str, str]], dict[str, Any]]:
    """Build, run and summarize one evaluation: (status Markdown, gallery, scores table)."""
    empty = {"headers": SCORE_HEADERS, "data": []}
    try:
        specs = chosen_specs(picked, typed) if (picked or (typed or "").strip()) else []
        recipe = build_recipe(ctx, specs, recipe_file, prompts, int(images_per_prompt or 1), metrics, steps, size,
                              reference, name)  # fmt: skip
        all_specs = [g.spec for g in recipe.generators]
        extractors = {}
        if set(recipe.metrics) & set(FEATURE_METRICS):
            extractors = {spec: ctx.models.extractor(spec) for spec in recipe.extractors}
        with ctx.models.using(all_specs):  # loads each: a missing model stops here with what to download
            report = run(recipe, db_path=ctx.config.db, cache=ctx.feature_cache(), on_stage=lambda stage: None,
                         loaded_extractors=extractors)  # fmt: skip
    except UserError as e:
        return problem(e), [], empty
    except Exception as e:  # a model that fails mid-run: say so, keep serving
        return failure(e), [], empty
    made = sum(report.generated.values())
    reused = sum(report.reused.values())
    status = (f"**Done**: run `{report.run_id}` ({len(recipe.generators)} generators, {made} images made, "
              f"{reused} reused) stored in `{ctx.config.db}`; report: `{report.report}`")  # fmt: skip
    return status, gallery_items(recipe), {"headers": SCORE_HEADERS, "data": score_rows(report.results)}


def build(ctx: UiContext) -> None:
    """The tab's components and events (inside an open ``gr.Tab``)."""
    zoo = zoo_generators()
    if not zoo:
        gr.Markdown(NO_ZOO_MESSAGE, elem_id="evaluate-no-zoo")
    with gr.Row():
        with gr.Column(scale=2):
            picked = gr.CheckboxGroup(zoo + ctx.config.generators, label="Generators", elem_id="evaluate-generators")
            typed = gr.Textbox(label="More generators (dir:PATH, hf:ORG/NAME, folder:PATH; one per line)", lines=2)
            recipe = gr.Dropdown([FORM, *recipe_files(ctx.config.recipes_dir)], value=FORM,
                                 label="Recipe (or use the prompt set below)")  # fmt: skip
            prompts = gr.Textbox(
                "shapes:8:0:test",
                label="Prompt set (shapes:N[:seed], parti:default, txt:PATH, ...)",
                elem_id="evaluate-prompts",
            )
            with gr.Row():
                per_prompt = gr.Number(1, label="Images per prompt", minimum=1, precision=0)
                steps = gr.Number(0, label="Steps (0: the model's)", minimum=0, precision=0, elem_id="evaluate-steps")
                size = gr.Number(0, label="Size px (0: the model's)", minimum=0, precision=0, elem_id="evaluate-size")
            metrics = gr.CheckboxGroup(list(RECIPE_METRICS), value=DEFAULT_METRICS, label="Metrics")
            reference = gr.Textbox("shapes:200:1:test", label="Reference set (FID, KID, CMMD, precision/recall)")
            name = gr.Textbox("ui", label="Run name (the leaderboard groups runs by it)", elem_id="evaluate-name")
            go = gr.Button("Evaluate", variant="primary", elem_id="evaluate-run")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="evaluate-status")
            gallery = gr.Gallery(
                elem_id="evaluate-gallery", label="Generated images", columns=8, height="auto", format="png"
            )
            scores = gr.Dataframe(headers=SCORE_HEADERS, label="Scores (95% bootstrap CI)", interactive=False)

    def handler(picked_, typed_, recipe_, prompts_, per_prompt_, metrics_, steps_, size_, reference_, name_,
                progress=gr.Progress(track_tqdm=True)):  # fmt: skip
        return run_evaluation(ctx, picked_, typed_, recipe_, prompts_, per_prompt_, metrics_, steps_, size_,
                              reference_, name_)  # fmt: skip

    go.click(handler, [picked, typed, recipe, prompts, per_prompt, metrics, steps, size, reference, name],
             [status, gallery, scores], api_name="evaluate", concurrency_id="generate",
             concurrency_limit=ctx.config.concurrency)  # fmt: skip
