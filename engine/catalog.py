"""What the Engine knows about the library itself: collections, jobs, assets, thumbnails, embedding maps.

`CatalogMixin` is mixed into `engine.engine.Engine` (it uses `self.svc`, the process's Services):

    engine.collections()                                  # [{"name", "root", "assets": {status: n}}]
    job_id = engine.start_ingest("photos", ["/data/photos"])      # runs in the background; poll engine.job(job_id)
    job_id = engine.ingest_uploads("photos", [("cat.jpg", data)])  # stored under HOME/media/uploads/photos/
    engine.embedding_map("photos")                        # {"points": [{"id", "x", "y", ...}], "total", "capped"}
"""

from __future__ import annotations

import base64
import io
import re
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
from sqlalchemy import func, select

from .access import check_ingest_paths, may_serve, served_file, serving_roots
from .db import Asset, Collection, GeneratedAsset, Text, Vector

COLLECTION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # also a safe folder name (uploads go to media/uploads/NAME)
MAP_LIMIT = 2000  # points drawn on an embedding map at most


def check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not re.match(COLLECTION_NAME, name):
        raise ValueError(f"collection name {name!r}: use 1 to 128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (e.g. 'spring-campaign')")
    return name


class CatalogMixin:
    svc: object
    _runner = None
    _jobs_lock = threading.Lock()

    # -- collections and jobs --------------------------------------------------------------------------------

    def collections(self) -> list[dict]:
        """Every collection with its asset counts by status (indexed, duplicate, failed, pending)."""
        from ingest import pipeline

        return pipeline.status_report(self.svc, jobs=0, errors=0)["collections"]

    def create_collection(self, name: str) -> dict:
        """An empty collection whose root is its upload folder (HOME/media/uploads/NAME); existing: returned as is."""
        check_collection_name(name)
        root = self.svc.settings.media_dir / "uploads" / name
        with self.svc.session() as db:
            coll = db.scalar(select(Collection).where(Collection.name == name))
            if coll is None:
                root.mkdir(parents=True, exist_ok=True)
                coll = Collection(name=name, root=str(root.resolve()))
                db.add(coll)
                db.commit()
            return {"name": coll.name, "root": coll.root, "assets": {}}

    @property
    def ingest_runner(self):
        """The process's job runner (ingest.runner.IngestRunner), created on first use."""
        from ingest.runner import IngestRunner

        with self._jobs_lock:
            if self._runner is None:
                self._runner = IngestRunner(self.svc)
            return self._runner

    def start_background(self) -> None:
        """What a long-running process (API, UI) does besides answering: resume ingest jobs a killed process left
        and keep resuming stalled ones (embedded broker; workers do it themselves). Idempotent."""
        self.ingest_runner.start_recovery()

    def start_ingest(self, collection: str, paths: list[str], ocr: bool = False,
                     confine: list[str] | None = None) -> int:
        """Start a job over folders, files or PAIRS.jsonl (a bad path raises ValueError now); returns its id.

        Embedded broker: one job at a time on a background thread of this process; else queued to the workers."""
        check_collection_name(collection)
        paths = [str(p).strip() for p in paths if str(p).strip()]
        if not paths:
            raise ValueError("give at least one folder or file to ingest")
        return self.ingest_runner.start(paths, collection, ocr=ocr, confine=confine)

    def ingest_server_paths(self, collection: str, paths: list[str], ocr: bool = False,
                            everywhere: bool = False) -> int:
        """Start a job over server paths for a caller of the API or UI, under the path policy (engine.access):
        library roots and the collection's own uploads only, never another collection's files. The job follows no
        symlink out of the given folders. everywhere: the caller has write access to every collection."""
        check_collection_name(collection)
        with self.svc.session() as db:
            allowed = check_ingest_paths(db, self.svc.settings, collection, [str(p) for p in paths], everywhere)
        confine = [str(Path(p).parent) if p.lower().endswith(".jsonl") else p for p in allowed]
        return self.start_ingest(collection, allowed, ocr=ocr, confine=confine)

    def ingest_uploads(self, collection: str, files: list[tuple[str, bytes | BinaryIO]], ocr: bool = False) -> int:
        """Store uploaded images under HOME/media/uploads/COLLECTION (ingest.uploads.store_upload) and start a job.

        A refused file (bad name, too large, not a readable image) never stops the others: it is listed with its
        reason among the job's errors. Only when every file is refused does this raise, naming each one."""
        from ingest.media import MediaError
        from ingest.uploads import store_upload

        check_collection_name(collection)
        if not files:
            raise ValueError("choose at least one image to upload")
        s = self.svc.settings
        folder = s.media_dir / "uploads" / collection
        stored, refused, errors = [], [], []
        for name, data in files:
            try:
                path = store_upload(io.BytesIO(data) if isinstance(data, bytes) else data, name, folder,
                                    s.max_file_bytes, s.max_image_pixels)
                stored.append(str(path.resolve()))
            except MediaError as e:
                errors.append(e)
                refused.append({"path": str(name)[:255], "error": str(e)})
        if not stored:  # nothing to ingest: the refusal itself (all too large: UploadTooLarge, 413 in the API)
            kind = type(errors[0]) if all(type(e) is type(errors[0]) for e in errors) else MediaError
            raise kind("; ".join(map(str, errors)))
        return self.ingest_runner.start(list(dict.fromkeys(stored)), collection, ocr=ocr, refused=refused,
                                        confine=[str(folder.resolve())])

    def doctor(self, repair: bool = False) -> dict:
        """Compare the database with the vector store per space (ingest.doctor.check); with repair, fix them."""
        from ingest import doctor

        return doctor.check(self.svc, repair=repair)

    def health(self) -> dict:
        """The database and the vector store, as a monitor sees them (ingest.doctor.quick_check)."""
        from ingest import doctor

        return doctor.quick_check(self.svc)

    def job(self, job_id: int) -> dict:
        """A job's status, counters and its failed files (path and reason)."""
        from ingest import pipeline

        return pipeline.job_summary(self.svc, job_id, errors=100)

    def recent_jobs(self, collection: str | None = None, n: int = 10) -> list[dict]:
        from ingest import pipeline

        return pipeline.status_report(self.svc, collection, jobs=n, errors=0)["jobs"]

    # -- assets ----------------------------------------------------------------------------------------------

    def asset_info(self, asset_id: int) -> dict:
        """Metadata of an asset, its texts by kind, and its lineage when it was generated."""
        with self.svc.session() as db:
            row = db.get(Asset, asset_id) if isinstance(asset_id, int) else None
            if row is None:
                raise ValueError(f"no asset with id {asset_id!r}")
            texts: dict[str, list[str]] = {}
            for t in db.scalars(select(Text).where(Text.asset_id == asset_id).order_by(Text.id)):
                texts.setdefault(t.kind, []).append(t.content)
            lineage = db.scalar(select(GeneratedAsset).where(GeneratedAsset.asset_id == asset_id))
            return {"id": row.id, "collection": db.get(Collection, row.collection_id).name, "path": row.uri,
                    "media": row.media, "status": row.status, "error": row.error, "format": row.format,
                    "width": row.width, "height": row.height, "bytes": row.bytes, "sha256": row.sha256,
                    "duplicate_of": row.duplicate_of, "near_dup_group": row.near_dup_group,
                    "synthetic": row.synthetic, "job_id": row.job_id,
                    "created_at": row.created_at.isoformat() if row.created_at else None, "texts": texts,
                    "lineage": None if lineage is None else {
                        "source_asset_id": lineage.source_asset_id, "prompt": lineage.prompt,
                        "model": lineage.model, "seed": lineage.seed, "params": lineage.params}}

    def thumbnail(self, asset_id: int, size: int = 256) -> bytes:
        """A JPEG of the image asset, at most size x size."""
        with self.svc.session() as db:
            row = db.get(Asset, asset_id) if isinstance(asset_id, int) else None
            if row is None or row.media != "image":
                raise ValueError(f"no image asset with id {asset_id!r}")
            coll = db.get(Collection, row.collection_id)
            path = served_file(db, self.svc.settings, row.uri, coll)  # FileNotFoundError when gone
            if path is None:
                raise ValueError(f"asset {asset_id}: its file lies outside the folders its collection ingested")
        from ingest.media import thumbnail_jpeg

        return thumbnail_jpeg(path, size, self.svc.settings.max_image_pixels)

    # -- embedding map ---------------------------------------------------------------------------------------

    def embedding_map(self, collection: str, limit: int = MAP_LIMIT, thumb_size: int = 64,
                      include_synthetic: bool = False) -> dict:
        """A 2-D PCA projection of the collection's image vectors (the configured model's space); generated images
        only with include_synthetic.

        Returns {"points": [{"id", "x", "y", "caption", "path", "near_dup_group", "synthetic", "thumbnail"}],
        "total": images in the collection, "capped": whether only the first `limit` (by id) are drawn,
        "explained": the share of variance each axis explains}. Thumbnails are JPEG data URLs."""
        model_id, space, _ = self.svc.model_row()
        with self.svc.session() as db:
            coll = db.scalar(select(Collection).where(Collection.name == collection))
            if coll is None:
                raise ValueError(f"no collection named {collection!r}")
            where = (Vector.model_id == model_id, Vector.kind == "image", Asset.collection_id == coll.id,
                     Asset.status == "indexed") + (() if include_synthetic else (Asset.synthetic.is_(False),))
            total = db.scalar(select(func.count()).select_from(Vector).join(Asset, Vector.asset_id == Asset.id)
                              .where(*where))
            rows = db.execute(select(Asset.id, Asset.uri, Asset.near_dup_group, Asset.synthetic, Vector.point_id)
                              .join(Vector, Vector.asset_id == Asset.id).where(*where).order_by(Asset.id)
                              .limit(limit)).all()
            captions: dict[int, str] = {}
            for aid, content in db.execute(select(Text.asset_id, Text.content).where(
                    Text.asset_id.in_([r[0] for r in rows]), Text.kind == "caption").order_by(Text.id)):
                captions.setdefault(aid, content)
        vectors = {}
        for i in range(0, len(rows), 256):
            for pid, _, vec in self.svc.store.retrieve(space, [r[4] for r in rows[i:i + 256]], with_vectors=True):
                if vec is not None:
                    vectors[pid] = np.asarray(vec, dtype=np.float32)
        rows = [r for r in rows if r[4] in vectors]
        xy, explained = _pca2([vectors[r[4]] for r in rows])
        with self.svc.session() as db:  # a picture only for files the collection may serve (engine.access)
            coll = db.get(Collection, coll.id)
            sources = serving_roots(db, self.svc.settings, coll)
        points = [{"id": aid, "x": float(x), "y": float(y), "caption": captions.get(aid) or Path(uri).stem,
                   "path": uri, "near_dup_group": group or aid, "synthetic": bool(synthetic),
                   "thumbnail": _data_url(uri, thumb_size, self.svc.settings.max_image_pixels, sources)}
                  for (aid, uri, group, synthetic, _), (x, y) in zip(rows, xy)]
        return {"collection": collection, "points": points, "total": int(total or 0), "capped": total > len(rows),
                "explained": explained}


def _pca2(vectors: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    """n x 2 coordinates on the two main axes of the centred vectors, and the variance share of each axis."""
    if not vectors:
        return np.zeros((0, 2)), [0.0, 0.0]
    x = np.stack(vectors).astype(np.float64)  # n d
    x -= x.mean(0)
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2)), [0.0, 0.0]
    u, s, _ = np.linalg.svd(x, full_matrices=False)  # u: n r, s: r
    s2 = np.pad(s, (0, max(0, 2 - len(s))))[:2]
    xy = np.pad(u[:, :2], ((0, 0), (0, max(0, 2 - u.shape[1])))) * s2  # n 2
    var = float((s**2).sum()) or 1.0
    return xy, [round(float(v**2) / var, 4) for v in s2]


def _data_url(path: str, size: int, max_pixels: int, sources: list[Path]) -> str | None:
    from ingest.media import thumbnail_jpeg

    try:
        real = Path(path).resolve(strict=True)
        if not may_serve(real, sources):
            return None  # e.g. a symlink out of the collection's folders: drawn without a picture, as /thumbnail
        return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(path, size, max_pixels, 80)).decode()
    except (OSError, ValueError):  # the file is gone or unreadable: the point is drawn without a picture
        return None
