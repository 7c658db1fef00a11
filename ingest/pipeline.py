"""The ingestion pipeline as plain functions over `Services`: scan -> embed (validate, decode, embed, upsert) -> finalize.

SQL is the source of truth: every file becomes an `assets` row whose status moves pending -> indexed | duplicate |
failed. A task that dies leaves rows `pending`; running the job's remaining work again (see `recover`) finishes them.
Point ids are derived from row ids and status changes are conditional (`WHERE status = 'pending'`), so work done
twice indexes nothing twice: every asset is in the index exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update

from engine.db import Asset, Collection, Job, Model, Text, Vector, utcnow
from engine.keywords import document_terms, keyword_text
from engine.services import Services
from engine.vectors import point_id

from .media import MediaError, load_image, load_text, media_kind, ocr_image, sha256_file

log = logging.getLogger(__name__)

EMBEDDED_TEXT_KINDS = ("caption", "alt", "ocr", "document")  # texts that get their own text vector
NEAR_DUP_BITS = 6  # perceptual hashes within this Hamming distance (of 64 bits) are near-duplicates...
NEAR_DUP_COLOUR = 12.0  # ...if their quarters' mean colours also differ by at most this much (0..255, mean abs)
MAX_TEXT_PAYLOAD = 2000


MIN_FREE_MB = 96  # below this free space in the data directory a job stops (Edge's memory-mapped WAL grows in 32 MiB
# segments: writing past a full disk through a memory map kills the process with SIGBUS instead of raising)


class DiskFull(RuntimeError):
    """The data directory's disk is (nearly) full; the job stops with its files still pending, to resume later."""


def check_free_space(svc: Services) -> None:
    """Raise DiskFull naming the folder and the fix when the disk holding OMNIBRIDGE_HOME is nearly full."""
    home = svc.settings.home
    home.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(home).free / 2**20
    if free < MIN_FREE_MB:
        raise DiskFull(f"the disk holding {home} has {free:.0f} MB free (at least {MIN_FREE_MB} MB are needed): free "
                       "space there or move OMNIBRIDGE_HOME, then run the ingest again; what is done is kept and "
                       "the rest resumes")


class SourceError(ValueError):
    """The PATH given to ingest cannot be read; the message says why and what to pass instead."""


# -- sources ---------------------------------------------------------------------------------------------------

@dataclass
class Item:
    path: Path
    captions: list[str]
    tags: list[str] = field(default_factory=list)


def read_source(paths: list[str]) -> tuple[list[Item], list[Path]]:
    """Files to ingest from folders (recursive), single files and PAIRS.jsonl files, and the folders scanned.

    Returns (items sorted by path, roots): deleted-file detection applies under the roots only.
    """
    items: dict[Path, Item] = {}
    roots: list[Path] = []
    for raw in paths:
        try:
            p = Path(raw).expanduser().resolve()
            exists = p.exists()
        except (OSError, RuntimeError) as e:  # a name too long for the file system, a symlink loop
            raise SourceError(f"{str(raw)[:200]}: cannot be read ({getattr(e, 'strerror', None) or e}); "
                              "check the path") from None
        if not exists:
            raise SourceError(f"{raw}: no such file or folder; give a folder, an image or text file, or a PAIRS.jsonl")
        if p.is_dir():
            roots.append(p)
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    f = Path(dirpath) / name
                    if not name.startswith(".") and media_kind(f):
                        items.setdefault(f, Item(f, []))
        elif p.suffix.lower() == ".jsonl":
            for item in _read_pairs(p):
                known = items.setdefault(item.path, Item(item.path, []))
                known.captions.extend(item.captions)
                known.tags.extend(t for t in item.tags if t not in known.tags)
        elif media_kind(p):
            items.setdefault(p, Item(p, []))
        else:
            raise SourceError(f"{raw}: not an image, a .txt/.md document or a PAIRS.jsonl; "
                              "supported images: jpg, png, gif, webp, bmp, tiff")
    return sorted(items.values(), key=lambda i: str(i.path)), roots


