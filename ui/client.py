"""The UI's one way to the engine: `LocalClient` (an in-process Engine, the embedded default) or `HttpClient` (the
HTTP API, when OMNIBRIDGE_API_URL is set). Both offer the same methods and raise `ClientError` with a message meant
for the user.

    client = from_settings(get_settings())
    client.search(text="a cat", collection="samples", k=12)     # {"hits": [...], "no_match": bool}
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from engine.settings import Settings


class ClientError(Exception):
    """Something the user should read: a bad value, an unknown id, an unreachable API."""


class GeneratorMissing(ClientError):
    """No image generator is configured; the message says how to configure one."""


GENERATOR_HOWTO = (
    "Generating similar images needs a diffusers image-to-image checkpoint. Set OMNIBRIDGE_GENERATOR to a local "
    "folder or a Hugging Face hub id (for example `OMNIBRIDGE_GENERATOR=stabilityai/stable-diffusion-2-1-base` "
    "with HF_HUB_OFFLINE=0 on its first use), then restart `omnibridge demo` or the UI."
)


class LocalClient:
    """The engine in this process (the embedded default)."""

    def __init__(self, engine):
        self.engine = engine
        engine.warm_answerer()  # the model and the answerer load in the background while the first page is read

    @property
    def where(self) -> str:
        return f"in-process engine, data in {self.engine.svc.settings.home}"

    @contextmanager
    def _errors(self):
        """Engine errors -> ClientError: bad values, and stores or databases that cannot be reached."""
        from engine.db import DatabaseError
        from engine.generate import GeneratorUnavailable
        from engine.qdrant_store import QdrantUnavailable
        from engine.shared_store import StoreUnavailable
        from sqlalchemy.exc import DatabaseError as SQLError

        from engine.vectors import StoreDamaged

        try:
            yield
        except GeneratorUnavailable as e:
            raise GeneratorMissing(str(e)) from None
        except (ValueError, ImportError, StoreUnavailable, QdrantUnavailable, DatabaseError, StoreDamaged) as e:
            raise ClientError(str(e)) from None
        except SQLError as e:  # a damaged database met mid-query
            raise ClientError(f"the metadata database failed ({str(e.orig or e).splitlines()[0]}); check it with "
                              "`omnibridge doctor`, restore a backup with `omnibridge restore DIR`") from None

    def collections(self) -> list[dict]:
        with self._errors():
            return self.engine.collections()

    def create_collection(self, name: str) -> dict:
        with self._errors():
            return self.engine.create_collection(name)

    def ingest_paths(self, collection: str, paths: list[str], ocr: bool = False) -> int:
        with self._errors():
            return self.engine.start_ingest(collection, paths, ocr=ocr)

    def upload(self, collection: str, files: list[tuple[str, bytes]], ocr: bool = False) -> int:
        with self._errors():
            return self.engine.ingest_uploads(collection, files, ocr=ocr)

    def job(self, job_id: int) -> dict:
        with self._errors():
            return self.engine.job(job_id)

    def recent_jobs(self, collection: str | None = None, n: int = 10) -> list[dict]:
        with self._errors():
            return self.engine.recent_jobs(collection, n)

    def search(self, text: str | None = None, image: tuple[str, bytes] | None = None, asset_id: int | None = None,
               collection: str | None = None, k: int = 12, offset: int = 0, filters: dict | None = None,
               include_synthetic: bool = False, collapse: bool = True, mode: str = "hybrid",
               target: str = "images", min_relevance: float | None = None) -> dict:
        """target: "images", or "texts" (captions, OCR, documents: hits carry asset_id, kind and content).
        min_relevance: None = the engine's default (every ranked hit, each flagged `likely` or not)."""
        kw = dict(collection=collection, k=k, offset=offset, filters=filters or None,
                  include_synthetic=include_synthetic, collapse=collapse, target=target, min_relevance=min_relevance)
        if text is not None:
            kw["mode"] = mode  # how a text matches: meaning and words, or one of them
        with self._errors():
            if image is None:
                return self.engine.search(text=text, asset_id=asset_id, **kw)
            with tempfile.TemporaryDirectory(prefix="omnibridge-query-") as tmp:
                path = Path(tmp) / ("query" + Path(image[0]).suffix.lower())
                path.write_bytes(image[1])
                return self.engine.search(image=path, **kw)

    def stream_answer(self, question: str, collection: str | None = None, k: int = 5) -> Iterator[str | dict]:
        """Text pieces as they are written, then the final answer as a dict (answer, citations, abstained, evidence)."""
        from engine.answer import Answer

        with self._errors():
            for item in self.engine.stream_answer(question, collection=collection, k=k):
                yield item.to_dict() if isinstance(item, Answer) else item

    def answerer_status(self) -> dict:
        return self.engine.answerer_status()

    def asset(self, asset_id: int) -> dict:
        with self._errors():
            return self.engine.asset_info(asset_id)

    def thumbnail(self, asset_id: int, size: int = 256) -> bytes:
        with self._errors():
            return self.engine.thumbnail(asset_id, size)

    def generator_configured(self) -> bool | None:
        return bool(self.engine.svc.settings.generator)

    def generate_similar(self, asset_id: int, n: int = 4, seed: int = 0, strength: float = 0.6, steps: int = 30,
                         prompt: str | None = None) -> list[dict]:
        from engine.generate import GenerationParams

        with self._errors():
            return self.engine.generate_similar(asset_id, GenerationParams(n=n, seed=seed, strength=strength,
                                                                           steps=steps), prompt=prompt or None)

    def embedding_map(self, collection: str, limit: int = 2000, include_synthetic: bool = False) -> dict:
        with self._errors():
            return self.engine.embedding_map(collection, limit=limit, include_synthetic=include_synthetic)


