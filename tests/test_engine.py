"""The Engine over a real ingested collection: more like this, grounded answers, generate-similar with lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from engine.answer import Answer
from engine.db import Asset, GeneratedAsset
from engine.engine import Engine
from engine.generate import GenerationParams, GeneratorUnavailable
from engine.services import Services
from engine.settings import load_settings
from tests.test_generate import tiny_pipeline
from tests.test_ingest import model, photos, run_job  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sd")
    tiny_pipeline(tmp).save_pretrained(tmp / "tiny-sd")
    return tmp / "tiny-sd"


@pytest.fixture
def indexed(tmp_path, photos, model, tiny_sd):  # noqa: F811
    svc = Services(load_settings(home=tmp_path / "home", batch_size=8, generator=str(tiny_sd)))
    svc._model = model
    run_job(svc, [photos], collection="photos")
    return Engine(svc)


def asset_id(engine: Engine, name: str) -> int:
    with engine.svc.session() as db:
        return db.scalar(select(Asset.id).where(Asset.uri.endswith(f"/{name}")))


def test_more_like_this_leaves_out_the_asset_itself(indexed):
    horse = asset_id(indexed, "horse.png")
    hits = indexed.search(asset_id=horse, k=5)["hits"]
    assert len(hits) == 5 and horse not in [h["id"] for h in hits]
    with pytest.raises(ValueError, match="no image asset with id 9999"):
        indexed.search(asset_id=9999)


def test_an_absent_subject_abstains_without_calling_the_model(indexed):
    result = indexed.answer("What is the giraffe eating?")
    assert result.abstained and result.citations == [] and result.evidence == []
    assert indexed._answerer is None  # nothing relevant enough: the language model was never loaded


def test_a_present_subject_is_answered_from_its_evidence(indexed):
    pieces = list(indexed.stream_answer("What is the cat called?", k=3))
    final = pieces[-1]
    assert isinstance(final, Answer) and not final.abstained
    assert "".join(p for p in pieces[:-1]).strip() == final.answer  # the stream is the answer
    assert asset_id(indexed, "chelsea.png") in [e.asset_id for e in final.evidence]
    assert set(final.citations) <= {e.asset_id for e in final.evidence}
    assert final.to_dict()["evidence"][0]["caption"]


def test_generate_similar_saves_records_and_hides_the_variants(indexed, tmp_path):
    coffee = asset_id(indexed, "coffee.png")
    out = indexed.generate_similar(coffee, GenerationParams(n=2, seed=3, steps=4, strength=0.5), out=tmp_path / "gen")
    assert [r["seed"] for r in out] == [3, 4] and all(Path(r["path"]).is_file() for r in out)
    assert all(r["prompt"] == "Coffee cup." and r["status"] == "indexed" for r in out)
    with indexed.svc.session() as db:
        rows = db.scalars(select(GeneratedAsset).order_by(GeneratedAsset.seed)).all()
        assert [(r.source_asset_id, r.seed, r.params["strength"]) for r in rows] == [(coffee, 3, 0.5), (coffee, 4, 0.5)]
        assert all(db.get(Asset, r.asset_id).synthetic for r in rows)
    variant = out[0]["path"]
    default = indexed.search(image=variant, k=30)["hits"]
    assert all(not h["synthetic"] for h in default) and variant not in [h["path"] for h in default]
    with_synthetic = indexed.search(image=variant, k=1, include_synthetic=True)["hits"]
    assert with_synthetic[0]["path"] == variant and with_synthetic[0]["synthetic"]

    again = indexed.generate_similar(coffee, GenerationParams(n=1, seed=3, steps=4, strength=0.5), out=tmp_path / "gen")
    assert again[0]["asset_id"] == out[0]["asset_id"]  # same seed, same file: recorded once
    assert Image.open(again[0]["path"]).size == Image.open(variant).size


def test_no_generator_configured_says_how_to_configure_one(tmp_path, photos, model):  # noqa: F811
    svc = Services(load_settings(home=tmp_path / "home", batch_size=8))
    svc._model = model
    run_job(svc, [photos.parent / "images" / "coffee.png"], collection="c")
    with pytest.raises(GeneratorUnavailable, match="OMNIBRIDGE_GENERATOR"):
        Engine(svc).generate_similar(1, GenerationParams(n=1))
    env = {**os.environ, "OMNIBRIDGE_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-m", "engine.cli", "generate-similar", "1", "--n", "1"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "OMNIBRIDGE_GENERATOR" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "engine.cli", "answer", "What is the giraffe eating?", "--json"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["abstained"] is True


def test_filters_pages_and_near_duplicate_collapse(tmp_path, photos, model):  # noqa: F811
    from tests.test_ingest import library

    svc = Services(load_settings(home=tmp_path / "home", batch_size=8))
    svc._model = model
    run_job(svc, [library(tmp_path, photos)], collection="lib")
    engine = Engine(svc)
    query = photos.parent / "images" / "chelsea.png"
    collapsed = engine.search(image=query, k=3)["hits"]
    assert collapsed[0]["path"].endswith("chelsea.png") and collapsed[0]["duplicates"] == 1  # + chelsea-small.jpg
    assert not any(h["path"].endswith("chelsea-small.jpg") for h in collapsed)
    every = engine.search(image=query, k=3, collapse=False)["hits"]
    assert {Path(h["path"]).name for h in every[:2]} == {"chelsea.png", "chelsea-small.jpg"}

    pages = [engine.search(image=query, k=2, offset=o, min_relevance=0)["hits"] for o in (0, 2, 4)]
    ids = [h["id"] for page in pages for h in page]
    assert len(ids) == len(set(ids)) == 6  # 7 images, 2 of them one group: 6 hits, no repeats across pages
    assert engine.search(image=query, k=2, offset=6, min_relevance=0)["hits"] == []

    jpegs = engine.search(image=query, k=10, filters={"format": "jpeg"})["hits"]
    assert [Path(h["path"]).name for h in jpegs] == ["chelsea-small.jpg"]
    assert all(h["width"] >= 500 for h in engine.search(text="a cat", k=10, filters={"min_width": 500})["hits"])
    assert engine.search(text="a cat", filters={"until": "2000-01-01"})["no_match"] is True
    assert len(engine.search(text="a cat", k=10, filters={"since": "2000-01-01"}, min_relevance=0)["hits"]) == 6
    with pytest.raises(ValueError, match="unknown filter 'colour'"):
        engine.search(text="a cat", filters={"colour": "red"})
    with pytest.raises(ValueError, match="'since' takes an ISO date"):
        engine.search(text="a cat", filters={"since": "yesterday"})