def _read_pairs(path: Path) -> list[Item]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = (path.parent / row["image"]).resolve()
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SourceError(f"{path}:{n}: expected a JSON object with \"image\" and \"caption\" ({e})") from None
        captions, tags = row.get("caption") or [], row.get("tags") or []
        if not isinstance(captions, (str, list)) or not isinstance(tags, (str, list)):
            raise SourceError(f"{path}:{n}: \"caption\" and \"tags\" must be a string or a list of strings")
        captions = [captions] if isinstance(captions, str) else [str(c) for c in captions]
        tags = [t.strip() for t in tags.split(",")] if isinstance(tags, str) else [str(t).strip() for t in tags]
        out.append(Item(image, captions, [t for t in tags if t]))
    return out


# -- jobs ------------------------------------------------------------------------------------------------------

def create_job(svc: Services, paths: list[str], collection: str, ocr: bool = False, synthetic: bool = False,
               refused: list[dict] | None = None, confine: list[str] | None = None) -> int:
    """Register a job (and its collection); the source is checked now so a typo fails before anything runs.

    refused: files turned away before the job (uploads that are not images), listed among its errors.
    confine: folders the job's files must really lie in (symlinks resolved); a link out of them is refused."""
    read_source(paths)
    with svc.session() as db:
        coll = db.scalar(select(Collection).where(Collection.name == collection))
        if coll is None:
            first = Path(paths[0]).expanduser().resolve()
            coll = Collection(name=collection, root=str(first if first.is_dir() else first.parent))
            db.add(coll)
            db.flush()
        source = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"
        options = {"paths": list(paths), "ocr": ocr, "synthetic": synthetic, "refused": list(refused or [])}
        if confine is not None:
            options["confine"] = [str(Path(c).resolve()) for c in confine]
        job = Job(collection_id=coll.id, source=source, options=options, failed=len(options["refused"]))
        db.add(job)
        db.commit()
        return job.id


def scan(svc: Services, job_id: int) -> list[int]:
    """Walk the job's source; create or refresh asset rows; return the ids of assets to embed (status pending).

    Unchanged files are skipped, exact duplicates (same sha256 as an asset already in the collection) are recorded
    as such, changed files lose their old vectors, files gone from a scanned folder are removed. Safe to re-run.
    """
    with svc.session() as db:
        job = db.get(Job, job_id)
        job.status, job.started_at = "scanning", job.started_at or utcnow()
        db.commit()
        items, roots = read_source(job.options["paths"])
        refused = [r for r in job.options.get("refused", []) if r.get("stage") != "scan"]
        present = {str(i.path) for i in items}  # a refused link is not a deleted file: its asset stays
        items, escaped = _confined(items, job.options.get("confine"))
        refused += escaped
        cid = job.collection_id
        model_id = svc.model_row()[0]
        in_space = set(db.scalars(select(Vector.asset_id).where(Vector.model_id == model_id).distinct()))
        existing = {a.uri: a for a in db.scalars(select(Asset).where(Asset.collection_id == cid))}
        by_sha = {a.sha256: a for a in existing.values() if a.status in ("indexed", "pending") and a.sha256}
        seen, skipped, duplicates, failed = len(refused), 0, 0, len(refused)
        for item in items:
            seen += 1
            uri = str(item.path)
            asset = existing.get(uri)
            try:
                st = item.path.stat()
            except OSError as e:
                failed += 1
                log.warning("%s: %s", uri, e)
                continue
            sha, unchanged = None, False
            if asset is not None and asset.status != "pending" and asset.bytes == st.st_size:
                if asset.mtime != st.st_mtime:  # touched: unchanged only if the content is the same
                    sha = sha256_file(item.path)
                unchanged = asset.mtime == st.st_mtime or sha == asset.sha256
            if unchanged:
                asset.mtime = st.st_mtime  # touched, not changed
                _attach_captions(db, asset, item.captions, item.tags)
                if asset.status == "indexed" and asset.id not in in_space:
                    asset.status = "pending"  # indexed by another model: embed it into this model's space too
                if asset.status != "pending":
                    skipped += 1
                continue
            sha = sha or sha256_file(item.path)
            if asset is None:
                asset = Asset(collection_id=cid, uri=uri, media=media_kind(item.path),
                              synthetic=bool(job.options.get("synthetic")))
                db.add(asset)
                existing[uri] = asset
            else:
                _drop_vectors(svc, db, [asset.id])
                db.execute(delete(Text).where(Text.asset_id == asset.id, Text.kind != "caption"))
            asset.sha256, asset.bytes, asset.mtime, asset.job_id = sha, st.st_size, st.st_mtime, job_id
            asset.error, asset.duplicate_of = None, None
            original = by_sha.get(sha)
            if original is not None and original is not asset:
                asset.status, asset.duplicate_of = "duplicate", original.id
                duplicates += 1
            else:
                asset.status = "pending"
                by_sha[sha] = asset
            db.flush()
            _attach_captions(db, asset, item.captions, item.tags)
        removed = _remove_missing(svc, db, cid, roots, present)
        pending = list(db.scalars(select(Asset.id).where(Asset.collection_id == cid, Asset.status == "pending")
                                  .order_by(Asset.id)))
        db.execute(update(Asset).where(Asset.collection_id == cid, Asset.status == "pending").values(job_id=job_id))
        job.seen, job.skipped, job.duplicates, job.failed, job.indexed = seen, skipped, duplicates, failed, 0
        job.options = {**job.options, "queued": len(pending), "removed": removed, "scan_failed": failed,
                       "refused": refused}
        job.status = "running"
        db.commit()
        return pending


