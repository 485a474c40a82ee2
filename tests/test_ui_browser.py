"""The UI in a real headless Chromium (Debian's, driven by Playwright): every tab used the way a person would,
an evaluation, the leaderboard it fills, a comparison and a short personalization, with a screenshot of
each tab. Any console error or uncaught page error fails the test.

Screenshots go to a temporary folder, or to ``$EVALKIT_SCREENSHOTS`` (the README's are made with
``EVALKIT_SCREENSHOTS=docs/screenshots``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image
from ui_server import running_app, tiny_generators

from evalkit.ui.models import zoo_generators
from personalize.subjects import HOUSEMARK

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
JOB_TIMEOUT_MS = 180_000  # an evaluation or training under a busy CPU
ZOO_PAIR = ("zoo/diffusion", "zoo/gan")  # committed (zoo/README.md)


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_sd_dir):
    tmp = tmp_path_factory.mktemp("ui_browser")
    # the committed zoo judge, so the README's screenshots show real CLIP scores
    with running_app(tmp, tiny_generators(tmp, tiny_sd_dir), "judge") as server:
        yield server


def _fill(page, elem_id: str, value) -> None:
    page.locator(f"#{elem_id} input, #{elem_id} textarea").first.fill(str(value))


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make chromium)")
def test_every_tab_in_headless_chromium(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("EVALKIT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(app.url, wait_until="load")

            # Evaluate: the committed zoo's N-step and one-shot generators × 4 shapes prompts, at 8 steps
            # (which the GAN, taking no steps, leaves aside)
            evaluate = page.locator("#tab-evaluate")
            for spec in ZOO_PAIR:
                evaluate.locator("#evaluate-generators").get_by_label(spec).check()
            _fill(page, "evaluate-prompts", "shapes:4:0:test")
            _fill(page, "evaluate-steps", 8)
            _fill(page, "evaluate-name", "browser")
            page.locator("#evaluate-run").click()
            expect(page.locator("#evaluate-status")).to_contain_text("Done", timeout=JOB_TIMEOUT_MS)
            expect(page.locator("#evaluate-gallery img")).to_have_count(8)
            page.screenshot(path=str(shots / "evaluate.png"), full_page=True)

            # Leaderboard: the run just stored, ranked, with the quality-versus-speed plot
            page.get_by_role("tab", name="Leaderboard").click()
            table = page.locator("#leaderboard-table")
            expect(table).to_contain_text("diffusion", timeout=30_000)
            expect(table).to_contain_text("gan")
            expect(table).to_contain_text("win rate")
            expect(page.locator("#tab-leaderboard img")).to_have_count(1, timeout=30_000)
            page.screenshot(path=str(shots / "leaderboard.png"), full_page=True)

            # Compare: one shapes prompt, every generator side by side at its own steps and size (the boxes' 0)
            page.get_by_role("tab", name="Compare").click()
            page.locator("#compare-run").click()
            # every generator is preselected: the app's two and any committed zoo generator
            shown = len(app.generators) + len(zoo_generators())
            expect(page.locator("#compare-gallery img")).to_have_count(shown, timeout=JOB_TIMEOUT_MS)
            expect(page.locator("#compare-table")).to_contain_text("tiny-amused")
            verdicts = page.locator("#compare-table").inner_text()
            assert "correct" in verdicts or "wrong" in verdicts, verdicts
            page.screenshot(path=str(shots / "compare.png"), full_page=True)

            # Personalize: upload the subject, name the class, a short LoRA training
            page.get_by_role("tab", name="Personalize").click()
            page.locator("#personalize-files input[type=file]").set_input_files(
                [str(f) for f in HOUSEMARK.image_paths()]
            )
            uploaded = page.locator("#personalize-files").get_by_role("button", name="Remove this file")
            expect(uploaded).to_have_count(4, timeout=30_000)
            _fill(page, "personalize-class", "square")
            page.locator("#personalize-steps input[type=number]").fill("10")
            _fill(page, "personalize-sample-steps", 8)
            page.locator("#personalize-run").click()
            expect(page.locator("#personalize-status")).to_contain_text("Trained", timeout=JOB_TIMEOUT_MS)
            expect(page.locator("#personalize-gallery img")).to_have_count(6)
            page.screenshot(path=str(shots / "personalize.png"), full_page=True)

            sessions = app.tmp / "work" / "sessions"
            assert [p.name for p in sessions.iterdir()] and list(sessions.rglob("weights-lora.zip"))
            page.close()  # the session ends: its uploads and training go
            deadline = time.time() + 30
            while any(sessions.iterdir()) and time.time() < deadline:
                time.sleep(0.2)
            assert not any(sessions.iterdir())
        finally:
            browser.close()
    assert problems == []
    for name in ("evaluate", "leaderboard", "compare", "personalize"):
        assert Image.open(shots / f"{name}.png").width == 1280