class HttpClient:
    """The HTTP API (production): every call sends the key as X-API-Key."""

    def __init__(self, base_url: str, api_key: str | None, http: httpx.Client | None = None, timeout: float = 120):
        self.base_url = base_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self.http.headers.update(headers)

    @property
    def where(self) -> str:
        return f"API at {self.base_url}"

    def _request(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach the API at {self.base_url} ({e}); start it with `omnibridge serve` or "
                              "check OMNIBRIDGE_API_URL") from None
        _check(r, self.base_url)
        return r

    def collections(self) -> list[dict]:
        return self._request("GET", "/collections").json()["collections"]

    def create_collection(self, name: str) -> dict:
        return self._request("POST", f"/collections/{_name(name)}").json()

    def ingest_paths(self, collection: str, paths: list[str], ocr: bool = False) -> int:
        body = {"paths": [p.strip() for p in paths if p.strip()], "ocr": ocr}
        return self._request("POST", f"/collections/{_name(collection)}/ingest", json=body).json()["id"]

    def upload(self, collection: str, files: list[tuple[str, bytes]], ocr: bool = False) -> int:
        parts = [("files", (name, data)) for name, data in files]
        return self._request("POST", f"/collections/{_name(collection)}/upload", files=parts,
                             data={"ocr": str(ocr).lower()}).json()["id"]

    def job(self, job_id: int) -> dict:
        return self._request("GET", f"/jobs/{job_id}").json()

    def recent_jobs(self, collection: str | None = None, n: int = 10) -> list[dict]:
        if collection is None:  # the API lists one collection's jobs (a key may not read them all)
            every = [j for c in self.collections() for j in self.recent_jobs(c["name"], n)]
            return sorted(every, key=lambda j: -j["id"])[:n]
        return self._request("GET", "/jobs", params={"collection": collection, "n": n}).json()["jobs"]

    def search(self, text: str | None = None, image: tuple[str, bytes] | None = None, asset_id: int | None = None,
               collection: str | None = None, k: int = 12, offset: int = 0, filters: dict | None = None,
               include_synthetic: bool = False, collapse: bool = True, mode: str = "hybrid",
               target: str = "images", min_relevance: float | None = None) -> dict:
        filters = {key: v for key, v in (filters or {}).items() if v not in (None, [], "")}
        if image is not None:
            form = {"k": str(k), "offset": str(offset), "include_synthetic": str(include_synthetic).lower(),
                    "collapse": str(collapse).lower(), "target": target}
            if min_relevance is not None:
                form["min_relevance"] = str(min_relevance)
            if collection:
                form["collection"] = collection
            if filters:
                form["filters"] = json.dumps(filters)
            return self._request("POST", "/search/image", files={"file": image}, data=form).json()
        body = {"text": text, "asset_id": asset_id, "collection": collection, "k": k, "offset": offset,
                "filters": filters or None, "include_synthetic": include_synthetic, "collapse": collapse,
                "mode": mode, "target": target, "min_relevance": min_relevance}
        return self._request("POST", "/search", json={key: v for key, v in body.items() if v is not None}).json()

    def stream_answer(self, question: str, collection: str | None = None, k: int = 5) -> Iterator[str | dict]:
        body = {"question": question, "k": k} | ({"collection": collection} if collection else {})
        try:
            with self.http.stream("POST", "/answer", params={"stream": "true"}, json=body,
                                  headers={"Accept": "text/event-stream"}) as r:
                if r.status_code >= 400:
                    r.read()
                    _check(r, self.base_url)
                yield from _sse(r.iter_lines())
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach the API at {self.base_url} ({e})") from None

    def answerer_status(self) -> dict:
        try:
            return self.http.get("/answer/status").json()
        except (httpx.HTTPError, ValueError) as e:
            return {"answerer": "?", "state": "failed", "error": f"cannot reach the API at {self.base_url} ({e})"}

    def asset(self, asset_id: int) -> dict:
        return self._request("GET", f"/assets/{asset_id}").json()

    def thumbnail(self, asset_id: int, size: int = 256) -> bytes:
        return self._request("GET", f"/assets/{asset_id}/thumbnail", params={"size": size}).content

    def generator_configured(self) -> bool | None:
        return None  # the API says so only when asked to generate (503)

    def generate_similar(self, asset_id: int, n: int = 4, seed: int = 0, strength: float = 0.6, steps: int = 30,
                         prompt: str | None = None) -> list[dict]:
        body = {"n": n, "seed": seed, "strength": strength, "steps": steps} | ({"prompt": prompt} if prompt else {})
        return self._request("POST", f"/assets/{asset_id}/generate-similar", json=body).json()["variants"]

    def embedding_map(self, collection: str, limit: int = 2000, include_synthetic: bool = False) -> dict:
        return self._request("GET", f"/collections/{_name(collection)}/map",
                             params={"limit": limit, "include_synthetic": str(include_synthetic).lower()}).json()