def _confined(items: list[Item], folders: list[str] | None) -> tuple[list[Item], list[dict]]:
    """Items whose real file (symlinks resolved) lies in `folders`, and refusals for those that link out."""
    if folders is None:
        return items, []
    roots = [Path(f) for f in folders]
    kept, refused = [], []
    for item in items:
        real = item.path.resolve()
        if any(real.is_relative_to(r) for r in roots):
            kept.append(item)
        else:
            refused.append({"path": str(item.path), "stage": "scan",
                            "error": "a link to a file outside the folders this key may ingest; not indexed"})
    return kept, refused


def _attach_captions(db, asset: Asset, captions: list[str], tags: list[str] = ()) -> None:
    """Add new captions (each embedded as a text) and tags (one comma-separated text, for filters and keywords)."""
    if tags:
        old = db.scalar(select(Text).where(Text.asset_id == asset.id, Text.kind == "tags"))
        merged = list(dict.fromkeys([*(old.content.split(", ") if old else []), *tags]))
        if old is None:
            db.add(Text(asset_id=asset.id, kind="tags", content=", ".join(merged)))
        elif merged != old.content.split(", "):
            old.content = ", ".join(merged)
            if asset.status == "indexed":  # payload tags change: upsert again
                asset.status = "pending"
    if not captions:
        return
    have = {t.content for t in db.scalars(select(Text).where(Text.asset_id == asset.id, Text.kind == "caption"))}
    for c in captions:
        if c and c not in have:
            db.add(Text(asset_id=asset.id, kind="caption", content=c))
            have.add(c)
            if asset.status == "indexed":  # a new caption on an indexed image: embed it on the next pass
                asset.status = "pending"


def _drop_vectors(svc: Services, db, asset_ids: list[int]) -> None:
    """Delete the assets' points from every model space that holds them, and their `vectors` rows."""
    rows = db.execute(select(Model.space, Vector.point_id).join(Model, Vector.model_id == Model.id)
                      .where(Vector.asset_id.in_(asset_ids))).all()
    by_space: dict[str, list[str]] = {}
    for space, pid in rows:
        by_space.setdefault(space, []).append(pid)
    for space, ids in by_space.items():
        if space in svc.store.spaces():
            svc.store.delete(space, ids)
    db.execute(delete(Vector).where(Vector.asset_id.in_(asset_ids)))


