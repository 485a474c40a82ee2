"""``evaluate``: did personalization work? Subject metrics before (base model, class word) and after
(personalized model, token) over DreamBench-style prompts, printed and stored in the results database.

Both sides use the same prompts (token vs class word) and the same seeds. For an embedded subject
(``subject="housemark"``), the subject detector adds oracle figures: presence, and background or
companion correctness on the prompts that ask for them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evalkit.errors import UserError
from evalkit.results import Result, ResultsDB
from evalkit.shapes.render import png_bytes
from evalkit.utils import atomic_write_bytes, atomic_write_text

from .base import load_base, quiet_diffusers, sample, warn_long_prompts
from .detector import check_subject
from .inputs import load_subject_images, subject_fingerprint
from .metrics import SubjectScorer, figure
from .prompts import DEFAULT_PROMPTS, SubjectPrompt, read_prompts
from .subjects import get_subject
from .weights import load_personalized, weights_fingerprint

RECIPE_NAME = "personalize"


def _save_images(folder: Path, images, prompts, seeds) -> None:
    rows = []
    for i, (im, p, s) in enumerate(zip(images, prompts, seeds)):
        atomic_write_bytes(folder / f"{i:04d}.png", png_bytes(im))
        rows.append({"file": f"{i:04d}.png", "prompt": p, "seed": s})
    atomic_write_text(folder / "index.json", json.dumps(rows, indent=2) + "\n")


def detector_values(images, prompts: list[SubjectPrompt], subject_name: str) -> dict[str, list[float]]:
    """Per-image 0/1 values: presence, outline, and (where the prompt asks) background / companion / all."""
    subject = get_subject(subject_name)
    out: dict[str, list[float]] = {"presence": [], "outline": [], "background": [], "companion": [], "correct": []}
    for im, p in zip(images, prompts):
        v = check_subject(im, subject, background=p.background, companion=p.companion)
        out["presence"].append(float(v["checks"]["present"]))
        out["outline"].append(float(v["outline"]))
        out["correct"].append(float(v["correct"]))
        for key in ("background", "companion"):
            if key in v["checks"]:
                out[key].append(float(v["checks"][key]))
    return {k: v for k, v in out.items() if v}


def evaluate(
    weights: str,
    images: str,
    model: str | None = None,
    token: str | None = None,
    class_word: str | None = None,
    prompts: str | list[SubjectPrompt] | None = None,
    n_per_prompt: int = 4,
    seed: int = 0,
    extractor: str = "judge",
    dino: str = "judge-tower",
    subject: str | None = None,
    db: str | None = "results.db",
    out: str | None = None,
    sample_steps: int | None = None,
    guidance: float | None = None,
) -> dict[str, Any]:
    """Figures ``{"before": {...}, "after": {...}}``, each metric ``{"value", "n", "ci95"}`` overall and per category.

    ``subject`` names an embedded subject for detector figures; ``db`` None skips the database.
    """
    if n_per_prompt < 1:
        raise UserError("n_per_prompt must be at least 1")
    refs = load_subject_images(images, token)
    scorer = SubjectScorer([r.image for r in refs], extractor, dino)  # a missing judge fails before any generation
    after = load_personalized(weights, model, token, sample_steps, guidance)
    token = after.token
    class_word = class_word or after.class_word
    if not token:
        raise UserError("the token is unknown; pass --token")
    if not class_word:
        raise UserError("the class word is unknown (the run did not record one); pass --class-word, e.g. dog")
    if subject:
        get_subject(subject)
    plist = read_prompts(prompts) if isinstance(prompts, str) else list(prompts or DEFAULT_PROMPTS)
    items = [p for p in plist for _ in range(n_per_prompt)]
    seeds = [seed + i for _ in plist for i in range(n_per_prompt)]
    class_texts = [p.with_class(class_word) for p in items]
    token_texts = [p.personalized(token) for p in items]
    base = load_base(after.model, sample_steps, guidance)
    size, steps, cfg_scale = after.base.size, after.base.sample_steps, after.base.guidance
    warn_long_prompts(base.pipe.tokenizer, class_texts + token_texts)
    with quiet_diffusers():
        generated = {
            "before": sample(base.pipe, class_texts, seeds, steps, cfg_scale, size),
            "after": sample(after.base.pipe, token_texts, seeds, steps, cfg_scale, size),
        }
    weights_dir = Path(weights).expanduser()
    out_dir = Path(out).expanduser() if out else (weights_dir / "evaluation" if weights_dir.is_dir() else None)
    if out_dir is not None:
        for side, texts in (("before", class_texts), ("after", token_texts)):
            _save_images(out_dir / side, generated[side], texts, seeds)

    categories = sorted({p.category for p in plist})
    figures: dict[str, Any] = {}
    for side, imgs in generated.items():
        values = scorer.score(imgs, class_texts)
        if subject:
            values |= {f"subject_{k}": v for k, v in detector_values(imgs, items, subject).items()}
        side_figs = {}
        for metric, vals in values.items():
            side_figs[metric] = {"overall": figure(vals).to_dict()}
            if len(vals) == len(items):
                for c in categories:
                    side_figs[metric][c] = figure([v for v, p in zip(vals, items) if p.category == c]).to_dict()
        figures[side] = side_figs
    protocol = {"model": after.model, "model_fingerprint": base.fingerprint, "method": after.method,
                "weights": str(weights_dir.resolve()), "weights_fingerprint": weights_fingerprint(after),
                "images_fingerprint": subject_fingerprint(refs), "token": token,
                "class_word": class_word, "prompts": [p.template for p in plist], "n_per_prompt": n_per_prompt,
                "seed": seed, "steps": steps, "guidance": cfg_scale, "size": size, "extractors": scorer.extractor_ids,
                "subject": subject}  # fmt: skip
    result = {"protocol": protocol, "figures": figures, "images": str(out_dir) if out_dir else None}
    if db:
        result["run_id"] = store(db, protocol, figures, after.model, after.method, Path(images).name, scorer, seeds)
    if out_dir is not None:
        atomic_write_text(out_dir / "figures.json", json.dumps(result, indent=2) + "\n")
    return result


def store(db_path: str, protocol: dict, figures: dict, model: str, method: str, images_name: str, scorer,
          seeds: list[int]) -> str:  # fmt: skip
    """One results row per (side, metric, category); a changed figure starts a new run version."""
    digest = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()
    generators = {"before": f"base:{model}", "after": f"{method}:{Path(protocol['weights']).name}"}
    rows = []
    for side, side_figs in figures.items():
        for metric, cats in side_figs.items():
            for cat, fig in cats.items():
                rows.append(Result(generators[side], f"subject:{images_name}", metric, fig["value"], fig["n"],
                                   tuple(fig["ci95"]) if fig["ci95"] else None, "" if cat == "overall" else cat,
                                   scorer.extractor_ids.get(metric, "subject-detector"), {"side": side}))  # fmt: skip
    with ResultsDB(db_path) as rdb:
        run = rdb.start_run(RECIPE_NAME, digest, protocol, seeds=sorted(set(seeds)))
        try:
            rdb.add_results(run.run_id, rows)
        except ValueError:  # same protocol, different figures (e.g. new code): keep both, numbered
            run = rdb.start_run(RECIPE_NAME, digest, protocol, seeds=sorted(set(seeds)), new_version=True)
            rdb.add_results(run.run_id, rows)
        rdb.finish_run(run.run_id)
        return run.run_id


def format_table(result: dict[str, Any]) -> str:
    """Overall figures, before and after, as a Markdown table."""
    figs = result["figures"]
    metrics = [m for m in figs["after"] if m in figs["before"]]
    lines = ["| metric | before | after | n |", "| --- | --- | --- | --- |"]
    for m in metrics:
        b, a = figs["before"][m]["overall"], figs["after"][m]["overall"]
        fmt = lambda f: "n/a" if f["value"] is None else f"{f['value']:.3f}"  # noqa: E731
        lines.append(f"| {m} | {fmt(b)} | {fmt(a)} | {a['n']} |")
    return "\n".join(lines)
