"""``python -m evalkit.zoo train NAME [--config FILE] [--resume]``."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# model name -> module with ``train(config: dict, resume: bool, out_dir, work_dir)``
MODELS: dict[str, str] = {
    "judge": "evalkit.zoo.judge",
    "gan": "evalkit.zoo.gan",
    "text-encoder": "evalkit.zoo.textenc",
    "diffusion-vae": "evalkit.zoo.vae",
    "diffusion": "evalkit.zoo.diffusion",
    "vq": "evalkit.zoo.vq",
    "masked": "evalkit.zoo.masked",
    "autoregressive": "evalkit.zoo.autoregressive",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evalkit.zoo", description="Train the embedded model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one zoo model (checkpoints, resumable)")
    t.add_argument("name", choices=sorted(MODELS))
    t.add_argument("--config", default=None, help="YAML config (default recipes/zoo/NAME.yaml)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--steps", type=int, default=None, help="override the config's step count")
    t.add_argument("--out", default=None, help="export folder (default zoo/NAME)")
    t.add_argument("--work", default=None, help="checkpoint/log folder (default zoo/_train/NAME)")
    e = sub.add_parser("eval", help="measure a trained zoo model's acceptance figures")
    e.add_argument("name", choices=sorted(MODELS))
    e.add_argument("--model", default=None, help="model folder (default zoo/NAME)")
    e.add_argument("--n", type=int, default=1000)
    e.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from .common import load_config

    try:
        mod = importlib.import_module(MODELS[args.name])
        if args.command == "train":
            cfg = load_config(args.name, args.config)
            if args.steps is not None:
                cfg["steps"] = args.steps
            mod.train(cfg, resume=args.resume, out_dir=args.out, work_dir=args.work)
        else:
            mod.evaluate_cli(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