def _remove_missing(svc: Services, db, cid: int, roots: list[Path], present: set[str]) -> int:
    gone = []
    for root in roots:
        prefix = str(root) + os.sep
        gone += [a for a in db.scalars(select(Asset).where(Asset.collection_id == cid, Asset.uri.startswith(prefix)))
                 if a.uri not in present]
    if gone:
        ids = [a.id for a in gone]
        _drop_vectors(svc, db, ids)
        # copies of a removed file take its place
        db.execute(update(Asset).where(Asset.duplicate_of.in_(ids)).values(status="pending", duplicate_of=None))
        for a in gone:
            db.delete(a)
    return len(gone)


# -- embed -----------------------------------------------------------------------------------------------------

def embed(svc: Services, job_id: int, asset_ids: list[int]) -> dict[str, int]:
    """Validate, decode and embed a batch of pending assets; upsert their points; mark them indexed or failed."""
    check_free_space(svc)
    s = svc.settings
    model_id, space, _ = svc.model_row()
    with svc.session() as db:
        job = db.get(Job, job_id)
        ocr = bool(job.options.get("ocr")) if job else False
        collection = db.scalar(select(Collection.name).join(Job, Job.collection_id == Collection.id)
                               .where(Job.id == job_id))
        assets = list(db.scalars(select(Asset).where(Asset.id.in_(asset_ids), Asset.status == "pending")
                                 .order_by(Asset.id)))
        images, image_assets, failed = [], [], []
        for a in assets:
            try:
                if a.media == "image":
                    info = load_image(a.uri, max_pixels=s.max_image_pixels, max_bytes=s.max_file_bytes)
                    a.width, a.height, a.format, a.phash = info.width, info.height, info.format, info.phash
                    a.colour = info.colour
                    _set_text(db, a, "filename", _filename_text(a.uri))
                    if info.alt:
                        _set_text(db, a, "alt", info.alt)
                    if ocr:
                        words = ocr_image(info.image)
                        if words:
                            _set_text(db, a, "ocr", words)
                    images.append(info.image)
                    image_assets.append(a)
                else:
                    a.format = Path(a.uri).suffix.lstrip(".").upper() or "TXT"
                    _set_text(db, a, "document", load_text(a.uri, max_bytes=s.max_file_bytes))
            except (MediaError, OSError) as e:
                failed.append((a, str(e)))
        db.commit()  # texts get their final ids before any point is written, so a redo reuses the same point ids
        ok_ids = {a.id for a in assets} - {a.id for a, _ in failed}
        every = list(db.scalars(select(Text).where(Text.asset_id.in_(ok_ids)).order_by(Text.id)))
        texts = [t for t in every if t.kind in EMBEDDED_TEXT_KINDS]
        words: dict[int, list[str]] = {}  # asset id -> every text about it, for keyword search
        for t in every:
            words.setdefault(t.asset_id, []).append(t.content)
        by_id = {a.id: a for a in assets}
        ids, vecs, payloads, terms, rows = [], [], [], [], []
        if images:
            v = svc.model.encode_images(images, role="document", batch_size=s.batch_size)  # (n, dim)
            for a, vec in zip(image_assets, v):
                pid = point_id("image", a.id)
                p = _payload(a, collection, "image", texts)
                text = keyword_text(words.get(a.id, []))
                p["keywords"] = text[:MAX_TEXT_PAYLOAD]
                ids.append(pid), vecs.append(vec), payloads.append(p), terms.append(document_terms(text))
                rows.append(Vector(model_id=model_id, asset_id=a.id, point_id=pid, kind="image"))
        if texts:
            v = svc.model.encode_texts([t.content for t in texts], role="document")
            for t, vec in zip(texts, v):
                pid = point_id("text", t.id)
                p = _payload(by_id[t.asset_id], collection, "text", [t])
                p.update(text_id=t.id, text_kind=t.kind, content=t.content[:MAX_TEXT_PAYLOAD])
                ids.append(pid), vecs.append(vec), payloads.append(p), terms.append(document_terms(t.content))
                rows.append(Vector(model_id=model_id, asset_id=t.asset_id, text_id=t.id, point_id=pid, kind="text"))
        if ids:
            svc.store.upsert(space, ids, np.stack(vecs).astype(np.float32), payloads, terms)
        old = set(db.scalars(select(Vector.point_id).where(Vector.model_id == model_id,
                                                           Vector.asset_id.in_([a.id for a in assets]))))
        if old - set(ids):  # points of texts that are gone (e.g. OCR that found nothing this time)
            svc.store.delete(space, sorted(old - set(ids)))
        db.execute(delete(Vector).where(Vector.model_id == model_id, Vector.asset_id.in_([a.id for a in assets])))
        db.add_all(rows)
        db.commit()  # vectors rows and texts first; statuses next, conditionally, so a redo counts nothing twice
        indexed = _finish(db, job_id, [a.id for a in assets if a.id in ok_ids], "indexed", None)
        n_failed = 0
        for a, err in failed:
            n_failed += _finish(db, job_id, [a.id], "failed", err)
        db.commit()
    return {"indexed": indexed, "failed": n_failed}


