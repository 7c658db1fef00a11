"""The process-wide resources every entry point shares: SQL sessions, the vector store and the model.

Each is created once per process on first use (the model takes seconds to load, the Edge store may be owned by
another process). `Services` knows nothing of Celery, HTTP or Streamlit.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .settings import Settings


def model_identity(name: str) -> tuple[str, str]:
    """(name, version) of a model setting: the version is a hash of its weights, so retraining makes a new space."""
    from omnibridge.checkpoint import DEFAULT_DIR

    path = DEFAULT_DIR if name == "default" else Path(name)
    weights = path / "model.safetensors"
    h = hashlib.sha256()
    if weights.is_file():
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        label = "default" if name == "default" else path.resolve().name
    else:  # a built-in zero-shot bridge: versioned by the package code that defines it
        import omnibridge

        h.update(f"{name}:{getattr(omnibridge, '__version__', '0')}".encode())
        label = name
    return label, h.hexdigest()[:12]


def space_name(label: str, version: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:60] or "model"
    return f"{slug}-{version[:8]}"


@dataclass
class Services:
    settings: Settings
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _sessions: sessionmaker | None = None
    _store: object | None = None
    _model: object | None = None
    _model_row: tuple[int, str, int] | None = None

    @property
    def sessions(self) -> sessionmaker:
        with self._lock:
            if self._sessions is None:
                from .db import session_factory

                self._sessions = session_factory(self.settings.db_url)
            return self._sessions

    def session(self) -> Session:
        return self.sessions()

    @property
    def store(self):
        """The VectorStore: a Qdrant server, or the embedded Edge store (one per process and folder, see open_store)."""
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings)
            return self._store

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                from omnibridge import load_model

                self._model = load_model(self.settings.model, device=self.settings.device)
            return self._model

    def model_row(self) -> tuple[int, str, int]:
        """(models.id, space, dim) of the configured model, registering it (and its vector space) on first use."""
        with self._lock:
            if self._model_row is None:
                from .db import Model

                label, version = model_identity(self.settings.model)
                space = space_name(label, version)
                with self.session() as db:
                    row = db.scalar(select(Model).where(Model.space == space))
                    if row is None:
                        try:
                            row = Model(name=label, version=version, space=space, dim=self.model.dim)
                            db.add(row)
                            db.commit()
                        except IntegrityError:  # another process registered it at the same moment
                            db.rollback()
                            row = db.scalar(select(Model).where(Model.space == space))
                    self._model_row = (row.id, row.space, row.dim)
                self.store.ensure_space(self._model_row[1], self._model_row[2])
            return self._model_row

    def close(self) -> None:
        """Release the vector store (the embedded one is handed to the next process that needs it)."""
        with self._lock:
            if self._store is not None:
                close_store(self.settings)
                self._store = None


_stores: dict[str, object] = {}
_stores_lock = threading.Lock()


def _store_key(s: Settings) -> str:
    return f"url:{s.qdrant_url}:{s.qdrant_prefix}" if s.qdrant_url else f"edge:{s.qdrant_path.resolve()}"


def open_store(s: Settings):
    """The process's store for these settings: a Qdrant server client, or the shared owner/client of the Edge
    folder. One per folder per process, whatever the model: a second open of an Edge folder would fail on its lock."""
    key = _store_key(s)
    with _stores_lock:
        if key not in _stores:
            if s.qdrant_url:
                from .qdrant_store import QdrantServerStore

                _stores[key] = QdrantServerStore(s.qdrant_url, api_key=s.qdrant_api_key, prefix=s.qdrant_prefix,
                                                 shards=s.qdrant_shards, replicas=s.qdrant_replicas)
            else:
                from .edge_store import EdgeStore, ShardLocked
                from .shared_store import SharedStore

                root = s.qdrant_path
                root.mkdir(parents=True, exist_ok=True)
                _stores[key] = SharedStore(root, lambda: EdgeStore(root), busy=(ShardLocked,))
        return _stores[key]


def close_store(s: Settings) -> None:
    with _stores_lock:
        store = _stores.pop(_store_key(s), None)
    if store is not None:
        store.close()


_services: dict[tuple, Services] = {}
_services_lock = threading.Lock()


def get_services(settings: Settings | None = None) -> Services:
    """One Services per process and configuration."""
    from .settings import get_settings

    settings = settings or get_settings()
    key = (str(settings.home), settings.db_url, settings.qdrant_url, settings.model, settings.device)
    with _services_lock:
        if key not in _services:
            _services[key] = Services(settings)
        return _services[key]
