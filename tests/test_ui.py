"""Every UI page through Streamlit's AppTest, driving real actions against a real ingested photo collection (the
scikit-image sample, the bundled default model): search by text and by image, filters, pages, more like this,
answers, generation (a tiny diffusers pipeline), collections and live ingestion, the embedding map. The same UI
also runs over the HTTP API (HttpClient against the real app through TestClient)."""

from __future__ import annotations

import io

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

import ui.client
from engine.api.auth import create_api_key
from engine.api.main import create_app
from engine.db import Asset
from engine.engine import Engine
from engine.services import Services
from engine.settings import load_settings
from tests.test_generate import tiny_pipeline
from tests.test_ingest import model, photos, run_job  # noqa: F401  (fixtures)
from ui.client import ClientError, GeneratorMissing, HttpClient, LocalClient

APP = str(Path(__file__).resolve().parents[1] / "ui" / "app.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def svc(tmp_path_factory, photos, model) -> Services:  # noqa: F811
    svc = Services(load_settings(home=tmp_path_factory.mktemp("ui") / "home", batch_size=8))
    svc._model = model
    job = run_job(svc, [photos], collection="samples")
    assert job["status"] == "done" and job["indexed"] == 21
    return svc


@pytest.fixture
def local(svc):
    client = LocalClient(Engine(svc))
    ui.client.use(client)
    yield client
    ui.client.use(None)


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader",
                                  "title") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def asset_id(svc: Services, name: str) -> int:
    with svc.session() as db:
        return db.scalar(select(Asset.id).where(Asset.uri.endswith(f"/{name}")))


def hit_names(at: AppTest) -> list[str]:
    return [Path(h["path"]).name for h in at.session_state["last_hits"]]


# -- search ----------------------------------------------------------------------------------------------------

def test_search_by_text_shows_the_expected_photo_first(local):
    at = app()
    assert "Type a description" in texts(at)
    at.text_input(key="q").input("a cup of coffee").run()
    assert not at.exception
    assert hit_names(at)[0] == "coffee.png"
    shown = texts(at)
    assert "Results for “a cup of coffee”" in shown and "Coffee cup." in shown and "score " in shown
    assert len(at.image) == len(at.session_state["last_hits"]) >= 1  # one thumbnail per hit
    at.radio(key="f_mode").set_value("keyword").run()  # words only: the caption "Coffee cup."
    assert hit_names(at)[0] == "coffee.png" and "keyword match" in texts(at)
    at.text_input(key="q").input("qqzx wvut").run()
    assert at.session_state["last_hits"] == [] and "No good match for “qqzx wvut”" in texts(at)
    at.radio(key="f_mode").set_value("hybrid").run()  # meaning and words: the closest, all below the line
    assert len(at.session_state["last_hits"]) == 12 and "Below the line: unlikely matches" in texts(at)
    assert "No good match for “qqzx wvut”" in texts(at) and "unlikely" in texts(at)
    at.text_input(key="q").input("a cup of coffee").run()  # one likely match above the line, the rest below
    hits = at.session_state["last_hits"]
    assert hits[0]["likely"] and not hits[-1]["likely"] and "No good match" not in texts(at)
    assert "Below the line: unlikely matches" in texts(at)


def test_more_like_this_pages_and_filters(local, svc):
    at = app()
    at.text_input(key="q").input("a cat").run()
    cat = asset_id(svc, "chelsea.png")
    assert cat in [h["id"] for h in at.session_state["last_hits"]]
    at.button(key=f"hit-more-{cat}").click().run()
    assert "More like #" + str(cat) in texts(at)
    assert cat not in [h["id"] for h in at.session_state["last_hits"]]  # the image itself is left out
    assert "No good match for this image" in texts(at) and "another example image" in texts(at)  # no other cat
    assert "words" not in texts(at).split("No good match")[1].split(".")[0]  # an image query's advice is images
    at.select_slider(key="page_size").set_value(8).run()
    first = [h["id"] for h in at.session_state["last_hits"]]
    assert len(first) == 8 and at.button(key="prev_page").disabled
    at.button(key="next_page").click().run()
    second = [h["id"] for h in at.session_state["last_hits"]]
    assert "Page 2" in texts(at) and len(second) == 8 and not set(first) & set(second)
    at.button(key="prev_page").click().run()
    assert [h["id"] for h in at.session_state["last_hits"]] == first
    at.multiselect(key="f_format").select("JPEG").run()  # the sample holds PNGs only
    assert at.session_state["last_hits"] == []
    assert "No good match" in texts(at) and "loosen the filters" in texts(at)