def _finish(db, job_id: int, ids: list[int], status: str, error: str | None) -> int:
    if not ids:
        return 0
    n = db.execute(update(Asset).where(Asset.id.in_(ids), Asset.status == "pending")
                   .values(status=status, error=error, updated_at=utcnow())).rowcount
    if n:
        field = Job.indexed if status == "indexed" else Job.failed
        db.execute(update(Job).where(Job.id == job_id).values({field: field + n, "updated_at": utcnow()}))
    return n


def _set_text(db, asset: Asset, kind: str, content: str) -> None:
    """The asset's one text of this kind, updated in place so its id (and point id) stays the same."""
    row = db.scalar(select(Text).where(Text.asset_id == asset.id, Text.kind == kind))
    if row is None:
        db.add(Text(asset_id=asset.id, kind=kind, content=content))
    elif row.content != content:
        row.content = content


def _filename_text(uri: str) -> str:
    return Path(uri).stem.replace("_", " ").replace("-", " ").strip()


def _payload(a: Asset, collection: str, kind: str, texts: list[Text]) -> dict:
    own = [t for t in texts if t.asset_id == a.id]
    caption = next((t.content for t in own if t.kind == "caption"), None) or \
        next((t.content for t in own if t.kind == "alt"), None)
    tags = [w.strip() for t in own if t.kind == "tags" for w in t.content.split(",") if w.strip()]
    return {
        "kind": kind, "asset_id": a.id, "collection": collection, "path": a.uri, "format": a.format or "",
        "width": a.width or 0, "height": a.height or 0, "bytes": a.bytes or 0, "mtime": float(a.mtime or 0),
        "synthetic": bool(a.synthetic), "tags": tags, "caption": caption, "media": a.media,
        "near_dup_group": a.near_dup_group or a.id,
    }


# -- finalize --------------------------------------------------------------------------------------------------

def try_finalize(svc: Services, job_id: int) -> bool:
    """Finish the job when nothing of it is pending: group near-duplicates, set counts, mark done (once)."""
    with svc.session() as db:
        left = db.scalar(select(func.count()).select_from(Asset).where(Asset.job_id == job_id, Asset.status == "pending"))
        if left:
            return False
        claimed = db.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                             .values(status="finalizing", updated_at=utcnow())).rowcount
        db.commit()
        if not claimed:
            return False
        job = db.get(Job, job_id)
        group_near_duplicates(svc, db, job.collection_id)
        job.status, job.finished_at = "done", utcnow()
        db.commit()
        return True


