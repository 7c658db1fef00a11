"""The issue's browser walk-through, replayed in a real headless Chromium on the demo collection (the 21 captioned
scikit-image photos under their own names, as `omnibridge demo` indexes them): the coffee, astronaut, coins and
rocket questions get correct cited answers or an honest abstention, the absent one abstains, and no answer cites
evidence that was not shown: every [n] in an answer is a shown evidence card, and the cards marked "cited" are
exactly the answer's [n]. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import re

import pytest

from engine.launch import Launcher
from engine.samples import write_photo_sample
from engine.services import Services
from engine.settings import load_settings
from ingest.pipeline import run_inline
from tests.test_ui_browser import ARTIFACTS, WAIT, browser, free_port  # noqa: F401  (the Chromium fixture)

CARD = re.compile(r"^\[(\d+)\] (.*) · #(\d+) · relevance [\d.]+ · (cited|retrieved, not cited)$")
WALK = [  # question, what the answer must say (None: an abstention), the file its [n] must point to
    ("What is in the coffee photo?", "Coffee cup.", "coffee"),
    ("Who is the astronaut?", "Eileen Collins", "astronaut"),
    ("What color is the rocket?", "mostly blue", "rocket"),
    ("How many coins are there?", None, None),  # one photo of coins: nothing here counts them, so no answer
    ("What brand is the car?", None, None),
]


@pytest.fixture
def demo_ui(tmp_path):
    settings = load_settings(home=tmp_path / "home", ui_port=free_port())
    svc = Services(settings)
    pairs = write_photo_sample(tmp_path / "sample")
    assert run_inline(svc, [str(pairs)], "samples")["indexed"] == 21
    svc.close()  # hand the embedded store to the UI process
    with Launcher(settings, api=False) as running:
        yield running.urls["ui"]


def test_walk_through_answers_are_cited_by_shown_evidence_or_abstain(browser, demo_ui):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(exist_ok=True)
    wait = WebDriverWait(browser, WAIT)
    body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731

    for n, (question, expected, photo) in enumerate(WALK):
        browser.get(demo_ui.rstrip("/") + "/answer")  # a fresh session per question: nothing left from the last
        wait.until(lambda d: "Answerer: extractive · ready" in body() or "Loading the answerer" in body())
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[aria-label='Your question']"))
        box.send_keys(question, Keys.ENTER)
        try:
            wait.until(lambda d: f"\n{question}\n" in f"\n{body()}\n" and "Finding evidence" not in body()
                       and ("No answer." in body() or "· cited" in body()))
        finally:
            browser.save_screenshot(str(ARTIFACTS / f"ui-answer-{n}.png"))
        text = body()
        captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "[data-testid='stCaptionContainer']")]
        cards = {int(m[1]): m for m in (CARD.match(c) for c in captions) if m}
        assert sorted(cards) == list(range(1, len(cards) + 1)), captions  # evidence [1]..[k], all shown
        cited_cards = {number for number, m in cards.items() if m[4] == "cited"}
        if expected is None:
            assert "No answer." in text and not cited_cards, (question, text)
            continue
        line = next((ln for ln in text.splitlines() if expected in ln), None)
        assert line is not None, (question, text)
        numbers = {int(x) for x in re.findall(r"\[(\d+)\]", line)}
        assert numbers and numbers <= set(cards), (question, line, captions)  # cites only shown evidence
        assert numbers == cited_cards, (question, line, captions)  # the "cited" marks are the answer's [n]
        assert any(f"{photo}.png" in thumb_name(browser, cards[k]) for k in numbers), (question, line, captions)


def thumb_name(browser, card) -> str:
    """The file a card shows: its caption names the asset id; the sample's captions are unique, so map back."""
    captions = {"Coffee cup": "coffee.png", "Color image of the astronaut Eileen Collins": "astronaut.png",
                "Launch photo of DSCOVR on Falcon 9 by SpaceX": "rocket.png", "Greek coins from Pompeii": "coins.png"}
    return captions.get(card[2].rstrip("."), card[2])
