"""Hybrid search over a real ingested collection (scikit-image photos, the bundled default model): keyword and
vector evidence fused into calibrated relevance, "no good match", image->text and text->text, paging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.engine import Engine
from engine.keywords import coverage, document_terms, file_words, keyword_text, query_terms
from engine.relevance import KEYWORD_FULL, Calibration, calibration_path, load_calibration
from engine.services import Services
from engine.settings import load_settings
from tests.test_ingest import model, photos, run_job  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, photos, model):  # noqa: F811
    svc = Services(load_settings(home=tmp_path_factory.mktemp("search") / "home", batch_size=8))
    svc._model = model
    run_job(svc, [photos], collection="photos")
    yield Engine(svc)
    svc.close()


def names(hits) -> list[str]:
    return [Path(h["path"]).stem for h in hits]


# -- keywords --------------------------------------------------------------------------------------------------

def test_terms_are_stemmed_without_stop_words():
    assert query_terms("cats") == query_terms("the cat")  # plural and article fold away
    assert not query_terms("the of a")
    assert coverage(query_terms("black horse"), "Black and white silhouette of a horse.") == 1.0
    assert coverage(query_terms("black cat"), "Black and white silhouette of a horse.") == 0.5
    assert coverage(query_terms("the"), "anything") == 0.0
    assert file_words("/x/red_fox-2024.final.jpg") == "red fox 2024 final"
    assert keyword_text(["a", None, " ", "b"]) == "a\nb"
    assert document_terms("") is None and document_terms("a cat")


# -- relevance -------------------------------------------------------------------------------------------------

def test_relevance_is_a_noisy_or_of_visual_and_keyword_evidence():
    cal = Calibration({"text": {"a": 10.0, "b": -5.0}, "image": {"a": 1.0, "b": 0.0}}, {"text": 0.4})
    assert cal.relevance("text", 0.5) == pytest.approx(0.5)  # sigmoid(0)
    assert cal.relevance("text", 0.5, coverage=1.0) == pytest.approx(1 - 0.5 * (1 - KEYWORD_FULL))
    assert cal.relevance("text", 0.9) > cal.relevance("text", 0.5) > cal.relevance("text", 0.1)
    assert 0.0 <= cal.relevance("text", -5.0) < 0.01 and cal.threshold("text") == 0.4
    assert cal.threshold("image") == 0.5  # no threshold fitted: even odds


def test_the_shipped_calibration_is_fitted_and_a_model_without_one_borrows_it(tmp_path):
    shipped = json.loads(calibration_path("default").read_text())
    assert shipped["fit"]["text"]["a"] > 0 and shipped["fit"]["image"]["a"] > 0  # more similar = more relevant
    assert load_calibration("default").calibrated
    borrowed = load_calibration(str(tmp_path))  # a checkpoint folder without calibration.json
    assert not borrowed.calibrated and borrowed.params == load_calibration("default").params
    (tmp_path / "calibration.json").write_text("{}")
    with pytest.raises(ValueError, match="bench/calibrate.py"):
        load_calibration(str(tmp_path))


# -- the engine ------------------------------------------------------------------------------------------------

def test_keywords_find_what_the_vectors_miss(engine):
    """"coins" is a word of the caption "Greek coins from Pompeii." but the bundled model ranks that photo low."""
    vector = engine.search(text="Pompeii", collection="photos", mode="vector", min_relevance=0, k=21)
    rank = names(vector["hits"]).index("coins")
    hybrid = engine.search(text="Pompeii", collection="photos")
    assert names(hybrid["hits"])[0] == "coins" and not hybrid["no_match"]
    top = hybrid["hits"][0]
    assert top["matched"] in ("keyword", "both") and top["coverage"] == 1.0 and top["keyword_score"] > 0
    assert top["score"] >= KEYWORD_FULL and top["similarity"] == pytest.approx(vector["hits"][rank]["similarity"])
    keyword = engine.search(text="Pompeii", collection="photos", mode="keyword")
    assert names(keyword["hits"]) == ["coins"]


def test_file_names_and_tags_are_keywords(engine):
    hits = engine.search(text="microaneurysms", collection="photos")["hits"]  # caption + file name
    assert names(hits)[0] == "microaneurysms"
    gravel = engine.search(text="gravel", collection="photos", mode="keyword")["hits"]
    assert names(gravel) == ["gravel"]


def test_an_absent_subject_is_no_good_match_with_every_hit_below_the_line(engine):
    result = engine.search(text="a giraffe eating leaves", collection="photos", k=5)
    assert result["no_match"] is True and len(result["hits"]) == 5 and not any(h["likely"] for h in result["hits"])
    assert result["best_score"] is not None and result["best_score"] < result["threshold"]
    only_likely = engine.search(text="a giraffe eating leaves", collection="photos", min_relevance=result["threshold"])
    assert only_likely["no_match"] is True and only_likely["hits"] == []
    closest = engine.search(text="a giraffe eating leaves", collection="photos", min_relevance=0, k=5)
    assert [h["score"] for h in closest["hits"]] == sorted((h["score"] for h in closest["hits"]), reverse=True)
    assert all(0 <= h["score"] <= 1 for h in closest["hits"])


def test_likely_matches_rank_above_the_line_and_the_rest_are_flagged(engine):
    hits = engine.search(text="a cup of coffee", collection="photos", k=6)["hits"]
    assert names(hits)[0] == "coffee" and hits[0]["likely"] and len(hits) == 6
    flags = [h["likely"] for h in hits]
    assert flags == sorted(flags, reverse=True) and not all(flags)  # likely first, then below the line


def test_a_common_word_in_a_file_name_alone_is_not_a_likely_match(engine, tmp_path):
    from PIL import Image

    from ingest.pipeline import run_inline

    Image.new("RGB", (64, 64), (200, 20, 20)).save(tmp_path / "red_square.png")
    run_inline(engine.svc, [str(tmp_path / "red_square.png")], "squares")
    hits = engine.search(text="a red flower", collection="squares", k=1)["hits"]
    assert names(hits) == ["red_square"] and not hits[0]["likely"] and hits[0]["coverage"] == 0.25
    assert engine.search(text="a red square", collection="squares", k=1)["hits"][0]["coverage"] == 0.5


def test_scores_rank_hits_and_pages_do_not_overlap(engine):
    every = engine.search(text="a photo", collection="photos", min_relevance=0, k=21)["hits"]
    assert len(every) == 21
    assert [h["score"] for h in every] == sorted((h["score"] for h in every), reverse=True)
    pages = [engine.search(text="a photo", collection="photos", min_relevance=0, k=5, offset=o)["hits"]
             for o in range(0, 25, 5)]
    assert [h["id"] for p in pages for h in p] == [h["id"] for h in every]


def test_image_to_text_and_text_to_text(engine, photos):  # noqa: F811
    coffee = photos.parent / "images" / "coffee.png"
    texts = engine.search(image=coffee, target="texts", collection="photos", min_relevance=0, k=5)
    assert texts["target"] == "texts" and texts["hits"]
    assert all(h["kind"] in ("caption", "alt", "ocr", "document") and h["content"] for h in texts["hits"])
    assert {"id", "asset_id", "content", "score"} <= set(texts["hits"][0])
    found = engine.search(text="coffee cup", target="texts", collection="photos")
    assert found["hits"][0]["content"] == "Coffee cup." and not found["calibrated"]
    assert any("text->text" in n for n in found["notes"])


def test_bad_search_input_names_the_fix(engine):
    with pytest.raises(ValueError, match="target must be one of images, texts"):
        engine.search(text="x", target="videos")
    with pytest.raises(ValueError, match="mode must be one of hybrid, vector, keyword"):
        engine.search(text="x", mode="fuzzy")
    with pytest.raises(ValueError, match="min_relevance must be a number in 0..1"):
        engine.search(text="x", min_relevance=2)
    with pytest.raises(ValueError, match="keyword mode needs a text query"):
        engine.search(asset_id=1, mode="keyword")


def test_only_stop_words_fall_back_to_vectors_and_say_so(engine):
    result = engine.search(text="the of and", collection="photos", min_relevance=0, k=3)
    assert len(result["hits"]) == 3 and all(h["coverage"] == 0 for h in result["hits"])
    assert any("stop words" in n for n in result["notes"])


def test_answers_cite_what_the_hybrid_search_finds(engine):
    """The evidence is the search's relevant hits, with predicted labels from the classifier."""
    evidence = engine.evidence("Where were the coins from Pompeii found?", collection="photos", k=3)
    assert evidence and Path(evidence[0].image_path).stem == "coins"
    assert all(isinstance(e.labels, list) for e in evidence) and evidence[0].labels
    assert engine.evidence("What is the giraffe eating?", collection="photos") == []


def test_the_calibration_recipe_runs_on_tiny_data(tmp_path, model):  # noqa: F811
    """bench/calibrate.py's fit recovers a known logistic curve (the fit function, on synthetic labels)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibrate", Path(__file__).parents[1] / "bench" / "calibrate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-(6 * sims - 1)))).astype(float)
    a, b = mod.fit(sims, labels, np.ones_like(sims))
    assert a == pytest.approx(6, rel=0.1) and b == pytest.approx(-1, abs=0.15)


def test_image_query_scores_read_as_how_alike_two_pictures_are(engine, photos, tmp_path):  # noqa: F811
    from PIL import Image

    coffee = Path(photos).parent / "images" / "coffee.png"
    with Image.open(coffee) as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(tmp_path / "copy.jpg", quality=85)
    result = engine.search(image=tmp_path / "copy.jpg", collection="photos", k=21)
    hits = result["hits"]
    assert names(hits)[0] == "coffee" and hits[0]["score"] >= 0.85 and hits[0]["likely"]  # a near-identical copy
    assert not result["no_match"] and all(h["score"] < 0.5 and not h["likely"] for h in hits[1:])  # unrelated
    assert sum(h["score"] < 0.1 for h in hits[1:]) >= 15
