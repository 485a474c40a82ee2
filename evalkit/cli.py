"""``python -m evalkit``: one sub-command per module, each with ``add_parser`` and ``run``.

Errors the user can fix (bad input, missing files, unknown models) are raised as
``UserError`` and printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# name -> (module holding add_parser(subparsers) and the command's func, one-line help).
# Only the chosen command's module is imported, so `--help` and light commands start fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "shapes": ("evalkit.shapes.cli", "the embedded shapes world"),
    "oracle": ("evalkit.shapes.oracle_cli", "check images against their prompts (shapes world)"),
    "generate": ("evalkit.generators.cli", "generate images for a prompt set into a folder (resumable)"),
    "score": ("evalkit.score", "score generated images against a reference set"),
    "run": ("evalkit.run_cli", "run an evaluation recipe (resumable)"),
    "leaderboard": ("evalkit.leaderboard", "rank generators from the results database"),
    "report": ("evalkit.report", "write the HTML report of a run"),
    "validate": ("evalkit.validity.cli", "measure each metric's validity against the oracle (shapes world)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evalkit", description="Evaluate text-to-image generators.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept on disk", file=sys.stderr)
        return 130