def test_search_in_texts_lists_captions_with_their_images(local, svc):
    at = app()
    at.radio(key="target").set_value("texts").run()
    at.text_input(key="q").input("coffee cup").run()
    hits = at.session_state["last_hits"]
    assert not at.exception and hits[0]["content"] == "Coffee cup." and hits[0]["kind"] == "caption"
    assert "caption · score" in texts(at) and len(at.image) >= 1
    coffee = asset_id(svc, "coffee.png")
    at.button(key=f"text-more-{hits[0]['id']}").click().run()  # back to images, like the caption's image
    assert f"More like #{coffee}" in texts(at) and at.radio(key="target").value == "images"
    assert at.session_state["last_hits"] and "content" not in at.session_state["last_hits"][0]


def test_an_unreachable_store_is_reported_not_raised(local, monkeypatch):
    from engine.shared_store import StoreUnavailable

    def down(**_):
        raise StoreUnavailable("no process could open the vector store in /x/qdrant; check the folder")

    monkeypatch.setattr(local.engine, "search", down)
    at = app()
    at.text_input(key="q").input("a cat").run()
    assert not at.exception and "The search failed: no process could open the vector store" in texts(at)


def test_search_by_image_upload(local, photos):  # noqa: F811
    at = app()
    data = (photos.parent / "images" / "coffee.png").read_bytes()
    at.file_uploader(key="query_image").upload("my-coffee.png", data, "image/png").run()
    at.button(key="image_button").click().run()
    assert not at.exception
    assert "Images like my-coffee.png" in texts(at) and hit_names(at)[0] == "coffee.png"


def test_an_empty_library_points_to_the_collections_page(tmp_path, model):  # noqa: F811
    empty = Services(load_settings(home=tmp_path / "home"))
    empty._model = model
    ui.client.use(LocalClient(Engine(empty)))
    try:
        for page in (None, "answer", "explore"):
            at = app(page)
            assert "The library is empty" in texts(at)
            assert any("collections" in link.proto.page for link in at.get("page_link"))
    finally:
        ui.client.use(None)


# -- answer ----------------------------------------------------------------------------------------------------

def test_answer_streams_with_its_evidence_and_abstains_when_nothing_fits(local):
    at = app("answer")  # the default (extractive) answerer
    assert "Answerer: extractive" in texts(at) or "Loading the answerer" in texts(at)
    at.text_input(key="question").input("What is in the coffee cup?").run()
    final = at.session_state["answer"]
    assert final["evidence"] and "Evidence" in texts(at)
    assert "Coffee cup." in texts(at) and "relevance" in texts(at)
    assert not final["abstained"] and final["answer"] in texts(at) and final["answer"].endswith("[1]")
    assert final["citations"] == [final["evidence"][0]["asset_id"]] and "· cited" in texts(at)
    at.text_input(key="question").input("zqxj vbnm wrtp?").run()
    final = at.session_state["answer"]
    assert final["abstained"] and "No answer." in texts(at)


# -- generate --------------------------------------------------------------------------------------------------

def test_generate_without_a_generator_explains_how_to_configure_one(local, svc):
    at = app()
    at.text_input(key="q").input("coins").run()
    coins = asset_id(svc, "coins.png")
    at.button(key=f"hit-gen-{coins}").click().run()  # opens the Generate page on this hit
    assert not at.exception
    shown = texts(at)
    assert "No image generator is configured" in shown and "OMNIBRIDGE_GENERATOR" in shown
    assert f"#{coins}" in shown and at.button(key="gen_button").disabled


def test_generate_similar_shows_variants_with_their_lineage(svc, tmp_path_factory, model):  # noqa: F811
    folder = tmp_path_factory.mktemp("sd")
    tiny_pipeline(folder).save_pretrained(folder / "tiny-sd")
    gen = Services(svc.settings.model_copy(update={"generator": str(folder / "tiny-sd")}))
    gen._model = model
    ui.client.use(LocalClient(Engine(gen)))
    try:
        at = app("generate")
        at.number_input(key="gen_asset").set_value(asset_id(svc, "coffee.png")).run()
        at.slider(key="gen_n").set_value(2).run()
        at.slider(key="gen_steps").set_value(2).run()
        at.button(key="gen_button").click().run()
        assert not at.exception
        variants = at.session_state["variants"]
        assert len(variants) == 2 and {v["seed"] for v in variants} == {0, 1}
        shown = texts(at)
        assert "2 variants" in shown and "prompt: “Coffee cup.”" in shown and "seed 1" in shown
        assert all(Path(v["path"]).is_file() for v in variants)
    finally:
        ui.client.use(None)


# -- collections -----------------------------------------------------------------------------------------------

