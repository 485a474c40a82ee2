"""``python -m evalkit.zoo train NAME [--config FILE] [--resume]``, ``eval NAME`` and ``bars NAME [NAME ...]``."""

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
    b = sub.add_parser("bars", help="issue 4's generator acceptance figures, measured the same way for each")
    b.add_argument("names", nargs="+", metavar="NAME", help="zoo generator (diffusion, gan, ...) or a spec (dir:PATH)")
    b.add_argument("--n-single", type=int, default=500, help="single_object prompts (default 500)")
    b.add_argument("--n-category", type=int, default=200, help="prompts per other category (default 200)")
    b.add_argument("--n-fid", type=int, default=2000, help="images per FID set; 0 skips FID (default 2000)")
    b.add_argument("--out", default="runs/zoo-bars", help="folder for bars.json and bars.md")
    b.add_argument("--extractor", default="judge", help="FID feature extractor spec (default: the zoo judge)")
    b.add_argument("--batch-size", type=int, default=16, help="generation and speed batch size (default 16)")
    b.add_argument("--speed-repeats", type=int, default=3, help="timed speed batches; 0 skips speed (default 3)")
    b.add_argument("--cache-dir", default=None, help="feature cache folder (default ~/.cache/t2i-evalkit)")
    b.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    args = parser.parse_args(argv)
    if args.command == "bars":
        return _bars(args)
    from .common import load_config, resolved_precision, stop_on_signal

    try:
        mod = importlib.import_module(MODELS[args.name])
        if args.command == "train":
            cfg = load_config(args.name, args.config)
            if args.steps is not None:
                cfg["steps"] = args.steps
            if cfg.get("precision") == "bf16" and resolved_precision(cfg) == "fp32":
                print("note: this CPU has no native bfloat16 (AVX512-BF16/AMX); training in float32", file=sys.stderr)
            with stop_on_signal():  # SIGTERM / Ctrl-C: checkpoint the step under way, then stop
                mod.train(cfg, resume=args.resume, out_dir=args.out, work_dir=args.work)
        else:
            mod.evaluate_cli(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _bars(args: argparse.Namespace) -> int:
    from .bars import markdown_table, run_bars

    try:
        from ..features import FeatureCache

        result = run_bars(
            args.names, args.out, n_single=args.n_single, n_category=args.n_category, n_fid=args.n_fid,
            extractor=args.extractor, cache=None if args.no_cache else FeatureCache(args.cache_dir),
            batch_size=args.batch_size, speed_repeats=args.speed_repeats,
        )  # fmt: skip
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(result))
    print(f"figures: {args.out}/bars.json")
    return 0
