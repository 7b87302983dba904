"""The Gradio page in a real browser: Debian's chromium driven by Playwright (both installed by scripts/setup.sh).

Set ``SCREENSHOT_DIR`` to keep a screenshot of the page after a generation.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import MODEL, TIMEOUT_MS, decode, set_slider, start_app, write_ui_models

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    page = start_app(write_ui_models(root), root / "samples")
    yield page.local_url
    page.close()


@pytest.fixture
def page(browser, app_url):
    tab = browser.new_page(viewport={"width": 1280, "height": 1400})
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(app_url)
    yield tab
    tab.close()


def test_pick_model_type_prompt_generate_and_play(page, tmp_path):
    page.get_by_label("Pretrained Model Path").click()
    page.get_by_role("option", name=MODEL, exact=True).click()
    page.locator("#status").get_by_text(f"Loaded: model {MODEL}").wait_for()
    page.locator("#memory").get_by_text("This setting needs about").wait_for()  # the last update of the selection
    for label, value in (("Width", 96), ("Height", 64), ("Animation length", 4), ("Sampling steps", 2)):
        set_slider(page, label, value)
    page.locator("#prompt textarea").fill("a green triangle moving down")
    page.locator("#generate").click()

    video = page.locator("#result video")
    video.wait_for()
    page.wait_for_function("document.querySelector('#result video').readyState >= 1")  # metadata decoded
    duration = page.evaluate("document.querySelector('#result video').duration")
    assert round(duration * 8) == 4  # 4 frames at the tiny model's 8 fps
    response = page.request.get(video.get_attribute("src"))
    assert response.ok
    (tmp_path / "result.mp4").write_bytes(response.body())
    codec, frames = decode(tmp_path / "result.mp4")
    assert codec == "h264" and len(frames) == 4 and frames[0].shape == (64, 96, 3)
    seed_used = int(page.get_by_label("Seed used").input_value())
    assert seed_used >= 0 and f"(seed {seed_used})" in page.locator("#status").inner_text()
    page.screenshot(path=str(Path(os.environ.get("SCREENSHOT_DIR", tmp_path)) / "ui_after_generate.png"),
                    full_page=True)


def test_generate_without_a_model_shows_a_message(page):
    page.locator("#generate").click()
    page.get_by_text("No model selected").first.wait_for()
