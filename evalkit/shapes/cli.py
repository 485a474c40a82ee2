"""``python -m evalkit shapes make``: write a shapes-world subset."""

from __future__ import annotations

import argparse

from .world import CATEGORIES, SPLITS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shapes", help="the embedded shapes world", description="The embedded shapes world.")
    ssub = p.add_subparsers(dest="shapes_command", metavar="ACTION", required=True)
    m = ssub.add_parser(
        "make",
        help="render a captioned LAION-format subset",
        description="Render N captioned images as a LAION-format subset (parquet + webdataset shards). "
        "Same arguments, same bytes.",
    )
    m.add_argument("--n", type=int, required=True, help="number of images")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    m.add_argument(
        "--split",
        choices=SPLITS,
        default="train",
        help="train/test: held-out color-shape pairs never drawn; compositional: only prompts with them",
    )
    m.add_argument(
        "--categories",
        default=None,
        help=f"comma-separated subset of {','.join(CATEGORIES)} (default: the standard mix)",
    )
    m.set_defaults(func=run_make)


def run_make(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from .subset import make_subset

    if args.n < 1 or args.size < 16:
        raise UserError("--n must be >= 1 and --size >= 16")
    cats = args.categories.split(",") if args.categories else None
    try:
        path = make_subset(args.n, args.seed, args.out, size=args.size, split=args.split, categories=cats)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"wrote {args.n} images to {path} and {path.parent / 'shards'}")
    return 0
