"""Personalize: upload a subject, name its token, train with ``personalize.train`` and measure the result with
``personalize.evaluate`` — the functions behind ``python -m personalize train|evaluate``.

Each request works in its own folder under the session's (uploads, run folder, evaluation images,
weights zip). Subject figures and the before/after images come from the same evaluation the CLI runs,
on a few prompts, one seed each, and are stored in the results database like the CLI's.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import UserError
from .context import UiContext, failure, problem
from .models import zoo_generators
from .uploads import new_job_dir, store_images

METHOD_CHOICES = [("LoRA (DreamBooth LoRA)", "lora"), ("Textual inversion", "ti"), ("DreamBooth (full)", "dreambooth")]
PROMPT_INDICES = (0, 1, -3)  # of personalize.prompts.DEFAULT_PROMPTS: plain, a background, a companion
METRIC_HEADERS = ["metric", "before", "after", "n"]
_CLASS_WORD = re.compile(r"^[A-Za-z][A-Za-z -]{0,39}$")


def check_class_word(class_word: str, token: str) -> str:
    """A class word is a plain noun phrase (letters, spaces, hyphens; up to 40 characters), not the token."""
    word = (class_word or "").strip()
    if not _CLASS_WORD.match(word):
        raise UserError("the class word must be a plain noun such as 'dog' or 'square' (letters, spaces, hyphens)")
    if word == (token or "").strip():
        raise UserError(f"the token {token!r} must differ from the class word")
    return word


def base_models(ctx: UiContext) -> list[str]:
    """Base models to offer: the zoo's diffusion model when trained, plus the server's extra generators."""
    return [s for s in zoo_generators() if s == "zoo/diffusion"] + list(ctx.config.generators)


def weights_zip(run_dir: Path, weights: list[Path], dest: Path) -> Path:
    """The weights (a whole pipeline for full DreamBooth) with the run's config.json and run.json."""
    files: list[Path] = []
    for w in weights:
        files.append(w)
        if w.name == "model_index.json":  # a saved pipeline: every component folder it names
            index = json.loads(w.read_text())
            for name, value in index.items():
                if not name.startswith("_") and isinstance(value, list) and (w.parent / name).is_dir():
                    files += sorted(p for p in (w.parent / name).rglob("*") if p.is_file())
    files += [p for p in (run_dir / "config.json", run_dir / "run.json") if p.is_file()]
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in dict.fromkeys(files):
            zf.write(f, f.relative_to(run_dir).as_posix())
    return dest


def _pick_dino(ctx: UiContext) -> str:
    """``judge-tower`` when the extractor has a ViT tower to stand in for DINO, else no DINO figure."""
    from personalize.metrics import load_dino

    try:
        load_dino("judge-tower", ctx.models.extractor(ctx.config.extractor))
        return "judge-tower"
    except UserError:
        return "none"


def _before_after(folder: Path) -> list[tuple[str, str]]:
    """Interleaved (before, after) images of each prompt, from the evaluation's index.json files."""
    sides = {}
    for side in ("before", "after"):
        index = folder / side / "index.json"
        sides[side] = json.loads(index.read_text()) if index.is_file() else []
    items = []
    for b, a in zip(sides["before"], sides["after"]):
        items += [(str(folder / "before" / b["file"]), f"before: {b['prompt']}"),
                  (str(folder / "after" / a["file"]), f"after: {a['prompt']}")]  # fmt: skip
    return items


def _samples(folder: Path | None) -> list[tuple[str, str]]:
    if folder is None or not (folder / "index.json").is_file():
        return []
    return [(str(folder / r["file"]), f"after: {r['prompt']}") for r in json.loads((folder / "index.json").read_text())]


