"""The metadata database: SQLAlchemy models, engine set-up and Alembic migrations run on first use.

SQL is the source of truth of what was ingested (`collections`, `assets`, `texts`, `jobs`), which model wrote which
points into the vector store (`models`, `vectors`), where generated images came from (`generated_assets`) and
who may use the HTTP API (`api_keys`).

    sessions = session_factory(settings.db_url)   # creates or upgrades the schema, then hands out sessions
    with sessions() as db: ...

Embedded default: an SQLite file in OMNIBRIDGE_HOME (WAL, foreign keys on, 30 s busy timeout: several processes
write). Production: PostgreSQL through OMNIBRIDGE_DATABASE_URL. The schema is defined here and created only by the
migrations in `migrations/` (see its README); tests check that the two never drift apart.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text as TextType,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    false,
    func,
    make_url,
    select,
)
from sqlalchemy.exc import DatabaseError as SQLDatabaseError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]  # the package is installed in editable mode: the repo is beside it
MIGRATIONS_DIR = REPO_ROOT / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_MIGRATION_LOCK = 0x0B1D6E  # pg_advisory_lock key: one process migrates a PostgreSQL database at a time

MEDIA = ("image", "text")
ASSET_STATUSES = ("pending", "indexed", "duplicate", "failed")
TEXT_KINDS = ("caption", "alt", "tags", "ocr", "filename", "document")
JOB_STATUSES = ("queued", "scanning", "running", "finalizing", "done", "failed")
VECTOR_KINDS = ("image", "text")

# Every constraint and index gets a predictable name: SQLite batch migrations (and any downgrade) refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class DatabaseError(RuntimeError):
    """The metadata database cannot be opened or migrated; the message names the setting and the fix."""


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of datetime stored)."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that always returns aware UTC datetimes, also from SQLite (which stores no zone).

    Naive datetimes are taken to be UTC. The migrations see the plain `sa.DateTime(timezone=True)` it compiles to.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Models with named constraints; `datetime` columns are UTCDateTime, `dict` columns JSON."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    """CHECK (column IN (...)), named ck_<table>_<column>."""
    return CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=column)


def _created() -> Mapped[datetime]:
    return mapped_column(default=utcnow, server_default=func.now())


def _updated() -> Mapped[datetime]:
    return mapped_column(default=utcnow, onupdate=utcnow, server_default=func.now())


# -- models ----------------------------------------------------------------------------------------------------

class Collection(Base):
    """A named media library; its assets and jobs are deleted with it."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    root: Mapped[str]  # the folder it was first ingested from
    created_at: Mapped[datetime] = _created()


