"""`omnibridge backup DEST` and `omnibridge restore SRC` for the embedded default (SQLite + Qdrant Edge + files).

A backup is a folder: `omnibridge.db` (SQLite's online backup: consistent even while other processes write),
`media/` (uploaded and generated images: their only copy), `qdrant/` (the vector store, copied as it is) and
`BACKUP.json`. The vector store needs no consistency of its own: after a restore, `omnibridge doctor --repair`
(which `restore` runs) makes it agree with the database and the files again.

Restore refuses while a process owns the data (API, UI, ingest, worker): stop them first. What it replaces is moved
to HOME/replaced-<time>/, never deleted. A vector store that still opens is kept rather than replaced by the backup's:
it also knows the files indexed after the backup, and the repair indexes them again from their paths. PostgreSQL and a Qdrant server are backed up with their own tools
(pg_dump, Qdrant snapshots): README, "Backup and restore".
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

from filelock import FileLock, Timeout

from engine.edge_store import EdgeStore
from engine.settings import Settings

DB_FILE = "omnibridge.db"


def _embedded_only(settings: Settings, what: str) -> None:
    if settings.database_url and not settings.database_url.startswith("sqlite"):
        raise ValueError(f"{what} covers the embedded default; back PostgreSQL up with pg_dump (README: Backup and "
                         "restore)")
    if settings.qdrant_url:
        raise ValueError(f"{what} covers the embedded default; back a Qdrant server up with its snapshots API "
                         "(README: Backup and restore)")


def _db_path(settings: Settings) -> Path:
    return Path(settings.db_url.removeprefix("sqlite:///"))


def backup(settings: Settings, dest: Path) -> dict:
    """Copy the data directory's database, files and vector store into the new folder `dest`."""
    _embedded_only(settings, "omnibridge backup")
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} already holds files; give a new or empty folder for the backup")
    if dest.is_relative_to(settings.home.resolve()):
        raise ValueError(f"{dest} is inside the data directory {settings.home}; keep backups elsewhere")
    source = _db_path(settings)
    if not source.is_file():
        raise ValueError(f"nothing to back up: {source} does not exist (run `omnibridge ingest` first)")
    dest.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(dest / DB_FILE) as out:
        src.backup(out)
    for part in ("media", "qdrant"):
        if (settings.home / part).is_dir():
            shutil.copytree(settings.home / part, dest / part, ignore=shutil.ignore_patterns("owner.lock",
                                                                                            "owner.json"))
    info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "home": str(settings.home), "folder": str(dest),
            "bytes": sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())}
    (dest / "BACKUP.json").write_text(json.dumps(info, indent=2))
    return info


def restore(settings: Settings, src: Path) -> Path:
    """Replace the data directory's database, files and vector store by the backup in `src`; the replaced ones go
    to HOME/replaced-<time>/, which is returned."""
    _embedded_only(settings, "omnibridge restore")
    src = Path(src).resolve()
    if not (src / "BACKUP.json").is_file() or not (src / DB_FILE).is_file():
        raise ValueError(f"{src} is not a backup (no BACKUP.json and {DB_FILE}); give a folder written by "
                         "`omnibridge backup`")
    home = settings.home
    (home / "qdrant").mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(home / "qdrant" / "owner.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"a process is using {home} (see {home / 'qdrant' / 'owner.json'}); stop the API, the UI, "
                         "`omnibridge ingest` and the workers, then restore again") from None
    try:
        aside = home / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True)
        db = _db_path(settings)
        if db.exists():
            shutil.move(str(db), str(aside / DB_FILE))
        keep_vectors = _readable_store(home / "qdrant")  # newer than the backup: doctor adopts what SQL forgot
        for part in ("media",) if keep_vectors else ("media", "qdrant"):
            if (home / part).exists():
                shutil.move(str(home / part), str(aside / part))
        shutil.copy2(src / DB_FILE, db)
        for part in ("media",) if keep_vectors else ("media", "qdrant"):
            if (src / part).is_dir():
                shutil.copytree(src / part, home / part)
        _keep_newer_files(aside / "media", home / "media")
        return aside
    finally:
        lock.release(force=True)


def _readable_store(folder: Path) -> bool:
    """Whether the current vector store opens: then it is kept (it knows files indexed after the backup)."""
    if not folder.is_dir():
        return False
    store = EdgeStore(folder)
    try:
        for space in store.spaces():
            store.count(space)
        return bool(store.spaces())
    except Exception:  # damaged: the backup's copy is used instead
        return False
    finally:
        store.close()


def _keep_newer_files(old: Path, new: Path) -> None:
    """Uploaded or generated files made after the backup are their only copy: put them back beside the backup's
    (the repair after a restore then indexes them again)."""
    if not old.is_dir():
        return
    for f in old.rglob("*"):
        target = new / f.relative_to(old)
        if f.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