def group_near_duplicates(svc: Services, db, collection_id: int, chunk: int = 128) -> int:
    """Union images whose perceptual hashes differ in <= NEAR_DUP_BITS bits and whose colours (engine: the mean
    colour of each quarter) differ by <= NEAR_DUP_COLOUR: the hash alone is blind to colour, so flat squares of any
    colour would be one group. Group id = smallest asset id. Images indexed before colours were recorded compare by
    hash alone.

    Recomputed over the whole collection (a changed file may leave its group): n^2/chunk XOR + popcount passes of
    (chunk, n) uint64, about 100 MB and seconds at 100k images."""
    rows = db.execute(select(Asset.id, Asset.phash, Asset.near_dup_group, Asset.colour).where(
        Asset.collection_id == collection_id, Asset.status == "indexed", Asset.phash.is_not(None)).order_by(Asset.id)).all()
    if not rows:
        return 0
    ids = np.array([r[0] for r in rows])
    hashes = np.array([int(r[1], 16) for r in rows], dtype=np.uint64)  # (n,) 64-bit perceptual hashes
    colours = np.array([np.frombuffer(bytes.fromhex(r[3]), np.uint8) if r[3] else np.full(12, -1)
                        for r in rows], dtype=np.int16)  # (n, 12) quarter colours; -1: not recorded
    parent = np.arange(len(rows))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def same_colours(i: int, j: int) -> bool:
        if colours[i, 0] < 0 or colours[j, 0] < 0:
            return True
        return float(np.abs(colours[i] - colours[j]).mean()) <= NEAR_DUP_COLOUR

    for start in range(0, len(rows), chunk):
        d = np.bitwise_count(hashes[start:start + chunk, None] ^ hashes[None, :])  # (chunk, n) Hamming distances
        for i, j in zip(*np.nonzero(d <= NEAR_DUP_BITS)):
            a, b = find(start + i), find(j)
            if a != b and same_colours(start + i, j):
                parent[max(a, b)] = min(a, b)
    changed: dict[int, list[int]] = {}  # new group -> members whose group changed in SQL
    stale: dict[int, list[int]] = {}  # new group -> members whose payload says otherwise
    for k, (asset_id, _, old, _) in enumerate(rows):
        group = int(ids[find(k)])
        if old != group:
            changed.setdefault(group, []).append(int(asset_id))
            if (old or asset_id) != group:  # embed wrote `near_dup_group or id` into the payload
                stale.setdefault(group, []).append(int(asset_id))
    for group, members in changed.items():
        db.execute(update(Asset).where(Asset.id.in_(members)).values(near_dup_group=group))
    spaces = [sp for sp in db.scalars(select(Model.space)) if sp in svc.store.spaces()] if stale else []
    for group, members in stale.items():
        pids = list(db.scalars(select(Vector.point_id).where(Vector.asset_id.in_(members))))
        for space in spaces:
            svc.store.set_payload(space, pids, {"near_dup_group": group})
    return sum(len(m) for m in changed.values())


def pending_work(svc: Services, job_id: int | None = None) -> tuple[list[int], dict[int, list[int]], list[int]]:
    """What an interrupted run left: (jobs to rescan, {job: pending asset ids}, jobs to finalize); of every
    unfinished job, or of one."""
    one = (Job.id == job_id,) if job_id is not None else ()
    with svc.session() as db:
        rescan = list(db.scalars(select(Job.id).where(Job.status.in_(("queued", "scanning")), *one)))
        running = list(db.scalars(select(Job.id).where(Job.status.in_(("running", "finalizing")), *one)))
        work = {}
        for jid in running:
            ids = list(db.scalars(select(Asset.id).where(Asset.job_id == jid, Asset.status == "pending")))
            if ids:
                work[jid] = ids
        db.execute(update(Job).where(Job.status == "finalizing", *one).values(status="running"))
        db.commit()
        return rescan, work, [j for j in running if j not in work]


UNFINISHED = ("queued", "scanning", "running", "finalizing")


def stalled_jobs(svc: Services, stale_seconds: float, statuses: tuple[str, ...] = UNFINISHED) -> list[tuple[int, object]]:
    """Unfinished jobs nobody has touched for `stale_seconds` (their owner died): [(job id, its updated_at)].
    A live owner touches its jobs every stale_seconds / 4 (see `Heartbeat`)."""
    cutoff = utcnow() - timedelta(seconds=stale_seconds)
    with svc.session() as db:
        return [(i, t) for i, t in db.execute(select(Job.id, Job.updated_at).where(
            Job.status.in_(statuses), Job.updated_at < cutoff).order_by(Job.id))]