class Job(Base):
    """One ingestion run: queued -> scanning -> running -> finalizing -> done (or failed), with its counters."""

    __tablename__ = "jobs"
    __table_args__ = (_one_of("status", JOB_STATUSES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    source: Mapped[str]  # the path given, for display
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"paths": [...], "ocr": bool, ...}
    status: Mapped[str] = mapped_column(String(16), default="queued", server_default="queued")
    error: Mapped[str | None] = mapped_column(TextType)
    seen: Mapped[int] = mapped_column(default=0, server_default="0")
    indexed: Mapped[int] = mapped_column(default=0, server_default="0")
    skipped: Mapped[int] = mapped_column(default=0, server_default="0")
    duplicates: Mapped[int] = mapped_column(default=0, server_default="0")
    failed: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = _updated()


class Asset(Base):
    """One file of a collection (an image or a text document): pending -> indexed | duplicate | failed."""

    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("collection_id", "uri"),
        Index("ix_assets_collection_id_status", "collection_id", "status"),
        _one_of("media", MEDIA),
        _one_of("status", ASSET_STATUSES),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    uri: Mapped[str]  # absolute path of the file
    media: Mapped[str] = mapped_column(String(8))
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    phash: Mapped[str | None] = mapped_column(String(16))  # perceptual hash, 16 hex digits (64 bits)
    colour: Mapped[str | None] = mapped_column(String(24))  # mean RGB of the 2x2 quarters, 24 hex digits
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None]
    height: Mapped[int | None]
    format: Mapped[str | None]  # "PNG", "JPEG", "MD", ...
    mtime: Mapped[float | None] = mapped_column(Double)  # st_mtime when last read
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    error: Mapped[str | None] = mapped_column(TextType)  # why it failed, naming the file
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("assets.id", ondelete="SET NULL"), index=True)
    near_dup_group: Mapped[int | None] = mapped_column(index=True)  # smallest asset id of its near-duplicate group
    synthetic: Mapped[bool] = mapped_column(default=False, server_default=false())  # generated, not captured
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Text(Base):
    """A text of an asset: captions, alt text, tags (comma-separated), OCR, the file name, or a document's body."""

    __tablename__ = "texts"
    __table_args__ = (
        Index("ix_texts_asset_id_kind", "asset_id", "kind"),
        _one_of("kind", TEXT_KINDS),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(TextType)
    created_at: Mapped[datetime] = _created()


class Model(Base):
    """An embedding model (name + weights version) and the vector space (store collection) it writes to."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    version: Mapped[str]  # hash of the weights
    space: Mapped[str] = mapped_column(unique=True)
    dim: Mapped[int]
    created_at: Mapped[datetime] = _created()


class Vector(Base):
    """A point in a model's space: the image of an asset, or one of its texts."""

    __tablename__ = "vectors"
    __table_args__ = (UniqueConstraint("model_id", "point_id"), _one_of("kind", VECTOR_KINDS))

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    text_id: Mapped[int | None] = mapped_column(ForeignKey("texts.id", ondelete="CASCADE"), index=True)
    point_id: Mapped[str]  # the id in the vector store
    kind: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = _created()


class GeneratedAsset(Base):
    """Lineage of a generated image: the prompt, model, seed and settings that made it, and its source image."""

    __tablename__ = "generated_assets"

    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), unique=True)
    source_asset_id: Mapped[int | None] = mapped_column(ForeignKey("assets.id", ondelete="SET NULL"), index=True)
    prompt: Mapped[str] = mapped_column(TextType)
    model: Mapped[str]
    seed: Mapped[int | None] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()


