"""The API as an attacker would use it: a key scoped to collection A must never reach collection B's files or the
data directory (issue 11, item 1); paths shown to scoped keys; symlinks out of a collection; bad input that used to
give 500s; the request limits on a real server; the offline API docs; uploads with one bad file."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from engine.api.auth import create_api_key
from engine.api.limits import SERVER_LIMITS
from engine.api.main import create_app
from engine.engine import Engine
from engine.services import Services
from engine.settings import load_settings
from tests.test_ingest import model, photos  # noqa: F401  (fixtures)


@dataclass
class World:
    client: TestClient
    svc: Services
    library: Path
    keys: dict[str, str]

    def h(self, key: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def wait(self, job_id: int, key: str = "admin") -> dict:
        deadline = time.monotonic() + 120
        while (job := self.client.get(f"/jobs/{job_id}", headers=self.h(key)).json())["status"] not in ("done",
                                                                                                        "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        return job


def png_bytes(colour=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory, photos, model) -> World:  # noqa: F811
    root = tmp_path_factory.mktemp("access")
    library = root / "library"
    images = photos.parent / "images"
    for name, files in {"a": ("coffee", "rocket"), "b": ("astronaut", "horse")}.items():
        (library / name).mkdir(parents=True)
        for f in files:
            shutil.copy(images / f"{f}.png", library / name / f"{f}.png")
    svc = Services(load_settings(home=root / "home", batch_size=8, library_roots=[library]))
    svc._model = model
    keys = {
        "admin": create_api_key(svc, "admin", {"*": "write"}),
        "a_write": create_api_key(svc, "a-writer", {"A": "write"}),
        "a_read": create_api_key(svc, "a-reader", {"A": "read"}),
        "b_write": create_api_key(svc, "b-writer", {"B": "write"}),
    }
    with TestClient(create_app(svc)) as client:
        w = World(client, svc, library, keys)
        for coll, key in (("A", "a_write"), ("B", "b_write")):
            r = client.post(f"/collections/{coll}/ingest", json={"paths": [str(library / coll.lower())]},
                            headers=w.h(key))
            assert r.status_code == 202, r.text
            assert w.wait(r.json()["id"])["status"] == "done"
        yield w


def test_a_key_scoped_to_a_cannot_ingest_b_or_the_data_directory(world):
    """The reproduction of issue 11: B uploads a secret, A's write key tries every way to pull it into A."""
    r = world.client.post("/collections/B/upload", files={"files": ("b_secret.png", png_bytes(), "image/png")},
                          headers=world.h("b_write"))
    assert r.status_code == 202, r.text
    assert world.wait(r.json()["id"])["indexed"] == 1
    home = world.svc.settings.home.resolve()
    escapes = {
        str(home / "media" / "uploads" / "B"): "data directory",  # B's uploads
        str(home): "data directory",  # everything: the database, the vector store
        str(home / "media"): "data directory",
        str(home / "omnibridge.db"): "data directory",
        str(world.library / "b"): "another collection",  # B's library folder
        str(world.library): "another collection",  # a folder holding B's
        "/etc": "library roots",  # outside the operator's library roots
        str(home.parent): "data directory",  # a folder holding the data directory
    }
    for path, why in escapes.items():
        r = world.client.post("/collections/A/ingest", json={"paths": [path]}, headers=world.h("a_write"))
        assert r.status_code == 403, (path, r.text)
        assert "paths[0]" in r.json()["detail"] and why in r.json()["detail"], (path, r.json())
    # nothing of B reached A: a search by B's words in A finds none of B's files, and B's files are not served
    r = world.client.post("/search", json={"text": "b secret", "collection": "A", "mode": "keyword"},
                          headers=world.h("a_read"))
    assert r.status_code == 200 and r.json()["hits"] == []
    # the folder A was created from, its own uploads, and a new folder of the library are fine
    (world.library / "a2").mkdir(exist_ok=True)
    Image.new("RGB", (40, 40), (10, 200, 10)).save(world.library / "a2" / "green.png")
    for path in (world.library / "a", world.library / "a2"):
        r = world.client.post("/collections/A/ingest", json={"paths": [str(path)]}, headers=world.h("a_write"))
        assert r.status_code == 202, r.text
        assert world.wait(r.json()["id"])["status"] == "done"