def claim(svc: Services, job_id: int, seen_updated_at) -> bool:
    """Take over a stalled job: true for exactly one of several processes that saw the same `updated_at`."""
    with svc.session() as db:
        n = db.execute(update(Job).where(Job.id == job_id, Job.updated_at == seen_updated_at)
                       .values(updated_at=utcnow())).rowcount
        db.commit()
        return n == 1


def take_stalled(svc: Services, stale_seconds: float, statuses: tuple[str, ...] = UNFINISHED) -> list[int]:
    """Claim every job stalled for `stale_seconds` (`stalled_jobs`, `claim`): the ids this process now owns."""
    return [job_id for job_id, seen in stalled_jobs(svc, stale_seconds, statuses) if claim(svc, job_id, seen)]


class Heartbeat:
    """Touches `jobs.updated_at` of the jobs this process holds, every `interval` seconds, on a daemon thread, so
    other processes can tell a job in progress from one whose owner died (`stalled_jobs`)."""

    def __init__(self, svc: Services, interval: float):
        self.svc, self.interval = svc, interval
        self._jobs: dict[int, int] = {}  # job id -> how many holders
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, job_id: int) -> None:
        with self._lock:
            self._jobs[job_id] = self._jobs.get(job_id, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="omnibridge-heartbeat")
                self._thread.start()

    def release(self, job_id: int) -> None:
        with self._lock:
            left = self._jobs.get(job_id, 1) - 1
            if left > 0:
                self._jobs[job_id] = left
            else:
                self._jobs.pop(job_id, None)

    @contextmanager
    def holding(self, job_id: int):
        self.hold(job_id)
        try:
            yield
        finally:
            self.release(job_id)

    def beat(self) -> None:
        with self._lock:
            ids = list(self._jobs)
        if ids:
            with self.svc.session() as db:
                db.execute(update(Job).where(Job.id.in_(ids), Job.status.in_(UNFINISHED))
                           .values(updated_at=utcnow()))
                db.commit()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a busy or briefly unreachable database: the next beat tries again
                log.warning("job heartbeat failed", exc_info=True)

    def close(self) -> None:
        self._stop.set()


def resume_job(svc: Services, job_id: int) -> dict:
    """Finish a job another process left (or this one, before a restart): scan again if it never got past the scan,
    else embed what is still pending and finalize. Exactly-once holds (see the module docstring)."""
    with svc.session() as db:
        job = db.get(Job, job_id)
        status = job.status if job else None
        if status == "finalizing":
            job.status = "running"
            db.commit()
    if status in ("queued", "scanning"):
        return run_job(svc, job_id)
    if status not in ("running", "finalizing"):
        return job_summary(svc, job_id)
    try:
        with svc.session() as db:
            pending = list(db.scalars(select(Asset.id).where(Asset.job_id == job_id, Asset.status == "pending")
                                      .order_by(Asset.id)))
        size = svc.settings.batch_size
        for i in range(0, len(pending), size):
            embed(svc, job_id, pending[i:i + size])
        try_finalize(svc, job_id)
    except Exception as e:  # the database or the store: recorded, as in run_job
        log.exception("resuming ingest job %s failed", job_id)
        fail_job(svc, job_id, f"ingest failed: {e}")
    return job_summary(svc, job_id, errors=20)


def fail_job(svc: Services, job_id: int, error: str) -> None:
    with svc.session() as db:
        db.execute(update(Job).where(Job.id == job_id).values(status="failed", error=error, finished_at=utcnow()))
        db.commit()


def fail_assets(svc: Services, job_id: int, asset_ids: list[int], error: str) -> dict[str, int]:
    with svc.session() as db:
        n = _finish(db, job_id, asset_ids, "failed", error)
        db.commit()
    return {"indexed": 0, "failed": n}


