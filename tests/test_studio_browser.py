"""The studio's page end to end in headless Chromium (Debian's chromium and chromedriver, driven by Selenium): upload,
a bad upload, generate with the progress bar, keep, download, undo, and a screenshot.

Skips where Selenium, chromium or chromedriver is missing (.ci/setup installs them). PIANOMUSE_STUDIO_SCREENSHOT=PATH
keeps the screenshot.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from symusic import Score
from test_studio import SIX_BARS, completer, notes, server  # noqa: F401 (fixtures)

from pianomuse.complete import CONTINUATION_TRACK, Sampling

pytestmark = pytest.mark.usefixtures("one_thread")

webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is not installed (.ci/setup installs it)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT_S = 300  # a bound on each wait on a loaded 2-core machine, not a timing check


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/setup installs them)")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
        "--autoplay-policy=no-user-gesture-required",
    ]:
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver, downloads
    driver.quit()


def set_number(driver, element_id: str, value) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def test_compose_in_the_browser(server, browser, tmp_path, monkeypatch):  # noqa: F811
    base, studio = server
    driver, downloads = browser
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(base + "/")
    assert driver.title == "pianomuse studio"
    assert driver.find_element(By.ID, "generate").get_attribute("disabled")  # nothing loaded yet

    # A bad upload: a message on the page, and the page goes on.
    not_midi = tmp_path / "notes.mid"
    not_midi.write_text("these are not MIDI bytes")
    driver.find_element(By.ID, "file").send_keys(str(not_midi))
    wait.until(lambda d: "is not a MIDI file" in d.find_element(By.ID, "message").text)
    assert driver.find_element(By.ID, "message").get_attribute("class") == "error"

    prompt = tmp_path / "six.mid"
    SIX_BARS.dump_midi(str(prompt))
    driver.find_element(By.ID, "file").send_keys(str(prompt))
    wait.until(lambda d: d.find_element(By.ID, "piece-info").text == "six.mid: 6 bars")
    assert driver.find_element(By.ID, "first-bar").get_attribute("value") == "1"  # the last bars, up to 8
    assert driver.find_element(By.ID, "last-bar").get_attribute("value") == "6"
    assert driver.execute_script("return document.getElementById('piece-canvas').width") > 0

    # Clicks on the roll pick the prompt bars: bar 2's middle, then (shifted) bar 5's; the 6 bars span 24 quarters.
    canvas = driver.find_element(By.ID, "piece-canvas")
    width = driver.execute_script("return arguments[0].width", canvas)

    def click_bar(bar: int, *keys) -> None:
        x = 2 + (4 * bar - 2) / 24 * (width - 4)  # as the page maps quarters to pixels
        actions = ActionChains(driver)
        for key in keys:
            actions.key_down(key)
        actions.move_to_element_with_offset(canvas, int(x - width / 2), 0).click()
        for key in keys:
            actions.key_up(key)
        actions.perform()

    click_bar(2)
    click_bar(5, Keys.SHIFT)
    assert driver.find_element(By.ID, "first-bar").get_attribute("value") == "2"
    assert driver.find_element(By.ID, "last-bar").get_attribute("value") == "5"
    set_number(driver, "last-bar", 6)

    # Generate 2 samples of 2 bars from bars 3..6; the generation waits until the progress bar has been seen.
    release = threading.Event()
    generate = studio.generate
    asked = []  # the settings each generation was asked for
    monkeypatch.setattr(
        studio, "generate", lambda *a, **k: (asked.append(a[2]), release.wait(WAIT_S), generate(*a, **k))[2]
    )
    set_number(driver, "first-bar", 3)
    set_number(driver, "bars", 2)
    set_number(driver, "samples", 2)
    assert float(driver.find_element(By.ID, "stay-in-key").get_attribute("value")) == Sampling().stay_in_key
    set_number(driver, "stay-in-key", 1.5)
    seed = int(driver.find_element(By.ID, "seed").get_attribute("value"))
    driver.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "progress-box").is_displayed())
    assert driver.find_element(By.ID, "progress-text").text == "0 / 4 bars"
    assert driver.find_element(By.ID, "generate").get_attribute("disabled")
    release.set()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".candidate")) == 2)
    assert not driver.find_element(By.ID, "progress-box").is_displayed()
    assert (asked[0].samples, asked[0].bars, asked[0].stay_in_key) == (2, 2, 1.5)
    assert driver.find_element(By.ID, "seed").get_attribute("value") == str(seed + 1)  # the next round draws anew
    # Each sample: a piano roll and an audio player that has loaded its WAV.
    wait.until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('.candidate audio')].every(a => a.readyState >= 1 && a.duration > 6)"
        )
    )
    shot = Path(os.environ.get("PIANOMUSE_STUDIO_SCREENSHOT", tmp_path / "studio.png"))
    assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    kept = Score.from_midi(studio.candidates[1].piece.dumps_midi())
    driver.find_element(By.CSS_SELECTOR, '.candidate[data-index="1"] .keep').click()
    wait.until(lambda d: "1 kept" in d.find_element(By.ID, "piece-info").text)
    assert not driver.find_elements(By.CSS_SELECTOR, ".candidate")
    assert driver.find_element(By.ID, "last-bar").get_attribute("value") == str(studio.bars)  # continue from here

    driver.find_element(By.ID, "download").click()
    file = downloads / "six-pianomuse.mid"
    wait.until(lambda d: file.is_file() and not list(downloads.glob("*.crdownload")))
    downloaded = Score(str(file))
    assert notes(downloaded) == notes(kept) and notes(downloaded)[:24] == notes(SIX_BARS)
    assert [track.name for track in downloaded.tracks] == ["piano", CONTINUATION_TRACK]

    driver.find_element(By.ID, "undo").click()
    wait.until(lambda d: d.find_element(By.ID, "piece-info").text == "six.mid: 6 bars")
    assert driver.find_element(By.ID, "undo").get_attribute("disabled")
