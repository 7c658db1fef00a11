"""Readable scores: raw similarity -> the probability that a hit is relevant, and "no good match".

A model's raw similarities are not comparable across models or query kinds (the bundled model blends a zero-shot
space and an aligned one; see omnibridge.retrieval). So each model carries a calibration fitted on held-out real
data by `bench/calibrate.py` (the recipe, the data and the measured quality are in bench/RESULTS.md):

    p_visual = sigmoid(a * similarity + b)           # per query kind: "text" or "image"

Hybrid search adds keyword evidence: `coverage` = the share of the query's terms (after stop words and stemming)
found in a hit's captions, tags, OCR text or file name, a term found only in the file name counting FILENAME_WEIGHT
(a file name is one or two words someone typed, or a camera counter: "red_square.png" says little about "a red
flower"). A hit that has every query term counts as KEYWORD_FULL relevant (a rule); how partial matches count is
fitted on held-out queries with independent wording (emoji short names against emoji names, bench/keyword_weight.py,
numbers in bench/RESULTS.md): one word of two shared is nearly worthless, so a single common word never makes a
likely match on its own:

    p_keyword = KEYWORD_FULL * coverage ** KEYWORD_POWER
    relevance = 1 - (1 - p_visual) * (1 - p_keyword)  # noisy-OR: either kind of evidence can make a hit relevant

Hits are ranked by relevance (ties by similarity). A hit is `likely` when its relevance reaches the model's
threshold (chosen on the calibration data to separate queries whose answer is in the collection from queries
whose answer is not); a search has "no good match" when no hit is likely. The unlikely hits are still listed, below
the likely ones and flagged, so a person browsing sees the line.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnibridge.checkpoint import parse_preset

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
KEYWORD_FULL = 0.9  # relevance of a hit whose texts hold every query term (a rule)
KEYWORD_POWER = 5.5  # fitted by bench/keyword_weight.py: how partial keyword coverage counts
FILENAME_WEIGHT = 0.5  # a query term found only in the file name counts this much of a term in a caption, tag or OCR
KINDS = ("text", "image")


def calibration_path(model: str) -> Path:
    """Where a model's calibration lives: engine/calibration/<name>.json for the built-in models and the zero-shot
    presets, else calibration.json in the checkpoint folder."""
    if model in ("default", "bridge"):
        return CALIBRATION_DIR / f"{model}.json"
    if parse_preset(model):  # a zero-shot preset (clip:ID, siglip:ID): engine/calibration/clip-openai-....json
        return CALIBRATION_DIR / f"{re.sub(r'[^a-z0-9]+', '-', model.lower()).strip('-')}.json"
    return Path(model) / "calibration.json"


@dataclass
class Calibration:
    params: dict[str, dict[str, float]]  # kind -> {"a", "b"}
    thresholds: dict[str, float] = field(default_factory=dict)  # kind -> no-match cut on the relevance
    calibrated: bool = True  # False: borrowed from the default model (see `load_calibration`)

    def prob(self, kind: str, similarity) -> np.ndarray:
        """p_visual of raw similarities (array or scalar) for a query kind."""
        p = self.params[kind]
        z = p["a"] * np.asarray(similarity, dtype=np.float64) + p["b"]
        return 1.0 / (1.0 + np.exp(-z))

    def threshold(self, kind: str) -> float:
        return self.thresholds.get(kind, 0.5)

    def relevance(self, kind: str, similarity: float, coverage: float = 0.0) -> float:
        """The hit's readable score in [0, 1]: visual and keyword evidence fused by noisy-OR."""
        p_visual = float(self.prob(kind, similarity))
        return 1.0 - (1.0 - p_visual) * (1.0 - keyword_prob(coverage))


def keyword_prob(coverage: float) -> float:
    """p_keyword of a keyword coverage in [0, 1]."""
    return KEYWORD_FULL * min(max(coverage, 0.0), 1.0) ** KEYWORD_POWER


def load_calibration(model: str) -> Calibration:
    """The model's calibration; a model without one borrows the default model's and says so (calibrated=False)."""
    path = calibration_path(model)
    calibrated = path.is_file()
    if not calibrated:
        log.warning("model %r has no relevance calibration (%s): scores use the default model's; fit one with "
                    "`python bench/calibrate.py DATA --model %s --write`", model, path, model)
        path = calibration_path("default")
    try:
        fit = json.loads(path.read_text())["fit"]
        return Calibration({k: {"a": float(fit[k]["a"]), "b": float(fit[k]["b"])} for k in KINDS},
                           {k: float(fit[k]["threshold"]) for k in KINDS}, calibrated)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"the relevance calibration {path} is unreadable ({e!r}); fit it again with "
                         f"`python bench/calibrate.py DATA --model {model} --write`") from None
