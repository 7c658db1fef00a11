"""The one query engine: find, explain and make more like this, over ingested collections.

    engine = Engine()                                       # services from the settings (OMNIBRIDGE_*)
    engine.search(text="a cat", collection="photos")        # {"hits": [...], "no_match": bool}
    engine.search(asset_id=7)                               # more like this asset
    for piece in engine.stream_answer("What is the cat called?"): ...   # text pieces, then the Answer
    engine.generate_similar(7, GenerationParams(n=2, seed=1))            # saved, recorded, ingested as synthetic

The CLI uses it; the HTTP API and the UI are to use the same object. It knows nothing of HTTP or Streamlit.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from sqlalchemy import func, select

from .answer import Answer, Evidence, load_answerer, stream_answer
from .catalog import CatalogMixin
from .extractive import COUNT_K, search_texts, wants_many
from .db import Asset, Collection, GeneratedAsset, Text
from .generate import GenerationParams, Generator
from .keywords import coverage, file_words, keyword_text, query_terms
from .relevance import FILENAME_WEIGHT, Calibration, keyword_prob, load_calibration
from .services import Services, get_services
from .vectors import Sparse, StoreDamaged

EVIDENCE_TEXT_KINDS = ("alt", "tags", "ocr", "filename", "document")
TARGETS = ("images", "texts")
MODES = ("hybrid", "vector", "keyword")
EVIDENCE_COVERAGE = 0.5  # an unlikely hit whose texts hold this share of the subject's words is still evidence
MAX_POOL = 12_800  # candidates considered per side at most (deep pages of a huge collection stop there)


@dataclass
class Query:
    vec: np.ndarray  # (dim,) float32, the query's vector
    kind: str  # "text" or "image": which calibration applies
    terms: Sparse | None  # the query's keyword terms; None: no keyword side (image query or vector mode)
    mode: str


def _fallback_words(payload: dict) -> str:
    """Keyword text of a point written before payloads carried it: caption, tags, file name."""
    return keyword_text([payload.get("caption"), " ".join(payload.get("tags") or []),
                         file_words(payload.get("path") or "")])


def _coverage(terms: Sparse, payload: dict) -> float:
    """Keyword coverage of a hit: the share of the query's terms in its texts, a term found only in its file name
    counting FILENAME_WEIGHT (engine.relevance)."""
    text = payload.get("keywords") or payload.get("content") or _fallback_words(payload)
    full = coverage(terms, text)
    name = file_words(payload.get("path") or "")
    if not full or not name or payload.get("kind") == "text":
        return full
    rest = coverage(terms, "\n".join(line for line in text.split("\n") if line.strip() != name))
    return rest + FILENAME_WEIGHT * (full - rest)


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
                if key == "until" and len(str(value)) == 10:  # a whole day: up to the end of it
                    when = when + timedelta(days=1) if when.date() < datetime.max.date() else datetime.max
                stamp = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
            except (ValueError, OverflowError, OSError):  # not a date, or one past what a timestamp holds
                raise ValueError(f"filter {key!r} takes an ISO date like 2024-05-31, got {value!r}") from None
            out.setdefault("mtime", {})["gte" if key == "since" else "lt"] = stamp
        else:
            raise ValueError(f"unknown filter {key!r}; use format, tags, min_width, min_height, since, until")
    return out


def _measured(path: str | None) -> dict:
    """The visual facts of an evidence image (engine.visual), empty when the file cannot be read."""
    from .visual import measure

    try:
        facts = measure(path)
    except (OSError, ValueError, TypeError):
        return {}
    return {"colours": facts.colours, "brightness": facts.brightness, "colourfulness": facts.colourfulness}


class Engine(CatalogMixin):
    def __init__(self, services: Services | None = None):
        self.svc = services or get_services()
        self._lock = threading.Lock()
        self._encode = threading.Lock()  # one query encode at a time: torch already uses every core for one
        self._answerer = None
        self._answerer_load = threading.Lock()  # one load at a time; answers wait for it
        self._answerer_state, self._answerer_error = "not loaded", None
        self._calibration: Calibration | None = None
        self._generator: Generator | None = None

    # -- find ------------------------------------------------------------------------------------------------

    def search(self, text: str | None = None, image: str | Path | None = None, asset_id: int | None = None,
               collection: str | None = None, k: int = 10, offset: int = 0, filters: dict | None = None,
               include_synthetic: bool = False, collapse: bool = True, target: str = "images",
               mode: str = "hybrid", min_relevance: float | None = None) -> dict:
        """What matches a text, an image file or an indexed asset, best first.

        target: "images" (text->image, image->image, more like this) or "texts" (captions, OCR and text documents:
        text->text, image->text). mode: "hybrid" fuses the aligned vectors with BM25 keyword matches over captions,
        tags, OCR and file names (text queries; see engine.relevance), "vector" or "keyword" uses one side only.
        Every hit's `score` is its calibrated relevance in [0, 1] and `likely` says whether it reaches the model's
        threshold (the line: likely matches rank above it, the rest below, flagged); hits under `min_relevance` are
        left out (default 0: the ranked hits whatever their score), and `no_match` is true when nothing is likely.
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
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if min_relevance is not None and not (isinstance(min_relevance, (int, float)) and 0 <= min_relevance <= 1):
            raise ValueError(f"min_relevance must be a number in 0..1, got {min_relevance!r}")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ValueError("the text query is empty; type what you are looking for")
        if text is None and mode == "keyword":
            raise ValueError("keyword mode needs a text query; search by image with mode 'vector' or 'hybrid'")
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
            with self._encode:
                vec = self.svc.model.encode_texts([text], role="query")[0]
        flt["kind"] = "image" if target == "images" else "text"
        if not include_synthetic:
            flt["synthetic"] = False
        if collection:
            flt["collection"] = collection
        query = Query(vec=np.asarray(vec, dtype=np.float32), kind="text" if text is not None else "image",
                      terms=query_terms(text) if text is not None and mode != "vector" else None, mode=mode)
        cal = self.calibration()
        threshold = cal.threshold(query.kind)
        # the ranked hits come back whatever their score, each flagged `likely` or not (above or below the line);
        # no_match says whether any is likely; min_relevance leaves out the hits under it
        floor = float(min_relevance) if min_relevance is not None else 0.0
        notes = []
        if target == "texts" and query.kind == "text":
            notes.append("text->text scores use the text->image calibration; read them as a ranking")
        ranked, keywords_ok = self._ranked(space, query, cal, flt, offset + k, floor, asset_id, collapse)
        if query.terms is not None and not keywords_ok:
            notes.append("this vector space has no keyword index (made before keyword search existed): vector "
                         "search only; re-index with a new OMNIBRIDGE_HOME or model to get hybrid search")
        elif query.terms is not None and not query.terms:
            notes.append("the query has only stop words, so no keyword matching")
        best = ranked[0]["score"] if ranked else None
        hits = [h for h in ranked if h["score"] >= floor][offset:offset + k]
        if target == "images" and collapse:
            self._count_duplicates(hits)
        return {"hits": hits, "no_match": best is None or best < threshold, "best_score": best,
                "threshold": round(threshold, 4), "mode": mode, "target": target,
                "calibrated": cal.calibrated and not (target == "texts" and query.kind == "text"), "notes": notes}

    def calibration(self) -> Calibration:
        with self._lock:
            if self._calibration is None:
                self._calibration = load_calibration(self.svc.settings.model)
            return self._calibration

    def _ranked(self, space: str, q: Query, cal: Calibration, flt: dict, n: int, floor: float,
                exclude: int | None, collapse: bool) -> tuple[list[dict], bool]:
        """Hits ranked by relevance, one per near-duplicate group when collapsing. Candidates are the top `pool`
        of the vector search and of the keyword search; the pool grows until n hits reach `floor` or the store
        has no more. Returns (hits, whether the space has a keyword index)."""
        pool = max(3 * n, 50)
        while True:
            dense = self.svc.store.search(space, q.vec, k=pool, filter=flt) if q.mode != "keyword" else []
            self._check_similarities(dense, q.vec)
            sparse = (self.svc.store.keyword_search(space, q.terms, k=pool, filter=flt)
                      if q.terms and q.mode != "vector" else [])
            candidates = {h.id: (h.payload, float(h.score), None) for h in dense}
            missing = []
            for h in sparse or []:
                if h.id in candidates:
                    payload, sim, _ = candidates[h.id]
                    candidates[h.id] = (payload, sim, float(h.score))
                else:
                    missing.append(h.id)
                    candidates[h.id] = (h.payload, None, float(h.score))
            if missing and q.mode != "keyword":  # keyword-only candidates: their similarity, exactly
                for pid, _, v in self.svc.store.retrieve(space, missing, with_vectors=True):
                    payload, _, bm25 = candidates[pid]
                    candidates[pid] = (payload, float(v @ q.vec), bm25)
            hits = self._scored(q, cal, candidates.values(), exclude, collapse)
            dense_done = q.mode == "keyword" or len(dense) < pool
            sparse_done = not q.terms or q.mode == "vector" or sparse is None or len(sparse) < pool
            # the best relevance an item outside the pool could have: below the last vector hit's similarity,
            # and with keyword coverage only if the keyword list was cut
            unseen = cal.relevance(q.kind, dense[-1].score, 0.0 if sparse_done else 1.0) if dense else 0.0
            enough = sum(h["score"] >= floor for h in hits) >= n
            if enough or (sparse_done and (dense_done or unseen < floor)) or pool >= MAX_POOL:
                return hits, sparse is not None
            pool *= 4

    def _check_similarities(self, hits, vec: np.ndarray) -> None:
        """Vectors written by our models have length <= 2, so |similarity| <= 2 |q|: anything else (or NaN) is read
        from damaged vector files, and must not be shown as a perfect match."""
        limit = 2.0 * float(np.linalg.norm(vec)) + 1e-3
        for h in hits:
            if not math.isfinite(h.score) or abs(h.score) > limit:
                where = self.svc.settings.qdrant_url or self.svc.settings.qdrant_path
                raise StoreDamaged(f"the vector store at {where} returned an impossible similarity ({h.score:.3g}) "
                                   "for one of its points: its vector data is damaged; run `omnibridge doctor "
                                   "--repair` to rebuild it from the database and the files")

    def _scored(self, q: Query, cal: Calibration, candidates, exclude: int | None, collapse: bool) -> list[dict]:
        hits, groups = [], set()
        rows = []
        for p, sim, bm25 in candidates:
            if p.get("asset_id") == exclude:
                continue
            cov = _coverage(q.terms, p) if q.terms else 0.0
            if q.mode == "keyword":
                score, p_visual = keyword_prob(cov), 0.0
            else:
                score, p_visual = cal.relevance(q.kind, sim, cov), float(cal.prob(q.kind, sim))
            rows.append((score, sim if sim is not None else -1.0, bm25 or 0.0, p, sim, bm25, cov, p_visual))
        rows.sort(key=lambda r: r[:3], reverse=True)
        threshold = cal.threshold(q.kind)
        for score, _, _, p, sim, bm25, cov, p_visual in rows:
            matched = ("both" if p_visual >= threshold else "keyword") if cov > 0 else "visual"
            base = {"score": round(score, 4), "likely": score >= threshold,
                    "similarity": None if sim is None else round(sim, 4),
                    "keyword_score": None if bm25 is None else round(bm25, 4), "coverage": round(cov, 3),
                    "matched": matched, "path": p.get("path"), "collection": p.get("collection"),
                    "caption": p.get("caption"), "synthetic": bool(p.get("synthetic"))}
            if p.get("kind") == "text":
                hits.append({"id": p.get("text_id"), "asset_id": p.get("asset_id"), "kind": p.get("text_kind"),
                             "content": p.get("content"), **base})
                continue
            group = p.get("near_dup_group") or p.get("asset_id")
            if collapse and group in groups:
                continue
            groups.add(group)
            hits.append({"id": p.get("asset_id"), **base, "format": p.get("format"), "width": p.get("width"),
                         "height": p.get("height"), "tags": p.get("tags", []), "near_dup_group": group,
                         "duplicates": 0})
        return hits

    def _count_duplicates(self, hits: list[dict]) -> None:
        """Set each hit's `duplicates`: how many other indexed images share its near-duplicate group."""
        if not hits:
            return
        with self.svc.session() as db:
            sizes = dict(db.execute(select(Asset.near_dup_group, func.count()).where(
                Asset.near_dup_group.in_([h["near_dup_group"] for h in hits]), Asset.status == "indexed")
                .group_by(Asset.near_dup_group)).all())
        for h in hits:
            h["duplicates"] = max(sizes.get(h["near_dup_group"], 1) - 1, 0)

    # -- explain ---------------------------------------------------------------------------------------------

    def evidence(self, question: str, collection: str | None = None, k: int = 5,
                 min_relevance: float | None = None) -> list[Evidence]:
        """The k images most relevant to the question: the search's likely hits for the question's subject (see
        engine.extractive.search_texts), and the hits whose texts hold at least half of its words (a partial keyword
        match is not a likely search hit, but the answerer checks it word by word); with their texts from SQL,
        measured visual facts and, where the backbone has a classifier, its predicted labels."""
        from ingest.media import load_image

        found: dict[int, dict] = {}
        for text in search_texts(question):  # a comparison: each side on its own
            for h in self.search(text=text, collection=collection, k=k, min_relevance=min_relevance)["hits"]:
                if min_relevance is None and not (h["likely"] or h["coverage"] >= EVIDENCE_COVERAGE):
                    continue  # evidence: likely hits, and those whose texts hold half the question's subject
                found[h["id"]] = max(found.get(h["id"], h), h, key=lambda x: x["score"])
        hits = sorted(found.values(), key=lambda h: -h["score"])
        ids = [h["id"] for h in hits]
        texts: dict[int, dict[str, str]] = {i: {} for i in ids}
        captions: dict[int, str] = {}
        with self.svc.session() as db:
            for t in db.scalars(select(Text).where(Text.asset_id.in_(ids)).order_by(Text.id)):
                if t.kind == "caption":
                    captions.setdefault(t.asset_id, t.content)
                elif t.kind in EVIDENCE_TEXT_KINDS:
                    texts[t.asset_id][t.kind] = t.content
        labels: list[list[str]] = [[] for _ in hits]
        predict = getattr(self.svc.model.backbone, "predict_labels", None)
        if predict is not None and hits:
            s = self.svc.settings
            try:
                images = [load_image(h["path"], max_pixels=s.max_image_pixels, max_bytes=s.max_file_bytes).image
                          for h in hits]
                with self._encode:
                    labels = [[name for name, _ in found] for found in predict(images)]
            except (OSError, ValueError):  # a file gone since ingest: answer from its texts alone
                pass
        return [Evidence(asset_id=h["id"], score=h["score"], caption=captions.get(h["id"]), texts=texts[h["id"]],
                         labels=lab, image_path=h["path"], **_measured(h["path"])) for h, lab in zip(hits, labels)]

    def answerer(self):
        """The configured answerer, loaded (weights read, warmed up) on the first call; see `warm_answerer`."""
        with self._lock:
            if self._answerer is None:
                self._answerer = load_answerer(self.svc.settings.answerer, device=self.svc.settings.device)
            answerer = self._answerer
        with self._answerer_load:
            if self._answerer_state != "ready":
                getattr(answerer, "load", lambda: None)()
                self._answerer_state = "ready"
        return answerer

    def warm_answerer(self) -> threading.Thread:
        """Load the search model and the answerer in a background thread (the API and the UI call this at start, so
        the first answer does not wait for them); `answerer_status()` says how far it got."""
        def run():
            try:
                self.svc.model  # noqa: B018  (loads it: every answer searches first)
                self.answerer()
            except Exception as e:  # reported by answerer_status; the first answer will raise it again
                self._answerer_state, self._answerer_error = "failed", f"{type(e).__name__}: {e}"

        with self._lock:
            if self._answerer_state == "not loaded":
                self._answerer_state = "loading"
        thread = threading.Thread(target=run, name="answerer-load", daemon=True)
        thread.start()
        return thread

    def answerer_status(self) -> dict:
        """{"answerer": the setting, "state": "not loaded" | "loading" | "ready" | "failed", "error": ...}."""
        return {"answerer": self.svc.settings.answerer, "state": self._answerer_state, "error": self._answerer_error}

    def stream_answer(self, question: str, collection: str | None = None, k: int = 5,
                      min_relevance: float | None = None) -> Iterator[str | Answer]:
        """Text pieces as the model writes them, then the final Answer (citations, abstention, evidence).
        Evidence is what the search finds relevant (min_relevance: default the model's no-match threshold); with
        none, the answer abstains without loading the language model."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty; ask something about the collection")
        evidence = self.evidence(question, collection, max(k, COUNT_K) if wants_many(question) else k, min_relevance)
        answerer = self.answerer() if evidence else None
        yield from stream_answer(answerer, question, evidence, min_score=0.0)

    def answer(self, question: str, collection: str | None = None, k: int = 5,
               min_relevance: float | None = None) -> Answer:
        *_, final = self.stream_answer(question, collection, k, min_relevance)
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
