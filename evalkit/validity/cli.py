"""``python -m evalkit validate``: measure how far each metric agrees with the shapes world's ground truth."""

from __future__ import annotations

import argparse

from .config import PARTS


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="measure each metric's validity against the oracle (shapes world)",
        description="Disturbance ladders, rank agreement with oracle accuracy over a sweep run, per-image "
        "agreement (ROC AUC), sample efficiency and compositional blind spots. Writes validity.json, summary.md "
        "and plots to --out, and stores the figures the leaderboard shows in the results database.",
    )
    p.add_argument("--recipe", default=None, help="validity recipe (default: recipes/validity.yaml, else built-in)")
    p.add_argument("--extractor", default=None, help="judge (default), judge:DIR, clip:ARCH/TAG, ...")
    p.add_argument("--compare", action="append", default=None, metavar="EXTRACTOR",
                   help="also score per-image agreement and blind spots with this extractor (repeatable)")  # fmt: skip
    p.add_argument("--n", type=int, default=None, help="images per set (ladders, probe, blind-spot pairs)")
    p.add_argument("--sizes", type=_ints, default=None, help="sample-efficiency sizes, e.g. 100,250,500,1000,2000")
    p.add_argument("--seeds", type=int, default=None, help="sample-efficiency subsets per size")
    p.add_argument("--parts", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="output folder (default runs/validity)")
    p.add_argument("--db", default=None, help="results database with the sweep run (default results.db)")
    p.add_argument("--run-sweep", action="store_true", help="run the sweep recipe first (generates images: slow)")
    p.add_argument("--no-cache", action="store_true", help="don't read or write the feature cache")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="feature cache folder (default $EVALKIT_CACHE)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from .config import load_validity_recipe

    recipe = load_validity_recipe(args.recipe)
    eff = recipe.efficiency.model_dump()
    eff.update({k: v for k, v in (("sizes", args.sizes), ("seeds", args.seeds)) if v is not None})
    parts = [x.strip() for x in args.parts.split(",") if x.strip()] if args.parts else None
    recipe = recipe.with_overrides(extractor=args.extractor, compare=args.compare, n=args.n, seed=args.seed,
                                   out=args.out, db=args.db, parts=parts, efficiency=eff)  # fmt: skip

    from ..features import FeatureCache
    from .run import validate

    out = validate(recipe, cache=None if args.no_cache else FeatureCache(args.cache_dir), run_sweep=args.run_sweep)
    print(out.summary_path.read_text())
    stored = f"; {out.stored} validity rows stored in {recipe.db}" if out.stored else ""
    print(f"wrote {out.json_path}, {out.summary_path} and {len(out.plots)} plots{stored}")
    return 0