def test_upload_create_and_watch_ingestion_with_per_file_errors(local, svc, photos, tmp_path):  # noqa: F811
    at = app("collections")
    assert "samples" in str(at.dataframe[0].value)
    at.selectbox(key="target").select("New collection…").run()
    at.text_input(key="new_name").input("bad name!").run()
    at.button(key="create_button").click().run()
    assert "collection name 'bad name!'" in texts(at)
    at.text_input(key="new_name").input("campaign").run()
    at.button(key="create_button").click().run()
    assert "Collection “campaign” created" in texts(at)
    images = photos.parent / "images"
    uploader = at.file_uploader(key="uploads")
    uploader.upload("horse.png", (images / "horse.png").read_bytes(), "image/png")
    uploader.upload("rocket.png", (images / "rocket.png").read_bytes(), "image/png").run()
    at.button(key="upload_button").click().run()
    assert not at.exception
    shown = texts(at)
    assert "done: indexed 2" in shown and "campaign" in str(at.dataframe[0].value)
    assert at.status[0].proto.label.startswith(f"Job {at.session_state['watch_job']} (campaign): done")
    assert at.selectbox(key="target").value == "campaign"  # the new collection is now selected

    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(images / "moon.png", lib / "moon.png")
    (lib / "broken.jpg").write_bytes(b"not a picture at all")
    at.selectbox(key="target").select("campaign").run()
    at.text_area(key="folder").input(str(lib)).run()
    at.button(key="folder_button").click().run()
    shown = texts(at)
    assert "indexed 1" in shown and "failed 1" in shown and "Files that could not be indexed (1)" in shown
    errors = at.dataframe[-1].value
    assert list(errors["file"]) == [str(lib / "broken.jpg")] and "broken.jpg" in errors["reason"][0]

    at.text_area(key="folder").input("/no/such/folder").run()
    at.button(key="folder_button").click().run()
    assert "Nothing was ingested: /no/such/folder: no such file or folder" in texts(at)


def test_upload_of_a_non_image_is_refused_by_name(local, photos):  # noqa: F811
    at = app("collections")
    at.file_uploader(key="uploads").upload("fake.png", b"not an image", "image/png").run()
    at.button(key="upload_button").click().run()
    assert "Nothing was ingested: 'fake.png' is not a readable image" in texts(at)
    # with good files beside it, the good ones are indexed and the bad one is listed with its reason
    uploader = at.file_uploader(key="uploads")
    buf = io.BytesIO()
    Image.open(photos.parent / "images" / "moon.png").rotate(90).save(buf, "PNG")  # new to the collection
    uploader.upload("moon-turned.png", buf.getvalue(), "image/png")
    uploader.upload("fake2.png", b"still not an image", "image/png").run()
    at.button(key="upload_button").click().run()
    shown = texts(at)
    assert "indexed 1" in shown and "failed 1" in shown and "Files that could not be indexed (1)" in shown, shown
    errors = at.dataframe[-1].value
    assert list(errors["file"]) == ["fake2.png"] and "not a readable image" in errors["reason"][0]


# -- explore ---------------------------------------------------------------------------------------------------

def test_explore_draws_the_embedding_map(local):
    at = app("explore")
    at.selectbox(key="explore_collection").select("samples").run()
    assert not at.exception
    assert "**samples**: 21 images" in texts(at)
    (chart,) = at.get("vega_lite_chart")
    spec = chart.proto.spec
    assert '"type": "image"' in spec and '"type": "circle"' in spec
    data = b"".join(d.data.data for d in chart.proto.datasets) + chart.proto.data.data  # Arrow tables
    assert data.count(b"data:image/jpeg;base64,") == 21 and b"Coffee cup." in data  # one thumbnail per image


def test_embedding_map_projects_every_image_and_caps(svc):
    engine = Engine(svc)
    full = engine.embedding_map("samples")
    assert len(full["points"]) == full["total"] == 21 and not full["capped"]
    xs = [p["x"] for p in full["points"]]
    assert max(xs) > min(xs) and full["explained"][0] >= full["explained"][1] > 0
    assert all(p["thumbnail"].startswith("data:image/jpeg;base64,") for p in full["points"])
    assert "Coffee cup." in {p["caption"] for p in full["points"]}
    capped = engine.embedding_map("samples", limit=5)
    assert len(capped["points"]) == 5 and capped["capped"] and capped["total"] == 21
    with pytest.raises(ValueError, match="no collection named 'nope'"):
        engine.embedding_map("nope")


# -- over the HTTP API -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http(svc):
    key = create_api_key(svc, "ui", {"*": "write"})
    with TestClient(create_app(svc)) as tc:
        yield HttpClient("http://testserver", key, http=tc)


