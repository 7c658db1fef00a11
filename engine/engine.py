"""The one query engine: find, explain and make more like this, over ingested collections.

    engine = Engine()                                       # services from the settings (OMNIBRIDGE_*)
    engine.search(text="a cat", collection="photos")        # {"hits": [...], "no_match": bool}
    engine.search(asset_id=7)                               # more like this asset
    for piece in engine.stream_answer("What is the cat called?"): ...   # text pieces, then the Answer
    engine.generate_similar(7, GenerationParams(n=2, seed=1))            # saved, recorded, ingested as synthetic

The CLI uses it; the HTTP API and the UI are to use the same object. It knows nothing of HTTP or Streamlit.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import numpy as np
from sqlalchemy import func, select

from .answer import DEFAULT_MIN_SCORE, Answer, Evidence, load_answerer, stream_answer
from .catalog import CatalogMixin
from .db import Asset, Collection, GeneratedAsset, Text
from .generate import GenerationParams, Generator
from .services import Services, get_services

EVIDENCE_TEXT_KINDS = ("alt", "tags", "ocr", "filename", "document")


def store_filter(filters: dict) -> dict:
    """User filters -> the store's filter dict (engine.vectors); an unknown key or a bad value names itself."""
    from datetime import datetime, timedelta, timezone

    out: dict = {}
    for key, value in filters.items():
        if value is None or value == []:
            continue
        if key in ("format", "tags"):
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"filter {key!r} takes a name or a list of names, got {value!r}")
            out[key] = [v.upper() for v in values] if key == "format" else values
        elif key in ("min_width", "min_height"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"filter {key!r} takes a number of pixels >= 0, got {value!r}")
            out[key.removeprefix("min_")] = {"gte": value}
        elif key in ("since", "until"):
            try:
                when = datetime.fromisoformat(str(value))
            except ValueError:
                raise ValueError(f"filter {key!r} takes an ISO date like 2024-05-31, got {value!r}") from None
            if key == "until" and len(str(value)) == 10:  # a whole day: up to the end of it
                when += timedelta(days=1)
            stamp = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
            out.setdefault("mtime", {})["gte" if key == "since" else "lt"] = stamp
        else:
            raise ValueError(f"unknown filter {key!r}; use format, tags, min_width, min_height, since, until")
    return out


