"""`omnibridge doctor [--repair]`: compare the database with the vector store, and make them agree again.

SQL and the files are the source of truth; the vector store is an index of them. Per model space the check finds
points SQL expects but the store lacks (a deleted or replaced store folder), points the store has but SQL does not
know (orphans), and vectors that are not finite or of a length no model writes (damaged data). A space
whose files cannot be opened at all is reported as damaged.

Repair: a damaged embedded space folder is moved aside (kept, never deleted) and created anew; orphans and bad points
are deleted, and the files orphans name (a restored, older database forgot them) are indexed again; the assets behind missing or bad points of the configured model are embedded again from their files,
in a job per collection (other models' spaces are re-embedded by the next `omnibridge ingest` with that model);
finally each collection's folders are scanned again, so files a restored, older database did not know come back.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update

from engine.access import upload_folder
from engine.db import Asset, Collection, Job, Model, Vector, utcnow
from engine.services import Services, model_identity, space_name
from engine.vectors import StoreDamaged

from . import pipeline

log = logging.getLogger(__name__)

NORM_RANGE = (0.5, 2.0)  # lengths a stored vector can have (see _bad_vectors); outside: damaged data
CHUNK = 512


def check(svc: Services, repair: bool = False) -> dict:
    """{"ok", "spaces": [per-space report], "repaired": {...}}; see the module docstring."""
    current = space_name(*model_identity(svc.settings.model))  # the configured model's space (not opened yet)
    with svc.session() as db:
        models = db.execute(select(Model.id, Model.name, Model.space, Model.dim)).all()
    spaces, reembed, adopt = [], {}, {}
    for model_id, name, space, dim in models:
        report = _check_space(svc, model_id, name, space, dim, repair)
        for collection, files in report.pop("to_adopt", {}).items():
            adopt.setdefault(collection, set()).update(files)
        spaces.append(report)
        if repair and report["to_reembed"]:
            if space == current:
                reembed = report["to_reembed"]
            else:
                _forget(svc, model_id, report["to_reembed"])  # the next ingest with that model embeds them again
        report["to_reembed"] = len(report["to_reembed"])
    repaired = {}
    if repair:
        repaired["reembedded_jobs"] = _reembed(svc, reembed)
        repaired["adopted_jobs"] = [pipeline.run_inline(svc, sorted(files), collection)
                                    for collection, files in sorted(adopt.items())]
        repaired["rescanned_jobs"] = _rescan(svc)
    ok = all(not (s["missing"] or s["orphans"] or s["bad"] or s["damaged"]) for s in spaces)
    return {"ok": ok, "spaces": spaces, "repaired": repaired}


def _check_space(svc: Services, model_id: int, name: str, space: str, dim: int, repair: bool) -> dict:
    report = {"space": space, "model": name, "sql_points": 0, "store_points": 0, "missing": 0, "orphans": 0,
              "bad": 0, "damaged": None, "to_reembed": {}, "collections": {}}
    with svc.session() as db:
        rows = db.execute(select(Vector.point_id, Vector.asset_id, Vector.kind, Asset.collection_id)
                          .join(Asset, Asset.id == Vector.asset_id).where(Vector.model_id == model_id)).all()
        names = dict(db.execute(select(Collection.id, Collection.name)).all())
    expected = {pid: (aid, cid) for pid, aid, _, cid in rows}
    report["sql_points"] = len(expected)
    for _, _, _, cid in rows:
        report["collections"].setdefault(names[cid], 0)
        report["collections"][names[cid]] += 1
    try:
        if space not in svc.store.spaces():
            if not expected:
                return report
            if not repair:
                report["damaged"] = "the space is missing from the vector store"
                report["missing"] = len(expected)
                report["to_reembed"] = _assets(expected, expected)
                return report
            svc.store.ensure_space(space, dim)
        present = set(svc.store.point_ids(space))
    except StoreDamaged as e:
        report["damaged"] = str(e)
        if not repair:
            report["missing"] = len(expected)
            report["to_reembed"] = _assets(expected, expected)
            return report
        _move_aside(svc, space)
        svc.store.ensure_space(space, dim)
        present = set()
    report["store_points"] = len(present)
    missing = set(expected) - present
    orphans = present - set(expected)
    bad = _bad_vectors(svc, space, sorted(present & set(expected)))
    report.update(missing=len(missing), orphans=len(orphans), bad=len(bad))
    report["to_reembed"] = _assets(missing | bad, expected)
    if repair and orphans:  # files the database forgot (a restored, older database): indexed again below
        report["to_adopt"] = _orphan_files(svc, space, sorted(orphans))
    if repair and (orphans or bad):
        svc.store.delete(space, sorted(orphans | bad))
    return report


def _orphan_files(svc: Services, space: str, ids: list[str]) -> dict[str, set[str]]:
    """{collection: files} named by orphan points' payloads that still exist on disk."""
    out: dict[str, set[str]] = {}
    for i in range(0, len(ids), CHUNK):
        for _, payload, _ in svc.store.retrieve(space, ids[i:i + CHUNK]):
            path, collection = payload.get("path"), payload.get("collection")
            if path and collection and Path(path).is_file():
                out.setdefault(collection, set()).add(path)
    return out