class ApiKey(Base):
    """An HTTP API key: only the sha256 of its secret is stored; scopes map collections ("*" = all) to read|write."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    scopes: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"photos": "read", "*": "write"}
    revoked: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = _created()


# -- engine ----------------------------------------------------------------------------------------------------

def _sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL; None for other databases and in-memory SQLite."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:") or u.database.startswith("file:"):
        return None
    return Path(u.database).expanduser().resolve()


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _enable_wal(cursor) -> None:
    """Switch the SQLite file to WAL (a no-op once it is). Two connections making the very first switch at the same
    moment get "database is locked" without the busy timeout being applied, so the switch is retried."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def create_db_engine(url: str, **kwargs) -> Engine:
    """An Engine for the metadata database; on SQLite: foreign keys, WAL and a busy timeout on every connection."""
    u = make_url(url)
    if u.drivername == "postgresql":  # SQLAlchemy 2.1 would pick psycopg 3; psycopg2 is the driver we install
        u = u.set(drivername="postgresql+psycopg2")
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, **kwargs)
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)  # a fresh data directory just works
    elif "poolclass" not in kwargs:
        kwargs["poolclass"] = StaticPool  # in-memory: every session must see the one database
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    engine = create_engine(u, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        _enable_wal(cur)  # readers do not block the writer (and vice versa)
        cur.execute("PRAGMA synchronous = NORMAL")  # safe with WAL, much faster commits
        cur.close()

    return engine


def _ping(engine: Engine) -> None:
    """Connect once; an unreachable database raises DatabaseError naming the setting and the fix."""
    try:
        with engine.connect() as conn:
            if engine.url.get_backend_name() == "sqlite":  # SQLite opens anything; reading tells a damaged file
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
    except OperationalError as e:
        if _damaged(e):
            raise _damaged_error(engine, e) from None
        u = engine.url
        if u.get_backend_name() == "sqlite":
            fix = ("check that OMNIBRIDGE_HOME is a writable folder, or set OMNIBRIDGE_DATABASE_URL to "
                   "sqlite:////ABSOLUTE/PATH.db or postgresql://USER@HOST:5432/DB")
        else:
            fix = ("start PostgreSQL and create the database (createdb NAME), or set OMNIBRIDGE_DATABASE_URL to a "
                   "reachable postgresql://USER[:PASSWORD]@HOST:5432/DB (unset it to use the embedded SQLite file)")
        reason = str(e.orig or e).strip().splitlines()[0]
        shown = u.render_as_string(hide_password=True)
        raise DatabaseError(f"cannot open the metadata database {shown}: {reason}\n  fix: {fix}") from None
    except SQLDatabaseError as e:  # "file is not a database", "database disk image is malformed"
        raise _damaged_error(engine, e) from None


def _damaged(e: Exception) -> bool:
    text = str(getattr(e, "orig", None) or e).lower()
    return "malformed" in text or "not a database" in text


def _damaged_error(engine: Engine, e: Exception) -> DatabaseError:
    reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
    where = engine.url.database if engine.url.get_backend_name() == "sqlite" else \
        engine.url.render_as_string(hide_password=True)
    return DatabaseError(f"the metadata database {where} is damaged ({reason}); restore the last backup with "
                         "`omnibridge restore BACKUP_DIR` (README: Backup and restore), which keeps the damaged file "
                         "aside and rebuilds the index")


# -- migrations ------------------------------------------------------------------------------------------------

def alembic_config(url: str):
    """An Alembic Config for this database and the repo's `migrations/` (no alembic.ini, so no logging set-up)."""
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise DatabaseError(f"the migrations folder {MIGRATIONS_DIR} is missing; install OmniBridge Search from its "
                            "repository in editable mode (pip install -e .) so that migrations/ is found")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", make_url(url).render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One process at a time migrates a database: a file lock beside an SQLite file, an advisory lock on PostgreSQL."""
    path = _sqlite_file(_url(engine))
    if path is not None:
        with FileLock(f"{path}.migrate.lock", timeout=600):
            yield
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # session-level lock, held on its own connection while another migrates
            conn.execute(select(func.pg_advisory_lock(PG_MIGRATION_LOCK)))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(select(func.pg_advisory_unlock(PG_MIGRATION_LOCK)))
                conn.commit()
    else:
        yield


def _alembic(engine: Engine, command_name: str, revision: str) -> None:
    """`alembic <command_name> <revision>` on a connection of `engine` (the caller holds the migration lock)."""
    from alembic import command

    cfg = alembic_config(_url(engine))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn  # migrations/env.py runs on it
        getattr(command, command_name)(cfg, revision)


def _revisions(engine: Engine) -> tuple[set[str], set[str], set[str]]:
    """(the database's current revisions, the head revisions, the current ones unknown to this code)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(_url(engine)))
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    known = {s.revision for s in script.walk_revisions()}
    return current, set(script.get_heads()), current - known


def _upgrade_to_head(engine: Engine) -> None:
    current, heads, _ = _revisions(engine)
    if current == heads:
        return
    with _migration_lock(engine):
        current, heads, unknown = _revisions(engine)  # another process may have migrated meanwhile
        if unknown:
            raise DatabaseError(
                f"the database {engine.url!r} is at revision {', '.join(sorted(unknown))}, which this version of "
                "OmniBridge Search does not know (a newer one migrated it); upgrade the code, or point "
                "OMNIBRIDGE_DATABASE_URL (or OMNIBRIDGE_HOME) at another database")
        if current != heads:
            log.info("migrating the metadata database %r to %s", engine.url, ", ".join(sorted(heads)))
            _alembic(engine, "upgrade", "head")


def _run_alembic(url: str, command_name: str, revision: str) -> None:
    engine = create_db_engine(url)
    try:
        _ping(engine)
        with _migration_lock(engine):
            _alembic(engine, command_name, revision)
    finally:
        engine.dispose()


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (default: the newest schema)."""
    _run_alembic(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at `url` to `revision` ("-1": one step back, "base": no tables at all)."""
    _run_alembic(url, "downgrade", revision)


def session_factory(url: str) -> sessionmaker[Session]:
    """Sessions on the database at `url`, whose schema is first created or upgraded to the newest revision.

    Safe to call from several processes at once on a new database: one migrates, the others wait and find it done.
    """
    engine = create_db_engine(url)
    _ping(engine)
    _upgrade_to_head(engine)
    return sessionmaker(engine, expire_on_commit=False)
