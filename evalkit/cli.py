"""``python -m evalkit``: one sub-command per module, each with ``add_parser`` and ``run``.

Errors the user can fix (bad input, missing files, unknown models) are raised as
``UserError`` and printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# name -> module holding add_parser(subparsers) and run(args)
COMMANDS: dict[str, str] = {
    "shapes": "evalkit.shapes.cli",
    "oracle": "evalkit.shapes.oracle_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evalkit", description="Evaluate text-to-image generators.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept on disk", file=sys.stderr)
        return 130