class Engine(CatalogMixin):
    def __init__(self, services: Services | None = None):
        self.svc = services or get_services()
        self._lock = threading.Lock()
        self._encode = threading.Lock()  # one query encode at a time: torch already uses every core for one
        self._answerer = None
        self._generator: Generator | None = None

    # -- find ------------------------------------------------------------------------------------------------

    def search(self, text: str | None = None, image: str | Path | None = None, asset_id: int | None = None,
               collection: str | None = None, k: int = 10, offset: int = 0, filters: dict | None = None,
               include_synthetic: bool = False, collapse: bool = True) -> dict:
        """Images nearest to a text, an image file or an indexed asset, best first: {"hits": [...], "no_match"}.

        filters (see `store_filter`): format, tags (any of), min_width, min_height, since, until (ISO dates of the
        file's mtime). collapse: near-duplicates come back as one hit (the best) with `duplicates` = the size of
        its group minus one. offset/k page through the (collapsed) hits."""
        from ingest.media import load_image

        if sum(x is not None for x in (text, image, asset_id)) != 1:
            raise ValueError("give exactly one of a text, an image or an asset id to search by")
        if not isinstance(k, int) or not 1 <= k <= 1000:
            raise ValueError(f"k must be an integer in 1..1000, got {k!r}")
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an integer >= 0, got {offset!r}")
        flt = store_filter(filters or {})
        _, space, _ = self.svc.model_row()
        if asset_id is not None:  # more like this: the asset's image, encoded as a query
            image = self._asset(asset_id).uri
        if image is not None:
            s = self.svc.settings
            info = load_image(image, max_pixels=s.max_image_pixels, max_bytes=s.max_file_bytes)
            with self._encode:
                vec = self.svc.model.encode_images([info.image], role="query")[0]
        else:
            if not text.strip():
                raise ValueError("the text query is empty; type what you are looking for")
            with self._encode:
                vec = self.svc.model.encode_texts([text], role="query")[0]
        flt["kind"] = "image"
        if not include_synthetic:
            flt["synthetic"] = False
        if collection:
            flt["collection"] = collection
        hits = self._ranked(space, np.asarray(vec, dtype=np.float32), flt, offset + k, asset_id, collapse)[offset:]
        return {"hits": hits, "no_match": not hits}

    def _ranked(self, space: str, vec: np.ndarray, flt: dict, n: int, exclude: int | None, collapse: bool) -> list:
        """The first n hits, one per near-duplicate group when collapsing (pages through the store as needed)."""
        by_group: dict[int, dict] = {}
        hits: list[dict] = []
        page, seen = max(2 * n, 20), 0
        while len(hits) < n:
            batch = self.svc.store.search(space, vec, k=page, filter=flt, offset=seen)
            seen += len(batch)
            for h in batch:
                p = h.payload
                if p.get("asset_id") == exclude:
                    continue
                group = p.get("near_dup_group") or p.get("asset_id")
                if collapse and group in by_group:
                    continue
                hit = {"id": p.get("asset_id"), "score": round(float(h.score), 4), "path": p.get("path"),
                       "caption": p.get("caption"), "format": p.get("format"), "collection": p.get("collection"),
                       "width": p.get("width"), "height": p.get("height"), "tags": p.get("tags", []),
                       "synthetic": bool(p.get("synthetic")), "near_dup_group": group, "duplicates": 0}
                by_group[group] = hit
                hits.append(hit)
            if len(batch) < page:
                break
        hits = hits[:n]
        if collapse and hits:
            with self.svc.session() as db:
                sizes = dict(db.execute(select(Asset.near_dup_group, func.count()).where(
                    Asset.near_dup_group.in_([h["near_dup_group"] for h in hits]), Asset.status == "indexed")
                    .group_by(Asset.near_dup_group)).all())
            for h in hits:
                h["duplicates"] = max(sizes.get(h["near_dup_group"], 1) - 1, 0)
        return hits

    # -- explain ---------------------------------------------------------------------------------------------

    def evidence(self, question: str, collection: str | None = None, k: int = 5) -> list[Evidence]:
        """The k images most relevant to the question, with their texts from SQL."""
        hits = self.search(text=question, collection=collection, k=k)["hits"]
        ids = [h["id"] for h in hits]
        texts: dict[int, dict[str, str]] = {i: {} for i in ids}
        captions: dict[int, str] = {}
        with self.svc.session() as db:
            for t in db.scalars(select(Text).where(Text.asset_id.in_(ids)).order_by(Text.id)):
                if t.kind == "caption":
                    captions.setdefault(t.asset_id, t.content)
                elif t.kind in EVIDENCE_TEXT_KINDS:
                    texts[t.asset_id][t.kind] = t.content
        return [Evidence(asset_id=h["id"], score=h["score"], caption=captions.get(h["id"]), texts=texts[h["id"]],
                         image_path=h["path"]) for h in hits]

    def answerer(self):
        with self._lock:
            if self._answerer is None:
                self._answerer = load_answerer(self.svc.settings.answerer, device=self.svc.settings.device)
            return self._answerer

    def stream_answer(self, question: str, collection: str | None = None, k: int = 5,
                      min_score: float = DEFAULT_MIN_SCORE) -> Iterator[str | Answer]:
        """Text pieces as the model writes them, then the final Answer (citations, abstention, evidence)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; ask something about the collection")
        evidence = self.evidence(question, collection, k)
        answerer = self.answerer() if any(e.score >= min_score for e in evidence) else None
        yield from stream_answer(answerer, question, evidence, min_score)

    def answer(self, question: str, collection: str | None = None, k: int = 5,
               min_score: float = DEFAULT_MIN_SCORE) -> Answer:
        *_, final = self.stream_answer(question, collection, k, min_score)
        return final

    # -- make more like this ---------------------------------------------------------------------------------

    def generator(self) -> Generator:
        """The configured diffusers pipeline, loaded once; GeneratorUnavailable says how to configure one."""
        with self._lock:
            if self._generator is None:
                self._generator = Generator.load(self.svc.settings.generator, device=self.svc.settings.device)
            return self._generator

    def generate_similar(self, asset_id: int, params: GenerationParams | None = None, prompt: str | None = None,
                         out: str | Path | None = None) -> list[dict]:
        """Variants of an image asset, saved as PNG, recorded with their lineage and ingested into the source's
        collection flagged synthetic (so default searches leave them out). Prompt: the given one, else the
        asset's caption, else its file name."""
        from ingest import pipeline
        from ingest.media import load_image

        params = (params or GenerationParams()).check()
        source = self._asset(asset_id)
        with self.svc.session() as db:
            caption = db.scalar(select(Text.content).where(Text.asset_id == asset_id, Text.kind == "caption")
                                .order_by(Text.id))
            collection = db.get(Collection, source.collection_id).name
        prompt = prompt or caption or Path(source.uri).stem.replace("_", " ").replace("-", " ")
        generator = self.generator()
        s = self.svc.settings
        image = load_image(source.uri, max_pixels=s.max_image_pixels, max_bytes=s.max_file_bytes).image
        outputs = generator.generate(image, prompt, params)
        folder = Path(out) if out else s.media_dir / "generated" / f"asset-{asset_id}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for o in outputs:
            path = (folder / f"{Path(source.uri).stem}-{asset_id}-seed{o.seed}.png").resolve()
            o.image.save(path)
            paths.append(path)
        job = pipeline.run_inline(self.svc, [str(p) for p in paths], collection, synthetic=True)
        results = []
        with self.svc.session() as db:
            for o, path in zip(outputs, paths):
                row = db.scalar(select(Asset).where(Asset.collection_id == source.collection_id,
                                                    Asset.uri == str(path)))
                lineage = db.scalar(select(GeneratedAsset).where(GeneratedAsset.asset_id == row.id))
                if lineage is None:
                    lineage = GeneratedAsset(asset_id=row.id)
                    db.add(lineage)
                lineage.source_asset_id, lineage.prompt, lineage.model = asset_id, o.prompt, o.model
                lineage.seed, lineage.params = o.seed, o.params
                results.append({"asset_id": row.id, "path": str(path), "status": row.status, "seed": o.seed,
                                "prompt": o.prompt, "model": o.model, "params": o.params, "nsfw": o.nsfw,
                                "source_asset_id": asset_id, "collection": collection})
            db.commit()
        if job["failed"]:
            raise RuntimeError(f"{job['failed']} generated images could not be indexed: {job.get('errors')}")
        return results

    # -- helpers ---------------------------------------------------------------------------------------------

    def _asset(self, asset_id: int) -> Asset:
        with self.svc.session() as db:
            asset = db.get(Asset, asset_id) if isinstance(asset_id, int) and not isinstance(asset_id, bool) else None
            if asset is None or asset.media != "image":
                raise ValueError(f"no image asset with id {asset_id!r}; find ids with `omnibridge search ... --json`")
            return asset
