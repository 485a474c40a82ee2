"""The acceptance figures on an embedded subject, measured end to end and written into the README table.

For each method (LoRA and full DreamBooth with and without prior preservation, textual inversion):
train on the subject's images with the method's defaults (wall time recorded), load the result with
diffusers' loaders, then score with the subject detector and the shapes-world oracle:

- presence: the subject is in the image for "a photo of <s*>" (and, for the base model, for the
  class-word prompt "a photo of a square");
- background: "<s*> on a <color> background" for every background of the shapes world, the
  subject present and the background right;
- bleed: oracle accuracy on ordinary shapes prompts (those naming the class word, and the others)
  with the weights loaded, against the base model;
- CLIP-I / CLIP-T / DINO-style, before and after (``evaluate``), when the judge is available.

A finished run folder is reused, so an interrupted benchmark continues where it stopped.

    python -m personalize benchmark --model zoo/diffusion --readme personalize/README.md
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.errors import ModelNotFoundError, UserError
from evalkit.shapes.oracle import evaluate as oracle_evaluate
from evalkit.shapes.world import BACKGROUNDS
from evalkit.shapes.world import sample as world_sample
from evalkit.utils import atomic_write_text

from .base import BaseModel, load_base, quiet_diffusers, sample
from .config import METHOD_NAMES, RESUMABLE_CHANGES, TrainConfig
from .detector import check_subject
from .subjects import Subject, get_subject
from .weights import load_personalized

VARIANTS: tuple[tuple[str, bool], ...] = (("lora", True), ("lora", False), ("dreambooth", True), ("dreambooth", False),
                                          ("ti", False))  # fmt: skip
TOKEN = "<s*>"
MARK_START, MARK_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
ORDINARY_SEED = 2024
PRIOR_PROMPTS = 24  # ordinary training-split captions beside the class prompt: 4 class images each of 100


def write_prior_prompts(path: Path, n: int = PRIOR_PROMPTS) -> Path:
    """Captions of the world's training split (the ordinary figures use the test split) as a prompt file."""
    lines = ["# shapes-world training captions: prior-preservation prompts beside the class prompt"]
    lines += [s.caption for s in world_sample(n, seed=ORDINARY_SEED, split="train")]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _rate(values: list[bool]) -> dict[str, Any]:
    return {"value": round(sum(values) / len(values), 4) if values else None, "n": len(values)}


def ordinary_prompts(class_word: str, n: int) -> dict[str, list]:
    """``n`` held-out shapes-world samples naming the class word, and ``n`` naming only other shapes."""
    found: dict[str, list] = {"class_word": [], "others": []}
    start = 0
    while min(len(v) for v in found.values()) < n:
        for s in world_sample(256, seed=ORDINARY_SEED, split="test", start=start):
            key = "class_word" if any(o.shape == class_word for o in s.spec.objects) else "others"
            if len(found[key]) < n:
                found[key].append(s)
        start += 256
    return found


def subject_figures(base: BaseModel, subject: Subject, n: int, subject_text: str) -> dict[str, Any]:
    """Presence on "a photo of <subject>", and background correctness for every background color."""
    per_bg = max(1, n // len(BACKGROUNDS))
    plain = sample(base.pipe, [f"a photo of {subject_text}"] * n, list(range(n)), base.sample_steps, base.guidance,
                   base.size)  # fmt: skip
    checks = [check_subject(im, subject) for im in plain]
    bg_prompts = [(bg, f"{subject_text} on a {bg} background") for bg in BACKGROUNDS for _ in range(per_bg)]
    bg_images = sample(base.pipe, [p for _, p in bg_prompts], [i % per_bg for i in range(len(bg_prompts))],
                       base.sample_steps, base.guidance, base.size)  # fmt: skip
    bg_checks = [check_subject(im, subject, background=bg) for im, (bg, _) in zip(bg_images, bg_prompts)]
    return {
        "presence": _rate([c["checks"]["present"] for c in checks]),
        "outline": _rate([c["outline"] for c in checks]),
        "background": _rate([c["correct"] for c in bg_checks]),
        "background_only": _rate([c["checks"]["background"] for c in bg_checks]),
        "background_by_color": {
            bg: _rate([c["correct"] for c, (b, _) in zip(bg_checks, bg_prompts) if b == bg]) for bg in BACKGROUNDS
        },  # fmt: skip
    }


def ordinary_figures(base: BaseModel, prompts: dict[str, list]) -> dict[str, Any]:
    """Oracle accuracy per prompt set, with each image's verdict (seed ``i`` for prompt ``i``) for paired drops."""
    out = {}
    for key, samples in prompts.items():
        images = sample(base.pipe, [s.caption for s in samples], list(range(len(samples))), base.sample_steps,
                        base.guidance, base.size)  # fmt: skip
        report = oracle_evaluate(zip(images, [s.spec for s in samples]), keep_verdicts=True, desc=f"oracle {key}")
        out[key] = {"value": report.accuracy, "n": report.overall["n"], "ci95": report.overall["ci95"],
                    "correct": [int(v.correct) for v in report.verdicts]}  # fmt: skip
    return out


def paired_drop(before: list[int], after: list[int]) -> dict[str, Any]:
    """Accuracy lost on the same prompts and seeds, with a 95 % normal interval on the paired differences:
    pairing removes the prompt-to-prompt spread that two independent rates would carry.

    >>> paired_drop([1, 1, 0, 1], [1, 0, 0, 1])["value"]
    0.25
    """
    if len(before) != len(after) or not before:
        raise ValueError("paired_drop needs two verdict lists of the same, non-zero length")
    d = np.asarray(before, dtype=float) - np.asarray(after, dtype=float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    mean = float(d.mean())
    return {"value": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)], "n": len(d)}


