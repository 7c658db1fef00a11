"""End to end in a real headless Chromium (Debian's chromium + chromedriver, through Selenium): the UI runs as its
own Streamlit server on an empty data directory; the browser creates a collection from a folder of real photos,
watches the job finish, searches by text and finds the expected photo. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from engine.launch import Launcher
from engine.samples import write_photo_sample
from engine.settings import load_settings

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1800")
WAIT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"the browser test needs Debian's chromium and chromedriver ({', '.join(missing)} missing): "
                    "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS + (f"--user-data-dir={tmp_path / 'chromium'}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


@pytest.fixture
def ui_url(tmp_path):
    settings = load_settings(home=tmp_path / "home", ui_port=free_port())
    with Launcher(settings, api=False) as running:
        yield running.urls["ui"]


def test_ingest_a_folder_then_find_the_expected_photo(browser, ui_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    images = write_photo_sample(tmp_path / "sample").parent / "images"
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coffee", "chelsea", "astronaut", "rocket", "coins", "horse"):
        shutil.copy(images / f"{name}.png", folder / f"{name}.png")
    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, WAIT)

    def shows(text: str):
        try:
            wait.until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)
        except Exception:
            browser.save_screenshot(str(ARTIFACTS / "ui-failure.png"))
            raise AssertionError(f"the page never showed {text!r}; see tests/artifacts/ui-failure.png") from None

    def field(label: str, tag: str = "input"):
        return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"{tag}[aria-label='{label}']"))

    def link(label: str):
        return wait.until(lambda d: [a for a in d.find_elements(By.TAG_NAME, "a")
                                     if a.text.splitlines()[-1:] == [label]])[0]

    browser.get(ui_url)
    shows("The library is empty")
    link("Open Collections").click()
    shows("Add images")
    field("Name of the new collection").send_keys("photos", Keys.ENTER)
    wait.until(lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "[role='tab']")
                          if "Ingest a folder" in t.text])[0].click()
    box = field("Folders or files on the server, one per line (folders are read recursively; a PAIRS.jsonl adds "
                "captions)", "textarea")
    box.send_keys(str(folder))
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Index folder"][0].click()
    shows("done: indexed 6")
    browser.save_screenshot(str(ARTIFACTS / "ui-collections.png"))

    link("Search").click()
    field("Describe what you are looking for").send_keys("a cup of coffee", Keys.ENTER)
    shows("Results for “a cup of coffee”")
    shows("coffee.png")

    def first_hit(d) -> str:  # the caption of the first card: "score 0.62 · ...\ncoffee.png · #3 · photos"
        captions = [c.text for c in d.find_elements(By.CSS_SELECTOR, "[data-testid='stCaptionContainer']")]
        return next((c for c in captions if "score " in c), "")

    try:
        wait.until(lambda d: "coffee.png" in first_hit(d))
    finally:
        browser.save_screenshot(str(ARTIFACTS / "ui-search.png"))
    # its thumbnail is drawn (it may arrive a moment after the caption: wait for it, fail if it never comes)
    assert wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img"))
