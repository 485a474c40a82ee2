"""``python -m personalize train|evaluate|benchmark``; errors a user can fix print as one line.

    python -m personalize train --method lora --images personalize/subjects/housemark --token "<s*>" \\
        --class-word square --prior-preservation --out runs/housemark-lora
    python -m personalize evaluate --weights runs/housemark-lora --images personalize/subjects/housemark
    python -m personalize benchmark --model zoo/diffusion --readme personalize/README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import nullcontext

from evalkit.errors import UserError

from .config import add_train_args, config_from_args


def run_guarded(fn: Callable[[], object], training: bool = False) -> int:
    """Run ``fn`` with a user's errors as one line; a ``training`` run stops on SIGTERM or Ctrl-C after
    checkpointing the step under way (a second signal stops at once)."""
    from evalkit.zoo.common import stop_on_signal

    try:
        with stop_on_signal() if training else nullcontext():
            fn()
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept: continue with --resume", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> None:
    from .training import train

    result = train(config_from_args(args))
    print(f"trained {result.steps} steps in {result.seconds:.0f} s; weights: "
          f"{', '.join(str(w) for w in result.weights)}; samples: {result.samples}")  # fmt: skip


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate, format_table

    result = evaluate(
        weights=args.weights, images=args.images, model=args.model, token=args.token, class_word=args.class_word,
        prompts=args.prompts, n_per_prompt=args.n_per_prompt, seed=args.seed, extractor=args.extractor,
        dino=args.dino, subject=args.subject, db=None if args.no_db else args.db, out=args.out,
        sample_steps=args.sample_steps, guidance=args.guidance,
    )  # fmt: skip
    print(format_table(result))
    if result.get("run_id"):
        print(f"stored as run {result['run_id']} in {args.db}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def _benchmark(args: argparse.Namespace) -> None:
    from .benchmark import run_benchmark

    run_benchmark(
        model=args.model, subject=args.subject, out=args.out, methods=args.methods, n=args.n,
        n_ordinary=args.n_ordinary, readme=args.readme, steps=args.steps, num_class_images=args.num_class_images,
        db=None if args.no_db else args.db, extractor=args.extractor, dino=args.dino, sample_steps=args.sample_steps,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m personalize", description="Personalize a text-to-image model.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="learn a subject from 1-20 images (ti, dreambooth, lora)")
    add_train_args(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="CLIP-I, CLIP-T and DINO-style figures before and after")
    e.add_argument("--weights", required=True, help="run folder, LoRA folder, pipeline folder or embedding file")
    e.add_argument("--images", required=True, help="the subject images (references for CLIP-I and DINO)")
    e.add_argument("--model", default=None, help="base model (default: the one the run recorded)")
    e.add_argument("--token", default=None, help="default: the run's token")
    e.add_argument("--class-word", default=None, help="default: the run's class word")
    e.add_argument(
        "--prompts", default=None, help="file of prompt templates with {subject} (default: DreamBench-style)"
    )
    e.add_argument("--n-per-prompt", type=int, default=4)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--extractor", default="judge", help="CLIP for CLIP-I/CLIP-T: judge, judge:DIR or clip:ARCH/TAG")
    e.add_argument("--dino", default="judge-tower", help="judge-tower, hf:facebook/dino-vits16, dir:PATH or none")
    e.add_argument("--subject", default=None, help="embedded subject name: adds detector figures (e.g. housemark)")
    e.add_argument("--db", default="results.db")
    e.add_argument("--no-db", action="store_true", help="do not store the figures")
    e.add_argument("--out", default=None, help="where generated images go (default: WEIGHTS/evaluation)")
    e.add_argument("--sample-steps", type=int, default=None)
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--json", default=None, help="also write the figures here")
    e.set_defaults(func=_evaluate)

    b = sub.add_parser("benchmark", help="the acceptance figures on an embedded subject, into the README table")
    b.add_argument("--model", default="zoo/diffusion")
    b.add_argument("--subject", default="housemark")
    b.add_argument("--out", default="runs/personalize-benchmark")
    b.add_argument("--methods", nargs="+", default=["lora", "dreambooth", "ti"], choices=["lora", "dreambooth", "ti"])
    b.add_argument("--n", type=int, default=50, help="images per subject figure (presence, background)")
    b.add_argument("--n-ordinary", type=int, default=200, help="prompts per ordinary-prompt set (drift)")
    b.add_argument("--steps", type=int, default=None, help="override every method's step count (smoke tests)")
    b.add_argument("--num-class-images", type=int, default=100)
    b.add_argument("--sample-steps", type=int, default=None, help="default: the model's recommendation")
    b.add_argument("--readme", default=None, help="write the table into this README (between bench markers)")
    b.add_argument("--extractor", default="judge")
    b.add_argument("--dino", default="judge-tower")
    b.add_argument("--db", default="results.db")
    b.add_argument("--no-db", action="store_true")
    b.set_defaults(func=_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_guarded(lambda: args.func(args), training=args.command in ("train", "benchmark"))
