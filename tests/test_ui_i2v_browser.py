"""The image-to-video tab in a real browser: Debian's chromium driven by Playwright (both installed by
scripts/setup.sh).

Set ``SCREENSHOT_DIR`` to keep a screenshot of the page after a generation.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import INPAINT, TIMEOUT_MS, decode, set_slider, start_app, write_i2v_models, write_images

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_i2v")
    page = start_app(write_i2v_models(root), root / "samples")
    yield page.local_url, write_images(root)
    page.close()


@pytest.fixture
def page(browser, app):  # noqa: F811
    url, _ = app
    tab = browser.new_page(viewport={"width": 1280, "height": 1600})
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(url)
    yield tab
    tab.close()


def open_tab(page) -> None:
    page.get_by_role("tab", name="Image to video").click()
    page.locator("#generate-i2v").wait_for()


def test_upload_an_image_generate_and_play(page, app, tmp_path):
    _, images = app
    open_tab(page)
    assert not page.locator("#generate").is_visible()  # the tab's own Generate button replaces the other
    assert page.get_by_label("Inpaint model").input_value() == INPAINT  # the shipped inpaint model by default
    page.locator("#start-image input[type=file]").set_input_files(str(images["wide"]))
    page.locator("#start-image img").wait_for()
    for label, value in (("Width", 96), ("Height", 64), ("Animation length", 4), ("Sampling steps", 2)):
        set_slider(page, label, value)
    page.locator("#prompt textarea").fill("a green triangle moving down")
    page.locator("#generate-i2v").click()

    video = page.locator("#result video")
    video.wait_for()
    page.wait_for_function("document.querySelector('#result video').readyState >= 1")
    response = page.request.get(video.get_attribute("src"))
    assert response.ok
    (tmp_path / "result.mp4").write_bytes(response.body())
    codec, frames = decode(tmp_path / "result.mp4")
    assert codec == "h264" and len(frames) == 4 and frames[0].shape == (64, 96, 3)
    assert "(seed " in page.locator("#i2v-status").inner_text()
    page.screenshot(path=str(Path(os.environ.get("SCREENSHOT_DIR", tmp_path)) / "ui_i2v_after_generate.png"),
                    full_page=True)


def test_generate_without_an_image_shows_a_message(page):
    open_tab(page)
    page.locator("#generate-i2v").click()
    page.get_by_text("No start image").first.wait_for()


def test_back_on_the_text_to_video_tab_its_generate_button_returns(page):
    open_tab(page)
    page.get_by_role("tab", name="Text to video").click()
    page.locator("#generate").wait_for()
    assert not page.locator("#generate-i2v").is_visible()