def metric_rows(figures: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for m, after in figures["after"].items():
        before = figures["before"].get(m, {}).get("overall", {})
        rows.append([m, before.get("value"), after["overall"]["value"], after["overall"]["n"]])
    return rows


def personalize(ctx: UiContext, files: list | None, token: str, class_word: str, method: str, steps: float,
                model: str | None, typed_model: str, sample_steps: float | None,
                request: Any = None) -> tuple[str, list[tuple[str, str]], dict[str, Any], str | None]:  # fmt: skip
    """Validate, train, evaluate: (status Markdown, before/after gallery, subject metrics, weights zip)."""
    with ctx.session_job(request) as session:
        return _personalize(ctx, session, files, token, class_word, method, steps, model, typed_model, sample_steps)


def _personalize(ctx: UiContext, session: Path, files: list | None, token: str, class_word: str, method: str,
                 steps: float, model: str | None, typed_model: str,
                 sample_steps: float | None) -> tuple[str, list[tuple[str, str]], dict[str, Any], str | None]:  # fmt: skip
    from personalize.config import TrainConfig, check_token_text
    from personalize.evaluation import evaluate
    from personalize.prompts import DEFAULT_PROMPTS
    from personalize.training import train

    empty = {"headers": METRIC_HEADERS, "data": []}
    try:
        token = (token or "").strip()
        check_token_text(token)
        class_word = check_class_word(class_word, token)
        spec = (typed_model or "").strip() or model
        if not spec:
            raise UserError("no base model: the zoo has no diffusion model yet; type dir:PATH of a Stable Diffusion "
                            "pipeline or hf:ORG/NAME")  # fmt: skip
        if not steps or steps < 1:
            raise UserError("steps must be at least 1")
        job = new_job_dir(session, "personalize")
        stored = store_images(files, job / "images", max_images=ctx.config.max_images, max_mb=ctx.config.max_upload_mb)
        cfg = TrainConfig(method=method, images=str(job / "images"), out=str(job / "run"), token=token,
                          class_word=class_word, model=spec, steps=int(steps), validation_every=0,
                          num_validation_images=1, checkpoint_every=max(int(steps), 1),
                          sample_steps=int(sample_steps) if sample_steps else None)  # fmt: skip
        cfg.check()
        result = train(cfg)
    except UserError as e:
        return problem(e), [], empty, None
    except Exception as e:  # e.g. a model the methods cannot train: say so, keep serving
        return failure(e), [], empty, None
    loss = "" if result.final_loss is None else f" (final loss {result.final_loss:.4f})"
    status = (f"**Trained** {method} for {result.steps} steps on {len(stored)} images in {result.seconds:.1f} s"
              f"{loss}. Use the token `{token}` in prompts.")  # fmt: skip
    try:
        zipped = weights_zip(result.run_dir, result.weights, job / f"weights-{method}.zip")
    except Exception as e:  # e.g. a full disk: say so rather than lose the status of a finished training
        return status + f"\n\nNo download: {failure(e)}", _samples(result.samples), empty, None
    try:
        figs = evaluate(str(result.run_dir), str(job / "images"), model=spec, token=token, class_word=class_word,
                        prompts=[DEFAULT_PROMPTS[i] for i in PROMPT_INDICES], n_per_prompt=1,
                        extractor=ctx.config.extractor, dino=_pick_dino(ctx), db=str(ctx.config.db),
                        out=str(job / "evaluation"), sample_steps=cfg.sample_steps)  # fmt: skip
        gallery, rows = _before_after(job / "evaluation"), metric_rows(figs["figures"])
    except Exception as e:  # the weights are good either way: hand them over
        why = str(e) if isinstance(e, UserError) else failure(e)
        return status + f"\n\nNo subject metrics: {why}", _samples(result.samples), empty, str(zipped)
    status += f" Subject metrics stored as run `{figs.get('run_id')}`."
    return status, gallery, {"headers": METRIC_HEADERS, "data": rows}, str(zipped)


def build(ctx: UiContext) -> None:
    models = base_models(ctx)
    if not models:
        gr.Markdown("No base model yet: train `zoo/diffusion` (`python -m evalkit.zoo train diffusion`) or type "
                    "`dir:PATH` of a Stable Diffusion pipeline below.")  # fmt: skip
    with gr.Row():
        with gr.Column(scale=2):
            files = gr.File(file_count="multiple", file_types=["image"], label=f"Subject images (1-{ctx.config.max_images})",
                            elem_id="personalize-files")  # fmt: skip
            with gr.Row():
                token = gr.Textbox("<s*>", label="Token (one word, new to the model)")
                class_word = gr.Textbox(
                    "", label="Class word (e.g. dog)", placeholder="square", elem_id="personalize-class"
                )
            method = gr.Radio(METHOD_CHOICES, value="lora", label="Method")
            steps = gr.Slider(1, 2000, value=200, step=1, label="Training steps", elem_id="personalize-steps")
            model = gr.Dropdown(models, value=models[0] if models else None, label="Base model")
            typed_model = gr.Textbox(label="Or another base model (dir:PATH, hf:ORG/NAME)")
            sample_steps = gr.Number(
                0,
                label="Sampling steps for images (0: the model's)",
                minimum=0,
                precision=0,
                elem_id="personalize-sample-steps",
            )
            go = gr.Button("Train", variant="primary", elem_id="personalize-run")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="personalize-status")
            gallery = gr.Gallery(
                elem_id="personalize-gallery",
                label="Before (class word) / after (token)",
                columns=6,
                height=240,
                format="png",
            )
            figures = gr.Dataframe(headers=METRIC_HEADERS, label="Subject metrics (CLIP-I, CLIP-T, DINO-style)",
                                   interactive=False)  # fmt: skip
            download = gr.File(label="Weights (zip)", interactive=False)

    def handler(files_, token_, class_word_, method_, steps_, model_, typed_, sample_steps_, request: gr.Request,
                progress=gr.Progress(track_tqdm=True)):  # fmt: skip
        return personalize(ctx, files_, token_, class_word_, method_, steps_, model_, typed_, sample_steps_, request)

    go.click(handler, [files, token, class_word, method, steps, model, typed_model, sample_steps],
             [status, gallery, figures, download], api_name="personalize", concurrency_limit=1,
             concurrency_id="train")  # fmt: skip