# -- reports ---------------------------------------------------------------------------------------------------

def _errors(db, where, limit: int) -> list[dict]:
    rows = db.execute(select(Asset.id, Asset.uri, Asset.error).where(where, Asset.status == "failed")
                      .order_by(Asset.id).limit(limit)).all()
    return [{"asset_id": i, "path": u, "error": e} for i, u, e in rows]


def _job_dict(job: Job, collection: str) -> dict:
    o = job.options or {}
    end = job.finished_at or utcnow()
    start = job.started_at or job.created_at
    seconds = (end - start).total_seconds() if start and end else 0.0
    return {
        "id": job.id, "collection": collection, "source": job.source, "status": job.status, "error": job.error,
        "seen": job.seen, "indexed": job.indexed, "duplicates": job.duplicates, "skipped": job.skipped,
        "failed": job.failed, "removed": o.get("removed", 0), "queued": o.get("queued", 0),
        "done": job.indexed + job.failed - o.get("scan_failed", 0), "ocr": bool(o.get("ocr")),
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None, "seconds": seconds,
    }


def job_summary(svc: Services, job_id: int, errors: int = 0) -> dict:
    with svc.session() as db:
        job = db.get(Job, job_id)
        if job is None:
            raise ValueError(f"no job {job_id}")
        out = _job_dict(job, db.get(Collection, job.collection_id).name)
        if errors:
            refused = [{"asset_id": None, "path": r["path"], "error": r["error"]}
                       for r in (job.options or {}).get("refused", [])]
            out["errors"] = (refused + _errors(db, Asset.job_id == job_id, errors))[:errors]
        return out


def status_report(svc: Services, collection: str | None = None, jobs: int = 10, errors: int = 20) -> dict:
    """Collections with asset counts by status, their recent jobs and failed files."""
    with svc.session() as db:
        known = list(db.scalars(select(Collection.name).order_by(Collection.name)))
        q = select(Collection).order_by(Collection.name)
        if collection:
            q = q.where(Collection.name == collection)
        colls = list(db.scalars(q))
        ids = [c.id for c in colls]
        counts: dict[int, dict[str, int]] = {}
        for cid, st, n in db.execute(select(Asset.collection_id, Asset.status, func.count())
                                     .where(Asset.collection_id.in_(ids)).group_by(Asset.collection_id, Asset.status)):
            counts.setdefault(cid, {})[st] = n
        names = {c.id: c.name for c in colls}
        recent = db.scalars(select(Job).where(Job.collection_id.in_(ids)).order_by(Job.id.desc()).limit(jobs))
        return {
            "known": known,
            "collections": [{"name": c.name, "root": c.root, "assets": counts.get(c.id, {})} for c in colls],
            "jobs": [_job_dict(j, names[j.collection_id]) for j in recent],
            "errors": _errors(db, Asset.collection_id.in_(ids), errors),
        }


def run_job(svc: Services, job_id: int) -> dict:
    """A whole registered job in this thread, no queue (scan, embed in batches, finalize): for the API's embedded
    mode and a handful of files. A bad source or a store/database failure is recorded on the job, not raised."""
    try:
        check_free_space(svc)
        pending = scan(svc, job_id)
        size = svc.settings.batch_size
        for i in range(0, len(pending), size):
            embed(svc, job_id, pending[i:i + size])
        try_finalize(svc, job_id)
    except SourceError as e:
        fail_job(svc, job_id, str(e))
    except Exception as e:  # the database or the store: recorded so that status and GET /jobs/{id} say so
        log.exception("ingest job %s failed", job_id)
        fail_job(svc, job_id, f"ingest failed: {e}")
    return job_summary(svc, job_id, errors=20)


def run_inline(svc: Services, paths: list[str], collection: str, **options) -> dict:
    """Register a job and run it in this thread (e.g. for generated images); returns its summary."""
    return run_job(svc, create_job(svc, paths, collection, **options))