def _finished(run_dir: Path, cfg: TrainConfig, base: BaseModel) -> bool:
    """Whether ``run_dir`` holds this very run, finished; a finished run with other settings is an error."""
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    if "weights" not in info:
        return False
    want, stored = cfg.resolved(), TrainConfig.load(run_dir / "config.json")
    diffs = want.differences(stored, may_change=RESUMABLE_CHANGES - {"steps"})  # finished: steps count too
    if info.get("model_fingerprint") != base.fingerprint:
        diffs.append("the base model's files changed")
    if diffs:
        raise UserError(
            f"{run_dir} holds a finished run with other settings ({'; '.join(diffs)}); remove it or pass another --out"
        )
    return True


def run_benchmark(
    model: str = "zoo/diffusion",
    subject: str = "housemark",
    out: str = "runs/personalize-benchmark",
    methods: list[str] | tuple[str, ...] = ("lora", "dreambooth", "ti"),
    n: int = 50,
    n_ordinary: int = 200,
    readme: str | None = None,
    steps: int | None = None,
    num_class_images: int = 100,
    db: str | None = "results.db",
    extractor: str = "judge",
    dino: str = "judge-tower",
    sample_steps: int | None = None,
) -> dict[str, Any]:
    """Train, measure and tabulate every variant of ``methods``; returns (and writes ``OUT/figures.json``) the figures."""
    with quiet_diffusers():
        return _run_benchmark(model, subject, out, methods, n, n_ordinary, readme, steps, num_class_images, db,
                              extractor, dino, sample_steps)  # fmt: skip


