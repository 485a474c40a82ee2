"""``python -m evalkit run``: validate the recipe first (instantly, no heavy imports), then run it."""

from __future__ import annotations

import argparse

from .recipe import load_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run an evaluation recipe (resumable)",
        description="Generate, extract features (cached) and score every generator of a recipe; figures go to SQLite. "
        "Interrupted runs resume where they stopped.",
    )
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/shapes-leaderboard.yaml")
    p.add_argument("--resume", action="store_true", help="resume the latest run of this recipe (the default)")
    p.add_argument("--new-version", action="store_true", help="start a new numbered run instead of resuming")
    p.add_argument("--db", default=None, help="results database (default: the recipe's `db`, results.db)")
    p.add_argument("--check", action="store_true", help="validate the recipe and exit")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    if args.check:
        print(f"{args.recipe}: ok ({len(recipe.generators)} generators, metrics {', '.join(recipe.metrics)})")
        return 0
    from . import distributed as dist
    from .data.images import reasons_text
    from .runner import run

    with dist.process_group():  # joined when launched on several processes (accelerate launch, torchrun)
        rep = run(recipe, new_version=args.new_version, db_path=args.db)
        if dist.is_main():
            made, reused = sum(rep.generated.values()), sum(rep.reused.values())
            print(f"run {rep.run_id}: generated {made} images, reused {reused}; {len(rep.results)} figures in {rep.db}")
            for what, reasons in rep.skipped.items():
                if reasons:
                    print(f"skipped ({what}): {reasons_text(reasons)}")
    return 0
