"""The Gradio Blocks app: four tabs over the CLI's own functions, a queue, and how it is launched.

Jobs go through gradio's queue: at most ``concurrency`` run at once (the CPU is the bottleneck), and
personalization trainings share one slot of their own, so a training never runs beside another
training and never takes the slots evaluations and comparisons use.
"""

from __future__ import annotations

import sys
from typing import Any

import gradio as gr

from ..errors import UserError
from . import compare_tab, evaluate_tab, leaderboard_tab, personalize_tab
from .config import AppConfig, build_parser, config_from_args, parse_auth
from .context import UiContext

TITLE = "t2i-evalkit"
INTRO = ("Evaluate text-to-image generators, rank them, compare them side by side and personalize one — "
         "the same functions as `python -m evalkit` and `python -m personalize`.")  # fmt: skip


def build_app(config: AppConfig | None = None, **settings: Any) -> gr.Blocks:
    """The app for ``config`` (or ``AppConfig(**settings)``, e.g. ``build_app(db=..., generators=[...],
    extractor=...)``); ``demo.evalkit`` holds its :class:`UiContext`."""
    cache_dir = settings.pop("cache_dir", None)
    ctx = UiContext(config or AppConfig(**settings), cache_dir=cache_dir)
    with gr.Blocks(title=TITLE, delete_cache=(3600, 24 * 3600)) as demo:  # gradio's own upload cache: a day
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tabs():
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"):
                evaluate_tab.build(ctx)
            with gr.Tab("Leaderboard", id="leaderboard", elem_id="tab-leaderboard") as board:
                leaderboard_tab.build(ctx, board)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                compare_tab.build(ctx)
            with gr.Tab("Personalize", id="personalize", elem_id="tab-personalize"):
                personalize_tab.build(ctx)

        def forget(request: gr.Request) -> None:
            ctx.forget_session(request)

        demo.unload(forget)
    demo.queue(default_concurrency_limit=ctx.config.concurrency, max_size=ctx.config.max_queue)
    demo.evalkit = ctx
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, auth: tuple[str, str] | None = None,
           block: bool = True) -> str:  # fmt: skip
    """Serve ``demo`` on ``host:port`` (``port=None``: a free one); returns its local URL. ``block=False``
    returns at once, for tests (close with ``demo.close()``)."""
    cfg = demo.evalkit.config
    _, url, _ = demo.launch(
        server_name=host, server_port=port, auth=auth, prevent_thread_lock=not block, show_error=True, quiet=not block,
        allowed_paths=[str(cfg.runs_dir.resolve()), str(cfg.work_dir.resolve())],
        max_file_size=f"{4 * cfg.max_upload_mb:g}mb",  # a hard cap; the tabs answer smaller excesses with a message
        footer_links=["api", "settings"], ssr_mode=False,
    )  # fmt: skip
    return url


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        auth = parse_auth(args.auth)
        demo = build_app(config_from_args(args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    launch(demo, args.host, args.port, auth)
    return 0