def _run_benchmark(model, subject, out, methods, n, n_ordinary, readme, steps, num_class_images, db, extractor, dino,
                   sample_steps):  # fmt: skip
    subj = get_subject(subject)
    base = load_base(model, sample_steps)
    root = Path(out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    ordinary = ordinary_prompts(subj.class_word, n_ordinary)
    prior_file = write_prior_prompts(root / "prior-prompts.txt")
    results: dict[str, Any] = {"model": model, "model_fingerprint": base.fingerprint, "subject": subject, "n": n,
                               "n_ordinary": n_ordinary, "sample_steps": base.sample_steps, "guidance": base.guidance,
                               "runs": {}}  # fmt: skip
    results["base"] = subject_figures(base, subj, n, "a " + subj.class_word) | {
        "ordinary": ordinary_figures(base, ordinary)
    }
    for method, prior in [v for v in VARIANTS if v[0] in methods]:
        name = f"{method}-prior" if prior else method
        run_dir = root / name
        cfg = TrainConfig(method=method, images=str(subj.folder), out=str(run_dir), model=model, token=TOKEN,
                          class_word=subj.class_word, prior_preservation=prior, steps=steps,
                          prior_prompts=str(prior_file) if prior else None,
                          num_class_images=num_class_images, sample_steps=sample_steps,
                          resume=(run_dir / "config.json").is_file())  # fmt: skip
        t0 = time.time()
        if not _finished(run_dir, cfg, base):
            from .training import train

            train(cfg)
        info = json.loads((run_dir / "run.json").read_text())
        p = load_personalized(run_dir, sample_steps=sample_steps)
        figs = subject_figures(p.base, subj, n, TOKEN) | {"ordinary": ordinary_figures(p.base, ordinary)}
        figs |= {"train_seconds": info.get("total_seconds"), "loop_seconds": info.get("train_seconds"),
                 "steps": info.get("steps"), "method": method, "prior_preservation": prior,
                 "benchmark_seconds": round(time.time() - t0, 1)}  # fmt: skip
        figs["ordinary_drop"] = {k: paired_drop(results["base"]["ordinary"][k]["correct"], v["correct"])
                                 for k, v in figs["ordinary"].items()}  # fmt: skip
        try:
            from .evaluation import evaluate

            ev = evaluate(str(run_dir), str(subj.folder), n_per_prompt=max(1, n // 10), extractor=extractor, dino=dino,
                          subject=subject, db=db, sample_steps=sample_steps)  # fmt: skip
            figs["subject_metrics"] = {side: {m: ev["figures"][side][m]["overall"]["value"] for m in ("clip_i", "clip_t", "dino")
                                              if m in ev["figures"][side]} for side in ("before", "after")}  # fmt: skip
        except ModelNotFoundError as e:
            figs["subject_metrics"] = {"skipped": str(e)}
        results["runs"][name] = figs
        atomic_write_text(root / "figures.json", json.dumps(results, indent=2) + "\n")
        print(f"{name}: presence {figs['presence']['value']}, background {figs['background']['value']}, "
              f"train {figs['train_seconds']} s", flush=True)  # fmt: skip
    atomic_write_text(root / "figures.json", json.dumps(results, indent=2) + "\n")
    if readme:
        write_readme_table(readme, results)
    return results


def _v(fig: dict | None, digits: int = 2) -> str:
    if not fig or fig.get("value") is None:
        return "–"
    return f"{fig['value']:.{digits}f}"


def _drop(d: dict) -> str:
    """A paired drop and its interval, e.g. ``+0.04 [-0.01, 0.09]``."""
    lo, hi = d.get("ci95") or (None, None)
    return f"{d['value']:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else "")


def _before_after(subject_metrics: dict, metric: str) -> str:
    before, after = subject_metrics.get("before", {}), subject_metrics.get("after", {})
    if before.get(metric) is None or after.get(metric) is None:
        return "–"
    return f"{before[metric]:.3f} → {after[metric]:.3f}"


def format_table(results: dict[str, Any]) -> str:
    """The acceptance table: one row per variant, the base model first."""
    base = results["base"]
    head = ("| variant | train time | presence (\"a photo of <s*>\") | background correct | outline | "
            "ordinary prompts, class word / others (drop, 95 % CI) | CLIP-I before → after | CLIP-T | "
            "DINO-style |")  # fmt: skip
    rows = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    bo = base["ordinary"]
    rows.append(f"| base model, class word (\"a photo of a {get_subject(results['subject']).class_word}\") | – | "
                f"{_v(base['presence'])} | {_v(base['background'])} | {_v(base['outline'])} | "
                f"{_v(bo['class_word'])} / {_v(bo['others'])} | – | – | – |")  # fmt: skip
    for r in results["runs"].values():
        label = METHOD_NAMES[r["method"]] + (", prior preservation" if r["prior_preservation"] else "")
        o, d = r["ordinary"], r["ordinary_drop"]
        metric = lambda m, sm=r.get("subject_metrics", {}): _before_after(sm, m)  # noqa: E731
        rows.append(f"| {label} ({r['steps']} steps) | {r['train_seconds']:.0f} s | {_v(r['presence'])} | "
                    f"{_v(r['background'])} | {_v(r['outline'])} | {_v(o['class_word'])} / {_v(o['others'])} "
                    f"({_drop(d['class_word'])} / {_drop(d['others'])}) | {metric('clip_i')} | {metric('clip_t')} | "
                    f"{metric('dino')} |")  # fmt: skip
    note = (f"\nMeasured on `{results['model']}` (fingerprint {results['model_fingerprint']}), subject "
            f"`{results['subject']}`, n = {results['n']} images per subject figure and "
            f"{results.get('n_ordinary', results['n'])} per ordinary-prompt set, {results['sample_steps']} sampling "
            f"steps, guidance {results['guidance']}. Drop = base accuracy minus personalized accuracy on the same "
            "prompts and seeds.")  # fmt: skip
    return "\n".join(rows) + "\n" + note


def write_readme_table(readme: str | Path, results: dict[str, Any]) -> None:
    """Replace the text between the benchmark markers of ``readme`` with the table."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if MARK_START not in text or MARK_END not in text:
        raise UserError(f"{path} has no {MARK_START} ... {MARK_END} markers to write the table between")
    table = f"{MARK_START}\n{format_table(results)}\n{MARK_END}"
    atomic_write_text(path, re.sub(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), lambda _: table, text,
                                   flags=re.S))  # fmt: skip