def test_a_symlink_out_of_an_ingested_folder_is_refused_and_never_served(world):
    secret = world.svc.settings.media_dir / "uploads" / "B" / "b_secret.png"
    if not secret.exists():
        world.client.post("/collections/B/upload", files={"files": ("b_secret.png", png_bytes(), "image/png")},
                          headers=world.h("b_write"))
    folder = world.library / "a3"
    folder.mkdir(exist_ok=True)
    shutil.copy(world.library / "a" / "coffee.png", folder / "coffee.png")
    link = folder / "innocent.png"
    if not link.exists():
        link.symlink_to(secret)
    r = world.client.post("/collections/A/ingest", json={"paths": [str(folder)]}, headers=world.h("a_write"))
    job = world.wait(r.json()["id"], "a_write")
    assert job["status"] == "done" and job["failed"] >= 1
    assert any(e["path"].endswith("innocent.png") and "outside" in e["error"] for e in job["errors"]), job

    # a symlink written by the operator's own CLI ingest is indexed, but its file is not served to anybody
    engine: Engine = world.client.app.state.engine
    outside = world.library.parent / "outside.png"
    Image.new("RGB", (32, 32), (250, 250, 0)).save(outside)
    lib = world.library / "linked"
    lib.mkdir(exist_ok=True)
    if not (lib / "sunflower.png").exists():
        (lib / "sunflower.png").symlink_to(outside)
    shutil.copy(world.library / "a" / "rocket.png", lib / "rocket.png")
    from ingest import pipeline

    pipeline.run_inline(world.svc, [str(lib)], "linked")
    hits = engine.search(text="sunflower", collection="linked", mode="keyword")["hits"]
    out_id = next(h["id"] for h in hits if h["path"].endswith("sunflower.png"))
    for what in ("original", "thumbnail"):
        assert world.client.get(f"/assets/{out_id}/{what}", headers=world.h("admin")).status_code == 403
    points = world.client.get("/collections/linked/map", headers=world.h("admin")).json()["points"]
    pictures = {Path(p["path"]).name: p["thumbnail"] for p in points}
    assert pictures["sunflower.png"] is None and pictures["rocket.png"].startswith("data:image/jpeg")
    with pytest.raises(ValueError, match="outside the folders"):
        engine.thumbnail(out_id)


def test_scoped_keys_see_no_server_paths(world):
    r = world.client.post("/search", json={"text": "a cup of coffee", "collection": "A", "k": 3},
                          headers=world.h("a_read"))
    assert r.status_code == 200
    paths = [h["path"] for h in r.json()["hits"]]
    assert paths and all(not p.startswith("/") for p in paths), paths
    assert "coffee.png" in paths
    hit = r.json()["hits"][0]
    assert not world.client.get(f"/assets/{hit['id']}", headers=world.h("a_read")).json()["path"].startswith("/")
    colls = world.client.get("/collections", headers=world.h("a_read")).json()["collections"]
    assert [c["root"] for c in colls] and not any(c["root"].startswith("/") for c in colls)
    jobs = world.client.get("/jobs?collection=A", headers=world.h("a_read")).json()["jobs"]
    assert jobs and not any(j["source"].startswith("/") for j in jobs)
    points = world.client.get("/collections/A/map", headers=world.h("a_read")).json()["points"]
    assert points and not any(p["path"].startswith("/") for p in points)
    # the operator sees the real paths
    r = world.client.post("/search", json={"text": "a cup of coffee", "collection": "A", "k": 1},
                          headers=world.h("admin"))
    assert r.json()["hits"][0]["path"].startswith(str(world.library))


def test_inputs_that_gave_500s_are_4xx_naming_the_field(world):
    for until in ("9999-12-31", "0001-01-01", "9999-12-31T23:59:59+14:00"):
        r = world.client.post("/search", json={"text": "cat", "filters": {"until": until, "since": until}},
                              headers=world.h("admin"))
        assert r.status_code == 200, (until, r.text)
        r = world.client.post("/search/image", files={"file": ("q.png", png_bytes(), "image/png")},
                              data={"filters": f'{{"until": "{until}"}}'}, headers=world.h("admin"))
        assert r.status_code == 200, (until, r.text)
    long = str(world.library / ("x" * 300) / "y")
    r = world.client.post("/collections/A/ingest", json={"paths": [long]}, headers=world.h("admin"))
    assert r.status_code == 400 and "paths[0]" in r.json()["detail"] and "255" in r.json()["detail"]
    r = world.client.post("/collections/A/ingest", json={"paths": [str(world.library / "a")], "ocr": "yes"},
                          headers=world.h("admin"))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ocr"]
    r = world.client.post("/search", json={"text": "cat", "collapse": "no"}, headers=world.h("admin"))
    assert r.status_code == 422
    name = "a" * 5000 + ".png"
    r = world.client.post("/collections/A/upload", files={"files": (name, png_bytes(), "image/png")},
                          headers=world.h("a_write"))
    assert r.status_code == 400 and "file name" in r.json()["detail"] and "255" in r.json()["detail"]