def test_http_client_offers_what_the_local_client_does(http, svc, photos):  # noqa: F811
    local = LocalClient(Engine(svc))
    assert [c["name"] for c in http.collections()] == [c["name"] for c in local.collections()]
    cat = asset_id(svc, "chelsea.png")
    by_http = http.search(asset_id=cat, collection="samples", k=4, offset=2)  # more like this, page 2
    by_local = local.search(asset_id=cat, collection="samples", k=4, offset=2)
    assert [h["id"] for h in by_http["hits"]] == [h["id"] for h in by_local["hits"]] and len(by_http["hits"]) == 4
    for kw in ({"filters": {"format": ["JPEG"]}}, {"filters": {"format": ["PNG"]}, "mode": "keyword"},
               {"collapse": False, "mode": "vector"}):
        by_http = http.search(text="a cat", collection="samples", k=5, **kw)
        by_local = local.search(text="a cat", collection="samples", k=5, **kw)
        assert [h["id"] for h in by_http["hits"]] == [h["id"] for h in by_local["hits"]], kw
        assert by_http["no_match"] == by_local["no_match"]
    data = (photos.parent / "images" / "coffee.png").read_bytes()
    assert Path(http.search(image=("q.png", data), collection="samples", k=3)["hits"][0]["path"]).name == "coffee.png"
    assert http.thumbnail(by_http["hits"][0]["id"], 64)[:2] == b"\xff\xd8"
    assert http.asset(by_http["hits"][0]["id"])["collection"] == "samples"
    *_, final = list(http.stream_answer("zqxj vbnm wrtp?", collection="samples"))
    assert isinstance(final, dict) and final["abstained"]
    assert http.answerer_status()["answerer"] == "extractive"
    *pieces, final = list(http.stream_answer("What is in the coffee cup?", collection="samples"))
    assert pieces and all(isinstance(p, str) for p in pieces) and isinstance(final, dict)
    assert Path(final["evidence"][0]["image_path"]).name == "coffee.png"
    if not final["abstained"]:
        assert "".join(pieces).strip() == final["answer"]  # the streamed text is the answer, newlines and all
    job_id = http.upload("via-api", [("horse.png", (photos.parent / "images" / "horse.png").read_bytes())])
    assert isinstance(job_id, int) and http.job(job_id)["collection"] == "via-api"
    assert [j["id"] for j in http.recent_jobs("via-api")] == [j["id"] for j in local.recent_jobs("via-api")]
    assert [j["id"] for j in http.recent_jobs(n=3)] == [j["id"] for j in local.recent_jobs(n=3)]
    with pytest.raises(GeneratorMissing, match="OMNIBRIDGE_GENERATOR"):
        http.generate_similar(by_http["hits"][0]["id"], n=1)
    by_http, by_local = http.embedding_map("samples"), local.embedding_map("samples")
    assert [(p["id"], round(p["x"], 4)) for p in by_http["points"]] == \
        [(p["id"], round(p["x"], 4)) for p in by_local["points"]] and by_http["total"] == 21
    assert http.create_collection("made-over-api")["name"] == "made-over-api"
    assert "made-over-api" in [c["name"] for c in local.collections()]
    with pytest.raises(ClientError, match="collection name 'a/b'"):
        http.create_collection("a/b")
    for kw in ({"filters": {"format": ["JPEG"]}}, {"collapse": False}):
        by_http = http.search(image=("q.png", data), collection="samples", k=4, **kw)
        by_local = local.search(image=("q.png", data), collection="samples", k=4, **kw)
        assert [h["id"] for h in by_http["hits"]] == [h["id"] for h in by_local["hits"]], kw
    with pytest.raises(ClientError, match="no such file or folder|outside"):
        http.ingest_paths("samples", ["/no/such/folder"])


def test_http_client_names_a_refused_key_and_an_unreachable_api(svc):
    with TestClient(create_app(svc)) as tc:
        with pytest.raises(ClientError, match="refused the key.*OMNIBRIDGE_API_KEY"):
            HttpClient("http://testserver", "wrong", http=tc).collections()
    with pytest.raises(ClientError, match="cannot reach the API at http://127.0.0.1:9.*omnibridge serve"):
        HttpClient("http://127.0.0.1:9", "k", timeout=2).collections()


def test_the_pages_work_over_the_api(http):
    ui.client.use(http)
    try:
        at = app()
        assert "API at http://testserver" in str(at.sidebar.caption[0].value)
        at.text_input(key="q").input("a cup of coffee").run()
        assert not at.exception and hit_names(at)[0] == "coffee.png"
        at = app("explore")
        at.selectbox(key="explore_collection").select("samples").run()
        assert not at.exception and "**samples**: 21 images" in texts(at) and at.get("vega_lite_chart")
    finally:
        ui.client.use(None)