def _name(collection: str) -> str:
    """A collection name as a URL path segment; the API refuses names it does not allow, so refuse them here too."""
    from engine.catalog import check_collection_name

    try:
        return check_collection_name(collection)
    except ValueError as e:
        raise ClientError(str(e)) from None


def _check(r: httpx.Response, base_url: str) -> None:
    if r.status_code < 400:
        return
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = r.text[:300]
    if isinstance(detail, list):  # a pydantic validation error
        detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
    if r.status_code == 401:
        raise ClientError(f"the API at {base_url} refused the key ({detail}); set OMNIBRIDGE_API_KEY to a key "
                          "from `omnibridge keys create`")
    if r.status_code == 503 and "OMNIBRIDGE_GENERATOR" in str(detail):
        raise GeneratorMissing(str(detail))
    raise ClientError(str(detail))


def _sse(lines: Iterator[str]) -> Iterator[str | dict]:
    """Server-sent events of POST /answer: `data:` text pieces, then one `event: answer` with the JSON."""
    event, data = None, []
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line == "":
            if data:
                text = "\n".join(data)
                yield json.loads(text) if event == "answer" else text
            event, data = None, []
    if data:
        text = "\n".join(data)
        yield json.loads(text) if event == "answer" else text


def from_settings(settings: Settings) -> LocalClient | HttpClient:
    """HttpClient when OMNIBRIDGE_API_URL is set, else the in-process engine."""
    if settings.api_url:
        return HttpClient(settings.api_url, settings.api_key)
    from engine.engine import Engine
    from engine.services import get_services

    engine = Engine(get_services(settings))
    engine.start_background()  # resume ingest jobs a killed process left (engine.catalog)
    return LocalClient(engine)


_override: LocalClient | HttpClient | None = None


def use(client: LocalClient | HttpClient | None) -> None:
    """Make every page use this client (tests); None goes back to the settings."""
    global _override
    _override = client


def override() -> LocalClient | HttpClient | None:
    return _override