def _assets(points: set[str] | dict, expected: dict) -> dict[int, list[int]]:
    """{collection id: [asset ids]} behind these points."""
    out: dict[int, set[int]] = {}
    for pid in points:
        aid, cid = expected[pid]
        out.setdefault(cid, set()).add(aid)
    return {cid: sorted(ids) for cid, ids in out.items()}


def _bad_vectors(svc: Services, space: str, ids: list[str]) -> set[str]:
    """Points whose vector is missing, not finite, or of a length no model writes (images are unit vectors, text
    vectors of the gated models have length 1..sqrt(3); random bytes read as float32 are far outside)."""
    bad = set()
    for i in range(0, len(ids), CHUNK):
        for pid, _, vec in svc.store.retrieve(space, ids[i:i + CHUNK], with_vectors=True):
            v = None if vec is None else np.asarray(vec, dtype=np.float64)
            if v is None or not np.all(np.isfinite(v)) or not NORM_RANGE[0] <= np.linalg.norm(v) <= NORM_RANGE[1]:
                bad.add(pid)
    return bad


def _move_aside(svc: Services, space: str) -> Path | None:
    """Move a damaged embedded space folder to HOME/qdrant-damaged/ (kept for inspection, never deleted)."""
    if svc.settings.qdrant_url:
        raise StoreDamaged(f"the Qdrant server's collection for space {space!r} is damaged; restore it from a "
                           "snapshot (README: Backup and restore), or delete the collection and run "
                           "`omnibridge doctor --repair` again to rebuild it")
    folder = svc.settings.qdrant_path / space
    if not folder.exists():
        return None
    dest = svc.settings.home / "qdrant-damaged" / f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(dest))
    log.warning("moved the damaged vector space %s to %s", folder, dest)
    return dest


def _forget(svc: Services, model_id: int, assets: dict[int, list[int]]) -> None:
    ids = [a for ids in assets.values() for a in ids]
    with svc.session() as db:
        db.execute(delete(Vector).where(Vector.model_id == model_id, Vector.asset_id.in_(ids)))
        db.commit()


def _reembed(svc: Services, assets: dict[int, list[int]]) -> list[dict]:
    """Embed these assets again from their files: one job per collection (status, counts, errors as any job)."""
    model_id = svc.model_row()[0]
    out = []
    for cid, ids in sorted(assets.items()):
        with svc.session() as db:
            job = Job(collection_id=cid, source="omnibridge doctor --repair", status="running", started_at=utcnow(),
                      options={"paths": [], "repair": True, "queued": len(ids)})
            db.add(job)
            db.flush()
            db.execute(delete(Vector).where(Vector.model_id == model_id, Vector.asset_id.in_(ids)))
            db.execute(update(Asset).where(Asset.id.in_(ids), Asset.status == "indexed")
                       .values(status="pending", job_id=job.id))
            db.commit()
            job_id = job.id
        out.append(pipeline.resume_job(svc, job_id))
    return out


def _rescan(svc: Services) -> list[dict]:
    """Run each collection's sources again as they were given (folders, PAIRS.jsonl, files; not generated images),
    plus its upload folder: incremental, so unchanged files are skipped and files the database forgot come back."""
    plans = []
    with svc.session() as db:
        for coll in db.scalars(select(Collection).order_by(Collection.name)):
            sources: dict[str, None] = {}
            for options in db.scalars(select(Job.options).where(Job.collection_id == coll.id).order_by(Job.id)):
                if options and not options.get("synthetic"):
                    sources.update(dict.fromkeys(p for p in options.get("paths", []) if Path(p).exists()))
            uploads = upload_folder(svc.settings, coll.name)
            if uploads.is_dir():
                sources[str(uploads)] = None
            if sources:
                plans.append((coll.name, list(sources)))
    return [pipeline.run_inline(svc, paths, name) for name, paths in plans]


def quick_check(svc: Services) -> dict:
    """Cheap enough for /health and `status`: {"database": "ok" | why, "store": "ok" | why, "spaces": {space:
    {"sql": n, "store": m}}, "problem": one line or None}. Counts only; `check` looks point by point."""
    out: dict = {"database": "ok", "store": "ok", "spaces": {}, "problem": None}
    try:
        with svc.session() as db:
            counts = db.execute(select(Model.space, func.count(Vector.id)).join(Vector, Vector.model_id == Model.id)
                                .group_by(Model.space)).all()
    except Exception as e:  # a damaged or unreachable database: say which and how to fix it
        out["database"] = str(e).splitlines()[0][:500]
        out["problem"] = f"the metadata database is not usable: {out['database']}"
        return out
    try:
        held = set(svc.store.spaces())
        for space, n in counts:
            stored = svc.store.count(space) if space in held else 0
            out["spaces"][space] = {"sql": int(n), "store": int(stored)}
    except Exception as e:  # damaged files, an unreachable server, an owner that keeps dying
        out["store"] = str(e).splitlines()[0][:500]
        out["problem"] = f"the vector store is not usable: {out['store']}"
        return out
    short = {s: c for s, c in out["spaces"].items() if c["store"] < c["sql"]}
    if short:
        s, c = next(iter(short.items()))
        out["problem"] = (f"the vector store holds {c['store']} of the {c['sql']} points the database lists for "
                          f"space {s!r}: the index is damaged or was deleted; run `omnibridge doctor --repair`")
    return out