def test_an_upload_with_one_broken_file_indexes_the_rest(world):
    files = [("files", (f"square-{i}.png", png_bytes((20 * i, 255 - 20 * i, 90)), "image/png")) for i in range(11)]
    files.insert(5, ("files", ("broken.png", png_bytes()[:40], "image/png")))
    r = world.client.post("/collections/A/upload", files=files, headers=world.h("a_write"))
    assert r.status_code == 202, r.text
    job = world.wait(r.json()["id"], "a_write")
    assert (job["status"], job["indexed"], job["failed"]) == ("done", 11, 1), job
    assert [e["path"] for e in job["errors"]] == ["broken.png"] and "not a readable image" in job["errors"][0]["error"]
    stored = world.svc.settings.media_dir / "uploads" / "A"
    assert not (stored / "broken.png").exists() and (stored / "square-0.png").exists()


def test_api_docs_work_offline(world):
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = world.client.get(page).text
        assert "cdn.jsdelivr" not in html and "unpkg" not in html and asset in html, page
        src = next(part.split('"')[0] for part in html.split('src="')[1:] if asset in part.split('"')[0])
        r = world.client.get(src)
        assert r.status_code == 200 and len(r.content) > 100_000, (src, r.status_code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def test_a_stalled_request_body_is_cut_off_with_408(world):
    """A real uvicorn server with the product's limits: a client that declares 1000 bytes, sends 10 and stops gets
    408 after OMNIBRIDGE_REQUEST_TIMEOUT, not a connection held open; an oversized header block is refused."""
    svc = Services(world.svc.settings.model_copy(update={"request_timeout": 1.0}))
    svc._model = world.svc._model
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port, log_level="error",
                                           **SERVER_LIMITS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"X-API-Key: " + world.keys["admin"].encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"text\": ")
            started = time.monotonic()
            reply = _read_all(s)
            waited = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"OMNIBRIDGE_REQUEST_TIMEOUT" in reply and waited < 5
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * 200_000 + b"\r\n\r\n")
                reply = _read_all(s)
        except (ConnectionResetError, BrokenPipeError):  # refused while we were still sending
            reply = b""
        assert reply.startswith(b"HTTP/1.1 4") or reply == b"", reply[:200]  # refused or closed, never served
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_operator_gathers_folders_but_never_the_data_directory(world):
    """A '*' write key may build a collection over several collections' folders; scoped keys keep their own."""
    r = world.client.post("/collections/everything/ingest", json={"paths": [str(world.library)]},
                          headers=world.h("admin"))
    assert r.status_code == 202 and world.wait(r.json()["id"])["status"] == "done"
    home = world.svc.settings.home.resolve()
    for path in (home, home / "media" / "generated"):
        r = world.client.post("/collections/everything/ingest", json={"paths": [str(path)]}, headers=world.h("admin"))
        assert r.status_code == 403, path
    # A may still re-ingest its own folder, but no longer a new library folder that 'everything' now holds
    r = world.client.post("/collections/A/ingest", json={"paths": [str(world.library / "a")]},
                          headers=world.h("a_write"))
    assert r.status_code == 202
    (world.library / "a4").mkdir(exist_ok=True)
    r = world.client.post("/collections/A/ingest", json={"paths": [str(world.library / "a4")]},
                          headers=world.h("a_write"))
    assert r.status_code == 403 and "another collection" in r.json()["detail"]


@pytest.mark.parametrize("env", [{"OMNIBRIDGE_LIBRARY_ROOTS": "/srv/a:/srv/b,/srv/c"}])
def test_library_roots_setting(env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert [str(p) for p in load_settings().library_roots] == ["/srv/a", "/srv/b", "/srv/c"]
    monkeypatch.setenv("OMNIBRIDGE_LIBRARY_ROOTS", "relative/folder")
    from engine.settings import SettingsError

    with pytest.raises(SettingsError, match="OMNIBRIDGE_LIBRARY_ROOTS"):
        load_settings()
    assert os.environ["OMNIBRIDGE_LIBRARY_ROOTS"] == "relative/folder"


def test_the_read_timeout_covers_the_body_only_not_a_long_streamed_response():
    """A streamed answer listens for a disconnect while it writes; that wait is not a stalled upload."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from engine.api.limits import RequestSizeLimit

    async def slow(request):
        await request.body()

        async def pieces():
            for i in range(3):
                await asyncio.sleep(0.4)
                yield f"piece {i}\n"

        return StreamingResponse(pieces())

    app = RequestSizeLimit(Starlette(routes=[Route("/", slow, methods=["POST"])]), max_bytes=1000, read_timeout=0.3)
    with TestClient(app) as client:
        r = client.post("/", content=b"question")
    assert r.status_code == 200 and r.text == "piece 0\npiece 1\npiece 2\n"
