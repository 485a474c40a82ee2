"""``python -m evalkit generate``: N images per prompt into a folder (PNG + manifest.jsonl), resumable."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .loading import SPEC_FORMS

    p = sub.add_parser(
        "generate",
        help="generate images for a prompt set into a folder (resumable)",
        description="Generate N images per prompt with one generator; writes PNGs and manifest.jsonl. "
        "Rerunning with the same arguments reuses finished images and makes only the missing ones.",
    )
    p.add_argument("--generator", required=True, metavar="SPEC", help=SPEC_FORMS)
    p.add_argument(
        "--prompts",
        required=True,
        metavar="P",
        help="prompt set, e.g. shapes:100, parti:default, txt:FILE (see evalkit.data.prompts)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="run seed; image seeds derive from (seed, prompt, image)")
    p.add_argument("--batch-size", type=int, default=16, help="images per generator call (default 16)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--size", type=int, default=None, help="image height and width in pixels (default: the model's)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .loading import load
    from .to_folder import generate_to_folder

    generator = load(args.generator, device=args.device)
    params = {"steps": args.steps, "guidance": args.guidance, "size": args.size}
    result = generate_to_folder(
        generator, args.prompts, args.out, n=args.n, seed=args.seed, batch_size=args.batch_size,
        params={k: v for k, v in params.items() if v is not None},
    )  # fmt: skip
    print(result.summary())
    print(f"manifest: {result.manifest}")
    return 0
