"""The ingestion pipeline over real stores (SQLite + Qdrant Edge) and the bundled default model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from engine.db import Asset, Text, Vector
from engine.engine import Engine
from engine.samples import write_photo_sample
from engine.services import Services
from engine.settings import load_settings
from ingest import pipeline
from tests.pg import fresh_pg_database


@pytest.fixture(scope="session")
def model():
    from omnibridge import load_model

    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    return write_photo_sample(tmp_path_factory.mktemp("photos"))  # pairs.jsonl beside images/


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """The embedded SQLite default, and a throwaway database on the PostgreSQL server of the project's machines."""
    if request.param == "sqlite":
        yield None
    else:
        with fresh_pg_database() as url:
            yield url


def make_services(home: Path, model, database_url: str | None = None) -> Services:
    svc = Services(load_settings(home=home, batch_size=8, database_url=database_url))
    svc._model = model  # loaded once per test session
    return svc


def run_job(svc: Services, paths: list, collection: str = "c", ocr: bool = False) -> dict:
    return pipeline.run_inline(svc, [str(p) for p in paths], collection, ocr=ocr)


def library(root: Path, photos: Path, names=("coffee", "chelsea", "astronaut", "rocket", "coins", "horse")) -> Path:
    """A messy media library: real photos, an exact copy, a resized copy, broken files and a text document."""
    lib = root / "lib"
    (lib / "sub").mkdir(parents=True)
    for n in names:
        shutil.copy(photos.parent / "images" / f"{n}.png", lib / f"{n}.png")
    shutil.copy(lib / "coffee.png", lib / "sub" / "coffee-copy.png")  # exact duplicate
    Image.open(lib / "chelsea.png").resize((200, 150)).save(lib / "sub" / "chelsea-small.jpg", quality=90)  # near dup
    (lib / "empty.jpg").write_bytes(b"")
    (lib / "notes.jpg").write_text("this is not a picture")
    data = (lib / "horse.png").read_bytes()
    (lib / "truncated.png").write_bytes(data[: len(data) // 2])
    (lib / "readme.md").write_text("Shipping manifest for the spring catalogue: twelve boxes of ceramic mugs.\n")
    (lib / ".hidden.png").write_bytes(data)
    return lib


def test_pipeline_indexes_a_messy_library(tmp_path, photos, model, database_url):
    svc = make_services(tmp_path / "home", model, database_url)
    lib = library(tmp_path, photos)
    job = run_job(svc, [lib])
    assert job["status"] == "done"
    # 6 photos + near dup + text doc indexed; the copy is a duplicate; 3 broken files fail; the dotfile is ignored
    assert (job["seen"], job["indexed"], job["duplicates"], job["failed"]) == (12, 8, 1, 3)
    reasons = {Path(e["path"]).name: e["error"] for e in job["errors"]}
    assert set(reasons) == {"empty.jpg", "notes.jpg", "truncated.png"}
    assert all(name in msg for name, msg in reasons.items())  # each error names its file

    _, space, _ = svc.model_row()
    with svc.session() as db:
        copy = db.scalar(select(Asset).where(Asset.uri.endswith("coffee-copy.png")))
        assert copy.status == "duplicate" and copy.duplicate_of is not None
        small = db.scalar(select(Asset).where(Asset.uri.endswith("chelsea-small.jpg")))
        big = db.scalar(select(Asset).where(Asset.uri.endswith("chelsea.png")))
        assert small.near_dup_group == big.near_dup_group == min(small.id, big.id)
        coffee = db.scalar(select(Asset).where(Asset.uri.endswith("/coffee.png")))
        assert coffee.near_dup_group == coffee.id and (coffee.width, coffee.height, coffee.format) == (600, 400, "PNG")
        n_texts = db.scalar(select(func.count()).select_from(Text).where(Text.kind.in_(pipeline.EMBEDDED_TEXT_KINDS)))
        n_vectors = db.scalar(select(func.count()).select_from(Vector))
    assert svc.store.count(space, {"kind": "image"}) == 7
    assert svc.store.count(space, {"kind": "text"}) == n_texts == 1  # the markdown document
    assert svc.store.count(space) == n_vectors == 8
    hit = svc.store.retrieve(space, [pipeline.point_id("image", small.id)])[0]
    assert hit[1]["near_dup_group"] == big.id and hit[1]["collection"] == "c"


def test_second_run_adds_nothing_and_changes_are_tracked(tmp_path, photos, model, database_url):
    svc = make_services(tmp_path / "home", model, database_url)
    lib = library(tmp_path, photos)
    run_job(svc, [lib])
    _, space, _ = svc.model_row()
    before = svc.store.count(space)

    again = run_job(svc, [lib])
    assert (again["indexed"], again["duplicates"], again["skipped"]) == (0, 0, 12)
    assert svc.store.count(space) == before

    # a changed file is re-embedded in place, a deleted one leaves the index, its copy takes its place
    Image.open(photos.parent / "images" / "moon.png").save(lib / "rocket.png")
    (lib / "coffee.png").unlink()
    changed = run_job(svc, [lib])
    assert changed["indexed"] == 2 and changed["removed"] == 1
    assert svc.store.count(space) == before
    with svc.session() as db:
        rocket = db.scalar(select(Asset).where(Asset.uri.endswith("rocket.png")))
        assert db.scalar(select(func.count()).select_from(Vector).where(Vector.asset_id == rocket.id)) == 1
        copy = db.scalar(select(Asset).where(Asset.uri.endswith("coffee-copy.png")))
        assert copy.status == "indexed"
    hits = Engine(svc).search(image=photos.parent / "images" / "moon.png", k=1)["hits"]
    assert hits[0]["path"].endswith("rocket.png") and hits[0]["similarity"] > 0.95


def test_pairs_captions_attach_and_search_finds_them(tmp_path, photos, model):
    svc = make_services(tmp_path / "home", model)
    job = run_job(svc, [photos], collection="photos")
    assert job["indexed"] == 21 and job["failed"] == 0
    _, space, _ = svc.model_row()
    assert svc.store.count(space, {"kind": "text", "collection": "photos"}) == 21  # one caption each
    result = Engine(svc).search(text="a cup of coffee", collection="photos", k=3)
    assert result["no_match"] is False
    assert result["hits"][0]["path"].endswith("coffee.png")
    assert result["hits"][0]["caption"] == "Coffee cup."
    assert Engine(svc).search(text="a cup of coffee", collection="other")["no_match"] is True


def test_bad_source_is_refused_before_anything_is_stored(tmp_path, model):
    svc = make_services(tmp_path / "home", model)
    with pytest.raises(pipeline.SourceError, match="no such file or folder"):
        pipeline.create_job(svc, [str(tmp_path / "missing")], "c")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(pipeline.SourceError, match="not an image"):
        pipeline.create_job(svc, [str(tmp_path / "x.csv")], "c")
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"image": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(pipeline.SourceError, match="pairs.jsonl:2"):
        pipeline.create_job(svc, [str(bad)], "c")
    assert pipeline.status_report(svc)["collections"] == []


def test_an_interrupted_job_is_finished_by_recovery(tmp_path, photos, model, database_url):
    svc = make_services(tmp_path / "home", model, database_url)
    job = pipeline.create_job(svc, [str(photos.parent / "images")], "c")
    pending = pipeline.scan(svc, job)
    pipeline.embed(svc, job, pending[:5])  # then the worker "dies"
    rescan, work, finalize = pipeline.pending_work(svc)
    assert rescan == [] and sorted(work[job]) == sorted(pending[5:]) and finalize == []
    pipeline.embed(svc, job, pending[:8])  # a redelivered batch overlapping finished work counts nothing twice
    for jid, ids in work.items():
        pipeline.embed(svc, jid, ids)
    assert pipeline.try_finalize(svc, job)
    summary = pipeline.job_summary(svc, job)
    _, space, _ = svc.model_row()
    assert summary["indexed"] == 21 and svc.store.count(space) == 21


def test_ocr_text_becomes_searchable(tmp_path, model):
    from PIL import ImageDraw, ImageFont

    svc = make_services(tmp_path / "home", model)
    (tmp_path / "scans").mkdir()
    im = Image.new("RGB", (640, 200), "white")
    ImageDraw.Draw(im).text((30, 50), "INVOICE 2041", fill="black", font=ImageFont.load_default(size=72))
    im.save(tmp_path / "scans" / "scan1.png")
    job = run_job(svc, [tmp_path / "scans"], ocr=True)
    assert job["indexed"] == 1
    with svc.session() as db:
        ocr = db.scalar(select(Text.content).where(Text.kind == "ocr"))
    assert "INVOICE" in ocr
    _, space, _ = svc.model_row()
    assert svc.store.count(space, {"kind": "text"}) == 1


def test_a_new_model_is_indexed_beside_the_old_one(tmp_path, photos, model):
    """Switching models without downtime: the new model's space fills while the old one keeps answering."""
    from omnibridge import load_model

    old = make_services(tmp_path / "home", model)
    run_job(old, [photos.parent / "images"])
    _, old_space, _ = old.model_row()

    new = Services(load_settings(home=tmp_path / "home", batch_size=8, model="bridge"))
    new._model = load_model("bridge", device="cpu")
    _, new_space, _ = new.model_row()
    assert new_space != old_space
    job = run_job(new, [photos.parent / "images"])
    assert job["indexed"] == 21 and job["skipped"] == 0  # unchanged files, but new to this model
    assert old.store.count(old_space) == old.store.count(new_space) == 21
    assert run_job(new, [photos.parent / "images"])["skipped"] == 21  # and now nothing is left to do
    for svc in (old, new):
        hits = Engine(svc).search(image=photos.parent / "images" / "horse.png", k=1)["hits"]
        assert hits[0]["path"].endswith("horse.png")


def test_near_duplicate_groups_hold_copies_not_images_of_other_colours(tmp_path, photos, model):  # noqa: F811
    """Flat squares of five colours and a gradient share a perceptual hash; they are not copies of each other.
    A re-encoded, resized or slightly brightened photo still is."""
    import numpy as np
    from PIL import ImageEnhance

    lib = tmp_path / "shapes"
    lib.mkdir()
    for name, rgb in {"black": (0, 0, 0), "blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30),
                      "yellow": (240, 230, 20)}.items():
        Image.new("RGB", (128, 128), rgb).save(lib / f"{name}_square.png")
    ramp = np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (128, 1))
    Image.fromarray(np.stack([ramp] * 3, -1)).save(lib / "gradient.png")
    coffee = Image.open(photos.parent / "images" / "coffee.png").convert("RGB")
    coffee.save(lib / "coffee.png")
    coffee.resize((300, 200)).save(lib / "coffee-small.jpg", quality=70)
    ImageEnhance.Brightness(coffee).enhance(1.05).save(lib / "coffee-brighter.png")
    svc = Services(load_settings(home=tmp_path / "home", batch_size=16))
    svc._model = model
    assert run_job(svc, [lib])["indexed"] == 9
    with svc.session() as db:
        groups = {Path(a.uri).name: a.near_dup_group for a in db.scalars(select(Asset))}
    squares = [groups[f"{c}_square.png"] for c in ("black", "blue", "green", "red", "yellow")] + [groups["gradient.png"]]
    assert len(set(squares)) == 6, groups
    assert groups["coffee.png"] == groups["coffee-small.jpg"] == groups["coffee-brighter.png"], groups
